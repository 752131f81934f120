"""The device's table generation, read on the event loop: what lets a cached table be served without a
thread hop, still current when another worker process wrote.

Every write that can change a device's tables bumps ``devices.table_gen`` in its transaction, and
the table cache is keyed by it, so a cache entry is current exactly when its generation is the one
stored now. On SQLite the probe reads it through a private connection of the worker's own: in WAL
mode a reader never waits for a writer, and one indexed row costs tens of microseconds, less than
the hop to a worker thread. Any error (busy, locked, ...) answers ``None`` and the caller takes the
ordinary path (a worker thread and the pooled connections). PostgreSQL has no probe: a lookup there
is a network round trip, so it stays off the event loop.
"""

from __future__ import annotations

import sqlite3

from sqlalchemy.engine import make_url

from db.engine import is_sqlite

_SQL = "SELECT id, table_gen FROM devices WHERE name = ?"


class GenerationProbe:
    def __init__(self, url: str):
        path = make_url(url).database
        # autocommit: each SELECT runs in its own read transaction, so it sees every committed write;
        # no busy wait (timeout 0): a busy database sends the request down the ordinary path instead
        self._conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA cache_size=-256")  # reads one small table: a small page cache

    @classmethod
    def open(cls, url: str) -> GenerationProbe | None:
        """A probe for ``url`` when it is a SQLite file, else None."""
        if not is_sqlite(url) or make_url(url).database in (None, "", ":memory:"):
            return None
        return cls(url)

    def generation(self, device: str) -> tuple[int, int] | None:
        """(device id, table generation) as committed now; None when unknown or not readable at once."""
        try:
            rows = self._conn.execute(_SQL, (device,)).fetchall()  # fetchall: the statement ends here
        except sqlite3.Error:
            return None
        return rows[0] if rows else None

    def close(self) -> None:
        self._conn.close()
