"""FBNet search spaces as data: the macro-architecture around the declared primitives.

Pure Python on purpose (no torch): the profiler service reads op lists from here too. The
primitives and op keys are declared in :mod:`fbnet.ops`, architectures as text in
:mod:`fbnet.arch`; both are re-exported here, so ``from fbnet.space import ...`` is the one
import a client needs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property

from fbnet.arch import PREDEFINED, PREDEFINED_NAMES, Arch, ArchError
from fbnet.ops import (
    BY_NAME,
    CANDIDATE_INDEX,
    CANDIDATE_NAMES,
    CANDIDATES,
    FIXED,
    FIXED_KINDS,
    NUM_LAYERS,
    PRIMITIVE_SPECS,
    STAGES,
    BlockSpec,
    Op,
    OpKeyError,
    _out,
    block_op,
    parse_key,
)


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
# ASCII digits only, a few of them (int() of thousands of digits raises; \d takes other scripts' digits)
_DERIVED = re.compile(r"fbnet-(?P<res>[0-9]{1,5})(?:-w(?P<mult>[0-9]{1,3}(?:\.[0-9]{1,6})?))?", re.ASCII)
MAX_NAME = 64  # characters of a space name


class SpaceError(ValueError):
    """An unknown or malformed space name."""


def get_space(name: str) -> Space:
    """A space by name: ``fbnet-224``, ``fbnet-cifar``, or ``fbnet-<res>[-w<mult>]`` derived
    from ``fbnet-224`` (e.g. ``fbnet-96-w0.35``, the paper's 96-pixel 0.35-width model)."""
    if name in _BASE:
        return Space(name=name, **_BASE[name])
    if len(name) > MAX_NAME:
        raise SpaceError(f"unknown space {name[:24]!r}... ({len(name)} characters; a space name has at most {MAX_NAME})")
    m = _DERIVED.fullmatch(name)
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
    "OpKeyError", "LayerShape", "NUM_LAYERS", "Op", "PREDEFINED", "PREDEFINED_NAMES", "PRIMITIVE_SPECS", "STAGES",
    "BY_NAME", "Space", "SpaceError", "asdict",
    "block_op", "get_space", "list_spaces", "parse_key",
]
