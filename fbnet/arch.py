"""Architectures as text: 22 block names, 22 HW-NAS-Bench indices, or FBNet-A/B/C (pure Python)."""

from __future__ import annotations

from dataclasses import dataclass

from fbnet.ops import CANDIDATE_INDEX, CANDIDATE_NAMES, CANDIDATES, NUM_LAYERS


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
