"""Consistency of a stored database: what a crash must never leave behind.

SQLite: ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check``. Every engine: no measurement,
import or validation pointing at a missing run, device or space; no op stored twice in one run;
every run at its device's space; the table summaries agree with the measurements; the schema at
the newest migration.
"""

from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from db.engine import make_engine
from db.migrate import alembic_config

ORPHANS = {
    "measurements without their run": "SELECT count(*) FROM measurements m LEFT JOIN runs r ON r.id = m.run_id "
                                      "WHERE r.id IS NULL",
    "runs without their device": "SELECT count(*) FROM runs r LEFT JOIN devices d ON d.id = r.device_id "
                                 "WHERE d.id IS NULL",
    "runs without their space": "SELECT count(*) FROM runs r LEFT JOIN spaces s ON s.id = r.space_id "
                                "WHERE s.id IS NULL",
    "tokens without their device": "SELECT count(*) FROM device_tokens t LEFT JOIN devices d "
                                   "ON d.id = t.device_id WHERE d.id IS NULL",
    "imports without their run": "SELECT count(*) FROM imported_tables i LEFT JOIN runs r ON r.id = i.run_id "
                                 "WHERE r.id IS NULL",
    "ops stored twice in one run": "SELECT count(*) FROM (SELECT run_id, key FROM measurements "
                                   "GROUP BY run_id, key HAVING count(*) > 1) AS dup",
    "runs of an unknown status": "SELECT count(*) FROM runs WHERE status NOT IN "
                                 "('open', 'finished', 'failed', 'aborted')",
    # the summaries tables are assembled from (db/summaries.py) agree with the measurements
    "measurements of finished runs without a summary": (
        "SELECT count(*) FROM measurements m JOIN runs r ON r.id = m.run_id LEFT JOIN op_stats o "
        "ON o.run_id = m.run_id AND o.key = m.key WHERE r.status = 'finished' AND o.run_id IS NULL"),
    "summaries of no measurement of a finished run, or with another median": (
        "SELECT count(*) FROM op_stats o JOIN runs r ON r.id = o.run_id LEFT JOIN measurements m "
        "ON m.run_id = o.run_id AND m.key = o.key WHERE r.status <> 'finished' OR m.id IS NULL "
        "OR m.median_us <> o.median_us"),
    "coverage counters that disagree with the summaries": (
        "SELECT count(*) FROM (SELECT device_id, space_id, config_id, key, "
        "sum(CASE WHEN unstable THEN 0 ELSE 1 END) AS s, sum(CASE WHEN unstable THEN 1 ELSE 0 END) AS u "
        "FROM op_stats GROUP BY device_id, space_id, config_id, key) g LEFT JOIN config_ops c "
        "ON c.device_id = g.device_id AND c.space_id = g.space_id AND c.config_id = g.config_id AND c.key = g.key "
        "WHERE c.key IS NULL OR c.n_stable <> g.s OR c.n_unstable <> g.u"),
    "coverage counters without a summary": (
        "SELECT count(*) FROM config_ops c WHERE NOT EXISTS (SELECT 1 FROM op_stats o WHERE o.device_id = "
        "c.device_id AND o.space_id = c.space_id AND o.config_id = c.config_id AND o.key = c.key)"),
}


def check_database(url: str) -> list[str]:
    """Problems found (empty: consistent)."""
    problems = []
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                rows = [r[0] for r in conn.exec_driver_sql("PRAGMA integrity_check")]
                if rows != ["ok"]:
                    problems += [f"integrity_check: {r}" for r in rows]
                problems += [f"foreign_key_check: {tuple(r)}" for r in conn.exec_driver_sql("PRAGMA foreign_key_check")]
            for what, sql in ORPHANS.items():
                if n := conn.execute(text(sql)).scalar_one():
                    problems.append(f"{n} {what}")
            current = MigrationContext.configure(conn).get_current_heads()
            head = ScriptDirectory.from_config(alembic_config(url)).get_heads()
            if set(current) != set(head):
                problems.append(f"schema at {current}, migrations head {head}")
    finally:
        engine.dispose()
    return problems
