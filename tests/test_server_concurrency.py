"""Concurrent writers lose nothing and never duplicate (SQLite WAL + busy timeout; PostgreSQL)."""

import statistics
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import start_server

from fbnet.space import get_space

pytestmark = pytest.mark.pg  # concurrent writers meet the engine's locking

SPACE = "fbnet-cifar"
KEYS = [op.key for op in get_space(SPACE).ops if not op.is_identity][:100]
WRITERS, RUNS_PER_WRITER, BATCH = 8, 5, 25  # 8 writers x 5 runs x 100 ops = 8 x 500 measurements


def _m(key, v):
    return {"key": key, "n": 5, "median_us": v, "mean_us": v, "std_us": 0.1, "min_us": v, "p10_us": v, "p90_us": v}


def _run(c, **kw):
    r = c.post("/runs", json={"space": SPACE, "agent_version": "1", "runtime": "x", "runtime_version": "1", **kw})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_eight_writers_lose_nothing(live_server):
    names = [f"writer-{i}" for i in range(WRITERS)]
    tokens = [live_server.create_device(n) for n in names]

    def writer(i):
        stored, run_ids = 0, []
        with live_server.client(tokens[i], timeout=120) as c:
            for _ in range(RUNS_PER_WRITER):
                rid = _run(c)
                run_ids.append(rid)
                for s in range(0, len(KEYS), BATCH):
                    batch = [_m(k, 100.0 + i) for k in KEYS[s:s + BATCH]]
                    r = c.post(f"/runs/{rid}/measurements", json={"measurements": batch})
                    assert r.status_code == 200, r.text
                    stored += r.json()["stored"]
                c.post(f"/runs/{rid}/finish", json={})
        return stored, run_ids

    with ThreadPoolExecutor(WRITERS) as pool:
        results = list(pool.map(writer, range(WRITERS)))
    assert [s for s, _ in results] == [RUNS_PER_WRITER * len(KEYS)] * WRITERS
    with live_server.client() as c:
        for i, (_, run_ids) in enumerate(results):
            for rid in run_ids:
                got = c.get(f"/runs/{rid}/measurements").json()
                assert sorted(got["keys"]) == sorted(KEYS) and got["device"] == names[i]
            t = c.get(f"/tables/{names[i]}", params={"space": SPACE}).json()
            vals = {e["latency_us"] for e in t["entries"] if e["key"] in KEYS}
            assert vals == {100.0 + i}


def test_racing_resends_into_one_run_store_each_op_once(live_server):
    token = live_server.create_device("shared")
    with live_server.client(token) as c:
        rid = _run(c)

    def resend(i):
        with live_server.client(token, timeout=120) as c:
            r = c.post(f"/runs/{rid}/measurements", json={"measurements": [_m(k, 50.0) for k in KEYS]})
            assert r.status_code == 200, r.text
            return r.json()

    with ThreadPoolExecutor(WRITERS) as pool:
        results = list(pool.map(resend, range(WRITERS)))
    assert sum(r["stored"] for r in results) == len(KEYS)
    assert sum(r["duplicates"] for r in results) == (WRITERS - 1) * len(KEYS)
    with live_server.client() as c:
        assert len(c.get(f"/runs/{rid}/measurements").json()["keys"]) == len(KEYS)


def test_a_finish_through_one_worker_is_never_served_stale_by_another(engine, tmp_path):
    """Two worker processes, each with its own table cache (answered on the event loop when current):
    after a run finishes through either, every read through either serves the new table, and the old
    ETag no longer gets a 304."""
    server, cleanup = start_server(engine, tmp_path / "server", workers=2)
    try:
        token = server.create_device("two-workers")

        def read(etag=None):  # a new connection each time: the kernel spreads them over both workers
            h = {"If-None-Match": etag} if etag else {}
            return httpx.get(f"{server.url}/tables/two-workers", params={"space": SPACE}, headers=h, timeout=60)

        etag, values = None, []
        for value in (100.0, 300.0, 50.0):
            with server.client(token, timeout=60) as c:
                rid = _run(c)
                assert c.post(f"/runs/{rid}/measurements",
                              json={"measurements": [_m(k, value) for k in KEYS]}).status_code == 200
                assert c.post(f"/runs/{rid}/finish", json={}).status_code == 200
            values.append(value)
            want = statistics.median(values)
            for _ in range(8):
                r = read(etag)
                assert r.status_code == 200, f"stale: a 304 for the table before run {rid} finished"
                got = {e["latency_us"] for e in r.json()["entries"] if e["key"] in KEYS}
                assert got == {want}, f"after {values}: served {got}"
            new = r.headers["etag"]
            assert all(read(new).status_code == 304 for _ in range(4))
            etag = new
    finally:
        cleanup()
