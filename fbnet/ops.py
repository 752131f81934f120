"""Operators: the declared primitives of the search space and their canonical keys.

Pure Python (no torch). ``k3_e6-16x112x112-24-s2`` is block-CinxHxW-Cout-sStride; every key
parses back to the same :class:`Op` (:func:`parse_key`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


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


# The structured fields of an op, in the order the HTTP API lists them, with their types: declared
# here once. Op.fields() returns them and fbnet.wire.OpFields (every table, space and compare entry)
# is built from them; the fields typed ``| None`` are optional (blocks without a kernel, ...).
OP_FIELDS: dict[str, object] = {
    "key": str,
    "block": str,
    "kernel": int | None,
    "expansion": int | None,
    "groups": int | None,
    "cin": int,
    "h": int,
    "w": int,
    "cout": int,
    "stride": int,
}


class OpKeyError(ValueError):
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
        """Structured fields (:data:`OP_FIELDS`), the same names the HTTP table uses."""
        return {name: getattr(self, name) for name in OP_FIELDS}

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
        raise OpKeyError(f"not an op key: {key!r}")
    block = m["block"]
    cin, h, w, cout, s = (int(m[g]) for g in ("cin", "h", "w", "cout", "stride"))
    if block not in PRIMITIVE_SPECS or block in ("pool", "fc"):
        raise OpKeyError(f"unknown block {block!r} in op key {key!r}")
    return block_op(block, cin, h, w, cout, s)


def block_op(block: str, cin: int, h: int, w: int, cout: int, stride: int) -> Op:
    """The op of primitive ``block`` on an input of ``cin`` x ``h`` x ``w`` (its spec's fields)."""
    spec = PRIMITIVE_SPECS[block]
    return Op(block, cin, h, w, cout, stride, spec.kernel, spec.expansion, spec.groups)
