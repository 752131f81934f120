"""Wire schemas: the one definition of every request and response body of the HTTP API.

The server, the device agents and the search client all import these; no other module declares a
request or response shape. ``from fbnet.wire import X`` is the one import for every model:

- :mod:`fbnet.wire.base`: the base model, request limits and field types the others share;
- :mod:`fbnet.wire.runs`: profiling runs and their measurements;
- :mod:`fbnet.wire.resources`: devices, spaces, tables, comparisons, validations, health;
- :mod:`fbnet.wire.grid`: the v2 grid's sampling plan and its fitted, columnar table.

Only pydantic and the torch-free ``fbnet`` modules are imported here; the apps may import it, it
imports no app."""

from __future__ import annotations

from fbnet.configuration import Configuration, ConfigurationOut, Precision, Selector
from fbnet.wire.base import (
    DEVICE_NAME_PATTERN,
    MAX_BATCH,
    MAX_DEPTH,
    MAX_EXTRA_BYTES,
    MAX_ID,
    MAX_INT,
    MAX_SAMPLES,
    DeviceName,
    FreeForm,
    Platform,
    WireModel,
    check_json,
    finite_positive,
)
from fbnet.wire.grid import (
    GridColumns,
    GridModel,
    GridSource,
    GridTable,
    HeldOutError,
    PlanOut,
    PlanRequest,
    WidthCurveOut,
)
from fbnet.wire.resources import (
    CompareEntry,
    CompareOut,
    DeviceCreate,
    DeviceCreated,
    DeviceOut,
    ErrorOut,
    Health,
    ImportResult,
    OpFields,
    SpaceOp,
    SpaceOut,
    SpaceSummary,
    Table,
    TableEntry,
    ValidationCreate,
    ValidationOut,
    ValidationSummary,
)
from fbnet.wire.runs import (
    BatchResult,
    ContextCost,
    ContextFactor,
    Measurement,
    MeasurementBatch,
    OverheadUs,
    RunCreate,
    RunFinish,
    RunMeasurements,
    RunOut,
    RunProvenance,
    StoredMeasurement,
)

__all__ = [
    "BatchResult",
    "CompareEntry",
    "CompareOut",
    "Configuration",
    "ConfigurationOut",
    "ContextCost",
    "ContextFactor",
    "DEVICE_NAME_PATTERN",
    "DeviceCreate",
    "DeviceCreated",
    "DeviceName",
    "DeviceOut",
    "ErrorOut",
    "FreeForm",
    "GridColumns",
    "GridModel",
    "GridSource",
    "GridTable",
    "HeldOutError",
    "Health",
    "ImportResult",
    "MAX_BATCH",
    "MAX_DEPTH",
    "MAX_EXTRA_BYTES",
    "MAX_ID",
    "MAX_INT",
    "MAX_SAMPLES",
    "Measurement",
    "MeasurementBatch",
    "OpFields",
    "OverheadUs",
    "PlanOut",
    "PlanRequest",
    "Platform",
    "Precision",
    "RunCreate",
    "RunFinish",
    "RunMeasurements",
    "RunOut",
    "RunProvenance",
    "Selector",
    "SpaceOp",
    "SpaceOut",
    "SpaceSummary",
    "StoredMeasurement",
    "Table",
    "TableEntry",
    "ValidationCreate",
    "ValidationOut",
    "ValidationSummary",
    "WidthCurveOut",
    "WireModel",
    "check_json",
    "finite_positive",
]
