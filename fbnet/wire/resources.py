"""Wire schemas of devices, spaces, tables, comparisons, validations and health (part of
:mod:`fbnet.wire`, which re-exports every name here)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import Field, create_model, field_validator

from fbnet.configuration import Configuration, ConfigurationOut, Precision, Selector  # noqa: F401 (the contract)
from fbnet.ops import OP_FIELDS
from fbnet.wire.base import (
    MAX_ID,
    MAX_INT,
    NEXT_DOC,
    DeviceName,
    FreeForm,
    Platform,
    WireModel,
    finite_positive,
)


# ---- devices -----------------------------------------------------------------------------
class DeviceCreate(WireModel):
    name: DeviceName
    platform: Platform
    runtime: str = Field(min_length=1, max_length=64, description="e.g. executorch-xnnpack, coreml")
    precision: Precision = Field(default="fp32", description="the default precision of its runs")
    model: str | None = Field(default=None, max_length=128)
    soc: str | None = Field(default=None, max_length=128)
    os: str | None = Field(default=None, max_length=128)
    metadata: FreeForm = Field(default_factory=dict)


class DeviceOut(WireModel):
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


class DevicePage(WireModel):
    """One page of ``GET /devices`` (by name)."""

    devices: list[DeviceOut]
    next: str | None = Field(None, description=NEXT_DOC)


class DeviceCreated(DeviceOut):
    token: str = Field(description="the device's agent token; shown only once")


# ---- spaces ------------------------------------------------------------------------------
def _op_field(t) -> tuple:
    return (t, None) if type(None) in get_args(t) else (t, ...)


# The structured fields of an op: declared once, by fbnet.ops.OP_FIELDS (what Op.fields() returns).
OpFields = create_model("OpFields", __base__=WireModel, __module__=__name__,
                        __doc__="The structured fields of an op (fbnet.ops.OP_FIELDS, as Op.fields() gives them).",
                        **{name: _op_field(t) for name, t in OP_FIELDS.items()})


class SpaceOp(OpFields):
    layers: list[int] = Field(default_factory=list)


class SpaceSummary(WireModel):
    space: str
    version: str
    n_ops: int


class SpaceOut(WireModel):
    space: str
    version: str
    ops: list[SpaceOp]


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


class Table(WireModel):
    device: str
    space: str
    space_version: str
    version: str = Field(description="content hash of the entries; also the ETag")
    unit: Literal["us"] = "us"
    complete: bool
    missing: list[str]
    overhead_us: float | None = Field(None, description="per-call runtime overhead recorded by the agents")
    context_factor: float | None = Field(None, description=(
        "how much slower the ops run inside whole models than alone (median over the contributing runs' "
        "calibration models); descriptive when context_us_per_mb is given, else clients multiply the "
        "corrected entries by it (fbnet.lut); None: no calibration"))
    context_us_per_mb: float | None = Field(None, description=(
        "what each megabyte of an op's weights costs inside a whole model on top of the op timed alone "
        "(median over the contributing runs' calibration models); clients add it x the op's weight MB to "
        "every corrected entry (fbnet.lut.in_context_us); None: not measured"))
    configuration: Configuration | None = Field(None, description="what every contributing run shares")
    rule: str = Field(description="how entries were assembled from measurements")
    entries: list[TableEntry]


class ImportResult(WireModel):
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


class CompareOut(WireModel):
    space: str
    a: str
    b: str
    a_configuration: Configuration | None = None
    b_configuration: Configuration | None = None
    entries: list[CompareEntry]
    geomean_ratio: float | None


# ---- validations -------------------------------------------------------------------------
class ValidationCreate(WireModel):
    space: str
    device: DeviceName | None = Field(default=None, description="default: the token's device (required with admin's)")
    arch: list[str] = Field(min_length=22, max_length=64, description=(
        "a v1 space: 22 block names; a v2 space (fbnetv2-*): the architecture text's comma-separated tokens "
        "(res:R, stem:C, block:width[:eE] per layer, head:C)"))
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
        return finite_positive(v, info.field_name)


class ValidationOut(ValidationCreate):
    id: int
    device: str  # type: ignore[assignment]
    error_pct: float = Field(description="100 * (predicted - measured) / measured")
    created_at: datetime | None = None


class ValidationSummary(WireModel):
    """The statistics of every validation of a device in a space, and one page of them (oldest first)."""

    device: str
    space: str
    count: int
    mape: float | None
    within_10pct: float | None = Field(description="share of |error| <= 10%")
    kendall_tau: float | None
    worst: list[ValidationOut]
    validations: list[ValidationOut] = Field(description="this page of the validations (count has them all)")
    next: str | None = Field(None, description=NEXT_DOC)


# ---- misc --------------------------------------------------------------------------------
class Health(WireModel):
    status: Literal["ok", "degraded"]
    db: bool
    version: str


class ErrorOut(WireModel):
    detail: Any
