"""What table assembly reads: per-run per-op summaries and per-configuration coverage counters.

When a run finishes (or an import is stored), in the same transaction, every op it measured becomes
one narrow ``op_stats`` row (the run's median, the overhead-corrected median of
:func:`fbnet.lut.corrected_us`, n, std, p10, p90, the run's configuration and stability), and
``config_ops`` counts, per (device, space, configuration, op), the stable and unstable runs that
measured it. A table then reads the summaries of ONE
configuration and the configuration list reads the counters: never the samples, never another
configuration's runs. Finished runs never change, so the summaries never need updating; migration
0005 fills them for the runs finished before it.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from db.models import ConfigOp, Measurement, OpStat, Run
from fbnet.configuration import Configuration
from fbnet.lut import corrected_us, overheads_by_key  # the table maths live in fbnet.lut (torch-free)

IMPORT = "import"  # the transport of an imported table: a configuration of its own
FINISHED = "finished"


def run_configuration(precision, runtime, runtime_version, threads, cpu_mask, compute_units,
                      transport) -> Configuration:
    return Configuration(precision=precision, runtime=runtime, runtime_version=runtime_version, threads=threads,
                         cpu_mask=cpu_mask, compute_units=compute_units, imported=transport == IMPORT)


def _insert(bind):
    dialect = bind.dialect.name if hasattr(bind, "dialect") else bind.get_bind().dialect.name
    return pg_insert if dialect == "postgresql" else sqlite_insert


def summarize_run(bind, run_id: int) -> int:
    """Store the summaries of the finished run ``run_id`` (``bind``: a Session or a Connection, in the
    transaction that finishes it) and count them into its configuration's coverage. Returns how many
    were new: a second call for the same run adds and counts nothing."""
    r = bind.execute(select(Run.device_id, Run.space_id, Run.precision, Run.runtime, Run.runtime_version,
                            Run.threads, Run.cpu_mask, Run.compute_units, Run.transport, Run.unstable,
                            Run.overhead_us, Run.extra).where(Run.id == run_id)).one()
    cfg = run_configuration(r.precision, r.runtime, r.runtime_version, r.threads, r.cpu_mask, r.compute_units,
                            r.transport)
    by_key, unstable = overheads_by_key(r.extra), bool(r.unstable)
    q = select(Measurement.key, Measurement.n, Measurement.median_us, Measurement.std_us, Measurement.p10_us,
               Measurement.p90_us, Measurement.overhead_us).where(Measurement.run_id == run_id)
    rows = [{"run_id": run_id, "key": key, "device_id": r.device_id, "space_id": r.space_id,
             "config_id": cfg.config_id, "unstable": unstable, "n": n, "median_us": med,
             "corrected_us": corrected_us(med, key, ovh, by_key, r.overhead_us), "std_us": std, "p10_us": p10,
             "p90_us": p90}
            for key, n, med, std, p10, p90, ovh in bind.execute(q).tuples()]
    if not rows:
        return 0
    insert = _insert(bind)
    stmt = insert(OpStat).on_conflict_do_nothing(index_elements=["run_id", "key"]).returning(OpStat.key)
    new = [k for (k,) in bind.execute(stmt, rows).tuples()]
    if new:
        count = insert(ConfigOp)
        t = ConfigOp.__table__.c
        count = count.on_conflict_do_update(
            index_elements=["device_id", "space_id", "config_id", "key"],
            set_={"n_stable": t.n_stable + count.excluded.n_stable, "n_unstable": t.n_unstable + count.excluded.n_unstable})
        bind.execute(count, [{"device_id": r.device_id, "space_id": r.space_id, "config_id": cfg.config_id, "key": k,
                              "n_stable": int(not unstable), "n_unstable": int(unstable)} for k in new])
    return len(new)


def summarize_finished(bind) -> int:
    """Summaries for every finished run that has none yet (migration 0005); returns how many were new."""
    return sum(summarize_run(bind, rid) for (rid,) in
               bind.execute(select(Run.id).where(Run.status == FINISHED).order_by(Run.id)).tuples())
