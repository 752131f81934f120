"""FBNetV2 search spaces as data: the macro of the released FBNetV2 F/L models with per-layer
width, expansion, block and input-resolution options (pure Python, no torch).

A space is the stem (``conv_k3_hs``, stride 2 on ImageNet), five stages of searchable layers (the
first layer of a stage carries its stride), the ``ir_pool_hs`` head and the classifier. Each layer
chooses one of :data:`fbnet.ops_v2.V2_CANDIDATES` (kernel 3/5 x hard-sigmoid SE or not x ReLU or
h-swish, or ``skip``), an output width from its (min, max, step) range and, for an inverted
residual, an expansion; the network chooses its input resolution, its stem width and its head
width. The paper's macro table was not readable (``FBNETV2.md`` §3.1): the ranges here are ours,
chosen so that the six released models (:data:`fbnet.arch_v2.REFERENCES`) are architectures of
``fbnetv2-224`` (their expansions are the released constants, off the expansion grid).

The library functions a command line calls: :func:`get_v2_space`, :func:`list_v2_spaces`,
:func:`lookup_space` (v1 or v2 by name), :func:`arch_summary` (``fbnet-search arch NAME --space
fbnetv2-224``), :func:`enumerate_ops`, :func:`op_list` and :func:`grid_summary` (``fbnet-search ops
--space fbnetv2-cifar``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from functools import cached_property

from fbnet.arch_v2 import REFERENCE_TABLE, REFERENCES, ArchV2, ArchV2Error, LayerChoice
from fbnet.ops_v2 import V2_CANDIDATE_NAMES, OpV2, mid_width
from fbnet.space import Space, get_space


@dataclass(frozen=True)
class WidthRange:
    """Width options ``lo, lo + step, ..., hi`` (the paper's (min, max, step) notation)."""

    lo: int
    hi: int
    step: int

    def __post_init__(self):
        if not (0 < self.lo <= self.hi and self.step > 0 and (self.hi - self.lo) % self.step == 0):
            raise ValueError(f"bad width range {self.lo, self.hi, self.step}")

    @property
    def options(self) -> tuple[int, ...]:
        return tuple(range(self.lo, self.hi + 1, self.step))


@dataclass(frozen=True)
class StageV2:
    """A stage: its stride (on its first layer) and one width range per layer."""

    stride: int
    widths: tuple[WidthRange, ...]

    @property
    def depth(self) -> int:
        return len(self.widths)


@dataclass(frozen=True)
class LayerV2:
    """One searchable layer: its position, stride and output-width options."""

    index: int
    stage: int
    stride: int
    widths: tuple[int, ...]


@dataclass(frozen=True)
class SpaceV2:
    """An FBNetV2 space (module docstring)."""

    name: str
    resolutions: tuple[int, ...]
    stem_stride: int
    stem_widths: WidthRange
    stages: tuple[StageV2, ...]
    head_widths: tuple[int, ...]
    expansions: tuple[float, ...]
    num_classes: int
    head_expansion: float = 6.0
    in_channels: int = 3
    blocks: tuple[str, ...] = V2_CANDIDATE_NAMES
    description: str = field(default="", compare=False)

    # -- shapes -------------------------------------------------------------------------------
    @cached_property
    def layers(self) -> tuple[LayerV2, ...]:
        out: list[LayerV2] = []
        for s, stage in enumerate(self.stages):
            for i, wr in enumerate(stage.widths):
                out.append(LayerV2(len(out), s, stage.stride if i == 0 else 1, wr.options))
        return tuple(out)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def input_widths(self, layer: int) -> tuple[int, ...]:
        """The input-width options of ``layer``: the previous layer's (the stem's for layer 0)."""
        return self.stem_widths.options if layer == 0 else self.layers[layer - 1].widths

    def layer_hw(self, resolution: int) -> tuple[int, ...]:
        """Input size of every layer at ``resolution``, then the head's input size."""
        cache = self.__dict__.setdefault("_hw", {})
        if resolution not in cache:
            h = _out(resolution, self.stem_stride)
            out = []
            for ls in self.layers:
                out.append(h)
                h = _out(h, ls.stride)
            cache[resolution] = (*out, h)
        return cache[resolution]

    # -- ops ----------------------------------------------------------------------------------
    def layer_op(self, layer: int, resolution: int, cin: int, choice: LayerChoice) -> OpV2:
        """The op of ``choice`` at ``layer`` with input width ``cin`` at ``resolution``."""
        return OpV2(*self._layer_args(layer, resolution, cin, choice))

    def _layer_args(self, layer: int, resolution: int, cin: int, choice: LayerChoice) -> tuple:
        """:meth:`layer_op`'s fields (the grid dedupes these before it builds ops)."""
        h = self.layer_hw(resolution)[layer]
        stride = self.layers[layer].stride
        if choice.block == "skip":
            return ("skip", cin, h, h, choice.width, stride, None)
        return (choice.block, cin, h, h, choice.width, stride, mid_width(cin, choice.expansion))

    def stem_op(self, resolution: int, width: int) -> OpV2:
        return OpV2(*self._stem_args(resolution, width))

    def _stem_args(self, resolution: int, width: int) -> tuple:
        return ("conv_k3_hs", self.in_channels, resolution, resolution, width, self.stem_stride, None)

    def head_op(self, resolution: int, cin: int, width: int) -> OpV2:
        return OpV2(*self._head_args(resolution, cin, width))

    def _head_args(self, resolution: int, cin: int, width: int) -> tuple:
        h = self.layer_hw(resolution)[-1]
        return ("ir_pool_hs", cin, h, h, width, 1, mid_width(cin, self.head_expansion))

    def fc_op(self, head_width: int) -> OpV2:
        return OpV2(*self._fc_args(head_width))

    def _fc_args(self, head_width: int) -> tuple:
        return ("fc", head_width, 1, 1, self.num_classes, 1, None)

    def arch_ops(self, arch: ArchV2, *, with_identity: bool = False) -> list[OpV2]:
        """Ops of ``arch`` in execution order; identity skips only with ``with_identity``."""
        self.check_arch(arch)
        ops = [self.stem_op(arch.resolution, arch.stem)]
        cin = arch.stem
        for i, choice in enumerate(arch.layers):
            op = self.layer_op(i, arch.resolution, cin, choice)
            if with_identity or not op.is_identity:
                ops.append(op)
            cin = choice.width
        return ops + [self.head_op(arch.resolution, cin, arch.head), self.fc_op(arch.head)]

    # -- architectures ------------------------------------------------------------------------
    def arch_problems(self, arch: ArchV2) -> list[str]:
        """What keeps ``arch`` out of this space's structure (empty: it fits). Expansions are not
        checked here (see :meth:`off_grid`): any positive expansion builds."""
        if len(arch.layers) != self.num_layers:
            return [f"{self.name} has {self.num_layers} layers, the architecture {len(arch.layers)}"]
        bad = []
        if arch.resolution not in self.resolutions:
            bad.append(f"resolution {arch.resolution} not in {list(self.resolutions)}")
        if arch.stem not in self.stem_widths.options:
            bad.append(f"stem width {arch.stem} not in {list(self.stem_widths.options)}")
        if arch.head not in self.head_widths:
            bad.append(f"head width {arch.head} not in {list(self.head_widths)}")
        for ls, choice in zip(self.layers, arch.layers, strict=True):
            if choice.block not in self.blocks:
                bad.append(f"layer {ls.index}: block {choice.block} not a candidate")
            if choice.width not in ls.widths:
                bad.append(f"layer {ls.index}: width {choice.width} not in {list(ls.widths)}")
        return bad

    def check_arch(self, arch: ArchV2) -> None:
        """:class:`ArchV2Error` naming the first problems when ``arch`` does not fit the space."""
        bad = self.arch_problems(arch)
        if bad:
            more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
            raise ArchV2Error(f"not an architecture of {self.name}: {'; '.join(bad[:3])}{more}")

    def off_grid(self, arch: ArchV2) -> list[int]:
        """Layers whose expansion is not one of the space's expansion options."""
        return [i for i, x in enumerate(arch.layers) if x.expansion is not None and x.expansion not in self.expansions]

    def arch_mflops(self, arch: ArchV2) -> float:
        return sum(op.macs for op in self.arch_ops(arch)) / 1e6

    def arch_params(self, arch: ArchV2) -> int:
        return sum(op.params for op in self.arch_ops(arch))

    def random_arch(self, rng) -> ArchV2:
        """A uniformly drawn on-grid architecture (``rng``: a :class:`random.Random`)."""
        layers = []
        for ls in self.layers:
            block = rng.choice(self.blocks)
            e = None if block == "skip" else rng.choice(self.expansions)
            layers.append(LayerChoice(block, rng.choice(ls.widths), e))
        return ArchV2(rng.choice(self.resolutions), rng.choice(self.stem_widths.options), tuple(layers),
                      rng.choice(self.head_widths))

    # -- the op grid --------------------------------------------------------------------------
    @cached_property
    def grid(self) -> dict[str, OpV2]:
        """Every op a search over this space can price, by key (see :func:`enumerate_ops`)."""
        ops = (OpV2(*args) for args in dict.fromkeys(_grid_args(self)))  # an op's fields are its key
        return {op.key: op for op in ops}

    @cached_property
    def version(self) -> str:
        """Content hash of the declaration and the grid's keys."""
        blob = json.dumps([repr(self), sorted(self.grid)], separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def input_shape(self, resolution: int) -> tuple[int, int, int, int]:
        return (1, self.in_channels, resolution, resolution)


def _out(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


def _layer_choices(space: SpaceV2, layer: int):
    """Every (block, output width, expansion) choice of ``layer``."""
    for width in space.layers[layer].widths:
        for block in space.blocks:
            for e in ((None,) if block == "skip" else space.expansions):
                yield LayerChoice(block, width, e)


def _grid_args(space: SpaceV2):
    """Ops' fields in a fixed order: per resolution the stem, the layers in order (input width, output
    width, block, expansion), the head; then the classifiers. Duplicates are dropped later."""
    for r in space.resolutions:
        for w in space.stem_widths.options:
            yield space._stem_args(r, w)
        for i in range(space.num_layers):
            choices = list(_layer_choices(space, i))
            for cin in space.input_widths(i):
                for choice in choices:
                    yield space._layer_args(i, r, cin, choice)
        for cin in space.layers[-1].widths:
            for w in space.head_widths:
                yield space._head_args(r, cin, w)
    for w in space.head_widths:
        yield space._fc_args(w)


def _grid_ops(space: SpaceV2):
    """:func:`_grid_args` as ops (with their duplicates)."""
    return (OpV2(*args) for args in _grid_args(space))


def enumerate_ops(space: SpaceV2 | str) -> list[OpV2]:
    """Every op configuration a search over ``space`` needs: each (layer, input-width option,
    output width, expansion, block, resolution) combination, the stems, heads and classifiers,
    deduplicated by key, in a deterministic order."""
    sp = get_v2_space(space) if isinstance(space, str) else space
    return list(sp.grid.values())


def op_list(space: SpaceV2 | str) -> list[dict]:
    """The grid as plain dicts (:data:`fbnet.ops_v2.OP_V2_FIELDS` plus MACs and weights), the JSON
    form of ``fbnet-search ops --space fbnetv2-cifar``."""
    return [{**op.fields(), "macs": op.macs, "params": op.params} for op in enumerate_ops(space)]


def grid_summary(space: SpaceV2 | str) -> dict:
    """The size of ``space``'s op grid (what ``fbnet-search ops`` says): unique ops, identity skips
    among them, by block family, unique ops per resolution, and layer-position combinations before
    deduplication."""
    sp = get_v2_space(space) if isinstance(space, str) else space
    ops = enumerate_ops(sp)
    by_block: dict[str, int] = {}
    for op in ops:
        fam = "ir" if op.block.startswith("ir_k") else op.block
        by_block[fam] = by_block.get(fam, 0) + 1
    per_layer = [len(sp.input_widths(i)) * len(list(_layer_choices(sp, i))) for i in range(sp.num_layers)]
    by_res = {r: len({op.key for op in _grid_ops(replace(sp, resolutions=(r,)))}) for r in sp.resolutions}
    return {
        "space": sp.name, "version": sp.version, "ops": len(ops), "identity": sum(op.is_identity for op in ops),
        "by_block": by_block, "by_resolution": by_res, "by_position": sum(per_layer) * len(sp.resolutions),
        "layers": sp.num_layers, "resolutions": list(sp.resolutions), "expansions": list(sp.expansions),
    }


def arch_summary(space: SpaceV2 | str, arch: ArchV2 | str) -> dict:
    """What ``fbnet-search arch NAME --space S --format json`` prints: the architecture's text,
    MFLOPs (multiply-adds, as the paper counts), parameters, op keys and, for a reference, the
    released figures and how far off ours are."""
    sp = get_v2_space(space) if isinstance(space, str) else space
    name = arch if isinstance(arch, str) and arch.strip().lower() in {n.lower() for n in REFERENCES} else None
    a = ArchV2.parse(arch) if isinstance(arch, str) else arch
    ops = sp.arch_ops(a)
    out = {
        "space": sp.name, "arch": a.to_text(), "resolution": a.resolution,
        "mflops": sum(op.macs for op in ops) / 1e6, "params": sum(op.params for op in ops),
        "torch_params": sum(op.torch_params for op in ops),
        "layers": len(a.layers), "identity_layers": sum(op.is_identity for op in sp.arch_ops(a, with_identity=True)),
        "off_grid_expansions": sp.off_grid(a), "ops": [op.key for op in ops],
    }
    if name is not None:
        canonical = next(n for n in REFERENCE_TABLE if n.lower() == name.strip().lower())
        _, mflops, mparams = REFERENCE_TABLE[canonical]
        out.update(name=canonical, released_mflops=mflops, released_params=round(mparams * 1e6),
                   mflops_off_pct=100 * (out["mflops"] / mflops - 1),
                   params_off_pct=100 * (out["params"] / (mparams * 1e6) - 1))
    return out


# ---------------------------------------------------------------------------------------------
# The spaces.


def _rep(r: tuple[int, int, int], n: int) -> tuple[WidthRange, ...]:
    return (WidthRange(*r),) * n


_EXPANSIONS = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)

_SPACES: dict[str, dict] = {
    "fbnetv2-224": dict(
        resolutions=(128, 160, 192, 224, 256), stem_stride=2, stem_widths=WidthRange(8, 16, 4),
        stages=(
            StageV2(1, _rep((8, 16, 4), 1)),
            StageV2(2, _rep((16, 32, 4), 4)),
            StageV2(2, _rep((24, 48, 8), 4)),
            StageV2(2, _rep((56, 112, 8), 10)),
            StageV2(2, _rep((144, 184, 8), 3) + _rep((184, 224, 8), 3)),
        ),
        head_widths=(1600, 1984), expansions=_EXPANSIONS, num_classes=1000,
        description="ImageNet: the macro of the released FBNetV2 F/L models (stem s2, stages of 1-4-4-10-6 "
                    "layers, ir_pool head); F1-F4, L1, L2 are architectures of it",
    ),
    "fbnetv2-cifar": dict(
        resolutions=(24, 28, 32), stem_stride=1, stem_widths=WidthRange(8, 16, 8),
        stages=(
            StageV2(1, _rep((8, 16, 8), 1)),
            StageV2(1, _rep((12, 24, 4), 4)),
            StageV2(2, _rep((16, 32, 8), 4)),
            StageV2(2, _rep((32, 64, 8), 10)),
            StageV2(2, _rep((72, 112, 8), 6)),
        ),
        head_widths=(640, 800), expansions=_EXPANSIONS, num_classes=10,
        description="32x32 input (24/28/32), 10 classes: the fbnetv2-224 macro at stride 8 with about half "
                    "its widths",
    ),
}


class SpaceV2Error(ValueError):
    """An unknown v2 space name."""


def get_v2_space(name: str) -> SpaceV2:
    """A v2 space by name (:func:`list_v2_spaces`)."""
    if name not in _SPACES:
        raise SpaceV2Error(f"unknown v2 space {name!r}: use {', '.join(_SPACES)}")
    return _cached(name)


_CACHE: dict[str, SpaceV2] = {}


def _cached(name: str) -> SpaceV2:
    if name not in _CACHE:
        _CACHE[name] = SpaceV2(name=name, **_SPACES[name])
    return _CACHE[name]


def lookup_space(name: str) -> Space | SpaceV2:
    """A v1 or a v2 space by name (what a command taking ``--space`` calls)."""
    if is_v2_space(name):
        return get_v2_space(name)
    if name.startswith("fbnetv2"):
        raise SpaceV2Error(f"unknown v2 space {name!r}: use {', '.join(_SPACES)}")
    return get_space(name)


def list_v2_spaces() -> list[str]:
    return list(_SPACES)


def is_v2_space(name: str) -> bool:
    return name in _SPACES


__all__ = [
    "LayerV2", "SpaceV2", "SpaceV2Error", "StageV2", "WidthRange", "arch_summary", "enumerate_ops",
    "get_v2_space", "grid_summary", "is_v2_space", "list_v2_spaces", "lookup_space", "op_list",
]
