"""Helpers for the device-agent tests: the shared export cache, running ``fbnet-agent`` in-process,
and putting the phone/Xcode doubles of this folder first on PATH."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import httpx

DOUBLES = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
SPACE = "fbnet-cifar"
# four ops, two input shapes (so two overhead programs): cheap to export, all block kinds covered
HOST_OPS = ["k3_e1-16x32x32-16-s1", "k5_e1_g2-16x32x32-24-s1", "skip-16x32x32-24-s1", "fc-1504-10"]
ADB_OPS = ["k3_e1-16x32x32-16-s1", "skip-16x32x32-24-s1"]
QUICK = ["--warmup", "2", "--repeats", "5", "--rounds", "2"]


def run_temp(tmp_path_factory) -> Path:
    """The test run's temporary folder, shared by all pytest-xdist workers (each worker's own basetemp
    is a ``popen-gwN`` folder inside it): what is cached there is made once per run, not per worker."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def export_cache(tmp_path_factory, fmt: str = "pte", keys=HOST_OPS) -> Path:
    """One export cache for the whole test run (cached files make later calls free; the exporter writes
    each program atomically, so two workers exporting the same op at once leave one good file)."""
    from device_agents.exporters import export_space
    from fbnet.space import get_space

    cache = run_temp(tmp_path_factory) / "agent-exports"
    sp = get_space(SPACE)
    export_space(sp, fmt, cache, ops=[sp.op_by_key[k] for k in keys], jobs=1, overheads=True)
    return cache


def run_agent(*argv: str) -> tuple[int, str]:
    """``fbnet-agent ARGV`` in this process; returns (exit code, stdout + stderr)."""
    from device_agents.cli import main

    buf = io.StringIO()
    old = sys.argv
    sys.argv = ["fbnet-agent", *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    return code, buf.getvalue()


def use_doubles(monkeypatch) -> None:
    monkeypatch.setenv("PATH", f"{DOUBLES}:{VENV_BIN}:{os.environ.get('PATH', '')}")


def table(server, device: str) -> dict:
    r = httpx.get(f"{server.url}/tables/{device}", params={"space": SPACE}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def measured(tab: dict) -> dict[str, dict]:
    return {e["key"]: e for e in tab["entries"] if e["source"] == "measured"}


def runs(server, device: str) -> list[dict]:
    r = httpx.get(f"{server.url}/runs", params={"device": device, "limit": 1000}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["next"] is None, "more than one page of runs"
    return r.json()["runs"]


def host_runner() -> Path:
    """The host build of fbnet-runner (``make runner``), built here when missing (plain pytest runs)."""
    from device_agents.transports.runner import build_runner, default_runner

    path = default_runner()
    return path if path.is_file() else build_runner()
