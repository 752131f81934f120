"""Wire schemas of the v2 (FBNetV2) grid: the sampling plan an agent asks for and the fitted table
(part of :mod:`fbnet.wire`, which re-exports every name here). Only pydantic and the torch-free
``fbnet`` modules are imported here.

A v2 table is **columnar**: one list per field, in the space's grid order
(:func:`fbnet.space_v2.enumerate_ops`), so the 20 k entries of ``fbnetv2-cifar`` stay about a
megabyte; an op's structured fields are its key's (:func:`fbnet.ops_v2.parse_key_v2`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fbnet.configuration import Configuration, Precision
from fbnet.wire.base import MAX_BATCH, MAX_ID, WireModel

GridSource = Literal["measured", "fitted", "identity", "missing"]


class PlanRequest(WireModel):
    """What an agent sends to ``POST /plans/{device}``: the space, the configuration its runs will
    have (as it opens them with ``POST /runs``), and how much it wants now."""

    space: str = Field(description="a v2 space, e.g. fbnetv2-cifar")
    runtime: str = Field(max_length=64)
    runtime_version: str = Field(max_length=64)
    precision: Precision | None = Field(default=None, description="default: the device's")
    threads: int | None = Field(default=None, ge=1, le=256)
    cpu_mask: str | None = Field(default=None, max_length=64)
    compute_units: str | None = Field(default=None, max_length=32)
    batch: int = Field(default=50, ge=1, le=MAX_BATCH, description="ops per new batch")
    design: int = Field(default=300, ge=0, le=20_000, description=(
        "measured ops of the space-filling design before adaptive rounds start"))
    budget: int | None = Field(default=None, ge=1, le=1_000_000, description=(
        "no new batch once this many grid ops are measured (done, reason 'budget')"))
    goal_within_10pct: float | None = Field(default=None, gt=0, le=1, description=(
        "no new batch once the held-out share within ±10 % reaches this (done, reason 'goal')"))
    run_id: int | None = Field(default=None, ge=1, le=MAX_ID, description=(
        "the agent's open run of this configuration: its measured keys count as done (resume)"))
    failed: list[str] = Field(default_factory=list, max_length=MAX_BATCH, description=(
        "keys of the current batch the agent could not measure: dropped, never issued again"))
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="the design's seed (fixed per plan by its first batch)")


class HeldOutError(WireModel):
    """The fitted model's error on measured ops it did not see (k-fold over the measured ops)."""

    n: int = Field(description="measured ops predicted by a fit that did not see them")
    folds: int
    within_10pct: float | None = Field(description="share of held-out ops predicted within ±10 %")
    mape: float | None = Field(description="mean absolute percentage error over them (%)")


class PlanOut(WireModel):
    device: str
    space: str
    space_version: str
    configuration: Configuration
    round: int = Field(description="the current batch's round (0, 1, ...); -1 before any batch")
    phase: Literal["design", "adaptive", "done"]
    keys: list[str] = Field(description="what to measure now: the current batch less what is measured")
    batch_size: int = Field(description="how many ops the current batch had when issued")
    measured: int = Field(description="grid ops measured in finished stable runs of this configuration")
    grid: int = Field(description="grid ops that cost something (identity skips excluded)")
    heldout: HeldOutError | None = Field(description="the current fit's held-out error (None: too few ops)")
    done: bool
    reason: str | None = Field(None, description="why no batch: 'budget', 'goal' or 'exhausted'")


class GridModel(WireModel):
    kind: str = Field(description="the model (profiler_server.domain.fitting): stage 1 padded-MAC NNLS, stage 2 trees")
    per: Literal["family"] = Field("family", description="one fit per block family")
    families: dict[str, int] = Field(description="measured ops each family's fit saw")
    vector_width: dict[str, int | None] = Field(description=(
        "per family, the channel multiple its fit rounds every channel count up to (1: no staircase)"))
    heldout: HeldOutError


class GridColumns(WireModel):
    key: list[str]
    latency_us: list[float | None] = Field(description=(
        "measured: median of the runs' medians; fitted: corrected_us + the table's overhead_us"))
    corrected_us: list[float | None] = Field(description="what clients price; fitted: the model's prediction")
    source: list[GridSource]
    n: list[int] = Field(description="samples behind a measured entry (0 otherwise)")
    runs: list[int] = Field(description="runs behind a measured entry (0 otherwise)")


class GridTable(WireModel):
    device: str
    space: str
    space_version: str
    version: str = Field(description="content hash of the measured entries, the configuration and the model; the ETag")
    unit: Literal["us"] = "us"
    format: Literal["columnar"] = "columnar"
    complete: bool = Field(description="every entry has a value (measured, fitted or identity)")
    counts: dict[str, int] = Field(description="entries per source")
    missing: list[str]
    overhead_us: float | None = None
    context_factor: float | None = None
    context_us_per_mb: float | None = None
    configuration: Configuration | None = None
    rule: str
    model: GridModel | None = Field(description="the fit behind the fitted entries (None: nothing measured)")
    columns: GridColumns


class WidthCurveOut(WireModel):
    """One layer's latency against its output width: the fitted model at every width (a staircase on a
    SIMD device) and the layer's grid entries (``GET /tables/{device}/width``)."""

    device: str
    space: str
    version: str = Field(description="the table's version (ETag) the curve belongs to")
    title: str
    widths: list[int]
    fitted_us: list[float] = Field(description="the model's corrected latency at every width")
    points: list[tuple[int, float, GridSource]] = Field(description="(width, corrected us, source) of the grid entries")
