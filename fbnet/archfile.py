"""``arch.json``: what ``fbnet-search run`` found, as one pydantic model written and read here only.

The search writes it (:func:`write_arch_file`); ``fbnet-search sample|train|export``, the agents and
the benchmarks read it (:func:`read_arch_file`). No torch here. Files written before a field existed
still load: every field but ``arch`` has a default.

``arch`` is a list of 22 block names for a v1 space, or the text of an FBNetV2 architecture
(:class:`fbnet.arch_v2.ArchV2`: resolution, stem, per layer block, width and expansion, head) for a
v2 space; a v2 text is checked against its ``space`` when that names a v2 space.

Fields: the architecture (``arch``, 22 block names) and its table latency (``predicted_latency_us``,
the plain sum of the served entries, :func:`fbnet.lut.predict`); where it was found (``space``,
``space_version``, ``device``, ``table_version``, ``table_configuration``); how (``config``,
``data``, ``world_size``, ``history`` = the rows of history.csv); what theta ended as (``theta``
[22][9] logits, ``theta_entropy`` = mean per-layer entropy of softmax(theta) in nats,
``argmax_prob`` = per layer the largest probability, ``theta_steps``); with a latency target
(``target_ms``, ``selection`` = how ``arch`` was chosen from theta, ``argmax_arch`` and
``argmax_latency_us`` = the plain most likely architecture for comparison).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from fbnet.arch_v2 import ArchV2
from fbnet.io import atomic_write
from fbnet.space import Arch, ArchError
from fbnet.space_v2 import get_v2_space, is_v2_space

FILENAME = "arch.json"


class ArchFileError(ValueError):
    """An arch.json that is missing or malformed (one-line message)."""


class ArchFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    arch: list[str] | str
    predicted_latency_us: float | None = None
    space: str | None = None
    space_version: str | None = None
    device: str | None = None
    table_version: str | None = None
    table_configuration: dict[str, Any] | None = None
    theta: list[list[float]] | None = None
    theta_entropy: float | None = None
    argmax_prob: list[float] | None = None
    theta_steps: int | None = None
    target_ms: float | None = None
    selection: str = "argmax"
    argmax_arch: list[str] | str | None = None
    argmax_latency_us: float | None = None
    history: list[dict[str, Any]] = []
    data: str | None = None
    world_size: int = 1
    config: dict[str, Any] = {}
    finished: bool = True

    @field_validator("arch", "argmax_arch")
    @classmethod
    def _valid_arch(cls, v):
        if isinstance(v, str):
            ArchV2.parse(v)  # raises ArchV2Error (a ValueError) with the reason
        elif v is not None:
            Arch(tuple(v))  # raises ArchError (a ValueError) with the reason
        return v

    @model_validator(mode="after")
    def _arch_fits_space(self):
        v2 = isinstance(self.arch, str)
        if self.space is not None and v2 != is_v2_space(self.space):
            kind = "an FBNetV2 architecture" if v2 else "a v1 architecture"
            raise ValueError(f"{kind} cannot belong to space {self.space!r}")
        if v2 and self.space is not None:
            get_v2_space(self.space).check_arch(ArchV2.parse(self.arch))
        return self

    @property
    def is_v2(self) -> bool:
        return isinstance(self.arch, str)

    @property
    def architecture(self) -> Arch | ArchV2:
        if isinstance(self.arch, str):
            return ArchV2.parse(self.arch)
        return Arch(tuple(self.arch))


def arch_file_path(path: str | os.PathLike) -> Path:
    """``DIR`` or ``DIR/arch.json`` -> the file."""
    p = Path(path)
    return p / FILENAME if p.is_dir() else p


def write_arch_file(doc: ArchFile, path: str | os.PathLike) -> Path:
    """Write atomically to ``path`` (a folder gets ``arch.json`` inside)."""
    p = Path(path)
    if p.suffix != ".json":
        p = p / FILENAME
    return atomic_write(p, doc.model_dump_json(indent=1))


def read_arch_file(path: str | os.PathLike) -> ArchFile:
    """Read ``DIR`` or ``DIR/arch.json``; :class:`ArchFileError` with one line if absent or malformed."""
    p = arch_file_path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ArchFileError(f"{p} does not exist (write it with `fbnet-search run --out DIR`)") from None
    except OSError as e:
        raise ArchFileError(f"cannot read {p}: {e}") from None
    try:
        return ArchFile.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ())) or "document"
        if first.get("type") == "json_invalid":
            raise ArchFileError(f"{p} is not JSON: {first.get('msg')}") from None
        if first.get("type") == "missing" and where == "arch":
            raise ArchFileError(f"{p} has no 'arch': not the output of `fbnet-search run`") from None
        raise ArchFileError(f"{p}: {where}: {first.get('msg')}") from None
    except ArchError as e:  # pragma: no cover - pydantic wraps it in a ValidationError
        raise ArchFileError(f"{p}: {e}") from None


__all__ = ["ArchFile", "ArchFileError", "FILENAME", "arch_file_path", "read_arch_file", "write_arch_file"]
