"""Process-level properties of the service: no torch, the CLI, SQLite settings, reader tokens."""

import json
import sqlite3
import subprocess
import sys

import httpx
from conftest import HWNASBENCH, REPO, start_server

PIXEL3 = HWNASBENCH / "pixel3_latency.json"


def test_server_never_imports_torch():
    code = ("import sys; import profiler_server.app, profiler_server.cli, profiler_server.plots; "
            "from profiler_server.app import create_app; create_app(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False", out.stderr


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "profiler_server.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})


def test_cli_create_device_import_plot_and_sqlite_pragmas(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    r = _cli("create-device", "pixel3", "--platform", "android", "--runtime", "tflite", "--db", url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert len(token) >= 32
    r = _cli("create-device", "pixel3", "--db", url, cwd=tmp_path)
    assert r.returncode == 2 and "already exists" in r.stderr
    r = _cli("create-device", "Bad Name", "--db", url, cwd=tmp_path)
    assert r.returncode != 0
    r = _cli("import", str(PIXEL3), "--device", "pixel3", "--space", "fbnet-cifar", "--format", "hwnasbench",
             "--db", url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["missing"] == []
    r = _cli("import", str(PIXEL3), "--device", "ghost", "--space", "fbnet-cifar", "--db", url, cwd=tmp_path)
    assert r.returncode == 2 and "ghost" in r.stderr
    out = tmp_path / "t.png"
    r = _cli("plot", "table", "pixel3", "--space", "fbnet-cifar", "-o", str(out), "--db", url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    con = sqlite3.connect(tmp_path / "cli.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    # the token printed by the CLI is stored hashed only
    raw = (tmp_path / "cli.db").read_bytes() + (tmp_path / "cli.db-wal").read_bytes() \
        if (tmp_path / "cli.db-wal").exists() else (tmp_path / "cli.db").read_bytes()
    assert token.encode() not in raw


def test_default_db_is_a_sqlite_file_in_the_working_folder(tmp_path):
    r = _cli("create-device", "host-cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "fbnet.db").exists()


def test_read_token_required_when_configured(tmp_path):
    server, cleanup = start_server("sqlite", tmp_path / "s", extra_env={"FBNET_READ_TOKEN": "reader-secret"})
    try:
        token = server.create_device("phone")
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        r = httpx.get(f"{server.url}/tables/phone", params={"space": "fbnet-cifar"})
        assert r.status_code == 401 and "token" in r.json()["detail"]
        assert httpx.get(f"{server.url}/spaces").status_code == 401
        for t in ("reader-secret", token, server.admin_token):
            r = httpx.get(f"{server.url}/tables/phone", params={"space": "fbnet-cifar"},
                          headers={"Authorization": f"Bearer {t}"})
            assert r.status_code == 200
        r = httpx.post(f"{server.url}/runs", json={"space": "fbnet-cifar", "agent_version": "1", "runtime": "x",
                                                    "runtime_version": "1"},
                       headers={"Authorization": "Bearer reader-secret"})
        assert r.status_code == 422 or r.status_code == 403
    finally:
        cleanup()


def test_several_workers_serve_with_nagle_off(monkeypatch):
    """`fbnet-server serve --workers N` hands uvicorn's workers a listening socket with TCP_NODELAY set
    (accepted connections inherit it): uvicorn's own shared socket has protocol 0, asyncio then leaves
    Nagle on, and every response waited ~40 ms for the client's delayed ACK (44 ms /healthz p50)."""
    import socket

    import uvicorn
    from uvicorn import supervisors

    from profiler_server import cli

    got = {}

    class Capture:  # stands in for uvicorn's process supervisor: records the socket instead of forking
        def __init__(self, config, sockets):
            got["workers"], got["sock"] = config.workers, sockets[0]

        def run(self):
            pass

    monkeypatch.setattr(supervisors, "Multiprocess", Capture)
    config = uvicorn.Config("profiler_server.app:create_app", factory=True, host="127.0.0.1", port=0, workers=3)
    cli._serve_workers(config)
    try:
        assert got["workers"] == 3
        assert got["sock"].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        # what the fix is for: uvicorn's own socket does not say TCP, so asyncio would not set it per connection
        assert got["sock"].proto == 0
    finally:
        got["sock"].close()
