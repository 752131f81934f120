"""Pricing a v2 (FBNetV2) architecture from a served grid table (torch-free).

The rule is fbnet.lut's corrected pricing: every op of the architecture at its resolution (the stem,
each layer, the ``ir_pool`` head and the classifier; identity skips cost 0) at its ``corrected_us``,
plus the table's per-call overhead once (:func:`fbnet.lut.model_overhead_us`); with a context cost the
in-model weight reloads (``context_us_per_mb`` x the op's weight MB) too. A grid entry is
``measured`` or ``fitted`` (the service's latency model); the prediction says how many of each it
used, and ``measured_only`` refuses fitted ones.
"""

from __future__ import annotations

import math

from fbnet.arch_v2 import ArchV2
from fbnet.lut import BYTES_PER_WEIGHT, TableError, model_overhead_us
from fbnet.space_v2 import SpaceV2
from fbnet.wire import GridTable


def grid_lookup(table: GridTable) -> dict[str, tuple[float | None, str]]:
    """key -> (corrected us, source) of every entry of ``table``."""
    c = table.columns
    return {k: (v, s) for k, v, s in zip(c.key, c.corrected_us, c.source, strict=True)}


def grid_prices(table: GridTable, measured_only: bool = False) -> dict[str, float]:
    """key -> corrected us of every priced entry (the mapping :mod:`search.v2_cost` takes); identity
    skips at 0, missing entries left out; ``measured_only`` leaves fitted entries out too."""
    ok = ("measured", "identity") if measured_only else ("measured", "identity", "fitted")
    return {k: (0.0 if s == "identity" else float(v)) for k, (v, s) in grid_lookup(table).items()
            if s in ok and (v is not None or s == "identity")}


def op_context_us(context_us_per_mb: float | None, op, precision: str = "fp32") -> float:
    """The in-model weight reload an op adds inside a whole model: the table's context cost x the op's
    weight MB at ``precision`` (0 without a context cost)."""
    if context_us_per_mb is None:
        return 0.0
    return context_us_per_mb * op.params * BYTES_PER_WEIGHT.get(precision, 4) / 1e6


def predict_v2(table: GridTable, space: SpaceV2, arch: ArchV2, *, measured_only: bool = False) -> dict:
    """``{"latency_us", "per_op": [{"key", "latency_us", "source"}], "sources": {source: n}, "overhead_us",
    "ops_run", "resolution"}``: ``latency_us = sum(per_op) + overhead_us`` (module docstring). Raises
    :class:`fbnet.lut.TableError` for an op the table lacks, and under ``measured_only`` for a fitted one."""
    if table.space != space.name:
        raise TableError(f"the table is of space {table.space!r}, the architecture of {space.name!r}")
    lookup = grid_lookup(table)
    precision = table.configuration.precision if table.configuration else "fp32"
    per_op, missing, fitted = [], [], []
    for op in space.arch_ops(arch, with_identity=True):
        if op.is_identity:
            per_op.append({"key": op.key, "latency_us": 0.0, "source": "identity"})
            continue
        v, src = lookup.get(op.key, (None, "missing"))
        if v is None or not math.isfinite(v):
            missing.append(op.key)
            continue
        fitted += [op.key] if src == "fitted" else []
        per_op.append({"key": op.key, "latency_us": float(v) + op_context_us(table.context_us_per_mb, op, precision), "source": src})
    if missing:
        raise TableError(f"{len(missing)} op(s) of this architecture have no entry in the table of "
                         f"{table.device}: {', '.join(missing[:5])}")
    if measured_only and fitted:
        raise TableError(f"{len(fitted)} op(s) of this architecture are fitted, not measured, in the table of "
                         f"{table.device} (e.g. {fitted[0]}); measured-only refuses them")
    overhead = model_overhead_us(table)
    sources: dict[str, int] = {}
    for p in per_op:
        sources[p["source"]] = sources.get(p["source"], 0) + 1
    return {"latency_us": math.fsum(p["latency_us"] for p in per_op) + overhead, "per_op": per_op,
            "sources": sources, "overhead_us": overhead, "resolution": arch.resolution,
            "ops_run": sum(p["source"] != "identity" for p in per_op), "table_version": table.version}


__all__ = ["grid_lookup", "grid_prices", "op_context_us", "predict_v2"]
