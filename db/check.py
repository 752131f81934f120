"""Consistency of a stored database: what a crash must never leave behind.

SQLite: ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check``. Every engine: no measurement,
import or validation pointing at a missing run, device or space; no op stored twice in one run;
every run at its device's space; the schema at the newest migration.
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
