"""One table per configuration: threads, runtime versions, imports, open and unstable runs never blend.

Marked ``pg``: runs on SQLite and, with FBNET_TEST_PG_URL, PostgreSQL (conftest parametrizes ``module_server``).
"""

from __future__ import annotations

import pytest
from conftest import HWNASBENCH
from test_server_api import REAL_OPS, SP, SPACE, meas, open_run

pytestmark = pytest.mark.pg  # one table per configuration is the engine's query (issue 10: both engines)


def _value(i: int, base: float) -> float:
    return base + i  # distinct per op, so a blend would show


def _profile(server, token, base: float, keys=None, finish: str | None = "finished", **run) -> int:
    """One run measuring ``keys`` (all real ops by default) at base + op index."""
    rid = open_run(server, token, **run)
    keys = keys if keys is not None else [op.key for op in REAL_OPS]
    idx = {op.key: i for i, op in enumerate(REAL_OPS)}
    with server.client(token) as c:
        r = c.post(f"/runs/{rid}/measurements", json={"measurements": [meas(k, _value(idx[k], base)) for k in keys]})
        assert r.status_code == 200, r.text
        if finish:
            assert c.post(f"/runs/{rid}/finish", json={"status": finish}).status_code == 200
    return rid


def _get(server, name, **params):
    with server.client() as c:
        return c.get(f"/tables/{name}", params={"space": SPACE, **params})


def _values(table: dict) -> dict[str, float]:
    return {e["key"]: e["latency_us"] for e in table["entries"] if e["source"] in ("measured", "imported")}


def _expected(base: float) -> dict[str, float]:
    return {op.key: _value(i, base) for i, op in enumerate(REAL_OPS)}


@pytest.fixture
def dev(module_server):
    name = module_server.unique("cfg")
    return name, module_server.create_device(name)


def test_threads_give_two_tables_never_a_blend(module_server, dev):
    name, token = dev
    r1 = _profile(module_server, token, 1000.0, threads=1)
    r4 = _profile(module_server, token, 300.0, threads=4)
    t1, t4 = _get(module_server, name, threads=1), _get(module_server, name, threads=4)
    assert t1.status_code == t4.status_code == 200
    assert _values(t1.json()) == _expected(1000.0) and _values(t4.json()) == _expected(300.0)
    assert {tuple(e["run_ids"]) for e in t1.json()["entries"] if e["source"] == "measured"} == {(r1,)}
    assert t1.json()["configuration"]["threads"] == 1 and t4.json()["configuration"]["threads"] == 4
    assert t1.headers["etag"] != t4.headers["etag"]
    # unspecified: the newest complete configuration (4 threads), and the listing says so
    assert _get(module_server, name).json() == t4.json()
    with module_server.client() as c:
        cfgs = c.get(f"/tables/{name}/configurations", params={"space": SPACE}).json()
    assert [(c["threads"], c["runs"], c["complete"], c["default"]) for c in cfgs] == \
        [(1, [r1], True, False), (4, [r4], True, True)]
    assert all(c["covered"] == c["ops"] == len(SP.ops) for c in cfgs)
    # a newer but partial configuration does not displace the newest complete one
    _profile(module_server, token, 50.0, keys=[REAL_OPS[0].key], threads=2)
    assert _get(module_server, name).json()["configuration"]["threads"] == 4
    partial = _get(module_server, name, threads=2).json()
    assert not partial["complete"] and _values(partial) == {REAL_OPS[0].key: 50.0}
    # two configurations of one device compare; the same one twice is refused
    with module_server.client() as c:
        cmp = c.get("/compare", params={"space": SPACE, "a": name, "b": name, "a_threads": 1, "b_threads": 4})
        assert cmp.status_code == 200, cmp.text
        e0 = cmp.json()["entries"][[e["key"] for e in cmp.json()["entries"]].index(REAL_OPS[0].key)]
        assert e0["ratio"] == pytest.approx(1000.0 / 300.0)
        assert cmp.json()["a_configuration"]["threads"] == 1
        assert c.get("/compare", params={"space": SPACE, "a": name, "b": name}).status_code == 422
        png = c.get("/plots/compare.png", params={"space": SPACE, "a": name, "b": name, "a_threads": 1, "b_threads": 4})
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


def test_open_failed_and_unstable_runs_never_show(module_server, dev):
    name, token = dev
    opened = _profile(module_server, token, 100.0, finish=None, threads=2)
    _profile(module_server, token, 200.0, finish="aborted", threads=3)
    t = _get(module_server, name).json()
    assert t["configuration"] is None and len(t["missing"]) == len(REAL_OPS)
    r = _get(module_server, name, threads=2)
    assert r.status_code == 404 and "no configuration" in r.json()["detail"]
    with module_server.client() as c:
        assert c.get(f"/tables/{name}/configurations", params={"space": SPACE}).json() == []
    # a finished run marked unstable is listed but left out unless asked for
    rid = open_run(module_server, token, threads=1)
    with module_server.client(token) as c:
        c.post(f"/runs/{rid}/measurements", json={"measurements": [meas(op.key, 10.0) for op in REAL_OPS]})
        assert c.post(f"/runs/{rid}/finish", json={"unstable": True}).json()["unstable"] is True
    assert _get(module_server, name).json()["configuration"] is None
    with module_server.client() as c:
        cfgs = c.get(f"/tables/{name}/configurations", params={"space": SPACE}).json()
    assert [(c["runs"], c["unstable_runs"], c["complete"]) for c in cfgs] == [([], [rid], False)]
    t = _get(module_server, name, include_unstable="true").json()
    assert t["complete"] and {e["run_ids"][0] for e in t["entries"] if e["run_ids"]} == {rid}
    # finishing the open run makes it count, with its own values only
    with module_server.client(token) as c:
        assert c.post(f"/runs/{opened}/finish", json={}).status_code == 200
    assert _values(_get(module_server, name, threads=2).json()) == _expected(100.0)


def test_partial_rerun_on_a_new_runtime_does_not_mix(module_server, dev):
    name, token = dev
    old = _profile(module_server, token, 500.0, runtime_version="1.0")
    before = _get(module_server, name, runtime_version="1.0")
    new = _profile(module_server, token, 90.0, keys=[op.key for op in REAL_OPS[:5]], runtime_version="2.0")
    after = _get(module_server, name, runtime_version="1.0")
    assert after.json() == before.json() and after.headers["etag"] == before.headers["etag"]
    assert {tuple(e["run_ids"]) for e in after.json()["entries"] if e["source"] == "measured"} == {(old,)}
    t2 = _get(module_server, name, runtime_version="2.0").json()
    assert _values(t2) == {op.key: _value(i, 90.0) for i, op in enumerate(REAL_OPS[:5])}
    assert not t2["complete"] and len(t2["missing"]) == len(REAL_OPS) - 5
    assert {e["run_ids"][0] for e in t2["entries"] if e["run_ids"]} == {new}
    assert _get(module_server, name).json()["configuration"]["runtime_version"] == "1.0"  # newest complete


def test_imported_table_is_its_own_configuration(module_server):
    path = HWNASBENCH / "pixel3_latency.json"
    if not path.exists():
        pytest.skip(f"HW-NAS-Bench table not found at {path}")
    name = module_server.unique("imp")
    token = module_server.create_device(name, precision="int8")
    measured = _profile(module_server, token, 700.0, precision="fp32")
    with module_server.admin as c:
        r = c.post(f"/tables/{name}/import", params={"format": "hwnasbench", "space": SPACE},
                   content=path.read_bytes(), headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["missing"] == [], r.text
    with module_server.client() as c:
        cfgs = c.get(f"/tables/{name}/configurations", params={"space": SPACE}).json()
    assert [(c["precision"], c["imported"], c["runtime_version"]) for c in cfgs] == \
        [("fp32", False, "1.0"), ("int8", True, "import-hwnasbench")]
    fp32 = _get(module_server, name, precision="fp32").json()
    assert _values(fp32) == _expected(700.0) and {e["source"] for e in fp32["entries"]} <= {"measured", "identity"}
    imp = _get(module_server, name, precision="int8").json()
    assert imp["configuration"]["imported"] and {e["source"] for e in imp["entries"]} == {"imported"}
    assert all(measured not in e["run_ids"] for e in imp["entries"])
    assert imp["overhead_us"] is None and all(e["corrected_us"] == e["latency_us"] for e in imp["entries"])


def test_bad_selectors(module_server, dev):
    name, _ = dev
    with module_server.client() as c:
        assert c.get(f"/tables/{name}", params={"space": SPACE, "precision": "fp64"}).status_code == 422
        assert c.get(f"/tables/{name}", params={"space": SPACE, "threads": 0}).status_code == 422
        assert c.get("/tables/ghost/configurations", params={"space": SPACE}).status_code == 404
        assert c.get(f"/tables/{name}/configurations", params={"space": "nope"}).status_code == 404


def test_context_factor_is_the_median_of_the_contributing_runs(module_server, dev):
    """A finished run's context factor and context cost reach its configuration's table (median over the runs that
    feed it) and the version; an open run's, another configuration's and an import's never do; an
    implausible factor is refused with 422 and changes nothing."""
    name, token = dev

    def run_with(factor, finish=True, cost=None, **cfg):
        rid = _profile(module_server, token, 1000.0, finish=None, **cfg)
        if finish:
            with module_server.client(token) as c:
                r = c.post(f"/runs/{rid}/finish", json={"status": "finished", "context_factor": factor,
                                                        "context_us_per_mb": cost})
                assert r.status_code == 200 and r.json()["context_factor"] == factor, r.text
                assert r.json()["context_us_per_mb"] == cost
        return rid

    run_with(None, threads=1)
    plain = _get(module_server, name, threads=1)
    assert plain.json()["context_factor"] is None and plain.json()["context_us_per_mb"] is None
    run_with(1.10, threads=1, cost=40.0)
    run_with(1.30, threads=1, cost=80.0)
    t = _get(module_server, name, threads=1)
    assert t.json()["context_factor"] == pytest.approx(1.20)  # median of 1.10 and 1.30; the None run has none
    assert t.json()["context_us_per_mb"] == pytest.approx(60.0)  # likewise
    assert t.headers["etag"] != plain.headers["etag"]
    run_with(2.0, finish=False, threads=1, cost=500.0)  # open: never counts
    run_with(3.0, threads=4, cost=7.0)  # another configuration
    assert _get(module_server, name, threads=1).json()["context_factor"] == pytest.approx(1.20)
    assert _get(module_server, name, threads=1).json()["context_us_per_mb"] == pytest.approx(60.0)
    assert _get(module_server, name, threads=4).json()["context_factor"] == pytest.approx(3.0)
    assert _get(module_server, name, threads=4).json()["context_us_per_mb"] == pytest.approx(7.0)
    bad = _profile(module_server, token, 1000.0, finish=None, threads=1)
    with module_server.client(token) as c:
        r = c.post(f"/runs/{bad}/finish", json={"status": "finished", "context_factor": 50.0})
        assert r.status_code == 422 and "context_factor" in r.text
        r = c.post(f"/runs/{bad}/finish", json={"status": "finished", "context_us_per_mb": float("1e9")})
        assert r.status_code == 422 and "context_us_per_mb" in r.text
        assert c.get(f"/runs/{bad}").json()["status"] == "open"
    assert _get(module_server, name, threads=1).headers["etag"] == t.headers["etag"]


def test_a_table_takes_the_newest_runs_per_op_and_keeps_the_rest(module_server, dev):
    """Per op, the newest ``table_runs`` (16) runs of the configuration that measured it feed the table:
    a 17th run pushes the oldest out of every entry (values, run ids, the context factor), a newer
    partial run pushes it out of its own ops only, and the configuration still lists every stored run."""
    from statistics import median

    from profiler_server.domain.tables import DEFAULT_MAX_RUNS

    name, token = dev
    window = DEFAULT_MAX_RUNS
    rids, factors = [], []
    for j in range(window + 1):  # base 1000, 1100, ...; the oldest run has the lowest values
        rid = _profile(module_server, token, 1000.0 + 100 * j, finish=None, threads=1)
        factors.append(1.0 + j / 100)
        with module_server.client(token) as c:
            r = c.post(f"/runs/{rid}/finish", json={"status": "finished", "context_factor": factors[-1]})
            assert r.status_code == 200, r.text
        rids.append(rid)
    t = _get(module_server, name, threads=1).json()
    assert str(window) in t["rule"]
    newest = [1000.0 + 100 * j for j in range(1, window + 1)]
    every = [1000.0 + 100 * j for j in range(window + 1)]
    assert median(newest) != median(every)  # the test can tell a window from all runs
    assert _values(t) == {op.key: median(newest) + i for i, op in enumerate(REAL_OPS)}
    assert {tuple(e["run_ids"]) for e in t["entries"] if e["source"] == "measured"} == {tuple(rids[1:])}
    assert {e["runs"] for e in t["entries"] if e["source"] == "measured"} == {window}
    assert t["context_factor"] == pytest.approx(median(factors[1:]))
    # a newer partial run: the window moves for its op only
    part = _profile(module_server, token, 5000.0, keys=[REAL_OPS[0].key], threads=1)
    t2 = _get(module_server, name, threads=1).json()
    e0 = next(e for e in t2["entries"] if e["key"] == REAL_OPS[0].key)
    assert e0["run_ids"] == sorted([*rids[2:], part]) and e0["latency_us"] == median([*newest[1:], 5000.0])
    e1 = next(e for e in t2["entries"] if e["key"] == REAL_OPS[1].key)
    assert e1["run_ids"] == rids[1:] and e1["latency_us"] == median(newest) + 1
    with module_server.client() as c:
        cfgs = c.get(f"/tables/{name}/configurations", params={"space": SPACE}).json()
    assert [c["runs"] for c in cfgs] == [[*rids, part]]  # stored, listed, just not served
