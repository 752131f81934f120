"""Hostile input costs nothing: writes are authenticated and bodies capped before anything is parsed;
free-form provenance is bounded; a busy database answers 503 + Retry-After, which the agent honours."""

from __future__ import annotations

import select
import socket
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest
from conftest import PG_URL, start_server

from device_agents.uploader import Uploader, retry_after_s
from fbnet.wire import MAX_DEPTH, MAX_EXTRA_BYTES, RunCreate

MiB = 1024 * 1024
RUN = {"space": "fbnet-cifar", "agent_version": "1", "runtime": "x", "runtime_version": "1"}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _raw_post(url: str, path: str, declared: int | None, send: int, token: str | None = None) -> tuple[int, int]:
    """POST with a raw socket: headers, then up to ``send`` body bytes in 64 KiB chunks while watching
    for the answer. Returns (status, body bytes sent before the answer came)."""
    host, port = url.removeprefix("http://").split(":")
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json"]
    head += [f"Content-Length: {declared}"] if declared is not None else ["Transfer-Encoding: chunked"]
    head += [f"Authorization: Bearer {token}"] if token else []
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sent, chunk = 0, b"[" * 65536
        frame = chunk if declared is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk)
        while sent < send and not select.select([s], [], [], 0)[0]:  # stop once an answer is there
            try:
                s.sendall(frame)
            except OSError:  # the service closed the connection after answering
                break
            sent += len(chunk)
        answer = b""
        while b"\r\n" not in answer:
            more = s.recv(65536)
            if not more:
                break
            answer += more
    return int(answer.split(b" ")[1]), sent


def test_anonymous_and_oversized_bodies_are_refused_unread(module_server):
    token = module_server.create_device(module_server.unique("big"))
    pid = module_server.process.pid
    rss0 = _rss_kib(pid)
    # anonymous 64 MiB write: 401 from the headers alone
    status, sent = _raw_post(module_server.url, "/runs/1/measurements", 64 * MiB, 64 * MiB)
    assert status == 401 and sent < 8 * MiB
    # a device token announcing 64 MiB: 413 before the body is read
    status, sent = _raw_post(module_server.url, "/runs/1/measurements", 64 * MiB, 64 * MiB, token)
    assert status == 413 and sent < 8 * MiB
    # streamed without Content-Length: counted while read, refused at the limit (4 MiB by default)
    status, sent = _raw_post(module_server.url, "/runs/1/measurements", None, 64 * MiB, token)
    assert status == 413 and sent < 48 * MiB
    assert _rss_kib(pid) - rss0 < 32 * 1024, "the refused bodies must not be held in memory"
    with module_server.client(token) as c:
        r = c.post("/runs", content=b"{" * 100, headers={"content-type": "application/json"})
        assert r.status_code == 422  # under the limit: parsed as before
        assert c.get("/healthz").status_code == 200


def test_writes_need_a_token_before_the_body_matters(module_server):
    with module_server.client() as c:
        for path in ("/devices", "/runs", "/runs/1/measurements", "/runs/1/finish", "/validations",
                     "/tables/x/import?space=fbnet-cifar"):
            r = c.post(path, content=b"not json at all")
            assert r.status_code == 401 and "token" in r.json()["detail"], (path, r.text)
        r = c.post("/runs", json=RUN, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["detail"] == "invalid token"


def test_extra_and_metadata_are_bounded(module_server):
    name = module_server.unique("extra")
    token = module_server.create_device(name)
    deep: dict = {}
    cur = deep
    for _ in range(MAX_DEPTH + 2):
        cur["x"] = {}
        cur = cur["x"]
    big = {"blob": "x" * (MAX_EXTRA_BYTES + 1)}
    with module_server.client(token) as c:
        r = c.post("/runs", json={**RUN, "extra": deep})
        assert r.status_code == 422 and "nested deeper" in r.text
        r = c.post("/runs", json={**RUN, "extra": big})
        assert r.status_code == 422 and str(MAX_EXTRA_BYTES) in r.text
        rid = c.post("/runs", json={**RUN, "extra": {"ok": [1, 2, {"a": "b"}]}}).json()["id"]
        assert c.post(f"/runs/{rid}/finish", json={"extra": big}).status_code == 422
        assert c.get(f"/runs/{rid}").json()["status"] == "open"  # the refused finish changed nothing
    with module_server.admin as c:
        r = c.post("/devices", json={"name": module_server.unique("meta"), "platform": "linux", "runtime": "x",
                                     "metadata": big})
        assert r.status_code == 422
    assert len(RunCreate(**RUN, extra={"k": "v" * 1000}).extra["k"]) == 1000


def _hold_write_lock(server):
    """Take the database's write lock from outside the service; returns a function that releases it."""
    if server.engine == "sqlite":
        con = sqlite3.connect(server.db_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False)
        con.execute("BEGIN IMMEDIATE")
        return lambda: (con.execute("ROLLBACK"), con.close())
    import psycopg

    conninfo = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    schema = server.db_url.split("search_path%3D")[-1]
    con = psycopg.connect(conninfo)
    con.execute(f'LOCK TABLE "{schema}".runs IN ACCESS EXCLUSIVE MODE')
    return lambda: (con.rollback(), con.close())


@pytest.fixture
def busy_server(engine, tmp_path):
    server, cleanup = start_server(engine, tmp_path / "busy",
                                   extra_env={"FBNET_DB_WAIT_S": "0.5", "FBNET_RETRY_AFTER_S": "1"})
    yield server
    cleanup()


@pytest.mark.pg  # the write lock and its wait are the engine's
def test_busy_database_is_503_with_retry_after_and_the_uploader_waits(busy_server, tmp_path):
    token = busy_server.create_device("busy")
    release = _hold_write_lock(busy_server)
    try:
        with busy_server.client(token) as c:
            r = c.post("/runs", json=RUN)
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert retry_after_s(r) == 1.0
            assert c.get("/healthz").status_code == 200  # reads go on
        timer = threading.Timer(1.2, release)
        timer.start()
        # one retry, 0.01 s backoff: the first try ends at 0.5 s (503); only waiting the 1 s that
        # Retry-After asks for puts the retry after the lock's release at 1.2 s
        up = Uploader(busy_server.url, token, "busy", tmp_path / "spool", retries=1, backoff_s=0.01)
        try:
            st = up.new_run(RunCreate(**RUN))
        finally:
            up.close()
            timer.join()
    finally:
        try:
            release()
        except Exception:
            pass
    assert st.run_id is not None
    with httpx.Client(base_url=busy_server.url) as c:
        assert [x["id"] for x in c.get("/runs", params={"device": "busy"}).json()["runs"]] == [st.run_id]
