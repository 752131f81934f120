"""FBNetV2 architectures as text: per layer a block, an output width and an expansion, plus the
input resolution, the stem width and the head width (pure Python).

Text form (comma-separated, whitespace ignored)::

    res:224,stem:16,ir_k3_hs:16:e1,ir_k5_hs:24:e5.4566,...,skip:224,head:1984

A layer is ``block:width:eEXPANSION`` (``skip:width`` has no expansion). The expansion is relative
to the layer's actual input width, as in mobile-vision's model definitions: the inner width is
``cin * expansion`` rounded to a multiple of 8 (:func:`fbnet.ops_v2.mid_width`). The text is
reversible: ``ArchV2.parse(a.to_text()) == a``. A reference name (``FBNetV2-F4``) parses too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from fbnet.ops_v2 import V2_CANDIDATE_NAMES


class ArchV2Error(ValueError):
    """A v2 architecture that does not parse or does not fit its space."""


@dataclass(frozen=True)
class LayerChoice:
    """One searchable layer: its block, its output width and (inverted residuals only) its expansion."""

    block: str
    width: int
    expansion: float | None = None

    def __post_init__(self):
        if self.block not in V2_CANDIDATE_NAMES:
            raise ArchV2Error(f"unknown v2 block {self.block!r}; candidates are {', '.join(V2_CANDIDATE_NAMES)}")
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise ArchV2Error(f"{self.block}: the width must be a positive integer, got {self.width!r}")
        if (self.block == "skip") != (self.expansion is None):
            raise ArchV2Error(f"{self.block}: {'skip has no expansion' if self.block == 'skip' else 'an expansion is required'}")
        if self.expansion is not None:
            e = float(self.expansion)
            if not math.isfinite(e) or e <= 0:
                raise ArchV2Error(f"{self.block}: the expansion must be a positive number, got {self.expansion!r}")
            object.__setattr__(self, "expansion", e)

    def to_text(self) -> str:
        if self.expansion is None:
            return f"{self.block}:{self.width}"
        return f"{self.block}:{self.width}:e{_num(self.expansion)}"


def _num(x: float) -> str:
    """Shortest text that reads back to the same float; integers without '.0'."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


_LAYER = re.compile(r"^(?P<block>[a-z0-9_]+):(?P<width>\d+)(?::e(?P<e>[0-9.eE+-]+))?$")
_FIELD = re.compile(r"^(?P<name>res|stem|head):(?P<value>\d+)$")


@dataclass(frozen=True)
class ArchV2:
    """A whole v2 architecture: resolution, stem width, one :class:`LayerChoice` per layer, head width."""

    resolution: int
    stem: int
    layers: tuple[LayerChoice, ...]
    head: int

    def __post_init__(self):
        for name in ("resolution", "stem", "head"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ArchV2Error(f"the {name} must be a positive integer, got {v!r}")
        if not self.layers:
            raise ArchV2Error("an architecture has at least one layer")
        object.__setattr__(self, "layers", tuple(self.layers))

    @property
    def blocks(self) -> tuple[str, ...]:
        return tuple(layer.block for layer in self.layers)

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(layer.width for layer in self.layers)

    @property
    def expansions(self) -> tuple[float | None, ...]:
        return tuple(layer.expansion for layer in self.layers)

    def to_text(self) -> str:
        parts = [f"res:{self.resolution}", f"stem:{self.stem}", *(x.to_text() for x in self.layers),
                 f"head:{self.head}"]
        return ",".join(parts)

    def __str__(self) -> str:
        return self.to_text()

    @classmethod
    def parse(cls, text: str) -> ArchV2:
        """Parse the text form (module docstring) or a reference name (:data:`REFERENCES`)."""
        text = text.strip()
        for name, arch in REFERENCES.items():
            if text.lower() == name.lower():
                return arch
        if ":" not in text:
            raise ArchV2Error(f"{text!r} is not a v2 architecture: neither a reference ({', '.join(REFERENCES)}) "
                              f"nor 'res:R,stem:C,block:width:eE,...,head:C'")
        tokens = [t for t in re.split(r"[,\s]+", text) if t]
        fields: dict[str, int] = {}
        layers = []
        for tok in tokens:
            m = _FIELD.match(tok)
            if m:
                if m["name"] in fields:
                    raise ArchV2Error(f"{m['name']!r} is given twice")
                fields[m["name"]] = int(m["value"])
                continue
            layers.append(_parse_layer(tok))
        missing = [n for n in ("res", "stem", "head") if n not in fields]
        if missing:
            raise ArchV2Error(f"not a v2 architecture (no {', '.join(missing)}): write "
                              f"'res:R,stem:C,block:width:eE,...,head:C' or one of {', '.join(REFERENCES)}")
        return cls(fields["res"], fields["stem"], tuple(layers), fields["head"])


def _parse_layer(tok: str) -> LayerChoice:
    m = _LAYER.match(tok)
    if not m:
        raise ArchV2Error(f"layer {tok!r} is not block:width[:eEXPANSION]")
    e = m["e"]
    try:
        expansion = None if e is None else float(e)
    except ValueError:
        raise ArchV2Error(f"layer {tok!r}: {e!r} is not a number") from None
    return LayerChoice(m["block"], int(m["width"]), expansion)


# ---------------------------------------------------------------------------------------------
# The released FBNetV2 models (mobile-vision `fbnet_modeldef_cls_fbnetv2.py`, MODEL_ARCH_FBNETV2_PAPER),
# declared here per stage as (block, width, expansion) rows; skip rows carry no expansion. In the
# 25-layer fbnetv2-224 macro (stages of 1, 4, 4, 10, 6 layers) a model with fewer layers in a stage
# fills the stage's remaining layers with identity skips at the stage's last width.

_F123_STAGES = (
    (("ir_k5", 8, 1),),
    (("ir_k5", 24, 5.4566), ("ir_k5", 24, 4.7912)),
    (("ir_k5_sehsig", 32, 5.3501), ("ir_k5_sehsig", 24, 4.5379)),
    (("ir_k5_hs", 56, 5.7133), ("ir_k3_hs", 56, 4.1212), ("ir_k3_sehsig_hs", 56, 5.1246), ("skip", 80, None),
     ("ir_k5_sehsig_hs", 80, 4.5070), ("ir_k5_sehsig_hs", 80, 1.7712)),
    (("ir_k3_sehsig_hs", 144, 4.5685), ("ir_k5_sehsig_hs", 144, 5.8400), ("ir_k5_sehsig_hs", 144, 6.8754),
     ("skip", 224, None)),
)
_F4_STAGES = (
    (("ir_k3_hs", 16, 1),),
    (("ir_k5_hs", 24, 5.4566), ("ir_k5_hs", 24, 1.7912), ("ir_k5_hs", 24, 1.7912)),
    (("ir_k5_sehsig", 32, 5.3501), ("ir_k5_sehsig", 32, 3.5379), ("ir_k5_sehsig", 32, 4.5379),
     ("ir_k5_sehsig", 32, 4.5379)),
    (("ir_k5_hs", 64, 5.7133), ("ir_k3_hs", 64, 2.1212), ("skip", 64, None), ("ir_k3_hs", 104, 5.0333),
     ("ir_k5_sehsig_hs", 104, 2.5070), ("ir_k5_sehsig_hs", 104, 1.7712), ("ir_k5_sehsig_hs", 112, 3.7712)),
    (("ir_k3_sehsig_hs", 184, 5.5685), ("ir_k5_sehsig_hs", 184, 2.8400), ("ir_k5_sehsig_hs", 184, 4.8754),
     ("skip", 224, None)),
)
_L_STAGES = (
    (("ir_k3_hs", 16, 1),),
    (("ir_k5_hs", 24, 5.4566), ("ir_k5_hs", 24, 1.7912), ("ir_k3_hs", 24, 1.7912), ("ir_k5_hs", 24, 1.7912)),
    (("ir_k5_sehsig_hs", 40, 5.3501), ("ir_k5_sehsig_hs", 32, 3.5379), ("ir_k5_sehsig_hs", 32, 4.5379),
     ("ir_k5_sehsig_hs", 32, 4.5379)),
    (("ir_k5_hs", 64, 5.7133), ("ir_k3_hs", 64, 2.1212), ("skip", 64, None), ("ir_k3_hs", 64, 3.1246),
     ("ir_k3_hs", 112, 5.0333), ("ir_k5_sehsig_hs", 112, 2.5070), ("ir_k5_sehsig_hs", 112, 1.7712),
     ("ir_k5_sehsig_hs", 112, 2.7712), ("ir_k5_sehsig_hs", 112, 3.7712), ("ir_k5_sehsig_hs", 112, 3.7712)),
    (("ir_k3_sehsig_hs", 184, 5.5685), ("ir_k5_sehsig_hs", 184, 2.8400), ("ir_k5_sehsig_hs", 184, 2.8400),
     ("ir_k5_sehsig_hs", 184, 4.8754), ("ir_k5_sehsig_hs", 184, 4.8754), ("skip", 224, None)),
)
# Layers per stage of the fbnetv2-224 macro (the deepest release, L1/L2).
REFERENCE_DEPTHS: tuple[int, ...] = (1, 4, 4, 10, 6)


def padded_layers(stages, depths: tuple[int, ...] = REFERENCE_DEPTHS) -> tuple[LayerChoice, ...]:
    """Stage rows -> layers, each stage filled to ``depths`` with identity skips at its last width."""
    if len(stages) != len(depths):
        raise ArchV2Error(f"{len(stages)} stages given for a macro of {len(depths)}")
    out: list[LayerChoice] = []
    for rows, depth in zip(stages, depths, strict=True):
        if len(rows) > depth:
            raise ArchV2Error(f"a stage of {len(rows)} layers does not fit in {depth}")
        out += [LayerChoice(b, w, e) for b, w, e in rows]
        out += [LayerChoice("skip", rows[-1][1])] * (depth - len(rows))
    return tuple(out)


# name -> (architecture, released MFLOPs, released Mparams) from model_info_fbnet_v2.json (FBNETV2.md §4).
REFERENCE_TABLE: dict[str, tuple[ArchV2, float, float]] = {
    "FBNetV2-F1": (ArchV2(128, 8, padded_layers(_F123_STAGES), 1600), 56.41056, 5.999408),
    "FBNetV2-F2": (ArchV2(160, 8, padded_layers(_F123_STAGES), 1600), 85.441392, 5.999408),
    "FBNetV2-F3": (ArchV2(192, 8, padded_layers(_F123_STAGES), 1984), 121.824, 6.899504),
    "FBNetV2-F4": (ArchV2(224, 16, padded_layers(_F4_STAGES), 1984), 238.351984, 6.994824),
    "FBNetV2-L1": (ArchV2(224, 16, padded_layers(_L_STAGES), 1984), 326.023008, 8.49652),
    "FBNetV2-L2": (ArchV2(256, 16, padded_layers(_L_STAGES), 1984), 423.912768, 8.49652),
}
REFERENCES: dict[str, ArchV2] = {name: row[0] for name, row in REFERENCE_TABLE.items()}
# The space each reference is declared in (ImageNet, 1000 classes).
REFERENCE_SPACE = "fbnetv2-224"


__all__ = ["REFERENCES", "REFERENCE_DEPTHS", "REFERENCE_SPACE", "REFERENCE_TABLE", "ArchV2", "ArchV2Error",
           "LayerChoice", "padded_layers"]
