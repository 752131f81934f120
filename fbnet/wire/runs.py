"""Wire schemas of profiling runs and their measurements (part of :mod:`fbnet.wire`, which
re-exports every name here: import them from there). Only pydantic and the torch-free ``fbnet``
modules are imported here."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from fbnet.configuration import Precision
from fbnet.wire.base import (
    MAX_BATCH,
    MAX_INT,
    MAX_SAMPLES,
    NEXT_DOC,
    DeviceName,
    FreeForm,
    WireModel,
    finite_positive,
)


def _overhead(v: float | None) -> float | None:
    if v is not None and (not math.isfinite(v) or v < 0):
        raise ValueError(f"overhead_us must be finite and >= 0, got {v}")
    return v


OverheadUs = Annotated[float | None, AfterValidator(_overhead)]
# whole models / the sum of their ops (cache and memory traffic inside a model): a few percent either way
# on a CPU; anything outside (0.2, 5) is a broken measurement, not a device
ContextFactor = Annotated[float | None, Field(gt=0.2, lt=5.0)]
# us per MB of weights reloaded inside a model: ~50-80 on this host's L3 (20 GB/s); a phone's DRAM is
# slower. Negative (models faster than their ops) happens a little; beyond these bounds it is broken.
ContextCost = Annotated[float | None, Field(gt=-1000.0, lt=100000.0)]


class RunProvenance(WireModel):
    """What a run ran on, as the transport that ran it can tell; every field but the runtime optional."""

    runtime: str = Field(max_length=64, description="executorch, coreml, ...")
    runtime_version: str = Field(max_length=64)
    precision: Precision | None = Field(default=None, description="fp32/fp16/int8; default: the device's")
    build: str | None = Field(default=None, max_length=256, description="runner build / app version")
    threads: int | None = Field(default=None, ge=1, le=256)
    cpu_mask: str | None = Field(default=None, max_length=64)
    compute_units: str | None = Field(default=None, max_length=32)
    host: str | None = Field(default=None, max_length=256)
    device_model: str | None = Field(default=None, max_length=128)
    soc: str | None = Field(default=None, max_length=128)
    os: str | None = Field(default=None, max_length=128)
    extra: FreeForm = Field(default_factory=dict)


class RunCreate(RunProvenance):
    space: str
    device: DeviceName | None = Field(default=None, description="default: the token's device (required with admin's)")
    transport: Literal["host", "native", "adb", "ios", "import", "other"] = "host"
    agent_version: str = Field(max_length=64)
    warmup: int | None = Field(default=None, ge=0, le=MAX_INT)
    repeats: int | None = Field(default=None, ge=1, le=MAX_INT)
    rounds: int | None = Field(default=None, ge=1, le=MAX_INT)
    overhead_us: OverheadUs = Field(default=None, description="runtime per-call overhead (identity program)")
    temps_before: dict[str, float] = Field(default_factory=dict)
    cpu_freqs_before: dict[str, float] = Field(default_factory=dict)
    started_at: datetime | None = None
    idempotency_key: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{8,64}$", description=(
        "client-chosen; a retried POST with the same key returns the run it opened instead of a new one"))


class RunFinish(WireModel):
    temps_after: dict[str, float] = Field(default_factory=dict)
    cpu_freqs_after: dict[str, float] = Field(default_factory=dict)
    overhead_us: OverheadUs = None
    status: Literal["finished", "failed", "aborted"] = "finished"
    unstable: bool = Field(False, description="reference ops drifted: left out of tables unless asked for")
    context_factor: ContextFactor = Field(None, description=(
        "whole calibration models timed in the run's rounds / the sum of their corrected ops (fbnet.lut."
        "context_factor); details in extra['calibration']"))
    context_us_per_mb: ContextCost = Field(None, description=(
        "(whole calibration model - overhead - the sum of its corrected ops) / its weight MB, median over the "
        "models (fbnet.lut.context_cost): what corrected pricing adds per MB of an op's weights"))
    extra: FreeForm = Field(default_factory=dict)


class RunOut(WireModel):
    id: int
    device: str
    space: str
    space_version: str
    transport: str
    agent_version: str
    runtime: str
    runtime_version: str
    precision: str = "fp32"
    unstable: bool = False
    build: str | None = None
    threads: int | None = None
    cpu_mask: str | None = None
    compute_units: str | None = None
    host: str | None = None
    device_model: str | None = None
    soc: str | None = None
    os: str | None = None
    warmup: int | None = None
    repeats: int | None = None
    rounds: int | None = None
    overhead_us: float | None = None
    context_factor: float | None = None
    context_us_per_mb: float | None = None
    temps_before: dict[str, float] = Field(default_factory=dict)
    temps_after: dict[str, float] = Field(default_factory=dict)
    cpu_freqs_before: dict[str, float] = Field(default_factory=dict)
    cpu_freqs_after: dict[str, float] = Field(default_factory=dict)
    status: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    n_measurements: int = 0
    extra: dict[str, Any] = Field(default_factory=dict)


class RunPage(WireModel):
    """One page of ``GET /runs`` (oldest first, by id)."""

    runs: list[RunOut]
    next: str | None = Field(None, description=NEXT_DOC)


class Measurement(WireModel):
    """Robust statistics of one op in one run, in microseconds."""

    key: str = Field(max_length=128)
    n: int = Field(ge=1, le=MAX_INT)
    median_us: float
    mean_us: float
    std_us: float = Field(ge=0)
    min_us: float
    p10_us: float
    p90_us: float
    samples_us: list[float] | None = Field(default=None, max_length=MAX_SAMPLES)
    overhead_us: OverheadUs = Field(None, description="per-call overhead of the op's input shape, same rounds")

    @field_validator("median_us", "mean_us", "min_us", "p10_us", "p90_us")
    @classmethod
    def _pos(cls, v, info):
        return finite_positive(v, info.field_name)

    @field_validator("std_us")
    @classmethod
    def _std(cls, v):
        if not math.isfinite(v):
            raise ValueError("std_us must be finite")
        return v

    @field_validator("samples_us")
    @classmethod
    def _samples(cls, v):
        for s in v or []:
            finite_positive(s, "every sample")
        return v

    @model_validator(mode="after")
    def _order(self):
        if not (self.min_us <= self.p10_us <= self.median_us <= self.p90_us):
            raise ValueError(f"{self.key}: statistics out of order (need min <= p10 <= median <= p90)")
        return self


class MeasurementBatch(WireModel):
    measurements: list[Measurement] = Field(min_length=1, max_length=MAX_BATCH)


class StoredMeasurement(WireModel):
    """A measurement as stored (imports may hold exact zeros, so no positivity check here)."""

    key: str
    n: int
    median_us: float
    mean_us: float
    std_us: float
    min_us: float
    p10_us: float
    p90_us: float
    samples_us: list[float] | None = Field(None, description="the raw samples: only with ?samples=true")
    overhead_us: float | None = None


class RunMeasurements(WireModel):
    """One page of a run's measurements (in the order they were stored)."""

    run_id: int
    device: str
    space: str
    status: str
    keys: list[str] = Field(description="op keys of this page's measurements (what --resume skips)")
    measurements: list[StoredMeasurement]
    next: str | None = Field(None, description=NEXT_DOC)


class BatchResult(WireModel):
    run_id: int
    received: int
    stored: int = Field(description="new rows; re-sent ops of the same run are not stored twice")
    duplicates: int
