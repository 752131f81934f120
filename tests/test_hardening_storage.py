"""Storage and secrets (issue 25): a backup that finishes under a steady writer, compose's empty read
token, huge or odd space names, private fields by an allow-list, strong admin tokens and a limit on
failed ones, no driver messages or echoed bodies in errors, a database file only its owner reads."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from db.backup import backup_sqlite


def _big_wal_database(path: Path, mib: int) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
    con.execute("CREATE TABLE ticks (id INTEGER PRIMARY KEY, at REAL)")
    con.executemany("INSERT INTO blobs (data) VALUES (randomblob(?))", [(64 * 1024,)] * (mib * 16))
    con.commit()
    con.close()


class _Writer(threading.Thread):
    """Commits a row every ``every_s`` on its own connection until stopped (the service, as the backup sees it)."""

    def __init__(self, path: Path, every_s: float = 0.01):
        super().__init__(daemon=True)
        self.path, self.every_s, self.commits = path, every_s, 0
        self.halt = threading.Event()

    def run(self) -> None:
        con = sqlite3.connect(self.path, timeout=30)
        while not self.halt.is_set():
            con.execute("INSERT INTO ticks (at) VALUES (?)", (time.time(),))
            con.commit()
            self.commits += 1
            time.sleep(self.every_s)
        con.close()


def test_backup_finishes_under_a_writer_committing_every_10_ms(tmp_path):
    """The copy finishes in bounded time while another connection commits every 10 ms, passes
    integrity_check and holds the rows committed before it began; nothing is left beside it."""
    db = tmp_path / "live.db"
    _big_wal_database(db, mib=24)
    writer = _Writer(db)
    writer.start()
    result: dict = {}

    def backup():
        t0 = time.monotonic()
        try:
            result["size"] = backup_sqlite(f"sqlite:///{db}", tmp_path / "copy.db")
        except Exception as e:  # noqa: BLE001 (reported below)
            result["error"] = e
        result["s"] = time.monotonic() - t0

    while writer.commits < 5:
        time.sleep(0.01)
    t = threading.Thread(target=backup, daemon=True)
    t.start()
    t.join(15)
    finished = not t.is_alive()
    writer.halt.set()  # with the writer gone, even a restarting copy ends: the test itself always ends
    writer.join()
    t.join(120)
    assert finished, f"the backup was still running after 15 s under a writer ({writer.commits} commits)"
    assert "error" not in result, result
    print(f"backup of {result['size'] >> 20} MiB under {writer.commits} commits: {result['s']:.2f} s")
    con = sqlite3.connect(tmp_path / "copy.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT count(*) FROM blobs").fetchone()[0] == 24 * 16
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("live.db")) == ["copy.db"]
    assert (tmp_path / "copy.db").stat().st_mode & 0o077 == 0  # the copy holds token hashes too


def test_backup_is_fsynced_before_it_replaces_the_target_and_a_failed_one_leaves_nothing(tmp_path, monkeypatch):
    db = tmp_path / "live.db"
    _big_wal_database(db, mib=1)
    target = tmp_path / "copy.db"
    target.write_bytes(b"the previous backup")
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}"),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(f"replace {Path(b).name}"), real_replace(a, b))[1])
    backup_sqlite(f"sqlite:///{db}", target)
    partial = str(tmp_path / ".copy.db.partial")
    assert calls == [f"fsync {partial}", "replace copy.db", f"fsync {tmp_path}"], calls
    monkeypatch.undo()
    # a copy that fails half-way (the source is not a database) leaves the old backup and no debris
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"SQLite format 3\x00" + os.urandom(1 << 16))
    target.write_bytes(b"the previous backup")
    with pytest.raises(ValueError, match="backup of .* failed"):
        backup_sqlite(f"sqlite:///{bad}", target)
    assert target.read_bytes() == b"the previous backup"
    assert not [p.name for p in tmp_path.iterdir() if ".partial" in p.name or p.name.endswith("-journal")]
