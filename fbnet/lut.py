"""The table maths: a served latency table -> the supernet's latency matrix, and ``predict``.

**The one rule.** A client prices every op of an architecture with the value the table serves for
it, identity skips included (a measured table serves them at 0.0, an imported one may give them a
cost), and re-derives nothing. By default that value is the entry's ``corrected_us`` (the op's
median less the runtime's per-call overhead it paid when timed alone), and the table's
``overhead_us`` is added once per model: a whole model pays the call overhead once, not once per
op. ``pricing="raw"`` prices the raw medians (``latency_us``) and adds nothing. ``statistic="p10"``
prices each entry's 10th percentile instead of its median (corrected by the same per-op overhead):
the low percentile of a time is what a busy device cannot inflate, so a whole model's p10 is
compared with it (``fbnet-agent validate --statistic p10``).

**The in-model context.** An op timed alone in a loop keeps its weights in the core's private cache;
inside a whole model the other layers evict them, so every layer fetches its weights again from a
shared cache or memory, and on a CPU a model runs a few to twenty percent slower than the sum of its
ops. The cost follows the bytes of weights, not the op's time: a late 4x4 layer with many channels
pays more than an early 32x32 one with few. The agent measures it in the profile run itself: a few
whole calibration models, timed in the same interleaved rounds as the ops, each against the sum of
its corrected ops. The run's **context cost** (``context_us_per_mb``, :func:`context_cost`) is the
median over those models of (model - overhead - sum of its corrected ops) / its weight megabytes;
corrected pricing adds ``context_us_per_mb x`` :func:`weight_mb` of the op to every entry (raw
pricing never does; identity skips and other weightless ops get nothing). Tables from runs that
recorded only the older scalar **context factor** (model / sum of ops, :func:`context_factor`) multiply
the corrected entries by it instead; a table that has the cost uses the cost. The search's latency
matrix, ``fbnet-search predict`` and ``fbnet-agent validate`` all go through this module, so they
cannot disagree with the table or with each other.

No torch here (the search turns ``LatencyLUT.matrix`` into a tensor). A table with missing ops is refused with
the list of them: no number is ever made up.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from fbnet.ops import OpKeyError, parse_key
from fbnet.space import CANDIDATE_NAMES, NUM_LAYERS, Arch, Space
from fbnet.wire import Table, TableEntry

Pricing = Literal["corrected", "raw"]
PRICINGS = ("corrected", "raw")
Statistic = Literal["median", "p10"]
STATISTICS = ("median", "p10")


class TableError(RuntimeError):
    """A table that cannot be obtained or does not fit the space (one-line message)."""


def fmt_missing(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# ---- reading tables ----------------------------------------------------------------------------
def parse_table(data: str | bytes | dict, origin: str) -> Table:
    try:
        if isinstance(data, dict):
            return Table.model_validate(data)
        return Table.model_validate_json(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise TableError(f"{origin} is not a latency table: {where}: {first.get('msg')}") from None


def load_table_file(path: str | os.PathLike) -> Table:
    """A table saved as JSON (the body of GET /tables/{device}, or ``fbnet-search fetch``)."""
    p = Path(path)
    if not p.is_file():
        raise TableError(f"table file {p} does not exist")
    return parse_table(p.read_bytes(), f"table file {p}")


def check_table(table: Table, space: Space, *, require_complete: bool = True) -> None:
    """Refuse a table of another space, another space version, or (by default) with missing ops."""
    if table.space != space.name:
        raise TableError(f"the table of {table.device!r} is for space {table.space!r}, not {space.name!r}")
    if table.space_version != space.version:
        raise TableError(
            f"the table of {table.device!r} was built for {space.name} version {table.space_version}, "
            f"but the local space is version {space.version}: the op lists differ, re-profile or update"
        )
    if table.unit != "us":
        raise TableError(f"table unit {table.unit!r}: only microseconds are supported")
    if require_complete and table.configuration is None and table.missing:
        raise TableError(f"the table of {table.device!r}/{space.name} is incomplete: the device has no finished "
                         "run to build it from (runs marked unstable are left out: profile again while the device "
                         f"is quiet, or use --include-unstable); {len(table.missing)} op(s) have no latency: "
                         f"{fmt_missing(sorted(table.missing))}")
    if require_complete and (not table.complete or table.missing):
        raise TableError(f"the table of {table.device!r}/{space.name} is incomplete: {len(table.missing)} "
                         f"op(s) have no latency: {fmt_missing(sorted(table.missing))}")


# ---- the overhead correction (the server's per-run summaries and the clients' pricing) -------------
def overhead_corrected_us(median_us: float, overhead_us: float) -> float:
    """An op's time less the per-call overhead it paid when timed alone: at least 0."""
    return max(0.0, median_us - overhead_us)


def overheads_by_key(extra: dict | None) -> dict[str, float]:
    """The per-input-shape overheads a run recorded in ``extra`` (non-negative numbers only)."""
    by_key = (extra or {}).get("overhead_us_by_key") or {}
    return {k: float(v) for k, v in by_key.items() if isinstance(v, int | float) and v >= 0}


def corrected_us(median_us: float, key: str, op_overhead: float | None, run_by_key: dict[str, float],
                 run_overhead: float | None) -> float | None:
    """A run's median of op ``key`` less the per-call overhead for the op's input shape, as stored with
    the op, else as the run recorded it (per shape, else its one overhead); None if unknown. What the
    server stores as each op's ``corrected_us`` (``db.summaries``)."""
    ovh = op_overhead if op_overhead is not None else run_by_key.get(key, run_overhead)
    return None if ovh is None else overhead_corrected_us(median_us, ovh)


def _check_pricing(pricing: str, statistic: str = "median") -> None:
    if pricing not in PRICINGS:
        raise TableError(f"pricing {pricing!r}: use one of {', '.join(PRICINGS)}")
    if statistic not in STATISTICS:
        raise TableError(f"statistic {statistic!r}: use one of {', '.join(STATISTICS)}")


def entry_us(e: TableEntry, table: Table, pricing: Pricing = "corrected",
             statistic: Statistic = "median", *, in_context: bool = True) -> float | None:
    """The value an entry is priced at: ``corrected_us`` plus its in-model context (module docstring;
    or the raw ``latency_us`` with ``pricing='raw'``; ``in_context=False`` leaves the context out). A
    table saved before entries carried ``corrected_us`` is corrected with its table-wide overhead. With
    ``statistic='p10'`` the entry's ``p10_us`` less the same correction (None when the entry has no
    p10: an imported table gives one number per op, and no number is made up)."""
    v = _alone_us(e, table, pricing, statistic)
    return in_context_us(v, e.key, table, pricing) if v is not None and in_context else v


def in_context_us(alone_us: float, key: str, table: Table, pricing: Pricing = "corrected") -> float:
    """An op's time as measured alone (corrected) -> its price inside a model, by the table's context:
    ``alone + context_us_per_mb x weight_mb(key)`` when the table has a context cost, else ``alone x
    context_factor`` (tables of older runs), else ``alone``; raw pricing is never changed. At least 0."""
    if pricing != "corrected":
        return alone_us
    if table.context_us_per_mb is not None:
        return max(0.0, alone_us + table.context_us_per_mb * weight_mb(key, table_precision(table)))
    return alone_us * table_context_factor(table, pricing)


BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2, "int8": 1}


def table_precision(table: Table) -> str:
    return table.configuration.precision if table.configuration is not None else "fp32"


@lru_cache(maxsize=4096)
def weight_mb(key: str, precision: str = "fp32") -> float:
    """Megabytes (1e6 bytes) of weights an op reads per call at ``precision``: its parameters (conv and
    fc weights, BN folded in) x bytes per weight; 0 for weightless ops (identity, pool) and for keys
    that are not op keys (an imported table's odd entry: no context is made up for it)."""
    try:
        op = parse_key(key)
    except OpKeyError:
        return 0.0
    return op.params * BYTES_PER_WEIGHT.get(precision, 4) / 1e6


def _alone_us(e: TableEntry, table: Table, pricing: Pricing, statistic: Statistic) -> float | None:
    """The entry's value as measured alone (no context factor)."""
    if e.latency_us is None:
        return None
    if statistic == "p10":
        median = _alone_us(e, table, pricing, "median")
        if e.p10_us is None:  # an identity skip is its one value; any other entry without a p10 is missing
            return median if e.source == "identity" else None
        return max(0.0, e.p10_us - (e.latency_us - median)) if median is not None else None
    if pricing == "raw":
        return e.latency_us
    if e.corrected_us is not None:
        return e.corrected_us
    if table.overhead_us and e.source == "measured":
        return overhead_corrected_us(e.latency_us, table.overhead_us)
    return e.latency_us


def table_context_factor(table: Table, pricing: Pricing = "corrected") -> float:
    """What corrected pricing multiplies every entry by: the table's scalar context factor when it has
    no context cost (tables of older runs), else 1.0."""
    if pricing != "corrected" or table.context_us_per_mb is not None:
        return 1.0
    return float(table.context_factor or 1.0)


def context_factor(models: list[tuple[float, float]], overhead_us: float | None) -> tuple[float, list[float | None]]:
    """``(factor, ratios)`` from calibration models, each ``(measured_us, corrected ops sum_us)`` timed in
    the same rounds: ratio = (measured - the per-model overhead) / the corrected sum (None for a model
    without a positive time and sum, aligned with ``models``); the factor is the median ratio, so one
    disturbed model cannot move it. Descriptive since the context cost (:func:`context_cost`) prices."""
    ratios = [(m - (overhead_us or 0.0)) / s if s > 0 and m > 0 else None for m, s in models]
    ok = [r for r in ratios if r is not None]
    if not ok:
        raise TableError("no calibration model with a positive time and ops sum")
    return statistics.median(ok), ratios


def context_cost(models: list[tuple[float, float, float]], overhead_us: float | None) -> tuple[float, list[float | None]]:
    """``(us_per_mb, per_model)`` from calibration models, each ``(measured_us, corrected ops sum_us,
    weight_mb)`` timed in the same rounds: per model, (measured - overhead - ops sum) / weight MB (None
    for a model without a positive time, sum and weight, aligned with ``models``); the cost is their
    median, so one disturbed model cannot move it."""
    per = [(m - (overhead_us or 0.0) - s) / w if s > 0 and m > 0 and w > 0 else None for m, s, w in models]
    ok = [c for c in per if c is not None]
    if not ok:
        raise TableError("no calibration model with a positive time, ops sum and weight")
    return statistics.median(ok), per


def model_overhead_us(table: Table, pricing: Pricing = "corrected") -> float:
    """What a whole model pays once on top of its priced ops: the per-call overhead (corrected pricing)."""
    return float(table.overhead_us or 0.0) if pricing == "corrected" else 0.0


def latencies(table: Table, keys, pricing: Pricing = "corrected", statistic: Statistic = "median", *,
              in_context: bool = True) -> tuple[dict[str, float], list[str]]:
    """The priced latency of each key (identity skips too; ``in_context=False``: as timed alone, see
    :func:`entry_us`). Returns (found, missing keys)."""
    _check_pricing(pricing, statistic)
    by_key = {e.key: e for e in table.entries}
    found: dict[str, float] = {}
    missing: list[str] = []
    for key in dict.fromkeys(keys):
        e = by_key.get(key)
        v = None if e is None else entry_us(e, table, pricing, statistic, in_context=in_context)
        if v is None or not math.isfinite(v) or v < 0:
            missing.append(key)
        else:
            found[key] = float(v)
    return found, missing


def describe(table: Table) -> str:
    """One line naming the table and the configuration it was measured in (what the CLIs print)."""
    cfg = table.configuration.describe() if table.configuration else "no configuration (no finished run)"
    ctx = (f"; context {table.context_us_per_mb:.1f} us per MB of weights" if table.context_us_per_mb is not None
           else f"; context factor {table.context_factor:.3f}" if table.context_factor else "")
    return f"table {table.version} of {table.device}/{table.space}: {cfg}{ctx}"


# ---- the supernet's matrix ----------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyLUT:
    """A device's table aligned with the supernet: ``matrix[l][i]`` is candidate i at layer l (us),
    priced by the one rule; ``fixed_us`` holds the fixed ops and the per-model overhead, so
    ``sum(matrix[l][arch[l]]) + fixed_us`` is :func:`predict`'s latency."""

    space: Space
    device: str
    table_version: str
    keys: tuple[tuple[str, ...], ...]
    matrix: tuple[tuple[float, ...], ...]
    fixed: tuple[tuple[str, float], ...]
    overhead_us: float = 0.0  # added once per model (corrected pricing)
    pricing: Pricing = "corrected"
    raw: tuple[tuple[str, float], ...] = ()  # every key's raw value (same statistic), for predict's raw_sum_us
    statistic: Statistic = "median"
    context_factor: float = 1.0  # already in the matrix and fixed values (corrected pricing); recorded here
    context_us_per_mb: float | None = None  # likewise
    alone: tuple[tuple[str, float], ...] = ()  # every key's value without the context, for predict's alone_us

    @property
    def fixed_us(self) -> float:
        return sum(v for _, v in self.fixed) + self.overhead_us

    def lookup(self) -> dict[str, float]:
        out = {k: v for row_k, row_v in zip(self.keys, self.matrix, strict=True)
               for k, v in zip(row_k, row_v, strict=True)}
        out.update(dict(self.fixed))
        return out

    def arch_latency(self, arch: Arch) -> float:
        """Table latency of an architecture (the same sum as :func:`predict`)."""
        return predict(self, arch)["latency_us"]


def _priced(table: Table, space: Space, keys: list[str], pricing: Pricing, statistic: Statistic,
            needed_by: str) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """``keys`` priced by the rule, raw, and alone (without the context); a key the table has no value
    for is an error that names it (and ``needed_by``: who needs it)."""
    found, missing = latencies(table, keys, pricing, statistic)
    if missing:
        what = "p10 latency" if statistic == "p10" else "latency"
        raise TableError(f"the table of {table.device!r}/{space.name} lacks a {what} for {len(missing)} op(s) "
                         f"{needed_by}: {fmt_missing(missing)}")
    raw, _ = latencies(table, keys, "raw", statistic)
    alone, _ = latencies(table, keys, pricing, statistic, in_context=False)
    return found, raw, alone


def build_lut(table: Table, space: Space, pricing: Pricing = "corrected",
              statistic: Statistic = "median") -> LatencyLUT:
    """Check the table (space, version, completeness) and align it with the supernet."""
    check_table(table, space)
    keys = [[space.layer_op(layer, i).key for i in range(len(CANDIDATE_NAMES))] for layer in range(NUM_LAYERS)]
    fixed_keys = [op.key for op in space.fixed_ops]
    all_keys = [k for row in keys for k in row] + fixed_keys
    found, raw, alone = _priced(table, space, all_keys, pricing, statistic, "the supernet needs")
    return LatencyLUT(
        space=space, device=table.device, table_version=table.version,
        keys=tuple(tuple(r) for r in keys),
        matrix=tuple(tuple(found[k] for k in r) for r in keys),
        fixed=tuple((k, found[k]) for k in fixed_keys),
        overhead_us=model_overhead_us(table, pricing), pricing=pricing, raw=tuple(raw.items()),
        statistic=statistic, context_factor=table_context_factor(table, pricing),
        context_us_per_mb=table.context_us_per_mb if pricing == "corrected" else None,
        alone=tuple(alone.items()),
    )


# ---- prediction ---------------------------------------------------------------------------------
def predict(source: Table | LatencyLUT, arch: Arch, space: Space | None = None, *,
            pricing: Pricing | None = None, statistic: Statistic | None = None) -> dict:
    """``{"latency_us", "per_op": [{"key", "latency_us", "raw_us", "alone_us"}], "raw_sum_us", "alone_us", "overhead_us",
    "context_factor", "context_us_per_mb", "pricing", "statistic", "ops_run"}``.

    Every op of the architecture in execution order (stem, the 22 layers, head, pool, fc), each at
    the value the one rule prices it at (module docstring: corrected entries in their model context),
    identity skips included, plus the per-model overhead once: ``latency_us = sum(per_op) + overhead_us``. ``raw_sum_us`` is the plain
    sum of the raw medians (raw p10s with ``statistic="p10"``) (what the table would predict without the correction); ``alone_us`` is the same pricing with every op
    as timed alone, without the in-model context (what the ops sum to; validate records it). A table need not
    be complete, but every op of this architecture must have a latency. With a LatencyLUT the
    pricing and statistic are the ones it was built with.
    """
    ops = space.arch_ops(arch, with_identity=True) if space is not None else None
    if isinstance(source, LatencyLUT):
        if pricing is not None and pricing != source.pricing:
            raise TableError(f"this LatencyLUT was built with pricing {source.pricing!r}, not {pricing!r}")
        if statistic is not None and statistic != source.statistic:
            raise TableError(f"this LatencyLUT was built with statistic {source.statistic!r}, not {statistic!r}")
        space, pricing, statistic = source.space, source.pricing, source.statistic
        ops = space.arch_ops(arch, with_identity=True)
        lookup, raw, overhead, factor = source.lookup(), dict(source.raw), source.overhead_us, source.context_factor
        cost, alone = source.context_us_per_mb, dict(source.alone)
    else:
        if space is None:
            raise TypeError("predict(table, arch, space): the space is needed with a Table")
        pricing, statistic = pricing or "corrected", statistic or "median"
        check_table(source, space, require_complete=False)
        lookup, raw, alone = _priced(source, space, [op.key for op in ops], pricing, statistic,
                                     "of this architecture")
        overhead, factor = model_overhead_us(source, pricing), table_context_factor(source, pricing)
        cost = source.context_us_per_mb if pricing == "corrected" else None
    per_op = [{"key": op.key, "latency_us": lookup[op.key], "raw_us": raw[op.key], "alone_us": alone[op.key]}
              for op in ops]
    latency = math.fsum(p["latency_us"] for p in per_op) + overhead
    return {"latency_us": latency, "per_op": per_op, "raw_sum_us": math.fsum(p["raw_us"] for p in per_op),
            "alone_us": math.fsum(p["alone_us"] for p in per_op) + overhead,
            "overhead_us": overhead, "context_factor": factor, "context_us_per_mb": cost,
            "pricing": pricing, "statistic": statistic,
            "ops_run": sum(not op.is_identity for op in ops)}


__all__ = ["PRICINGS", "STATISTICS", "LatencyLUT", "Pricing", "Statistic", "TableError", "build_lut", "check_table",
           "context_cost", "context_factor", "corrected_us", "describe", "entry_us", "in_context_us", "fmt_missing", "latencies", "load_table_file", "model_overhead_us",
           "overhead_corrected_us", "overheads_by_key", "parse_table", "predict", "table_context_factor", "table_precision", "weight_mb"]
