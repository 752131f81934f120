"""A consistent copy of a live SQLite database through SQLite's online backup API."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlalchemy.engine import make_url

from db.engine import is_sqlite


class BackupError(ValueError):
    """The database cannot be backed up this way (not SQLite, missing file, bad target)."""


def backup_sqlite(url: str, target: str | os.PathLike, pages_per_step: int = 1024) -> int:
    """Copy the SQLite database at ``url`` to ``target`` while it may be in use; returns the size in
    bytes. The copy is written beside the target and renamed into place, so a half-written backup
    never carries the target's name."""
    if not is_sqlite(url):
        raise BackupError("backup copies SQLite databases; for PostgreSQL use pg_dump (see the README)")
    source = make_url(url).database
    if not source or source == ":memory:" or not Path(source).exists():
        raise BackupError(f"no SQLite database file at {source!r}")
    target = Path(target)
    if target.resolve() == Path(source).resolve():
        raise BackupError("the backup must not overwrite the database itself")
    if not target.parent.is_dir():
        raise BackupError(f"folder {str(target.parent)!r} does not exist")
    tmp = target.with_name(f".{target.name}.partial")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(tmp)
    try:
        # small steps let the service's writers in between; pages changed meanwhile are re-copied
        src.backup(dst, pages=pages_per_step, sleep=0.005)
        dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained single file
    finally:
        dst.close()
        src.close()
    os.replace(tmp, target)
    return target.stat().st_size
