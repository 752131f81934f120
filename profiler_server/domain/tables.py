"""Latency tables: assembly of one device's measurements into one entry per op of a space."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from statistics import median

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Device, Measurement, Run
from db.models import Space as SpaceRow
from fbnet import wire
from fbnet.space import Space
from profiler_server.domain.devices import get_device
from profiler_server.domain.runs import COUNTED_STATUSES
from profiler_server.domain.spaces import resolve_space
from profiler_server.errors import NotFound

IMPORT = "import"

RULE = (
    "latency_us of an op = median of the per-run medians of this device's open or finished runs of the "
    "space, taken from the newest runtime_version that measured the op (newest = that of the most recent "
    "such run); an imported table is one run (transport 'import'). Identity skips (skip with cin == cout, "
    "stride 1) cost 0.0 by construction (source 'identity') unless an imported value exists. Ops without a "
    "value have latency_us null, source 'missing' and are listed in 'missing'. n = total samples, std_us / "
    "p10_us / p90_us = medians over the contributing runs. overhead_us = median of the contributing runs' "
    "recorded per-call overhead. version = content hash of the entries (the ETag)."
)

CSV_COLUMNS = ("key", "block", "kernel", "expansion", "groups", "cin", "h", "w", "cout", "stride",
               "latency_us", "n", "std_us", "p10_us", "p90_us", "runs", "source")


@dataclass
class _Row:
    run_id: int
    runtime_version: str
    transport: str
    overhead_us: float | None
    n: int
    median_us: float
    std_us: float
    p10_us: float
    p90_us: float


def _entry(op, layers, rows: list[_Row]) -> tuple[dict, set[int]]:
    base = {**op.fields(), "layers": list(layers)}
    if rows:
        newest = max(rows, key=lambda r: r.run_id).runtime_version
        rows = [r for r in rows if r.runtime_version == newest]
    imported = [r for r in rows if r.transport == IMPORT]
    if op.is_identity:
        if not imported:
            return {**base, "latency_us": 0.0, "n": 0, "std_us": 0.0, "p10_us": 0.0, "p90_us": 0.0,
                    "runs": 0, "source": "identity"}, set()
        rows = imported
    if not rows:
        return {**base, "latency_us": None, "n": 0, "std_us": None, "p10_us": None, "p90_us": None,
                "runs": 0, "source": "missing"}, set()
    return {
        **base,
        "latency_us": float(median(r.median_us for r in rows)),
        "n": sum(r.n for r in rows),
        "std_us": float(median(r.std_us for r in rows)),
        "p10_us": float(median(r.p10_us for r in rows)),
        "p90_us": float(median(r.p90_us for r in rows)),
        "runs": len(rows),
        "source": "imported" if all(r.transport == IMPORT for r in rows) else "measured",
    }, {r.run_id for r in rows}


def assemble(session: Session, device: Device, space: Space) -> wire.Table:
    """The table of ``device`` for ``space`` by the rule in :data:`RULE`."""
    q = (
        select(Measurement.key, Run.id, Run.runtime_version, Run.transport, Run.overhead_us, Measurement.n,
               Measurement.median_us, Measurement.std_us, Measurement.p10_us, Measurement.p90_us)
        .join(Run, Run.id == Measurement.run_id)
        .join(SpaceRow, SpaceRow.id == Run.space_id)
        .where(Run.device_id == device.id, SpaceRow.name == space.name, Run.status.in_(COUNTED_STATUSES))
    )
    by_key: dict[str, list[_Row]] = defaultdict(list)
    for key, *rest in session.execute(q).tuples():
        by_key[key].append(_Row(*rest))
    entries, contributing, overheads = [], set(), {}
    for op in space.ops:
        rows = by_key.get(op.key, [])
        for r in rows:
            overheads[r.run_id] = r.overhead_us
        e, used = _entry(op, space.op_layers[op.key], rows)
        entries.append(e)
        contributing |= used
    ovh = [overheads[i] for i in contributing if overheads.get(i) is not None]
    overhead = float(median(ovh)) if ovh else None
    missing = [e["key"] for e in entries if e["source"] == "missing"]
    blob = json.dumps({"entries": entries, "overhead_us": overhead}, sort_keys=True, separators=(",", ":"))
    version = hashlib.sha256(blob.encode()).hexdigest()[:20]
    return wire.Table(
        device=device.name, space=space.name, space_version=space.version, version=version,
        complete=not missing, missing=missing, overhead_us=overhead, rule=RULE,
        entries=[wire.TableEntry(**e) for e in entries],
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
    table: wire.Table
    json_bytes: bytes
    etag: str
    _csv: bytes | None = field(default=None, repr=False)

    @property
    def csv_bytes(self) -> bytes:
        if self._csv is None:
            self._csv = to_csv(self.table).encode()
        return self._csv


class TableCache:
    """Assembled tables per (device, space, device generation); any write to a device bumps its
    generation, so a hit is always current, also with several server processes."""

    def __init__(self, size: int = 256):
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, CachedTable] = OrderedDict()

    def get(self, session: Session, device_name: str, space_name: str) -> CachedTable:
        space = resolve_space(space_name)
        # the hot path: one narrow query, no ORM object
        row = session.execute(select(Device.id, Device.table_gen).where(Device.name == device_name)).first()
        if row is None:
            raise NotFound(f"unknown device {device_name!r}")
        key = (row[0], space.name, space.version, row[1])
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        table = assemble(session, get_device(session, device_name), space)
        item = CachedTable(table, table.model_dump_json().encode(), f'"{table.version}"')
        with self._lock:
            self._items[key] = item
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return item

    def table(self, session: Session, device_name: str, space_name: str) -> wire.Table:
        return self.get(session, device_name, space_name).table


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    return any(t == "*" or t.removeprefix("W/") == etag for t in tags)
