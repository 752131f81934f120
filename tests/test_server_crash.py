"""Crashes lose nothing: SIGKILL the service while ``fbnet-agent profile`` runs and uploads, restart it
on the same database, and the spool and ``fbnet-agent upload`` end with every op stored exactly once;
SIGKILL the agent instead, and ``--resume`` does. The database stays consistent (SQLite
integrity_check; orphans and duplicates on both engines). Longer, randomised: bench/crash.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from conftest import REPO, LiveServer, start_server
from doubles.support import HOST_OPS, SPACE, export_cache, run_agent

from db.check import check_database

pytestmark = [pytest.mark.slow, pytest.mark.pg]  # ``engine``: SQLite, and PostgreSQL when configured
SLOW = ["--warmup", "1", "--repeats", "5", "--rounds", "1", "--cooldown", "0.4", "--retries", "1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return export_cache(tmp_path_factory)


def _agent(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "device_agents.cli", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _profile_args(server, token, cache, spool, *extra):
    return ["profile", "--server", server.url, "--device", "crash", "--token", token, "--space", SPACE,
            "--transport", "host", "--ops", ",".join(HOST_OPS), "--cache-dir", str(cache), "--spool-dir",
            str(spool), *SLOW, *extra]


def _wait_for(cond, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := cond():
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _runs(server) -> list[dict]:
    try:
        r = httpx.get(f"{server.url}/runs", params={"device": "crash"}, timeout=5)
    except httpx.TransportError:
        return []
    return r.json()["runs"] if r.status_code == 200 else []


def _stored_exactly_once(server) -> None:
    (run,) = _runs(server)  # one run: no orphan from a retried POST /runs
    assert run["status"] == "finished"
    got = httpx.get(f"{server.url}/runs/{run['id']}/measurements", timeout=10).json()["keys"]
    assert sorted(got) == sorted(HOST_OPS), got  # every op, none twice
    problems = check_database(server.db_url)
    assert problems == [], problems


def test_service_killed_while_the_agent_uploads(engine, cache, tmp_path):
    server, cleanup = start_server(engine, tmp_path / "server")
    spool = tmp_path / "spool"
    try:
        token = server.create_device("crash")
        agent = _agent(*_profile_args(server, token, cache, spool))
        _wait_for(lambda: _runs(server), "the agent to open its run")
        server.process.send_signal(signal.SIGKILL)  # mid-run: every measurement upload fails now
        server.process.wait()
        out, _ = agent.communicate(timeout=300)
        assert agent.returncode == 3 and "Nothing is lost" in out, out
        assert problems_free(server)
        restarted = LiveServer(engine, server.db_url, tmp_path / "server2", port=server.port,
                               extra_env={"PYTHONPATH": str(REPO)}).start()
        try:
            code, out = run_agent("upload", "--server", server.url, "--device", "crash", "--token", token,
                                  "--spool-dir", str(spool))
            assert code == 0 and "closed run" in out, out
            _stored_exactly_once(restarted)
            assert not list(spool.rglob("*.json"))
        finally:
            restarted.stop()
    finally:
        cleanup()


def problems_free(server) -> bool:
    problems = check_database(server.db_url)
    assert problems == [], problems
    return True


def test_agent_killed_then_resumed(engine, cache, tmp_path):
    server, cleanup = start_server(engine, tmp_path / "server")
    spool = tmp_path / "spool"
    try:
        token = server.create_device("crash")
        agent = _agent(*_profile_args(server, token, cache, spool))
        # The run opens after the exports, before the first round, and the round takes at least 8 programs
        # (4 ops, their overhead programs) x the 0.4 s cooldown: a kill as soon as the run shows lands
        # mid-run. (Waiting for spooled ops instead raced the run's end: every op of a one-round run ends
        # at once, after the round, and the run is finished milliseconds later.)
        _wait_for(lambda: _runs(server), "the agent to open its run")
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        (run,) = _runs(server)
        assert run["status"] == "open"
        assert list(spool.rglob("*.json")), "the killed agent left no spool to resume from"
        code, out = run_agent(*_profile_args(server, token, cache, spool, "--resume"))
        assert code == 0 and f"resuming run {run['id']}" in out, out
        _stored_exactly_once(server)
    finally:
        cleanup()
