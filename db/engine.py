"""Engines and sessions. SQLite gets WAL, a busy timeout and foreign keys on every connection."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_POOL = 16  # the service passes its worker-thread count
DEFAULT_WAIT_S = 10.0
DEFAULT_SQLITE_CACHE_KIB = 256  # per connection (SQLite's own default: 2000)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_private_sqlite_file(url: str) -> None:
    """Create the SQLite file of ``url`` readable by its owner only (0600) when it does not exist yet
    (SQLite would create it 0644 under the usual umask; it holds token hashes and private provenance).
    SQLite gives the ``-wal`` and ``-shm`` files it makes beside it the database file's mode. An existing
    file keeps its mode."""
    path = make_url(url).database
    if not path or path == ":memory:" or path.startswith("file:") or os.path.exists(path):
        return
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError:  # created meanwhile by another process, or a folder SQLite will report itself
        pass


def make_engine(url: str, *, immediate: bool = False, pool_size: int = DEFAULT_POOL,
                wait_s: float = DEFAULT_WAIT_S, sqlite_cache_kib: int = DEFAULT_SQLITE_CACHE_KIB) -> Engine:
    """An engine for ``url`` whose pool matches ``pool_size`` worker threads; a request that waits
    ``wait_s`` for a connection (or, on SQLite, for the write lock) gets an error the service maps
    to 503 + Retry-After. With SQLite and ``immediate``, every transaction starts with
    ``BEGIN IMMEDIATE`` so that a writer takes the write lock up front (a deferred transaction
    that later upgrades to a writer can fail with SQLITE_BUSY regardless of the busy timeout).
    Each SQLite connection's page cache is bounded to ``sqlite_cache_kib``: the pools hold up to
    2 x (pool_size + overflow) connections, so their caches, not the database size, bound what they hold."""
    # A session may hold its connection a moment after its thread is done (closing happens
    # later), so the pool gets a small overflow above one connection per thread.
    pool = {"pool_size": pool_size, "max_overflow": max(4, pool_size // 4), "pool_timeout": wait_s}
    if not is_sqlite(url):
        engine = create_engine(url, pool_pre_ping=True, **pool)

        @event.listens_for(engine, "connect")
        def _pg_on_connect(dbapi_conn, _record):
            # a statement waiting on a lock gives up after wait_s too (the service answers 503)
            autocommit = dbapi_conn.autocommit
            dbapi_conn.autocommit = True
            dbapi_conn.execute(f"SET lock_timeout = {int(wait_s * 1000)}")
            dbapi_conn.autocommit = autocommit

        return engine
    busy_ms = int(wait_s * 1000)
    create_private_sqlite_file(url)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": wait_s}, **pool)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Autocommit at the driver level: SQLAlchemy's "begin" event below issues BEGIN itself.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA cache_size=-{int(sqlite_cache_kib)}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@dataclass
class Database:
    """A read engine and a write engine (the same one except on SQLite) and their sessions."""

    url: str
    engine: Engine
    write_engine: Engine
    read_sessions: sessionmaker[Session]
    write_sessions: sessionmaker[Session]

    def dispose(self) -> None:
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()


def open_database(url: str, pool_size: int = DEFAULT_POOL, wait_s: float = DEFAULT_WAIT_S,
                  sqlite_cache_kib: int = DEFAULT_SQLITE_CACHE_KIB) -> Database:
    kw = {"pool_size": pool_size, "wait_s": wait_s, "sqlite_cache_kib": sqlite_cache_kib}
    engine = make_engine(url, **kw)
    write_engine = make_engine(url, immediate=True, **kw) if is_sqlite(url) else engine
    return Database(
        url=url,
        engine=engine,
        write_engine=write_engine,
        read_sessions=sessionmaker(engine, expire_on_commit=False),
        write_sessions=sessionmaker(write_engine, expire_on_commit=False),
    )
