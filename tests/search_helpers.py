"""Shared helpers of the search tests: latency tables built through the real wire schema."""

from __future__ import annotations

import hashlib
import json

from fbnet.space import Space
from fbnet.wire import Table, TableEntry


def macs_table(space: Space, device: str = "macs-proxy", *, us_per_mmac: float = 20.0, base_us: float = 5.0,
               drop: tuple[str, ...] = ()) -> Table:
    """A complete table whose latencies are an affine function of each op's MACs (a cost model for
    unit tests, not a measurement). ``drop`` leaves keys out and marks them missing."""
    entries, missing = [], []
    for op in space.ops:
        layers = list(space.op_layers[op.key])
        if op.key in drop:
            missing.append(op.key)
            entries.append(TableEntry(**op.fields(), latency_us=None, source="missing", layers=layers))
            continue
        if op.is_identity:
            entries.append(TableEntry(**op.fields(), latency_us=0.0, source="identity", layers=layers))
            continue
        lat = base_us + us_per_mmac * op.macs / 1e6
        entries.append(TableEntry(**op.fields(), latency_us=lat, n=10, std_us=0.01 * lat, runs=1,
                                  source="measured", layers=layers))
    blob = json.dumps([e.model_dump() for e in entries], sort_keys=True).encode()
    return Table(device=device, space=space.name, space_version=space.version,
                 version=hashlib.sha256(blob).hexdigest()[:16], complete=not missing, missing=missing,
                 overhead_us=None, rule="test: base + us_per_mmac * MACs", entries=entries)
