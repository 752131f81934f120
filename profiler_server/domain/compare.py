"""Per-op latency ratio of two tables over one space: two devices, or two configurations of one."""

from __future__ import annotations

import math

from fbnet import wire
from profiler_server.errors import Invalid


def compare(space: str, a: wire.Table, b: wire.Table) -> wire.CompareOut:
    if a.device == b.device and a.configuration == b.configuration:
        raise Invalid("compare needs two different devices, or two configurations of one device "
                      "(a_precision=..., b_precision=..., a_threads=..., ...)")
    b_by_key = {e.key: e for e in b.entries}
    entries, logs = [], []
    for ea in a.entries:
        eb = b_by_key[ea.key]
        ratio = None
        if ea.latency_us is not None and eb.latency_us is not None and ea.latency_us > 0 and eb.latency_us > 0:
            ratio = ea.latency_us / eb.latency_us
            logs.append(math.log(ratio))
        fields = ea.model_dump(include=set(wire.OpFields.model_fields))
        entries.append(wire.CompareEntry(**fields, a_us=ea.latency_us, b_us=eb.latency_us, ratio=ratio))
    geomean = math.exp(sum(logs) / len(logs)) if logs else None
    return wire.CompareOut(space=space, a=a.device, b=b.device, a_configuration=a.configuration,
                           b_configuration=b.configuration, entries=entries, geomean_ratio=geomean)
