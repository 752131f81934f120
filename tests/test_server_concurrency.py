"""Concurrent writers lose nothing and never duplicate (SQLite WAL + busy timeout; PostgreSQL)."""

from concurrent.futures import ThreadPoolExecutor

from fbnet.space import get_space

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
