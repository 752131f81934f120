"""Run the service as a local subprocess: what the demo, the benchmarks and the tests start."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``fbnet-server serve`` on a free loopback port; a context manager that stops it on exit."""

    def __init__(self, db_url: str, workdir: str | Path, admin_token: str | None = None, port: int | None = None,
                 workers: int = 1, extra_env: dict[str, str] | None = None):
        self.db_url = db_url
        self.workdir = Path(workdir)
        self.admin_token = admin_token or secrets.token_urlsafe(24)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.extra_env = extra_env or {}
        self.log_path = self.workdir / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> LocalServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FBNET_")}
        env.update({"FBNET_ADMIN_TOKEN": self.admin_token}, **self.extra_env)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "profiler_server.cli", "serve", "--db", self.db_url, "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(self.workers), "--log-level", "warning"],
            cwd=self.workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not become healthy in {timeout:.0f} s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def create_device(self, name: str, platform: str = "linux", runtime: str = "executorch-xnnpack",
                      **fields) -> str:
        """Register a device with the admin token; returns its agent token."""
        r = httpx.post(f"{self.url}/devices", json={"name": name, "platform": platform, "runtime": runtime, **fields},
                       headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=30)
        if r.status_code != 201:
            raise RuntimeError(f"registering {name!r} failed: {r.status_code} {r.text}")
        return r.json()["token"]

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
