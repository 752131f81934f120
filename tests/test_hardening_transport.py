"""Transport and overload, against a real server over real sockets: a request head or body that does
not arrive in time is cut (408) while other clients are served; connections above the limit get 503;
requests beyond the in-flight limit are answered 503 + Retry-After at once instead of queued."""

from __future__ import annotations

import asyncio
import select
import socket
import time

import httpx
import pytest
import yaml
from conftest import REPO, start_server

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 3.0
MAX_CONNECTIONS = 150
MAX_INFLIGHT = 2
# generous: the machine running the suite may be loaded; the claim is "cut", not "cut at 1.0 s"
CUT_WITHIN_S = 12.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv, cleanup = start_server("sqlite", tmp_path_factory.mktemp("transport"), extra_env={
        "FBNET_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S), "FBNET_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "FBNET_MAX_CONNECTIONS": str(MAX_CONNECTIONS), "FBNET_MAX_INFLIGHT": str(MAX_INFLIGHT),
        "FBNET_ADMISSION_WAIT_S": "0.05", "FBNET_RETRY_AFTER_S": "3"})
    yield srv
    cleanup()


def _connect(srv, first: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    if first:
        s.sendall(first)
    s.setblocking(False)
    return s


def _closed_by_server(s: socket.socket, seen: dict) -> bool:
    """Read what is there; True once the server has closed the connection (EOF or reset)."""
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
            seen[s] = seen.get(s, b"") + data
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slow_request_heads_are_cut_while_other_clients_are_served(server):
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    with server.client(timeout=60) as c:  # /spaces is slow once, cold (the v2 grids): not the attack's doing
        assert c.get("/spaces").status_code == 200
    stalled = [_connect(server, head) for _ in range(20)]  # part of a head, then nothing
    trickling = [_connect(server, head) for _ in range(20)]  # part of a head, then a header line now and then
    silent = [_connect(server) for _ in range(10)]  # connect, send nothing
    kept = _connect(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # one request, then a partial next
    time.sleep(0.3)
    kept.sendall(head)
    slow = {s: name for name, group in (("stalled", stalled), ("trickling", trickling), ("silent", silent),
                                        ("kept-alive", [kept])) for s in group}
    t0, open_, seen, served = time.monotonic(), set(slow), {}, 0
    with server.client(timeout=20) as c:
        while open_ and time.monotonic() - t0 < CUT_WITHIN_S:
            t = time.monotonic()
            assert c.get("/healthz").status_code == 200 and c.get("/spaces").status_code == 200
            # generous (a pair takes ~20 ms on a quiet machine, 5.5 s was seen with 8 busy processes on 2
            # cores): the claim is that the slow connections do not hold the server, not a latency
            assert time.monotonic() - t < 10, "a normal client must be served during the attack"
            served += 1
            for s in [s for s in trickling if s in open_]:
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    pass
            readable, _, _ = select.select(list(open_), [], [], 0.2)
            open_ -= {s for s in readable if _closed_by_server(s, seen)}
    left = sorted({slow[s] for s in open_})
    for s in slow:
        s.close()
    assert not open_, f"{len(open_)} slow connections still open after {CUT_WITHIN_S:.0f} s ({left})"
    assert served >= 1  # the first pair was asked for while every slow connection was open
    partial = [seen.get(s, b"") for s in stalled + trickling]
    assert all(p.startswith(b"HTTP/1.1 408") for p in partial), "a partial head is answered 408 before the close"
    assert seen.get(kept, b"").count(b"HTTP/1.1 200") == 1


def test_a_body_that_does_not_arrive_is_cut(server):
    s = _connect(server, (f"POST /devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_token}\r\n"
                          "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"name\":").encode())
    t0, seen = time.monotonic(), {}
    try:
        while not _closed_by_server(s, seen) and time.monotonic() - t0 < CUT_WITHIN_S + BODY_TIMEOUT_S:
            select.select([s], [], [], 0.5)
        assert seen.get(s, b"").startswith(b"HTTP/1.1 408"), seen.get(s, b"")[:200]
        assert time.monotonic() - t0 >= BODY_TIMEOUT_S * 0.9
    finally:
        s.close()


def test_connections_above_the_limit_get_503(server):
    idle = [_connect(server) for _ in range(MAX_CONNECTIONS + 10)]
    try:
        time.sleep(0.3)
        r = httpx.get(f"{server.url}/spaces", timeout=10)
        assert r.status_code == 503
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while (status := httpx.get(f"{server.url}/spaces", timeout=10).status_code) == 503 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200, "below the limit again, requests are served"


def _hold_slot(server) -> socket.socket:
    """An admitted request that keeps its slot: a write whose body never comes (until the body timeout)."""
    return _connect(server, (f"POST /devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_token}\r\n"
                             "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{").encode())


def test_requests_beyond_the_inflight_limit_get_503_with_retry_after_at_once(server):
    holders = [_hold_slot(server) for _ in range(MAX_INFLIGHT)]
    try:
        time.sleep(0.2)
        with server.client(timeout=10) as c:
            t = time.monotonic()
            r = c.get("/spaces")
            assert r.status_code == 503 and r.headers["retry-after"] == "3", r.text
            assert time.monotonic() - t < BODY_TIMEOUT_S, "refused at once, not after the slots came free"
            assert "overloaded" in r.json()["detail"]
            assert c.get("/healthz").status_code == 200, "/healthz has a lane of its own"
    finally:
        for s in holders:
            s.close()
    with server.client(timeout=10) as c:
        deadline = time.monotonic() + 10
        while (r := c.get("/spaces")).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert r.status_code == 200


async def _flood(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 limits=httpx.Limits(max_connections=n, max_keepalive_connections=n)) as c:
        return await asyncio.gather(*(c.get("/devices") for _ in range(n)))


def test_a_flood_is_answered_200_or_503_with_retry_after(server):
    t0 = time.monotonic()
    answers = asyncio.run(_flood(server.url, 100))
    wall = time.monotonic() - t0
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503}, sorted(set(codes))
    assert codes.count(503) > 0 and codes.count(200) >= MAX_INFLIGHT
    assert all(r.headers.get("retry-after") == "3" for r in answers if r.status_code == 503)
    assert wall < 20


def test_compose_publishes_the_service_on_loopback_only():
    """The container binds 0.0.0.0 in its own namespace (it must); the host side is loopback only, for a
    reverse proxy on the host (README, Deployment)."""
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert published, "the service is published"
    for name, ports in published.items():
        for p in ports:
            assert str(p).startswith("127.0.0.1:"), f"{name} publishes {p} on every interface of the host"


def _status(s: socket.socket, timeout: float = 10) -> tuple[int, bytes]:
    """The status of the next answer on a blocking socket, and the head it came with."""
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        more = s.recv(65536)
        if not more:
            break
        data += more
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    return int(data.split(b" ", 2)[1]), head


def test_while_saturated_a_get_is_refused_before_it_is_parsed_and_the_connection_kept(tmp_path):
    """One slot, one waiter (waiting up to 5 s): the next GET is answered 503 at once by the transport,
    on a connection that stays usable; /healthz still answers from its own lane."""
    srv, cleanup = start_server("sqlite", tmp_path / "s", extra_env={
        "FBNET_MAX_INFLIGHT": "1", "FBNET_ADMISSION_WAIT_S": "5", "FBNET_RETRY_AFTER_S": "3"})
    holder = waiter = None
    try:
        holder = _hold_slot(srv)
        time.sleep(0.3)
        waiter = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        waiter.sendall(b"GET /spaces HTTP/1.1\r\nHost: x\r\n\r\n")  # waits for the slot
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            for _ in range(2):  # twice on one connection: it is kept open
                t = time.monotonic()
                s.sendall(b"GET /spaces HTTP/1.1\r\nHost: x\r\n\r\n")
                status, head = _status(s)
                assert status == 503 and b"retry-after: 3" in head and b"connection: close" not in head, head
                assert time.monotonic() - t < 3, "refused at once, not after the wait"
        assert httpx.get(f"{srv.url}/healthz", timeout=10).status_code == 200
        holder.close()  # the slot comes free: the waiter is served
        assert _status(waiter)[0] == 200
    finally:
        for s in (holder, waiter):
            if s is not None:
                s.close()
        cleanup()
