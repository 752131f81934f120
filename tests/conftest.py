"""Shared fixtures: a real profiler server (uvicorn in a subprocess, real HTTP, a fresh database).

``live_server`` runs each test against SQLite and, when ``FBNET_TEST_PG_URL`` is set, PostgreSQL too
(a fresh schema per server). ``live_server_sqlite`` is SQLite only. ``module_server`` is one server
per test module (both engines) for tests that use distinct device names.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

ADMIN_TOKEN = "test-admin-token"
PG_URL = os.environ.get("FBNET_TEST_PG_URL")
ENGINES = ["sqlite"] + (["postgresql"] if PG_URL else [])
REPO = Path(__file__).resolve().parent.parent
HWNASBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hwnasbench"
if not HWNASBENCH.exists():
    HWNASBENCH = Path("/work/shared/data/hwnasbench")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    admin_token: str
    db_url: str
    engine: str
    process: subprocess.Popen
    log_path: Path
    _n: int = field(default=0, repr=False)

    def client(self, token: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kw.pop("timeout", 30.0), **kw)

    @property
    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)

    def create_device(self, name: str, platform: str = "linux", runtime: str = "executorch-xnnpack", **fields) -> str:
        """Register a device with the admin token; returns the device's agent token."""
        r = httpx.post(f"{self.url}/devices", json={"name": name, "platform": platform, "runtime": runtime, **fields},
                       headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30)
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def unique(self, prefix: str = "dev") -> str:
        """A device name not used before on this server."""
        self._n += 1
        return f"{prefix}-{self._n}-{uuid.uuid4().hex[:6]}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"


def _pg_exec(sql: str) -> None:
    import psycopg

    conninfo = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql)


def start_server(engine: str, workdir: Path, extra_env: dict | None = None, workers: int = 1):
    """Start ``fbnet-server serve`` on a free port with a fresh database; returns (server, cleanup)."""
    workdir.mkdir(parents=True, exist_ok=True)
    schema = None
    if engine == "sqlite":
        db_url = f"sqlite:///{workdir / 'fbnet.db'}"
    else:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        _pg_exec(f'CREATE SCHEMA "{schema}"')
        db_url = _pg_schema_url(schema)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FBNET_")}
    env.update({"FBNET_ADMIN_TOKEN": ADMIN_TOKEN, "PYTHONPATH": str(REPO)}, **(extra_env or {}))
    log_path = workdir / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "profiler_server.cli", "serve", "--db", db_url, "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    server = LiveServer(url, ADMIN_TOKEN, db_url, engine, proc, log_path)

    def cleanup():
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        if schema:
            _pg_exec(f'DROP SCHEMA "{schema}" CASCADE')

    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            cleanup()
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            cleanup()
            raise RuntimeError(f"server did not become healthy:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    return server, cleanup


@pytest.fixture(params=ENGINES)
def live_server(request, tmp_path):
    """A fresh server per test; parametrized over SQLite and (with FBNET_TEST_PG_URL) PostgreSQL."""
    server, cleanup = start_server(request.param, tmp_path / "server")
    yield server
    cleanup()


@pytest.fixture
def live_server_sqlite(tmp_path):
    server, cleanup = start_server("sqlite", tmp_path / "server")
    yield server
    cleanup()


@pytest.fixture(scope="module", params=ENGINES)
def module_server(request, tmp_path_factory):
    """One server per test module and engine; tests must use distinct device names (``unique``)."""
    server, cleanup = start_server(request.param, tmp_path_factory.mktemp("server"))
    yield server
    cleanup()


@pytest.fixture(scope="session")
def hwnasbench_dir() -> Path:
    if not HWNASBENCH.exists():
        pytest.skip(f"HW-NAS-Bench tables not found at {HWNASBENCH}")
    return HWNASBENCH
