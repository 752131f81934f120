"""Latency tables: assembly of one device's measurements into one entry per op of a space."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import median

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ConfigOp, Device, OpStat, Run
from db.models import Space as SpaceRow
from db.summaries import run_configuration
from fbnet import wire
from fbnet.configuration import SELECTOR_FIELDS, Configuration, Selector
from fbnet.space import Space
from fbnet.space_v2 import SpaceV2, get_v2_space, is_v2_space
from profiler_server.domain.devices import get_device
from profiler_server.domain.runs import COUNTED_STATUSES
from profiler_server.domain.spaces import resolve_any_space, resolve_space
from profiler_server.errors import Invalid, NotFound

DEFAULT_MAX_RUNS = 16  # the newest runs per op a table takes (FBNET_TABLE_RUNS)

_RULE = (
    "A table is built from the FINISHED runs of ONE configuration of the device (precision, runtime, "
    "runtime_version, threads, cpu_mask, compute_units; an imported table is a configuration of its own); "
    "open, failed and aborted runs never count, runs marked unstable only with include_unstable. "
    "Selectors left unspecified pick the device's newest complete configuration (newest = highest run id), "
    "else its newest. Per op, the newest {max_runs} of those runs that measured it contribute (older ones are "
    "kept, not served: a table costs the same after a year of re-profiling). latency_us of an op = median of "
    "the contributing runs' medians (raw, as measured alone); "
    "corrected_us = median over the runs of (run median - that run's per-call overhead for the op's input "
    "shape), at least 0; it equals latency_us when no overhead was recorded (imports). Clients price "
    "corrected_us and add the table's overhead_us once per model (fbnet.lut). Identity skips (skip with "
    "cin == cout, stride 1) cost 0.0 by construction (source 'identity') unless an imported value exists. "
    "Ops without a value have latency_us null, source 'missing' and are listed in 'missing'. n = total "
    "samples, std_us / p10_us / p90_us = medians over the contributing runs, run_ids = those runs. "
    "overhead_us = median of the contributing runs' recorded per-call overhead. context_factor = median of "
    "the contributing runs' context factors (whole calibration models timed in the run / the sum of their "
    "corrected ops), null when none was measured. context_us_per_mb = median of the contributing runs' context "
    "costs ((calibration model - overhead - the sum of its corrected ops) / its weight MB), null when none was "
    "measured; clients price corrected_us + context_us_per_mb x the op's weight MB, or, in a table with only a "
    "context_factor, corrected_us x context_factor (fbnet.lut). version = content hash of "
    "the configuration and the entries (the ETag)."
)


def rule(max_runs: int = DEFAULT_MAX_RUNS) -> str:
    """The assembly rule as served in every table, for a window of ``max_runs`` runs per op."""
    return _RULE.format(max_runs=max_runs)


RULE = rule()

CSV_COLUMNS = ("key", "block", "kernel", "expansion", "groups", "cin", "h", "w", "cout", "stride",
               "latency_us", "corrected_us", "n", "std_us", "p10_us", "p90_us", "runs", "source")


@dataclass
class RunInfo:
    id: int
    config: Configuration
    unstable: bool
    overhead_us: float | None
    context_factor: float | None = None
    context_us_per_mb: float | None = None


@dataclass
class _Row:
    """One finished run's summary of one op (``op_stats``)."""

    run_id: int
    n: int
    median_us: float
    corrected_us: float | None
    std_us: float
    p10_us: float
    p90_us: float


def space_id(session: Session, space: Space) -> int | None:
    return session.execute(select(SpaceRow.id).where(SpaceRow.name == space.name)).scalar()


def finished_runs(session: Session, device: Device, space: Space) -> list[RunInfo]:
    q = (
        select(Run.id, Run.precision, Run.runtime, Run.runtime_version, Run.threads, Run.cpu_mask,
               Run.compute_units, Run.transport, Run.unstable, Run.overhead_us, Run.context_factor,
               Run.context_us_per_mb)
        .join(SpaceRow, SpaceRow.id == Run.space_id)
        .where(Run.device_id == device.id, SpaceRow.name == space.name, Run.status.in_(COUNTED_STATUSES))
        .order_by(Run.id)
    )
    return [RunInfo(rid, run_configuration(*cfg), bool(unstable), ovh, ctx, cost)
            for rid, *cfg, unstable, ovh, ctx, cost in session.execute(q).tuples()]


def op_keys(space: Space | SpaceV2) -> tuple[frozenset[str], frozenset[str]]:
    """The keys of ``space``'s ops (a v2 space: its grid) and those of its identity skips."""
    return _op_keys(space.name, space.version)


@lru_cache(maxsize=32)
def _op_keys(name: str, version: str) -> tuple[frozenset[str], frozenset[str]]:
    if is_v2_space(name):  # the grid is by key already
        grid = get_v2_space(name).grid
        return frozenset(grid), frozenset(k for k, op in grid.items() if op.is_identity)
    ops = resolve_space(name).ops
    return frozenset(op.key for op in ops), frozenset(op.key for op in ops if op.is_identity)


def configurations(session: Session, device: Device, space: Space | SpaceV2, *, include_unstable: bool = False,
                   runs: list[RunInfo] | None = None) -> list[wire.ConfigurationOut]:
    """Every configuration of the device's finished runs of ``space``, oldest first, with coverage."""
    runs = finished_runs(session, device, space) if runs is None else runs
    return _configurations(session, device, space, space_id(session, space), runs, include_unstable)[0]


def _configurations(session: Session, device: Device, space: Space | SpaceV2, sp_id: int | None, runs: list[RunInfo],
                    include_unstable: bool) -> tuple[list[wire.ConfigurationOut], dict[str, set[str]]]:
    """:func:`configurations`, and per configuration the keys of the space's ops it has rows for."""
    # coverage from the per-configuration counters: one row per (configuration, op), not per measurement
    measured: dict[str, set[str]] = defaultdict(set)
    if runs:
        q = select(ConfigOp.config_id, ConfigOp.key, ConfigOp.n_stable, ConfigOp.n_unstable).where(
            ConfigOp.device_id == device.id, ConfigOp.space_id == sp_id)
        for cid, key, n_stable, n_unstable in session.execute(q).tuples():
            if n_stable or (include_unstable and n_unstable):
                measured[cid].add(key)
    groups: dict[Configuration, list[RunInfo]] = {}
    for r in runs:
        groups.setdefault(r.config, []).append(r)
    ops, identity = op_keys(space)
    out, covered = [], {}
    for cfg, rs in groups.items():
        used = [r for r in rs if include_unstable or not r.unstable]
        covered[cfg.config_id] = got = measured[cfg.config_id] & ops if used else set()
        if used and not cfg.imported:
            got = got | identity
        out.append(wire.ConfigurationOut(
            **cfg.model_dump(), id=cfg.config_id, runs=[r.id for r in used],
            unstable_runs=[r.id for r in rs if r.unstable], ops=len(ops), covered=len(got),
            complete=bool(used) and len(got) == len(ops), newest_run=max(r.id for r in rs), default=False))
    default = pick(out, Selector(include_unstable=include_unstable), device.name, space.name)
    out = [c.model_copy(update={"default": True}) if default is not None and c.id == default.id else c for c in out]
    return out, covered


def pick(configs: list[wire.ConfigurationOut], selector: Selector, device: str,
         space: str) -> wire.ConfigurationOut | None:
    """The configuration ``selector`` names: the newest complete match, else the newest match."""
    usable = [c for c in configs if c.runs]
    cand = [c for c in usable if selector.matches(c)]
    if not cand:
        if not usable and not any(getattr(selector, k) is not None for k in SELECTOR_FIELDS):
            return None
        have = "; ".join(Configuration(**c.model_dump(include=set(Configuration.model_fields))).describe()
                         for c in usable) or "none (no finished run)"
        shaky = sum(len(c.unstable_runs) for c in configs if selector.matches(c))
        hint = (f"; {shaky} matching run(s) are marked unstable (include_unstable=true uses them)"
                if shaky and not selector.include_unstable else "")
        raise NotFound(f"device {device!r} has no configuration of {space} with {selector.describe()}; "
                       f"configurations with finished runs: {have}{hint}")
    complete = [c for c in cand if c.complete]
    return max(complete or cand, key=lambda c: c.newest_run)


def _entry(op, layers, rows: list[_Row], imported: bool) -> dict:
    base = {**op.fields(), "layers": list(layers)}
    if op.is_identity and not (imported and rows):
        return {**base, "latency_us": 0.0, "corrected_us": 0.0, "n": 0, "std_us": 0.0, "p10_us": 0.0,
                "p90_us": 0.0, "runs": 0, "run_ids": [], "source": "identity"}
    if not rows:
        return {**base, "latency_us": None, "corrected_us": None, "n": 0, "std_us": None, "p10_us": None,
                "p90_us": None, "runs": 0, "run_ids": [], "source": "missing"}
    latency = float(median(r.median_us for r in rows))
    corrected = [c for r in rows if (c := r.corrected_us) is not None]
    return {
        **base,
        "latency_us": latency,
        "corrected_us": float(median(corrected)) if corrected and not imported else latency,
        "n": sum(r.n for r in rows),
        "std_us": float(median(r.std_us for r in rows)),
        "p10_us": float(median(r.p10_us for r in rows)),
        "p90_us": float(median(r.p90_us for r in rows)),
        "runs": len(rows),
        "run_ids": sorted(r.run_id for r in rows),
        "source": "imported" if imported else "measured",
    }


def _newest_rows(session: Session, config_id: str, run_ids: list[int], covered: set[str], max_runs: int,
                 include_unstable: bool) -> dict[str, list[_Row]]:
    """Per op of ``covered``, the summaries of the newest ``max_runs`` of ``run_ids`` that measured it. Reads
    the runs newest first in growing batches (max_runs, then 4x, ...) and stops when every covered op has
    its max_runs rows or the runs run out: with complete runs one batch of max_runs runs, however long the
    device's history (no sort or scan of every run's rows, in time or in memory)."""
    pending = set(covered)
    order = sorted(run_ids, reverse=True)
    got: dict[str, list[_Row]] = defaultdict(list)
    start, batch = 0, max_runs
    while pending and start < len(order):
        ids = order[start:start + batch]
        start, batch = start + batch, batch * 4
        q = (select(OpStat.key, OpStat.run_id, OpStat.n, OpStat.median_us, OpStat.corrected_us, OpStat.std_us,
                    OpStat.p10_us, OpStat.p90_us)
             .where(OpStat.run_id.in_(ids), OpStat.config_id == config_id, OpStat.key.in_(sorted(pending))))
        if not include_unstable:
            q = q.where(OpStat.unstable.is_(False))
        for key, rid, *vals in sorted(session.execute(q).tuples(), key=lambda r: -r[1]):  # newest first
            if len(got[key]) < max_runs:
                got[key].append(_Row(rid, *vals))
        pending = {k for k in pending if len(got[k]) < max_runs}
    return got


def assemble(session: Session, device: Device, space: Space, selector: Selector | None = None,
             max_runs: int = DEFAULT_MAX_RUNS) -> wire.Table:
    """The table of ``device`` for ``space`` in the configuration ``selector`` picks (rule: :func:`rule`),
    each op from the newest ``max_runs`` runs that measured it."""
    selector = selector or Selector()
    runs = finished_runs(session, device, space)
    configs, covered = _configurations(session, device, space, space_id(session, space), runs,
                                       selector.include_unstable)
    chosen = pick(configs, selector, device.name, space.name)
    by_key: dict[str, list[_Row]] = defaultdict(list)
    cfg = None
    if chosen is not None:
        cfg = Configuration(**chosen.model_dump(include=set(Configuration.model_fields)))
        # the summaries of the chosen configuration's runs only (op_stats), never the measurements
        by_key = _newest_rows(session, chosen.id, chosen.runs, covered[chosen.id], max_runs,
                              selector.include_unstable)
    imported = bool(cfg and cfg.imported)
    entries = [_entry(op, space.op_layers[op.key], by_key.get(op.key, []), imported) for op in space.ops]
    # the run-level numbers are the medians over the runs that gave the table a row (none for imports)
    contributing = [r for r in runs if r.id in {row.run_id for rows in by_key.values() for row in rows}]

    def over_runs(attr: str) -> float | None:
        vals = [v for r in contributing if (v := getattr(r, attr)) is not None]
        return float(median(vals)) if vals and not imported else None

    overhead, context, cost = over_runs("overhead_us"), over_runs("context_factor"), over_runs("context_us_per_mb")
    missing = [e["key"] for e in entries if e["source"] == "missing"]
    # the factor joins the hashed content only when there is one: tables without it keep their versions
    blob = json.dumps({"entries": entries, "overhead_us": overhead, "configuration": cfg and cfg.model_dump(),
                       "include_unstable": selector.include_unstable,
                       **({"context_factor": context} if context is not None else {}),
                       **({"context_us_per_mb": cost} if cost is not None else {})},
                      sort_keys=True, separators=(",", ":"))
    version = hashlib.sha256(blob.encode()).hexdigest()[:20]
    # built from stored, already validated values: constructed without re-validating every entry (the
    # wire models' request checks walk each value; that was most of an assembly's time)
    return wire.Table.model_construct(
        device=device.name, space=space.name, space_version=space.version, version=version, unit="us",
        complete=not missing, missing=missing, overhead_us=overhead, context_factor=context,
        context_us_per_mb=cost, configuration=cfg,
        rule=rule(max_runs),
        entries=[wire.TableEntry.model_construct(**e) for e in entries],
    )


def to_csv(table: wire.Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for e in table.entries:
        d = e.model_dump()
        w.writerow(["" if d[c] is None else d[c] for c in CSV_COLUMNS])
    return buf.getvalue()


@dataclass
class CachedTable:
    table: wire.Table | wire.GridTable
    json_bytes: bytes
    etag: str
    _csv: bytes | None = field(default=None, repr=False)
    fit: object | None = field(default=None, repr=False)  # a v2 table's GridFit (domain.grid)
    csv_fn: Callable[[object], str] | None = field(default=None, repr=False)  # a v2 table's (domain.grid)

    @property
    def csv_bytes(self) -> bytes:
        if self._csv is None:
            self._csv = (self.csv_fn or to_csv)(self.table).encode()
        return self._csv


class TableCache:
    """Assembled tables per (device, space, device generation); any write to a device bumps its
    generation, so a hit is always current, also with several server processes."""

    def __init__(self, size: int = 256, max_runs: int = DEFAULT_MAX_RUNS, grid_assembler: Callable | None = None):
        """``grid_assembler(session, device, space, selector, max_runs) -> CachedTable`` serves v2 spaces
        (:func:`profiler_server.domain.grid.cached_grid_table`; None: v2 spaces are refused)."""
        self._size, self.max_runs, self._grid = size, max_runs, grid_assembler
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, CachedTable] = OrderedDict()

    def peek(self, device_id: int, gen: int, space_name: str, selector: Selector | None = None) -> CachedTable | None:
        """The cached table of generation ``gen`` of the device, if there is one (no database access)."""
        space = resolve_any_space(space_name)
        key = (device_id, space.name, space.version, gen, selector or Selector())
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def get(self, session: Session, device_name: str, space_name: str,
            selector: Selector | None = None) -> CachedTable:
        selector = selector or Selector()
        space = resolve_any_space(space_name)
        # the hot path: one narrow query, no ORM object
        row = session.execute(select(Device.id, Device.table_gen).where(Device.name == device_name)).first()
        if row is None:
            raise NotFound(f"unknown device {device_name!r}")
        if (hit := self.peek(row[0], row[1], space_name, selector)) is not None:
            return hit
        key = (row[0], space.name, space.version, row[1], selector)
        item = self._assemble(session, get_device(session, device_name), space, selector)
        with self._lock:
            # older generations of this table can never be asked for again: drop them (flat memory
            # under steady uploads, instead of a cache full of superseded tables)
            for stale in [k for k in self._items if k[:3] == key[:3] and k[3] < key[3]]:  # (device, space, version, gen, ...)
                del self._items[stale]
            self._items[key] = item
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return item

    def _assemble(self, session: Session, device: Device, space: Space | SpaceV2, selector: Selector) -> CachedTable:
        if isinstance(space, SpaceV2):  # the grid: measured entries, the rest fitted (domain.grid)
            if self._grid is None:
                raise Invalid(f"{space.name} is a v2 space; this table cache serves v1 spaces only")
            return self._grid(session, device, space, selector, self.max_runs)
        table = assemble(session, device, space, selector, self.max_runs)
        return CachedTable(table, table.model_dump_json().encode(), f'"{table.version}"')

    def table(self, session: Session, device_name: str, space_name: str,
              selector: Selector | None = None) -> wire.Table | wire.GridTable:
        return self.get(session, device_name, space_name, selector).table


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return any(t == "*" or t.removeprefix("W/") == etag for t in tags)
