"""FBNetV2 operators: the declared primitives of the v2 spaces and their canonical keys.

Pure Python (no torch). The primitives follow mobile-vision's FBNetV2 blocks (`ir_k{3,5}` inverted
residuals with optional hard-sigmoid squeeze-excite ``_sehsig`` and h-swish ``_hs``, ``skip``, the
``conv_k3_hs`` stem, the ``ir_pool_hs`` head, the classifier ``fc``); their modules are built by
:mod:`fbnet.blocks` (:func:`fbnet.blocks.build_op`).

Keys: ``ir_k5_sehsig_hs-80x14x14-m360-80-s1`` is block-CinxHxW-mMid-Cout-sStride (the block name
carries kernel, SE and activation; ``mid`` is the inner width); ``skip-56x14x14-80-s1``,
``conv_k3_hs-3x224x224-16-s2`` and ``fc-1984-1000`` have no inner width. A ``skip`` or ``fc`` key
is the v1 key of the same module (a 1x1 conv + BN + ReLU projection, a linear layer). Every key
parses back to the same :class:`OpV2` (:func:`parse_key_v2`).

Counting (:attr:`OpV2.macs`, :attr:`OpV2.params`) follows mobile-vision's FLOP counter, which gives
the released FBNetV2 figures: multiply-adds of convolutions and linear layers (weights x output
positions) plus one per input element of every global average pool; parameters are convolution and
linear weights (no BN, no biases). :attr:`OpV2.torch_params` counts every trainable tensor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

WIDTH_DIVISOR = 8
SE_RATIO = 0.25
ACTIVATIONS = ("relu", "hswish")


def divisible_width(value: float, divisor: int = WIDTH_DIVISOR) -> int:
    """mobile-vision's width rounding: nearest multiple of ``divisor`` (half away from zero), one
    more step when that falls below 95 % of ``value``, never below ``divisor``."""
    out = int(value)
    if value % divisor != 0:
        out = int((math.floor(value / divisor + 0.5) or 1) * divisor)
        if out < 0.95 * value:
            out += divisor
    return max(out, divisor)


@lru_cache(maxsize=4096)  # the grid asks it for every (input width, expansion) of every layer
def mid_width(cin: int, expansion: float) -> int:
    """The inner width of an inverted residual: ``cin * expansion`` rounded to a multiple of 8."""
    return divisible_width(cin * expansion)


def se_width(mid: int) -> int:
    """The squeeze-excite bottleneck width of a block with ``mid`` inner channels."""
    return divisible_width(int(mid * SE_RATIO))


@dataclass(frozen=True)
class BlockSpecV2:
    """One v2 primitive: its name, the :data:`fbnet.blocks.CONSTRUCTORS` entry building it (``ir2``
    inverted residual, ``skip``, ``conv_act``, ``ir_pool``, ``fc``) and that constructor's
    arguments (kernel, squeeze-excite, activation)."""

    name: str
    constructor: str
    kernel: int | None = None
    se: bool = False
    act: str | None = None

    def kwargs(self) -> dict:
        """The constructor's arguments besides (cin, cout, stride) and the op's inner width."""
        out: dict = {}
        if self.kernel is not None:
            out["kernel"] = self.kernel
        if self.constructor == "ir2":
            out["se"] = self.se
        if self.act is not None:
            out["act"] = self.act
        return out


def ir_name(kernel: int, se: bool, act: str) -> str:
    """mobile-vision's block name: ``ir_k5`` + ``_sehsig`` with SE + ``_hs`` with h-swish."""
    return f"ir_k{kernel}" + ("_sehsig" if se else "") + ("_hs" if act == "hswish" else "")


# The searchable candidates: kernel {3, 5} x SE {none, hard-sigmoid} x activation {ReLU, h-swish}, and skip.
V2_CANDIDATES: tuple[BlockSpecV2, ...] = tuple(
    BlockSpecV2(ir_name(k, se, act), "ir2", kernel=k, se=se, act=act)
    for k in (3, 5) for se in (False, True) for act in ACTIVATIONS
) + (BlockSpecV2("skip", "skip"),)
V2_FIXED: tuple[BlockSpecV2, ...] = (
    BlockSpecV2("conv_k3_hs", "conv_act", kernel=3, act="hswish"),
    BlockSpecV2("ir_pool_hs", "ir_pool", act="hswish"),
    BlockSpecV2("fc", "fc"),
)
V2_SPECS: dict[str, BlockSpecV2] = {b.name: b for b in V2_CANDIDATES + V2_FIXED}
V2_CANDIDATE_NAMES: tuple[str, ...] = tuple(b.name for b in V2_CANDIDATES)
V2_FIXED_KINDS: tuple[str, ...] = tuple(b.name for b in V2_FIXED)
_HAS_MID = ("ir2", "ir_pool")

# The structured fields of a v2 op, in the order a table lists them.
OP_V2_FIELDS: dict[str, object] = {
    "key": str, "block": str, "kernel": int | None, "se": bool, "act": str | None,
    "cin": int, "h": int, "w": int, "mid": int | None, "cout": int, "stride": int,
}

_SLUG = r"[a-z0-9][a-z0-9_]*"
_KEY = re.compile(rf"^(?P<block>{_SLUG})-(?P<cin>\d+)x(?P<h>\d+)x(?P<w>\d+)(?:-m(?P<mid>\d+))?-(?P<cout>\d+)-s(?P<stride>\d+)$")
_FC_KEY = re.compile(r"^fc-(?P<cin>\d+)-(?P<cout>\d+)$")


class OpV2KeyError(ValueError):
    """A v2 op key (or op) that does not parse or is inconsistent."""


def _out(size: int, stride: int) -> int:
    # padding k//2 with odd kernels: ceil(size / stride)
    return (size - 1) // stride + 1


@dataclass(frozen=True)
class OpV2:
    """A v2 operator: a primitive on one input shape (``h`` x ``w``), with its inner width ``mid``
    (inverted residuals and the ``ir_pool`` head; None otherwise)."""

    block: str
    cin: int
    h: int
    w: int
    cout: int
    stride: int
    mid: int | None = None

    def __post_init__(self):
        spec = V2_SPECS.get(self.block)
        if spec is None:
            raise OpV2KeyError(f"unknown v2 block {self.block!r}; blocks are {', '.join(V2_SPECS)}")
        if (spec.constructor in _HAS_MID) != (self.mid is not None):
            raise OpV2KeyError(f"{self.block}: an inner width is {'required' if spec.constructor in _HAS_MID else 'not allowed'}")
        if min(self.cin, self.h, self.w, self.cout, self.stride, self.mid or 1) < 1:
            raise OpV2KeyError(f"{self.block}: sizes must be positive")

    @property
    def spec(self) -> BlockSpecV2:
        return V2_SPECS[self.block]

    @property
    def kernel(self) -> int | None:
        return self.spec.kernel

    @property
    def se(self) -> bool:
        return self.spec.se

    @property
    def act(self) -> str | None:
        return self.spec.act

    @property
    def key(self) -> str:
        if self.block == "fc":
            return f"fc-{self.cin}-{self.cout}"
        mid = "" if self.mid is None else f"-m{self.mid}"
        return f"{self.block}-{self.cin}x{self.h}x{self.w}{mid}-{self.cout}-s{self.stride}"

    @property
    def is_fixed(self) -> bool:
        return self.block in V2_FIXED_KINDS

    @property
    def is_identity(self) -> bool:
        """A skip that changes no shape: nothing runs, its cost is zero by construction."""
        return self.block == "skip" and self.cin == self.cout and self.stride == 1

    @property
    def has_pw(self) -> bool:
        """Whether an inverted residual runs its first 1x1 (mobile-vision drops it when mid == cin)."""
        return self.spec.constructor == "ir2" and self.mid != self.cin

    @property
    def residual(self) -> bool:
        return self.spec.constructor == "ir2" and self.stride == 1 and self.cin == self.cout

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.block in ("fc", "ir_pool_hs"):
            return (1, 1)
        return (_out(self.h, self.stride), _out(self.w, self.stride))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The NCHW (NC for fc) shape of the op's input at batch 1."""
        return (1, self.cin) if self.block == "fc" else (1, self.cin, self.h, self.w)

    def fields(self) -> dict:
        """Structured fields (:data:`OP_V2_FIELDS`)."""
        return {name: getattr(self, name) for name in OP_V2_FIELDS}

    @property
    def macs(self) -> int:
        """Multiply-adds as mobile-vision counts them (module docstring)."""
        return _count(self)[0]

    @property
    def params(self) -> int:
        """Convolution and linear weights (the released models' parameter count)."""
        return _count(self)[1]

    @property
    def torch_params(self) -> int:
        """Every trainable tensor of the op's module: weights, BN scale and shift, biases."""
        return _count(self)[1] + _count(self)[2]


def _count(op: OpV2) -> tuple[int, int, int]:
    """(multiply-adds, weights, BN + bias parameters) of ``op``."""
    ho, wo = op.out_hw
    hw_in, hw_out = op.h * op.w, ho * wo
    if op.is_identity:
        return 0, 0, 0
    if op.block == "fc":
        return op.cin * op.cout, op.cin * op.cout, op.cout
    if op.block == "skip":
        return op.cin * op.cout * hw_out, op.cin * op.cout, 2 * op.cout
    if op.block == "conv_k3_hs":
        w = op.cin * op.cout * 9
        return w * hw_out, w, 2 * op.cout
    if op.block == "ir_pool_hs":  # 1x1 + BN + h-swish, global pool, 1x1 (no BN, no bias) + h-swish
        macs = op.cin * op.mid * hw_in + op.mid * hw_in + op.mid * op.cout
        return macs, op.cin * op.mid + op.mid * op.cout, 2 * op.mid
    return _count_ir(op, hw_in, hw_out)


def _count_ir(op: OpV2, hw_in: int, hw_out: int) -> tuple[int, int, int]:
    mid, k = op.mid, op.kernel
    macs = weights = extra = 0
    if op.has_pw:
        macs, weights, extra = op.cin * mid * hw_in, op.cin * mid, 2 * mid
    macs += mid * k * k * hw_out
    weights += mid * k * k
    extra += 2 * mid
    if op.se:  # global pool, 1x1 mid->se (+bias), act, 1x1 se->mid (+bias), hard sigmoid, multiply
        s = se_width(mid)
        macs += mid * hw_out + 2 * mid * s
        weights += 2 * mid * s
        extra += s + mid
    macs += mid * op.cout * hw_out
    weights += mid * op.cout
    extra += 2 * op.cout
    return macs, weights, extra


def parse_key_v2(key: str) -> OpV2:
    """Decode a canonical v2 op key into an :class:`OpV2` (the inverse of ``OpV2.key``)."""
    m = _FC_KEY.match(key)
    if m:
        return OpV2("fc", int(m["cin"]), 1, 1, int(m["cout"]), 1)
    m = _KEY.match(key)
    if not m:
        raise OpV2KeyError(f"not a v2 op key: {key!r}")
    if m["block"] not in V2_SPECS or m["block"] == "fc":
        raise OpV2KeyError(f"unknown v2 block {m['block']!r} in op key {key!r}")
    cin, h, w, cout, s = (int(m[g]) for g in ("cin", "h", "w", "cout", "stride"))
    try:
        op = OpV2(m["block"], cin, h, w, cout, s, None if m["mid"] is None else int(m["mid"]))
    except OpV2KeyError as e:
        raise OpV2KeyError(f"op key {key!r}: {e}") from None
    if op.key != key:
        raise OpV2KeyError(f"op key {key!r} is not canonical: write it as {op.key!r}")
    return op


__all__ = [
    "ACTIVATIONS", "OP_V2_FIELDS", "V2_CANDIDATES", "V2_CANDIDATE_NAMES", "V2_FIXED", "V2_FIXED_KINDS", "V2_SPECS",
    "WIDTH_DIVISOR", "BlockSpecV2", "OpV2", "OpV2KeyError", "divisible_width", "ir_name", "mid_width",
    "parse_key_v2", "se_width",
]
