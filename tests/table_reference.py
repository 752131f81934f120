"""The table rule as it was defined before summaries (issue 12): every measurement of the device read
directly. Kept verbatim as the reference the summary-based assembly must reproduce (tests only)."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from statistics import median

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Device, Measurement, Run
from db.models import Space as SpaceRow
from fbnet import wire
from fbnet.configuration import Configuration, Selector
from fbnet.space import Space
from profiler_server.domain.runs import COUNTED_STATUSES
from profiler_server.domain.tables import RULE, pick

IMPORT = "import"


@dataclass
class RunInfo:
    id: int
    config: Configuration
    unstable: bool
    overhead_us: float | None
    overhead_by_key: dict


@dataclass
class _Row:
    key: str
    run: RunInfo
    n: int
    median_us: float
    std_us: float
    p10_us: float
    p90_us: float
    overhead_us: float | None = None

    @property
    def corrected_us(self) -> float | None:
        """The run's median less the per-call overhead for this op's input shape, as stored with the op,
        else as the run recorded it (None if unknown)."""
        ovh = self.overhead_us
        if ovh is None:
            ovh = self.run.overhead_by_key.get(self.key, self.run.overhead_us)
        return None if ovh is None else max(0.0, self.median_us - ovh)


def reference_finished_runs(session: Session, device: Device, space: Space) -> list[RunInfo]:
    q = (
        select(Run.id, Run.precision, Run.runtime, Run.runtime_version, Run.threads, Run.cpu_mask,
               Run.compute_units, Run.transport, Run.unstable, Run.overhead_us, Run.extra)
        .join(SpaceRow, SpaceRow.id == Run.space_id)
        .where(Run.device_id == device.id, SpaceRow.name == space.name, Run.status.in_(COUNTED_STATUSES))
        .order_by(Run.id)
    )
    out = []
    for rid, prec, rt, rtv, thr, mask, units, transport, unstable, ovh, extra in session.execute(q).tuples():
        cfg = Configuration(precision=prec, runtime=rt, runtime_version=rtv, threads=thr, cpu_mask=mask,
                            compute_units=units, imported=transport == IMPORT)
        by_key = (extra or {}).get("overhead_us_by_key") or {}
        by_key = {k: float(v) for k, v in by_key.items() if isinstance(v, int | float) and v >= 0}
        out.append(RunInfo(rid, cfg, bool(unstable), ovh, by_key))
    return out


def reference_configurations(session: Session, device: Device, space: Space, *, include_unstable: bool = False,
                   runs: list[RunInfo] | None = None) -> list[wire.ConfigurationOut]:
    """Every configuration of the device's finished runs of ``space``, oldest first, with coverage."""
    runs = reference_finished_runs(session, device, space) if runs is None else runs
    keys: dict[int, set[str]] = defaultdict(set)
    if runs:
        q = select(Measurement.run_id, Measurement.key).where(Measurement.run_id.in_([r.id for r in runs]))
        for rid, key in session.execute(q).tuples():
            keys[rid].add(key)
    groups: dict[Configuration, list[RunInfo]] = {}
    for r in runs:
        groups.setdefault(r.config, []).append(r)
    ops = set(space.op_by_key)
    identity = {op.key for op in space.ops if op.is_identity}
    out = []
    for cfg, rs in groups.items():
        used = [r for r in rs if include_unstable or not r.unstable]
        got = set().union(*(keys[r.id] for r in used)) & ops if used else set()
        if used and not cfg.imported:
            got |= identity
        out.append(wire.ConfigurationOut(
            **cfg.model_dump(), id=cfg.config_id, runs=[r.id for r in used],
            unstable_runs=[r.id for r in rs if r.unstable], ops=len(ops), covered=len(got),
            complete=bool(used) and len(got) == len(ops), newest_run=max(r.id for r in rs), default=False))
    default = pick(out, Selector(include_unstable=include_unstable), device.name, space.name)
    return [c.model_copy(update={"default": True}) if default is not None and c.id == default.id else c for c in out]


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
        "run_ids": sorted(r.run.id for r in rows),
        "source": "imported" if imported else "measured",
    }


def reference_assemble(session: Session, device: Device, space: Space, selector: Selector | None = None) -> wire.Table:
    """The table of ``device`` for ``space`` in the configuration ``selector`` picks (rule: :data:`RULE`)."""
    selector = selector or Selector()
    runs = reference_finished_runs(session, device, space)
    configs = reference_configurations(session, device, space, include_unstable=selector.include_unstable, runs=runs)
    chosen = pick(configs, selector, device.name, space.name)
    by_key: dict[str, list[_Row]] = defaultdict(list)
    cfg = None
    if chosen is not None:
        cfg = Configuration(**chosen.model_dump(include=set(Configuration.model_fields)))
        infos = {r.id: r for r in runs if r.id in set(chosen.runs)}
        q = (select(Measurement.key, Measurement.run_id, Measurement.n, Measurement.median_us, Measurement.std_us,
                    Measurement.p10_us, Measurement.p90_us, Measurement.overhead_us).where(Measurement.run_id.in_(list(infos))))
        for key, rid, *vals in session.execute(q).tuples():
            by_key[key].append(_Row(key, infos[rid], *vals))
    imported = bool(cfg and cfg.imported)
    entries = [_entry(op, space.op_layers[op.key], by_key.get(op.key, []), imported) for op in space.ops]
    contributing = {r.run.id: r.run.overhead_us for rows in by_key.values() for r in rows}
    ovh = [v for v in contributing.values() if v is not None]
    overhead = float(median(ovh)) if ovh and not imported else None
    missing = [e["key"] for e in entries if e["source"] == "missing"]
    blob = json.dumps({"entries": entries, "overhead_us": overhead, "configuration": cfg and cfg.model_dump(),
                       "include_unstable": selector.include_unstable}, sort_keys=True, separators=(",", ":"))
    version = hashlib.sha256(blob.encode()).hexdigest()[:20]
    return wire.Table(
        device=device.name, space=space.name, space_version=space.version, version=version,
        complete=not missing, missing=missing, overhead_us=overhead, configuration=cfg, rule=RULE,
        entries=[wire.TableEntry(**e) for e in entries],
    )
