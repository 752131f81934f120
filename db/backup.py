"""A consistent copy of a live SQLite database through SQLite's online backup API."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from sqlalchemy.engine import make_url

from db.engine import is_sqlite

# what SQLite may write beside the copy while it is being made
_SIDE_FILES = ("-journal", "-wal", "-shm")


class BackupError(ValueError):
    """The database cannot be backed up this way (not SQLite, missing file, bad target), or the copy failed."""


def _checked_paths(url: str, target: str | os.PathLike) -> tuple[Path, Path]:
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
    return Path(source), target


def _remove(tmp: Path) -> None:
    for p in (tmp, *(tmp.with_name(tmp.name + s) for s in _SIDE_FILES)):
        p.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(source: Path, tmp: Path) -> None:
    """The whole database into ``tmp`` in ONE backup step: the step reads one snapshot (a WAL reader
    never blocks the service's writers, nor do they block it), so a commit elsewhere cannot restart
    it; a copy in small steps starts over after every commit and never ends under a steady writer."""
    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(tmp)
    try:
        src.backup(dst, pages=-1)
        dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained single file
        problems = [row[0] for row in dst.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise BackupError(f"the copy fails integrity_check: {'; '.join(problems[:3])}")
    finally:
        dst.close()
        src.close()


def backup_sqlite(url: str, target: str | os.PathLike) -> int:
    """Copy the SQLite database at ``url`` to ``target`` while it may be in use; returns the size in
    bytes. The copy is written beside the target (readable by its owner only), checked with
    ``integrity_check`` and fsynced before it is renamed into place (the folder is fsynced after),
    so a half-written or unchecked backup never carries the target's name; a failed copy leaves
    nothing behind."""
    source, target = _checked_paths(url, target)
    tmp = target.with_name(f".{target.name}.partial")
    _remove(tmp)
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        _copy(source, tmp)
        _fsync(tmp)
        os.replace(tmp, target)
    except sqlite3.Error as e:
        _remove(tmp)
        raise BackupError(f"backup of {str(source)!r} failed: {e}") from None
    except BaseException:
        _remove(tmp)
        raise
    with contextlib.suppress(OSError):  # a folder that cannot be opened for fsync (some filesystems)
        _fsync(target.parent)
    return target.stat().st_size
