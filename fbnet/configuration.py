"""Configurations: what a latency table was measured under, and how a client picks one.

A run belongs to exactly one configuration: precision, runtime, runtime version, threads, CPU mask,
compute units (an imported table is a configuration of its own). The service serves a table from
the finished runs of ONE configuration; a client names the one it wants with a :class:`Selector`
(every field optional: what is left open picks the device's newest complete configuration, else its
newest). Pydantic only: the server, the agents and the search all import this module.
"""

from __future__ import annotations

import hashlib
import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fbnet.options import cli

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
ComputeUnits = Literal["cpu", "gpu", "ane", "all"]
COMPUTE_UNITS: tuple[str, ...] = typing.get_args(ComputeUnits)
TABLE_PANEL = "Table configuration"
SELECTOR_FIELDS = ("precision", "threads", "cpu_mask", "compute_units", "runtime_version")


class Configuration(BaseModel):
    """The measurement conditions every run of a table shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: str = Field(description="fp32, fp16 or int8")
    runtime: str
    runtime_version: str = Field(description="adb: runner version + sha256; iOS: OS and Core ML; host: executorch")
    threads: int | None = None
    cpu_mask: str | None = None
    compute_units: str | None = None
    imported: bool = Field(False, description="an imported external table (its own configuration)")

    @property
    def config_id(self) -> str:
        """A short stable name of the configuration (the same on every server)."""
        blob = "|".join("" if v is None else str(v) for v in self.model_dump().values())
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def describe(self) -> str:
        parts = [self.precision, f"{self.runtime} {self.runtime_version}"]
        if self.imported:
            parts.append("imported")
        if self.threads is not None:
            parts.append(f"{self.threads} thread(s)")
        if self.cpu_mask:
            parts.append(f"cpu mask {self.cpu_mask}")
        if self.compute_units:
            parts.append(f"compute units {self.compute_units}")
        return ", ".join(parts)


class ConfigurationOut(Configuration):
    """A configuration of a device's space as ``GET /tables/{device}/configurations`` lists it."""

    id: str
    runs: list[int] = Field(description="finished runs of this configuration")
    unstable_runs: list[int] = Field(default_factory=list, description="left out unless include_unstable")
    ops: int
    covered: int
    complete: bool
    newest_run: int
    default: bool = Field(description="what GET /tables serves when no selector is given")


class Selector(BaseModel):
    """Which configuration a client asks for; ``None`` fields are left to the server's default rule."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: Precision | None = Field(None, description="the table's precision: fp32, fp16 or int8",
                                        json_schema_extra=cli(panel=TABLE_PANEL))
    threads: int | None = Field(None, ge=1, le=256, description="threads the table was measured with",
                                json_schema_extra=cli(panel=TABLE_PANEL))
    cpu_mask: str | None = Field(None, max_length=64, description="CPU mask the table was measured with (hex)",
                                 json_schema_extra=cli(panel=TABLE_PANEL))
    compute_units: str | None = Field(None, max_length=32, description="Core ML compute units the table was measured with",
                                      json_schema_extra=cli(panel=TABLE_PANEL, choices=COMPUTE_UNITS))
    runtime_version: str | None = Field(None, max_length=64, description="the runtime version measured",
                                        json_schema_extra=cli(panel=TABLE_PANEL))
    include_unstable: bool = Field(False, description="also use runs marked unstable (reference ops drifted)",
                                   json_schema_extra=cli(panel=TABLE_PANEL))

    def params(self) -> dict[str, str | int]:
        """The query parameters of ``GET /tables/{device}`` for this selector."""
        out: dict[str, str | int] = {k: getattr(self, k) for k in SELECTOR_FIELDS if getattr(self, k) is not None}
        if self.include_unstable:
            out["include_unstable"] = "true"
        return out

    def matches(self, cfg: Configuration) -> bool:
        return all(getattr(self, k) is None or getattr(self, k) == getattr(cfg, k) for k in SELECTOR_FIELDS)

    @property
    def is_default(self) -> bool:
        return not self.params()

    def slug(self) -> str:
        """A file-name-safe tag of the selector (the client's cache keeps one file per selector)."""
        if self.is_default:
            return "default"
        return "sel-" + hashlib.sha256(repr(sorted(self.params().items())).encode()).hexdigest()[:12]

    def describe(self) -> str:
        p = self.params()
        return ", ".join(f"{k}={v}" for k, v in p.items()) if p else "the default configuration"


__all__ = ["COMPUTE_UNITS", "PRECISIONS", "TABLE_PANEL", "ComputeUnits", "SELECTOR_FIELDS", "Configuration", "ConfigurationOut", "Precision", "Selector"]
