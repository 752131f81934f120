"""Wire schemas: the one definition of every request and response body of the HTTP API.

The server, the device agents and the search client all import these; no other module declares a
request or response shape. Only pydantic and the torch-free ``fbnet`` modules are imported here."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from fbnet.configuration import Configuration, ConfigurationOut, Precision, Selector  # noqa: F401 (the contract)

DEVICE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
MAX_BATCH = 1000
MAX_SAMPLES = 10_000

DeviceName = Annotated[str, Field(pattern=DEVICE_NAME_PATTERN, description="slug: a-z, 0-9 and '-'")]
Platform = Literal["android", "ios", "linux", "macos", "windows", "other"]


def _finite_positive(v: float | None, what: str) -> float | None:
    if v is not None and (not math.isfinite(v) or v <= 0):
        raise ValueError(f"{what} must be a finite positive number of microseconds, got {v}")
    return v


MAX_INT = 2_000_000_000  # fits a 32-bit INTEGER column on every engine
MAX_ID = 2**63 - 1


MAX_DEPTH = 8  # nesting of any JSON value in a request (free-form dicts included)
MAX_EXTRA_BYTES = 64 * 1024  # free-form ``extra`` / ``metadata`` as compact JSON


def _check_json(x, path: str = "body") -> None:
    """Reject what no database stores faithfully (NUL characters, non-finite numbers) and nesting
    deeper than MAX_DEPTH; iterative, so no input can exhaust the stack."""
    todo = [(x, path, 0)]
    while todo:
        x, path, depth = todo.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(x, str) and "\x00" in x:
            raise ValueError(f"{path}: strings must not contain NUL characters")
        if isinstance(x, float) and not math.isfinite(x):
            raise ValueError(f"{path}: numbers must be finite, got {x}")
        if isinstance(x, dict):
            todo += [(k, path, depth + 1) for k in x] + [(v, f"{path}.{k}", depth + 1) for k, v in x.items()]
        elif isinstance(x, list | tuple):
            todo += [(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(x)]


def _bounded(d: dict) -> dict:
    if (n := len(json.dumps(d, separators=(",", ":"), default=str))) > MAX_EXTRA_BYTES:
        raise ValueError(f"{n} bytes of free-form JSON; the limit is {MAX_EXTRA_BYTES}")
    return d


# free-form provenance (``extra``, ``metadata``): at most MAX_DEPTH levels and MAX_EXTRA_BYTES
FreeForm = Annotated[dict[str, Any], AfterValidator(_bounded)]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data):
        if isinstance(data, dict):
            for k, v in data.items():
                if not isinstance(v, float):  # floats get their own, field-specific messages
                    _check_json(v, str(k))
        return data


# ---- devices -----------------------------------------------------------------------------
class DeviceCreate(_Base):
    name: DeviceName
    platform: Platform
    runtime: str = Field(min_length=1, max_length=64, description="e.g. executorch-xnnpack, coreml")
    precision: Precision = Field(default="fp32", description="the default precision of its runs")
    model: str | None = Field(default=None, max_length=128)
    soc: str | None = Field(default=None, max_length=128)
    os: str | None = Field(default=None, max_length=128)
    metadata: FreeForm = Field(default_factory=dict)


class DeviceOut(_Base):
    name: str
    platform: str
    runtime: str
    precision: str
    model: str | None = None
    soc: str | None = None
    os: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    coverage: dict[str, dict[str, int]] = Field(default_factory=dict, description="space -> {'ops', 'covered'}")


class DeviceCreated(DeviceOut):
    token: str = Field(description="the device's agent token; shown only once")


# ---- spaces ------------------------------------------------------------------------------
class OpFields(_Base):
    key: str
    block: str
    kernel: int | None = None
    expansion: int | None = None
    groups: int | None = None
    cin: int
    h: int
    w: int
    cout: int
    stride: int


class SpaceOp(OpFields):
    layers: list[int] = Field(default_factory=list)


class SpaceSummary(_Base):
    space: str
    version: str
    n_ops: int


class SpaceOut(_Base):
    space: str
    version: str
    ops: list[SpaceOp]


# ---- runs and measurements ---------------------------------------------------------------
def _overhead(v: float | None) -> float | None:
    if v is not None and (not math.isfinite(v) or v < 0):
        raise ValueError(f"overhead_us must be finite and >= 0, got {v}")
    return v


OverheadUs = Annotated[float | None, AfterValidator(_overhead)]


class RunProvenance(_Base):
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


class RunFinish(_Base):
    temps_after: dict[str, float] = Field(default_factory=dict)
    cpu_freqs_after: dict[str, float] = Field(default_factory=dict)
    overhead_us: OverheadUs = None
    status: Literal["finished", "failed", "aborted"] = "finished"
    unstable: bool = Field(False, description="reference ops drifted: left out of tables unless asked for")
    extra: FreeForm = Field(default_factory=dict)


class RunOut(_Base):
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
    temps_before: dict[str, float] = Field(default_factory=dict)
    temps_after: dict[str, float] = Field(default_factory=dict)
    cpu_freqs_before: dict[str, float] = Field(default_factory=dict)
    cpu_freqs_after: dict[str, float] = Field(default_factory=dict)
    status: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    n_measurements: int = 0
    extra: dict[str, Any] = Field(default_factory=dict)


class Measurement(_Base):
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
        return _finite_positive(v, info.field_name)

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
            _finite_positive(s, "every sample")
        return v

    @model_validator(mode="after")
    def _order(self):
        if not (self.min_us <= self.p10_us <= self.median_us <= self.p90_us):
            raise ValueError(f"{self.key}: statistics out of order (need min <= p10 <= median <= p90)")
        return self


class MeasurementBatch(_Base):
    measurements: list[Measurement] = Field(min_length=1, max_length=MAX_BATCH)


class StoredMeasurement(_Base):
    """A measurement as stored (imports may hold exact zeros, so no positivity check here)."""

    key: str
    n: int
    median_us: float
    mean_us: float
    std_us: float
    min_us: float
    p10_us: float
    p90_us: float
    samples_us: list[float] | None = None
    overhead_us: float | None = None


class RunMeasurements(_Base):
    run_id: int
    device: str
    space: str
    status: str
    keys: list[str] = Field(description="op keys this run already has (what --resume skips)")
    measurements: list[StoredMeasurement]


class BatchResult(_Base):
    run_id: int
    received: int
    stored: int = Field(description="new rows; re-sent ops of the same run are not stored twice")
    duplicates: int


# ---- tables ------------------------------------------------------------------------------
class TableEntry(OpFields):
    latency_us: float | None = Field(description="None only when the op is in `missing`")
    n: int = 0
    std_us: float | None = None
    p10_us: float | None = None
    p90_us: float | None = None
    corrected_us: float | None = Field(None, description="latency_us less the per-call overhead (what clients price)")
    runs: int = Field(0, description="how many runs/imports contributed")
    run_ids: list[int] = Field(default_factory=list, description="the runs that contributed")
    source: Literal["measured", "imported", "identity", "missing"]
    layers: list[int] = Field(default_factory=list)


class Table(_Base):
    device: str
    space: str
    space_version: str
    version: str = Field(description="content hash of the entries; also the ETag")
    unit: Literal["us"] = "us"
    complete: bool
    missing: list[str]
    overhead_us: float | None = Field(None, description="per-call runtime overhead recorded by the agents")
    configuration: Configuration | None = Field(None, description="what every contributing run shares")
    rule: str = Field(description="how entries were assembled from measurements")
    entries: list[TableEntry]


class ImportResult(_Base):
    device: str
    space: str
    format: str
    entries_in_file: int
    mapped: int
    unmapped: list[str] = Field(description="file keys that do not belong to this space")
    missing: list[str] = Field(description="ops of the space still without a latency")


class CompareEntry(OpFields):
    a_us: float | None
    b_us: float | None
    ratio: float | None = Field(description="a / b")


class CompareOut(_Base):
    space: str
    a: str
    b: str
    a_configuration: Configuration | None = None
    b_configuration: Configuration | None = None
    entries: list[CompareEntry]
    geomean_ratio: float | None


# ---- validations -------------------------------------------------------------------------
class ValidationCreate(_Base):
    space: str
    device: DeviceName | None = Field(default=None, description="default: the token's device (required with admin's)")
    arch: list[str] = Field(min_length=22, max_length=22, description="22 block names")
    predicted_us: float
    measured_us: float
    n: int = Field(ge=1, le=MAX_INT)
    std_us: float | None = Field(default=None, ge=0)
    table_version: str | None = Field(default=None, max_length=64)
    run_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    label: str | None = Field(default=None, max_length=128)
    extra: FreeForm = Field(default_factory=dict)

    @field_validator("predicted_us", "measured_us")
    @classmethod
    def _pos(cls, v, info):
        return _finite_positive(v, info.field_name)


class ValidationOut(ValidationCreate):
    id: int
    device: str  # type: ignore[assignment]
    error_pct: float = Field(description="100 * (predicted - measured) / measured")
    created_at: datetime | None = None


class ValidationSummary(_Base):
    device: str
    space: str
    count: int
    mape: float | None
    within_10pct: float | None = Field(description="share of |error| <= 10%")
    kendall_tau: float | None
    worst: list[ValidationOut]
    validations: list[ValidationOut]


# ---- misc --------------------------------------------------------------------------------
class Health(_Base):
    status: Literal["ok", "degraded"]
    db: bool
    version: str


class ErrorOut(_Base):
    detail: Any
