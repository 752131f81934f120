"""Shared fixtures: a real profiler server (uvicorn in a subprocess, real HTTP, a fresh database).

``live_server`` is a fresh server per test, ``module_server`` one server per test module (for tests
that use distinct device names, ``unique``), ``live_server_sqlite`` SQLite only. Both run on SQLite,
and a test marked ``pg`` (its claim is about the database engine: tables, constraints, locking,
crashes, migrations) runs on PostgreSQL too when ``FBNET_TEST_PG_URL`` is set (a fresh schema per server).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from doubles.support import run_temp

from profiler_server.launcher import LocalServer, free_port  # noqa: F401 (free_port: tests import it from here)

ADMIN_TOKEN = "test-admin-token-of-at-least-32-characters"
PG_URL = os.environ.get("FBNET_TEST_PG_URL")
ENGINES = ["sqlite"] + (["postgresql"] if PG_URL else [])
REPO = Path(__file__).resolve().parent.parent
# The reference data beside the checkout (../shared/data), else the copies in tests/data.
_SHARED = REPO.parent / "shared" / "data"
DATA = _SHARED if (_SHARED / "hwnasbench" / "pixel3_latency.json").exists() else REPO / "tests" / "data"
HWNASBENCH = DATA / "hwnasbench"


class LiveServer(LocalServer):
    """The service under test: :class:`LocalServer` plus the helpers the tests share."""

    def __init__(self, engine: str, db_url: str, workdir: Path, **kw):
        super().__init__(db_url, workdir, admin_token=ADMIN_TOKEN, **kw)
        self.engine = engine
        self._n = 0

    def client(self, token: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kw.pop("timeout", 30.0), **kw)

    @property
    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)

    def unique(self, prefix: str = "dev") -> str:
        """A device name not used before on this server."""
        self._n += 1
        return f"{prefix}-{self._n}-{uuid.uuid4().hex[:6]}"


def _pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"


def _pg_exec(sql: str) -> None:
    import psycopg

    conninfo = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql)


def start_server(engine: str, workdir: Path, extra_env: dict | None = None, workers: int = 1,
                 port: int | None = None):
    """Start ``fbnet-server serve`` on a free port with a fresh database; returns (server, cleanup)."""
    workdir.mkdir(parents=True, exist_ok=True)
    schema = None
    if engine == "sqlite":
        db_url = f"sqlite:///{workdir / 'fbnet.db'}"
    else:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        _pg_exec(f'CREATE SCHEMA "{schema}"')
        db_url = _pg_schema_url(schema)
    server = LiveServer(engine, db_url, workdir, workers=workers, port=port,
                        extra_env={"PYTHONPATH": str(REPO), **(extra_env or {})})

    def cleanup():
        server.stop()
        if schema:
            _pg_exec(f'DROP SCHEMA "{schema}" CASCADE')

    try:
        server.start()
    except RuntimeError:
        cleanup()
        raise
    return server, cleanup


def engines(metafunc) -> list[str]:
    """Every engine for a test marked ``pg`` (its claim is about the database engine), else SQLite:
    the rest of the service's tests exercise HTTP, auth and validation, which do not depend on the
    engine, and the clients (agents, search) talk HTTP only."""
    return ENGINES if metafunc.definition.get_closest_marker("pg") else ["sqlite"]


def pytest_generate_tests(metafunc):
    """``live_server`` and ``module_server`` start on each engine of :func:`engines`; a test that
    starts its own servers takes the engine name as the ``engine`` argument."""
    engines_ = engines(metafunc)
    for name, scope in (("live_server", "function"), ("module_server", "module")):
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, engines_, indirect=True, scope=scope)
    if "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", engines_)


@pytest.fixture
def live_server(request, tmp_path):
    """A fresh server per test, on the engine ``pytest_generate_tests`` chose."""
    server, cleanup = start_server(request.param, tmp_path / "server")
    yield server
    cleanup()


@pytest.fixture
def live_server_sqlite(tmp_path):
    server, cleanup = start_server("sqlite", tmp_path / "server")
    yield server
    cleanup()


@pytest.fixture(scope="module")
def module_server(request, tmp_path_factory):
    """One server per test module and engine; tests must use distinct device names (``unique``)."""
    server, cleanup = start_server(request.param, tmp_path_factory.mktemp("server"))
    yield server
    cleanup()


@pytest.fixture(scope="session", autouse=True)
def session_export_cache(tmp_path_factory) -> Path:
    """One export cache for the whole test run (``doubles.support.export_cache`` fills it): an agent run
    without ``--cache-dir`` (and the agents the tests start as processes) use it too, never ~/.cache,
    so every test run starts cold, as CI does, and exports each program once."""
    cache = run_temp(tmp_path_factory) / "agent-exports"
    old = os.environ.get("FBNET_AGENT_CACHE")
    os.environ["FBNET_AGENT_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("FBNET_AGENT_CACHE", None)
    else:
        os.environ["FBNET_AGENT_CACHE"] = old


@pytest.fixture(scope="session")
def hwnasbench_dir() -> Path:
    if not HWNASBENCH.exists():
        pytest.skip(f"HW-NAS-Bench tables not found at {HWNASBENCH}")
    return HWNASBENCH


@pytest.fixture
def fresh_url(engine, tmp_path):
    """An empty database for one test: a SQLite file, or a fresh PostgreSQL schema dropped after it."""
    if engine == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    schema = f"m_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE SCHEMA "{schema}"')
    yield _pg_schema_url(schema)
    _pg_exec(f'DROP SCHEMA "{schema}" CASCADE')
