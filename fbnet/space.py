"""FBNet search spaces as data: macro-architecture, candidate blocks and canonical op keys.

Pure Python on purpose (no torch): the profiler service reads op lists from here too.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property


@dataclass(frozen=True)
class BlockSpec:
    """One primitive of the space, declared once: its name, which constructor of
    :data:`fbnet.blocks.CONSTRUCTORS` builds it (``ir`` inverted residual, ``skip``, ``conv``,
    ``pool``, ``fc``) and that constructor's arguments. The torch side derives its registry
    (``fbnet.blocks.PRIMITIVES``) from these entries, so adding a candidate is one line here."""

    name: str
    constructor: str
    kernel: int | None = None
    expansion: int | None = None
    groups: int | None = None

    def kwargs(self) -> dict:
        """The constructor's arguments besides (cin, cout, stride)."""
        return {k: v for k, v in (("kernel", self.kernel), ("expansion", self.expansion), ("groups", self.groups))
                if v is not None}


# The searchable candidates, paper Table 2. Index order is HW-NAS-Bench's (PRIMITIVES):
# 22-int architectures use it.
CANDIDATES: tuple[BlockSpec, ...] = (
    BlockSpec("k3_e1", "ir", kernel=3, expansion=1, groups=1),
    BlockSpec("k3_e1_g2", "ir", kernel=3, expansion=1, groups=2),
    BlockSpec("k3_e3", "ir", kernel=3, expansion=3, groups=1),
    BlockSpec("k3_e6", "ir", kernel=3, expansion=6, groups=1),
    BlockSpec("k5_e1", "ir", kernel=5, expansion=1, groups=1),
    BlockSpec("k5_e1_g2", "ir", kernel=5, expansion=1, groups=2),
    BlockSpec("k5_e3", "ir", kernel=5, expansion=3, groups=1),
    BlockSpec("k5_e6", "ir", kernel=5, expansion=6, groups=1),
    BlockSpec("skip", "skip"),
)
# The fixed ops around the searchable layers are ordinary primitives too.
FIXED: tuple[BlockSpec, ...] = (
    BlockSpec("stem", "conv", kernel=3, groups=1),
    BlockSpec("head", "conv", kernel=1, groups=1),
    BlockSpec("pool", "pool"),
    BlockSpec("fc", "fc"),
)
PRIMITIVE_SPECS: dict[str, BlockSpec] = {b.name: b for b in CANDIDATES + FIXED}
CANDIDATE_NAMES: tuple[str, ...] = tuple(b.name for b in CANDIDATES)
CANDIDATE_INDEX: dict[str, int] = {n: i for i, n in enumerate(CANDIDATE_NAMES)}
BY_NAME: dict[str, BlockSpec] = {b.name: b for b in CANDIDATES}
FIXED_KINDS: tuple[str, ...] = tuple(b.name for b in FIXED)

# The macro-architecture (paper Table 1): stages of (output channels, searchable layers); the
# first layer of a stage carries the stage's stride, which each space sets. The number of
# searchable layers follows from this table.
STAGES: tuple[tuple[int, int], ...] = ((16, 1), (24, 4), (32, 4), (64, 4), (112, 4), (184, 4), (352, 1))
NUM_LAYERS = sum(depth for _, depth in STAGES)

_SLUG = r"[a-z0-9][a-z0-9_]*"
_BLOCK_KEY = re.compile(rf"^(?P<block>{_SLUG})-(?P<cin>\d+)x(?P<h>\d+)x(?P<w>\d+)-(?P<cout>\d+)-s(?P<stride>\d+)$")
_POOL_KEY = re.compile(r"^pool-(?P<cin>\d+)x(?P<h>\d+)x(?P<w>\d+)$")
_FC_KEY = re.compile(r"^fc-(?P<cin>\d+)-(?P<cout>\d+)$")


class KeyError_(ValueError):
    """An op key that does not parse."""


@dataclass(frozen=True)
class Op:
    """An operator: a block applied to one input shape. ``h``/``w`` are the input resolution."""

    block: str
    cin: int
    h: int
    w: int
    cout: int
    stride: int
    kernel: int | None = None
    expansion: int | None = None
    groups: int | None = None

    @property
    def key(self) -> str:
        if self.block == "pool":
            return f"pool-{self.cin}x{self.h}x{self.w}"
        if self.block == "fc":
            return f"fc-{self.cin}-{self.cout}"
        return f"{self.block}-{self.cin}x{self.h}x{self.w}-{self.cout}-s{self.stride}"

    @property
    def is_fixed(self) -> bool:
        return self.block in FIXED_KINDS

    @property
    def is_identity(self) -> bool:
        """A skip that changes no shape: no operator runs, its cost is zero by construction."""
        return self.block == "skip" and self.cin == self.cout and self.stride == 1

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.block == "pool" or self.block == "fc":
            return (1, 1)
        return (_out(self.h, self.stride), _out(self.w, self.stride))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The NCHW (or NC for fc) shape of the op's input at batch 1."""
        if self.block == "fc":
            return (1, self.cin)
        return (1, self.cin, self.h, self.w)

    def fields(self) -> dict:
        """Structured fields, the same names the HTTP table uses."""
        return {
            "key": self.key,
            "block": self.block,
            "kernel": self.kernel,
            "expansion": self.expansion,
            "groups": self.groups,
            "cin": self.cin,
            "h": self.h,
            "w": self.w,
            "cout": self.cout,
            "stride": self.stride,
        }

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the convs and fc (BN, ReLU, add, pool excluded)."""
        ho, wo = self.out_hw
        if self.block == "stem":
            return self.cin * self.cout * 9 * ho * wo
        if self.block == "head":
            return self.cin * self.cout * self.h * self.w
        if self.block == "pool" or self.is_identity:
            return 0
        if self.block == "fc":
            return self.cin * self.cout
        if self.block == "skip":
            return self.cin * self.cout * ho * wo
        mid = self.cin * self.expansion
        g = self.groups
        return (
            self.cin * mid // g * self.h * self.w
            + mid * self.kernel * self.kernel * ho * wo
            + mid * self.cout // g * ho * wo
        )

    @property
    def params(self) -> int:
        """Trainable parameters: conv weights, BN gamma/beta, fc weight and bias."""
        if self.block == "stem":
            return self.cin * self.cout * 9 + 2 * self.cout
        if self.block == "head" or (self.block == "skip" and not self.is_identity):
            return self.cin * self.cout + 2 * self.cout
        if self.block == "pool" or self.is_identity:
            return 0
        if self.block == "fc":
            return self.cin * self.cout + self.cout
        mid = self.cin * self.expansion
        g = self.groups
        return (
            self.cin * mid // g + 2 * mid
            + mid * self.kernel * self.kernel + 2 * mid
            + mid * self.cout // g + 2 * self.cout
        )


def _out(size: int, stride: int, kernel: int = 3) -> int:
    # padding k//2 with odd kernels: ceil(size / stride), the same for 1x1, 3x3, 5x5.
    return (size - 1) // stride + 1


def parse_key(key: str) -> Op:
    """Decode a canonical op key into an :class:`Op` (the inverse of ``Op.key``)."""
    m = _POOL_KEY.match(key)
    if m:
        c, h, w = int(m["cin"]), int(m["h"]), int(m["w"])
        return Op("pool", c, h, w, c, 1)
    m = _FC_KEY.match(key)
    if m:
        return Op("fc", int(m["cin"]), 1, 1, int(m["cout"]), 1)
    m = _BLOCK_KEY.match(key)
    if not m:
        raise KeyError_(f"not an op key: {key!r}")
    block = m["block"]
    cin, h, w, cout, s = (int(m[g]) for g in ("cin", "h", "w", "cout", "stride"))
    if block not in PRIMITIVE_SPECS or block in ("pool", "fc"):
        raise KeyError_(f"unknown block {block!r} in op key {key!r}")
    return block_op(block, cin, h, w, cout, s)


def block_op(block: str, cin: int, h: int, w: int, cout: int, stride: int) -> Op:
    """The op of primitive ``block`` on an input of ``cin`` x ``h`` x ``w`` (its spec's fields)."""
    spec = PRIMITIVE_SPECS[block]
    return Op(block, cin, h, w, cout, stride, spec.kernel, spec.expansion, spec.groups)


@dataclass(frozen=True)
class LayerShape:
    """One searchable layer: its input resolution, channels and stride."""

    index: int
    stage: int
    h: int
    cin: int
    cout: int
    stride: int


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of ``divisor`` (MobileNet rule: never below 90%)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new < 0.9 * v:
        new += divisor
    return new


@dataclass(frozen=True)
class Space:
    """A FBNet macro-architecture: fixed stem/head/pool/fc around 22 searchable layers."""

    name: str
    resolution: int
    stem_stride: int
    stage_strides: tuple[int, ...]
    head_channels: int
    num_classes: int
    width_mult: float = 1.0
    in_channels: int = 3
    stem_channels: int = 16
    stage_channels: tuple[int, ...] = tuple(c for c, _ in STAGES)
    stage_depths: tuple[int, ...] = tuple(n for _, n in STAGES)
    description: str = field(default="", compare=False)

    # -- shapes ---------------------------------------------------------------------------
    def _w(self, c: int) -> int:
        return c if self.width_mult == 1.0 else make_divisible(c * self.width_mult)

    @cached_property
    def layers(self) -> tuple[LayerShape, ...]:
        h = _out(self.resolution, self.stem_stride)
        cin = self._w(self.stem_channels)
        out: list[LayerShape] = []
        for stage, (c, n, s) in enumerate(zip(self.stage_channels, self.stage_depths, self.stage_strides, strict=True)):
            cout = self._w(c)
            for i in range(n):
                stride = s if i == 0 else 1
                out.append(LayerShape(len(out), stage, h, cin, cout, stride))
                h, cin = _out(h, stride), cout
        assert len(out) == NUM_LAYERS
        return tuple(out)

    @cached_property
    def stem(self) -> Op:
        r = self.resolution
        return block_op("stem", self.in_channels, r, r, self._w(self.stem_channels), self.stem_stride)

    @cached_property
    def final_hw(self) -> int:
        last = self.layers[-1]
        return _out(last.h, last.stride)

    @cached_property
    def head(self) -> Op:
        h = self.final_hw
        return block_op("head", self.layers[-1].cout, h, h, self.head_channels, 1)

    @cached_property
    def pool(self) -> Op:
        h = self.final_hw
        return Op("pool", self.head_channels, h, h, self.head_channels, 1)

    @cached_property
    def fc(self) -> Op:
        return Op("fc", self.head_channels, 1, 1, self.num_classes, 1)

    @property
    def fixed_ops(self) -> tuple[Op, ...]:
        return (self.stem, self.head, self.pool, self.fc)

    def layer_op(self, layer: int, block: str | int) -> Op:
        """The op that candidate ``block`` (name or index) is at searchable layer ``layer``."""
        name = CANDIDATE_NAMES[block] if isinstance(block, int) else block
        ls = self.layers[layer]
        return block_op(name, ls.cin, ls.h, ls.h, ls.cout, ls.stride)

    # -- op list --------------------------------------------------------------------------
    @cached_property
    def ops(self) -> tuple[Op, ...]:
        """Unique ops: every searchable (layer shape x candidate), then stem, head, pool, fc."""
        seen: dict[str, Op] = {}
        for ls in self.layers:
            for name in CANDIDATE_NAMES:
                op = self.layer_op(ls.index, name)
                seen.setdefault(op.key, op)
        for op in self.fixed_ops:
            seen.setdefault(op.key, op)
        return tuple(seen.values())

    @cached_property
    def op_layers(self) -> dict[str, tuple[int, ...]]:
        """Op key -> searchable layer indices using it (empty for fixed ops)."""
        out: dict[str, list[int]] = {op.key: [] for op in self.ops}
        for ls in self.layers:
            for name in CANDIDATE_NAMES:
                out[self.layer_op(ls.index, name).key].append(ls.index)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def op_by_key(self) -> dict[str, Op]:
        return {op.key: op for op in self.ops}

    @cached_property
    def unique_layer_shapes(self) -> tuple[tuple[int, int, int, int], ...]:
        return tuple(dict.fromkeys((ls.h, ls.cin, ls.cout, ls.stride) for ls in self.layers))

    def op_list(self) -> list[dict]:
        """The op list as plain dicts (what ``fbnet-search ops`` and ``GET /spaces`` serve)."""
        return [{**op.fields(), "layers": list(self.op_layers[op.key])} for op in self.ops]

    @cached_property
    def version(self) -> str:
        """Content hash of the op list: changes whenever an op or its layer use changes."""
        blob = json.dumps(self.op_list(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "space": self.name,
            "version": self.version,
            "resolution": self.resolution,
            "width_mult": self.width_mult,
            "num_classes": self.num_classes,
            "head_channels": self.head_channels,
            "ops": self.op_list(),
        }

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The NCHW shape of a whole model's input at batch 1."""
        return (1, self.in_channels, self.resolution, self.resolution)

    # -- architectures --------------------------------------------------------------------
    def arch_ops(self, arch: Arch, *, with_identity: bool = False) -> list[Op]:
        """Ops of ``arch`` in execution order; identity skips are left out (nothing runs) unless
        ``with_identity`` (a table prices every layer, identity skips included: see :mod:`fbnet.lut`)."""
        ops = [self.stem]
        for ls, name in zip(self.layers, arch.blocks, strict=True):
            op = self.layer_op(ls.index, name)
            if with_identity or not op.is_identity:
                ops.append(op)
        ops += [self.head, self.pool, self.fc]
        return ops

    def arch_params(self, arch: Arch) -> int:
        return sum(op.params for op in self.arch_ops(arch))

    def arch_mflops(self, arch: Arch) -> float:
        return sum(op.macs for op in self.arch_ops(arch)) / 1e6


# --------------------------------------------------------------------------------------
# Architectures as text.


class ArchError(ValueError):
    """An architecture string that does not parse."""


# FBNet-A/B/C (data/fbnet_archs.json and notes/FBNET.md section 7), one row per stage of STAGES.
PREDEFINED_NAMES: dict[str, tuple[tuple[str, ...], ...]] = {
    "FBNet-A": (
        ("skip",),
        ("k3_e3", "k3_e1", "skip", "skip"),
        ("k5_e6", "k3_e3", "k5_e1", "k3_e3"),
        ("k5_e6", "k5_e3", "k5_e1_g2", "k5_e6"),
        ("k3_e6", "k5_e1_g2", "k5_e3", "k3_e1_g2"),
        ("k5_e6", "k5_e6", "k5_e3", "k5_e6"),
        ("k5_e6",),
    ),
    "FBNet-B": (
        ("k3_e1",),
        ("k3_e6", "k5_e1", "k3_e1", "k3_e1"),
        ("k5_e6", "k5_e3", "k3_e6", "k5_e6"),
        ("k5_e6", "k5_e1", "skip", "k5_e3"),
        ("k5_e6", "k3_e1", "k5_e1", "k5_e3"),
        ("k5_e6", "k5_e1", "k5_e6", "k5_e6"),
        ("k3_e6",),
    ),
    "FBNet-C": (
        ("k3_e1",),
        ("k3_e6", "skip", "k3_e1", "k3_e1"),
        ("k5_e6", "k5_e3", "k5_e6", "k3_e6"),
        ("k5_e6", "k5_e3", "k5_e6", "k5_e6"),
        ("k5_e6", "k5_e6", "k5_e6", "k5_e3"),
        ("k5_e6", "k5_e6", "k5_e6", "k5_e6"),
        ("k3_e6",),
    ),
}
# The same as HW-NAS-Bench indices (what 22-int architecture strings use).
PREDEFINED: dict[str, tuple[int, ...]] = {
    name: tuple(CANDIDATE_INDEX[b] for stage in rows for b in stage) for name, rows in PREDEFINED_NAMES.items()
}


@dataclass(frozen=True)
class Arch:
    """22 candidate block names, one per searchable layer."""

    blocks: tuple[str, ...]

    def __post_init__(self):
        if len(self.blocks) != NUM_LAYERS:
            raise ArchError(f"an architecture has {NUM_LAYERS} layers, got {len(self.blocks)}")
        bad = [b for b in self.blocks if b not in CANDIDATE_INDEX]
        if bad:
            raise ArchError(f"unknown block(s) {bad}; candidates are {', '.join(CANDIDATE_NAMES)}")

    @classmethod
    def from_indices(cls, idx) -> Arch:
        idx = list(idx)
        bad = [i for i in idx if not (isinstance(i, int) and 0 <= i < len(CANDIDATES))]
        if bad:
            raise ArchError(f"op indices must be 0..{len(CANDIDATES) - 1}, got {bad}")
        return cls(tuple(CANDIDATE_NAMES[i] for i in idx))

    @classmethod
    def parse(cls, text: str) -> Arch:
        """Parse a predefined name, 22 comma-separated block names or 22 comma-separated indices."""
        text = text.strip()
        for name, idx in PREDEFINED.items():
            if text.lower() == name.lower():
                return cls.from_indices(idx)
        parts = [p.strip() for p in text.split(",")]
        if len(parts) == 1:
            raise ArchError(
                f"{text!r} is neither a predefined architecture ({', '.join(PREDEFINED)}) "
                f"nor a list of {NUM_LAYERS} comma-separated block names or indices"
            )
        if all(p.isdigit() for p in parts):
            return cls.from_indices(int(p) for p in parts)
        return cls(tuple(parts))

    @property
    def indices(self) -> list[int]:
        return [CANDIDATE_INDEX[b] for b in self.blocks]

    def to_text(self, style: str = "names") -> str:
        if style == "indices":
            return ",".join(str(i) for i in self.indices)
        return ",".join(self.blocks)

    def __str__(self) -> str:
        return self.to_text()


# --------------------------------------------------------------------------------------
# The spaces.

_BASE = {
    "fbnet-224": dict(
        resolution=224, stem_stride=2, stage_strides=(1, 2, 2, 2, 1, 2, 1), head_channels=1984, num_classes=1000,
        description="ImageNet, paper Table 1 (head 1984 as the released FBNet-B/C)",
    ),
    "fbnet-cifar": dict(
        resolution=32, stem_stride=1, stage_strides=(1, 1, 2, 2, 1, 2, 1), head_channels=1504, num_classes=10,
        description="32x32 input, the HW-NAS-Bench CIFAR layout, 10 classes",
    ),
}
_DERIVED = re.compile(r"^fbnet-(?P<res>\d+)(?:-w(?P<mult>\d+(?:\.\d+)?))?$")


class SpaceError(ValueError):
    """An unknown or malformed space name."""


def get_space(name: str) -> Space:
    """A space by name: ``fbnet-224``, ``fbnet-cifar``, or ``fbnet-<res>[-w<mult>]`` derived
    from ``fbnet-224`` (e.g. ``fbnet-96-w0.35``, the paper's 96-pixel 0.35-width model)."""
    if name in _BASE:
        return Space(name=name, **_BASE[name])
    m = _DERIVED.match(name)
    if not m:
        raise SpaceError(f"unknown space {name!r}: use {', '.join(_BASE)} or fbnet-<resolution>[-w<width>]")
    res = int(m["res"])
    mult = float(m["mult"]) if m["mult"] else 1.0
    if not (32 <= res <= 1024) or not (0.1 <= mult <= 4.0) or not math.isfinite(mult):
        raise SpaceError(f"space {name!r}: resolution must be 32..1024 and width 0.1..4.0")
    base = dict(_BASE["fbnet-224"])
    base.update(resolution=res, width_mult=mult, description=f"fbnet-224 at {res} px, width x{mult}")
    canonical = f"fbnet-{res}" + (f"-w{mult:g}" if mult != 1.0 else "")
    if canonical != name:
        raise SpaceError(f"space {name!r}: write it as {canonical!r}")
    return Space(name=name, **base)


def list_spaces() -> list[str]:
    """The named spaces (derived ones are made on demand by :func:`get_space`)."""
    return list(_BASE)


__all__ = [
    "Arch", "ArchError", "BlockSpec", "CANDIDATES", "CANDIDATE_NAMES", "CANDIDATE_INDEX", "FIXED", "FIXED_KINDS",
    "KeyError_", "LayerShape", "NUM_LAYERS", "Op", "PREDEFINED", "PREDEFINED_NAMES", "PRIMITIVE_SPECS", "STAGES",
    "Space", "SpaceError", "asdict",
    "block_op", "get_space", "list_spaces", "parse_key",
]
