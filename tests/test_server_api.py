"""The HTTP API end to end against a real server: devices, spaces, runs, measurements, tables."""

from __future__ import annotations

import csv
import io
import json
import statistics

import pytest
from conftest import DATA

from fbnet.space import get_space
from fbnet.wire import MAX_BATCH

SPACE = "fbnet-cifar"
SP = get_space(SPACE)
REAL_OPS = [op for op in SP.ops if not op.is_identity]
IDENTITY_OPS = [op for op in SP.ops if op.is_identity]


def meas(key: str, median: float, n: int = 10, std: float = 1.0) -> dict:
    return {"key": key, "n": n, "median_us": median, "mean_us": median, "std_us": std, "min_us": median * 0.9,
            "p10_us": median * 0.95, "p90_us": median * 1.05}


def run_body(**kw) -> dict:
    return {"space": SPACE, "agent_version": "0.1", "runtime": "executorch", "runtime_version": "1.0", **kw}


@pytest.fixture
def dev(module_server):
    name = module_server.unique()
    return name, module_server.create_device(name)


def open_run(server, token, **kw) -> int:
    with server.client(token) as c:
        r = c.post("/runs", json=run_body(**kw))
    assert r.status_code == 201, r.text
    return r.json()["id"]


# ---- devices ---------------------------------------------------------------------------------
@pytest.mark.pg  # a duplicate name is the engine's unique constraint (409)
def test_devices_register_list_get(module_server):
    name = module_server.unique("phone")
    with module_server.admin as c:
        r = c.post("/devices", json={"name": name, "platform": "android", "runtime": "executorch-xnnpack",
                                     "model": "Pixel 3", "soc": "SDM845", "metadata": {"abi": "arm64"}})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["token"] and len(body["token"]) >= 32 and body["metadata"] == {"abi": "arm64"}
        assert c.post("/devices", json={"name": name, "platform": "android", "runtime": "x"}).status_code == 409
    with module_server.client() as anon:
        got = anon.get(f"/devices/{name}").json()
        assert "token" not in got and got["model"] == "Pixel 3" and got["coverage"] == {}
        assert name in [d["name"] for d in anon.get("/devices", params={"limit": 1000}).json()["devices"]]
        r = anon.get("/devices/no-such-device")
        assert r.status_code == 404 and "no-such-device" in r.json()["detail"]


@pytest.mark.parametrize("name", ["Pixel", "-x", "a b", "x" * 64, "ünï", ""])
def test_device_name_must_be_a_slug(module_server, name):
    with module_server.admin as c:
        r = c.post("/devices", json={"name": name, "platform": "linux", "runtime": "x"})
    assert r.status_code == 422 and "name" in json.dumps(r.json()["detail"])


def test_registration_needs_the_admin_token(module_server, dev):
    body = {"name": module_server.unique(), "platform": "linux", "runtime": "x"}
    with module_server.client() as anon:
        r = anon.post("/devices", json=body)
        assert r.status_code == 401 and r.json()["detail"]
    with module_server.client(dev[1]) as c:
        assert c.post("/devices", json=body).status_code == 403
    with module_server.client("not-a-token") as c:
        assert c.post("/devices", json=body).status_code == 401
    with module_server.client() as anon:
        r = anon.post("/devices", json=body, headers={"Authorization": "Basic abc"})
        assert r.status_code == 401 and "Bearer" in r.json()["detail"]
        assert anon.get(f"/devices/{body['name']}").status_code == 404  # nothing was written


# ---- spaces ----------------------------------------------------------------------------------
def test_spaces(module_server):
    with module_server.client() as c:
        names = [s["space"] for s in c.get("/spaces").json()]
        assert {"fbnet-224", "fbnet-cifar"} <= set(names)
        sp = c.get(f"/spaces/{SPACE}").json()
        assert sp["version"] == SP.version and [o["key"] for o in sp["ops"]] == [o.key for o in SP.ops]
        assert c.get("/spaces/fbnet-96-w0.35").status_code == 200
        r = c.get("/spaces/nope")
        assert r.status_code == 404 and "nope" in r.json()["detail"]


# ---- runs and measurements -------------------------------------------------------------------
@pytest.mark.pg  # re-sent ops: the engine's unique constraint
def test_run_lifecycle_and_idempotent_batches(module_server, dev):
    name, token = dev
    run_id = open_run(module_server, token, threads=4, overhead_us=12.5, temps_before={"cpu": 41.0})
    keys = [op.key for op in REAL_OPS[:5]]
    with module_server.client(token) as c:
        run = c.get(f"/runs/{run_id}").json()
        assert run["device"] == name and run["space_version"] == SP.version and run["status"] == "open"
        r = c.post(f"/runs/{run_id}/measurements", json={"measurements": [meas(k, 100.0) for k in keys]})
        assert r.json() == {"run_id": run_id, "received": 5, "stored": 5, "duplicates": 0}
        # re-sent batch plus one new op and a duplicate inside the batch
        batch = [meas(k, 100.0) for k in keys] + [meas(REAL_OPS[5].key, 50.0)] * 2
        r = c.post(f"/runs/{run_id}/measurements", json={"measurements": batch})
        assert r.json() == {"run_id": run_id, "received": 7, "stored": 1, "duplicates": 6}
        stored = c.get(f"/runs/{run_id}/measurements").json()
        assert sorted(stored["keys"]) == sorted(keys + [REAL_OPS[5].key])
        assert c.get(f"/runs/{run_id}").json()["n_measurements"] == 6
        listed = c.get("/runs", params={"device": name, "space": SPACE}).json()["runs"]
        assert [r["id"] for r in listed] == [run_id]
        r = c.post(f"/runs/{run_id}/finish", json={"temps_after": {"cpu": 45.0}})
        assert r.status_code == 200 and r.json()["status"] == "finished" and r.json()["temps_after"] == {"cpu": 45.0}
        r = c.post(f"/runs/{run_id}/measurements", json={"measurements": [meas(REAL_OPS[9].key, 5.0)]})
        assert r.status_code == 409 and "finished" in r.json()["detail"]
        # a retried finish (its answer lost) returns the finished run unchanged; another outcome conflicts
        r = c.post(f"/runs/{run_id}/finish", json={})
        assert r.status_code == 200 and r.json()["temps_after"] == {"cpu": 45.0}
        assert c.post(f"/runs/{run_id}/finish", json={"status": "failed"}).status_code == 409


def test_run_ownership(module_server, dev):
    name, token = dev
    other = module_server.unique()
    other_token = module_server.create_device(other)
    with module_server.client(other_token) as c:
        assert c.post("/runs", json=run_body(device=name)).status_code == 403
    run_id = open_run(module_server, token)
    with module_server.client(other_token) as c:
        r = c.post(f"/runs/{run_id}/measurements", json={"measurements": [meas(REAL_OPS[0].key, 5.0)]})
        assert r.status_code == 403 and name in r.json()["detail"]
        assert c.post(f"/runs/{run_id}/finish", json={}).status_code == 403
    with module_server.client() as anon:
        assert anon.post("/runs", json=run_body(device=name)).status_code == 401
        r = anon.post(f"/runs/{run_id}/measurements", json={"measurements": [meas(REAL_OPS[0].key, 5.0)]})
        assert r.status_code == 401
        assert anon.get(f"/runs/{run_id}/measurements").json()["keys"] == []
    with module_server.admin as c:
        r = c.post("/runs", json=run_body())
        assert r.status_code == 422 and "device" in r.json()["detail"]
        assert c.post("/runs", json=run_body(device=name)).status_code == 201
        assert c.post("/runs", json=run_body(device="ghost-device")).status_code == 404
        assert c.get("/runs/999999").status_code == 404
        assert c.post("/runs", json={**run_body(device=name), "space": "nope"}).status_code == 404


BAD_MEASUREMENTS = {
    "negative": {"median_us": -1.0, "min_us": -2.0, "p10_us": -1.5},
    "zero": {"median_us": 0.0, "min_us": 0.0, "p10_us": 0.0},
    "infinite": {"p90_us": "Infinity"},
    "out-of-order": {"min_us": 500.0},
    "no-samples": {"n": 0},
    "negative-std": {"std_us": -1.0},
}


@pytest.mark.parametrize("case", sorted(BAD_MEASUREMENTS))
def test_bad_measurements_store_nothing(module_server, dev, case):
    _, token = dev
    run_id = open_run(module_server, token)
    good = [meas(op.key, 100.0) for op in REAL_OPS[:3]]
    bad = {**meas(REAL_OPS[3].key, 100.0), **BAD_MEASUREMENTS[case]}
    body = json.dumps({"measurements": good + [bad]}).replace('"Infinity"', "Infinity")
    with module_server.client(token) as c:
        r = c.post(f"/runs/{run_id}/measurements", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["detail"]
        assert c.get(f"/runs/{run_id}/measurements").json()["keys"] == []


@pytest.mark.pg  # all-or-nothing: the engine's transaction
def test_foreign_key_rejects_whole_batch(module_server, dev):
    _, token = dev
    run_id = open_run(module_server, token)
    alien = "k3_e6-16x224x224-24-s2"
    with module_server.client(token) as c:
        r = c.post(f"/runs/{run_id}/measurements",
                   json={"measurements": [meas(REAL_OPS[0].key, 10.0), meas(alien, 10.0), meas("garbage", 1.0)]})
        assert r.status_code == 422 and alien in r.json()["detail"] and "garbage" in r.json()["detail"]
        assert c.get(f"/runs/{run_id}/measurements").json()["keys"] == []
        too_many = [meas(REAL_OPS[0].key, 10.0)] * (MAX_BATCH + 1)
        r = c.post(f"/runs/{run_id}/measurements", json={"measurements": too_many})
        assert r.status_code == 422 and "measurements" in json.dumps(r.json()["detail"])
        assert c.post(f"/runs/{run_id}/measurements", json={"measurements": []}).status_code == 422
        r = c.post(f"/runs/{run_id}/measurements", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        assert c.post("/runs/424242/measurements", json={"measurements": [meas(REAL_OPS[0].key, 1.0)]}).status_code == 404


# ---- tables ----------------------------------------------------------------------------------
def _table(server, name, **params):
    with server.client() as c:
        r = c.get(f"/tables/{name}", params={"space": SPACE, **params})
    assert r.status_code == 200, r.text
    return r


@pytest.mark.pg  # the table rule is a query on the engine
def test_table_rule(module_server, dev):
    name, token = dev
    a, b = REAL_OPS[0].key, REAL_OPS[1].key
    t = _table(module_server, name).json()
    assert not t["complete"] and len(t["missing"]) == len(REAL_OPS) and t["overhead_us"] is None
    assert t["configuration"] is None
    assert all(e["source"] == "identity" and e["latency_us"] == 0.0 for e in t["entries"] if e["key"] in
               {op.key for op in IDENTITY_OPS})
    rids = []
    with module_server.client(token) as c:
        for med, ovh in ((100.0, 10.0), (110.0, 20.0), (200.0, 60.0)):  # three runs, one configuration
            rid = open_run(module_server, token, overhead_us=ovh)
            c.post(f"/runs/{rid}/measurements", json={"measurements": [meas(a, med), meas(b, med / 2)]})
            c.post(f"/runs/{rid}/finish", json={})
            rids.append(rid)
        failed = open_run(module_server, token)
        c.post(f"/runs/{failed}/measurements", json={"measurements": [meas(a, 9999.0)]})
        c.post(f"/runs/{failed}/finish", json={"status": "failed"})
        still_open = open_run(module_server, token)
        c.post(f"/runs/{still_open}/measurements", json={"measurements": [meas(a, 1.0)]})
    t = _table(module_server, name).json()
    ea = next(e for e in t["entries"] if e["key"] == a)
    assert ea["latency_us"] == 110.0 and ea["runs"] == 3 and ea["n"] == 30 and ea["source"] == "measured"
    assert ea["run_ids"] == rids  # provenance: the failed and the open run are not among them
    assert ea["corrected_us"] == statistics.median([100.0 - 10, 110.0 - 20, 200.0 - 60])
    assert t["overhead_us"] == 20.0
    assert t["configuration"] == {"precision": "fp32", "runtime": "executorch", "runtime_version": "1.0",
                                  "threads": None, "cpu_mask": None, "compute_units": None, "imported": False}
    by = {e["key"]: e for e in t["entries"]}
    assert a not in t["missing"] and by[REAL_OPS[2].key]["source"] == "missing"
    assert by[REAL_OPS[2].key]["latency_us"] is None and by[REAL_OPS[2].key]["corrected_us"] is None
    cov = module_server.client().get(f"/devices/{name}").json()["coverage"][SPACE]
    assert cov == {"ops": len(SP.ops), "covered": len(IDENTITY_OPS) + 2}


@pytest.mark.pg  # the table version and ETag, assembled on the engine
def test_etag_304_and_csv(module_server, dev):
    name, token = dev
    r = _table(module_server, name)
    etag = r.headers["etag"]
    assert etag == f'"{r.json()["version"]}"'
    with module_server.client() as c:
        r304 = c.get(f"/tables/{name}", params={"space": SPACE}, headers={"If-None-Match": etag})
        assert r304.status_code == 304 and r304.content == b""
    rid = open_run(module_server, token)
    with module_server.client(token) as c:
        c.post(f"/runs/{rid}/measurements", json={"measurements": [meas(REAL_OPS[0].key, 10.0)]})
    with module_server.client() as c:  # an open run does not change the table
        assert c.get(f"/tables/{name}", params={"space": SPACE}, headers={"If-None-Match": etag}).status_code == 304
    with module_server.client(token) as c:
        c.post(f"/runs/{rid}/finish", json={})
    with module_server.client() as c:
        r2 = c.get(f"/tables/{name}", params={"space": SPACE}, headers={"If-None-Match": etag})
        assert r2.status_code == 200 and r2.headers["etag"] != etag
    rc = _table(module_server, name, format="csv")
    assert rc.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(rc.text)))
    assert len(rows) == len(SP.ops) and rows[0]["key"] == SP.ops[0].key
    assert float(next(r for r in rows if r["key"] == REAL_OPS[0].key)["latency_us"]) == 10.0
    with module_server.client() as c:
        assert c.get(f"/tables/{name}", params={"space": SPACE, "format": "xml"}).status_code == 422
        assert c.get(f"/tables/{name}").status_code == 422
        assert c.get("/tables/ghost", params={"space": SPACE}).status_code == 404
        assert c.get(f"/tables/{name}", params={"space": "nope"}).status_code == 404


# ---- import ----------------------------------------------------------------------------------
def _import(server, name, path_or_bytes, token=None, **params):
    body = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    params = {"format": "hwnasbench", "space": SPACE, **params}
    with server.client(token or server.admin_token) as c:
        return c.post(f"/tables/{name}/import", params=params, content=body,
                      headers={"content-type": "application/json"})


@pytest.mark.pg  # values round-trip exactly through the engine's columns
def test_import_pixel3_reproduces_the_file(module_server, hwnasbench_dir):
    name = module_server.unique("pixel3")
    module_server.create_device(name, platform="android", runtime="tflite")
    path = hwnasbench_dir / "pixel3_latency.json"
    r = _import(module_server, name, path)
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["entries_in_file"] == 225 and res["mapped"] == len(SP.ops) and res["missing"] == []
    assert "FC_Cin1504_Cout100" in res["unmapped"] and len(res["unmapped"]) == 225 - len(SP.ops)
    t = _table(module_server, name).json()
    assert t["complete"] and t["missing"] == []
    from profiler_server.domain.importers import hwnasbench_key

    by = {e["key"]: e for e in t["entries"]}
    raw = json.loads(path.read_text())
    checked = 0
    for k, ms in raw.items():
        ours = hwnasbench_key(k)
        if ours in by:
            assert by[ours]["latency_us"] == pytest.approx(ms * 1000, rel=1e-12, abs=0), k
            assert by[ours]["source"] == "imported"
            checked += 1
    assert checked == len(SP.ops)
    # identity skips keep the file's small non-zero values
    assert all(by[op.key]["latency_us"] > 0 for op in IDENTITY_OPS)


@pytest.mark.pg  # a rejected import leaves nothing behind on the engine
def test_import_bad_input(module_server, dev, hwnasbench_dir):
    name, token = dev
    path = hwnasbench_dir / "pixel3_latency.json"
    assert _import(module_server, name, path, token=token).status_code == 403
    with module_server.client() as anon:
        assert anon.post(f"/tables/{name}/import", params={"space": SPACE}, content=path.read_bytes()).status_code == 401
    assert _import(module_server, "ghost", path).status_code == 404
    assert _import(module_server, name, path, space="nope").status_code == 404
    assert _import(module_server, name, path, format="csv").status_code == 422
    r = _import(module_server, name, b"{not json")
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    assert _import(module_server, name, b"[1, 2]").status_code == 422
    bad = json.loads(path.read_text())
    bad["ConvBlock_H32_W32_Cin16_Cout16_exp1_kernel3_stride1_group1"] = -1
    r = _import(module_server, name, json.dumps(bad).encode())
    assert r.status_code == 422 and "ConvBlock_H32_W32_Cin16_Cout16_exp1_kernel3_stride1_group1" in r.json()["detail"]
    r = _import(module_server, name, json.dumps({"FC_Cin7_Cout3": 1.0}).encode())
    assert r.status_code == 422 and "nothing was stored" in r.json()["detail"]
    t = _table(module_server, name).json()
    assert len(t["missing"]) == len(REAL_OPS)  # none of the rejected imports left anything behind


def test_import_proxylessnas_yaml_reports_unmapped(module_server):

    path = DATA / "proxylessnas" / "mobile_trim.yaml"
    if not path.exists():
        pytest.skip("ProxylessNAS table not available")
    name = module_server.unique("pixel1")
    module_server.create_device(name, platform="android", runtime="tflite")
    with module_server.admin as c:
        r = c.post(f"/tables/{name}/import", params={"format": "proxylessnas", "space": "fbnet-224"},
                   content=path.read_bytes(), headers={"content-type": "application/yaml"})
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["entries_in_file"] == 72 and 0 < res["mapped"] < 72
    assert res["mapped"] + len(res["unmapped"]) == 72
    assert "Logits-input:7x7x1280-output:1000" in res["unmapped"]
    t = module_server.client().get(f"/tables/{name}", params={"space": "fbnet-224"}).json()
    assert t["entries"][[e["key"] for e in t["entries"]].index("k3_e3-16x112x112-24-s2")]["latency_us"] == \
        pytest.approx(6.240567073170731 * 1000)


# ---- compare, validations, plots -------------------------------------------------------------
def test_compare_validations_plots(module_server, hwnasbench_dir):
    a, b = module_server.unique("pixel3"), module_server.unique("raspi4")
    token_a = module_server.create_device(a, platform="android", runtime="tflite")
    module_server.create_device(b, platform="linux", runtime="tflite")
    assert _import(module_server, a, hwnasbench_dir / "pixel3_latency.json").status_code == 200
    assert _import(module_server, b, hwnasbench_dir / "raspi4_latency.json").status_code == 200
    with module_server.client() as c:
        cmp = c.get("/compare", params={"space": SPACE, "a": a, "b": b}).json()
        assert len(cmp["entries"]) == len(SP.ops)
        e0 = cmp["entries"][0]
        assert e0["ratio"] == pytest.approx(e0["a_us"] / e0["b_us"])
        assert 0 < cmp["geomean_ratio"] < 10
        assert c.get("/compare", params={"space": SPACE, "a": a, "b": a}).status_code == 422
        assert c.get("/compare", params={"space": SPACE, "a": a, "b": "ghost"}).status_code == 404
        png = c.get("/plots/compare.png", params={"space": SPACE, "a": a, "b": b})
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        png = c.get(f"/plots/table/{a}.png", params={"space": SPACE})
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"

    pairs = [(1000.0, 1050.0), (2000.0, 1700.0), (3000.0, 3100.0), (4000.0, 3900.0)]
    arch = ["k3_e1"] * 22
    with module_server.client(token_a) as c:
        for pred, measured in pairs:
            r = c.post("/validations", json={"space": SPACE, "arch": arch, "predicted_us": pred,
                                             "measured_us": measured, "n": 20, "label": "t"})
            assert r.status_code == 201, r.text
            assert r.json()["error_pct"] == pytest.approx(100 * (pred - measured) / measured)
        assert c.post("/validations", json={"space": SPACE, "arch": ["k9"] * 22, "predicted_us": 1.0,
                                            "measured_us": 1.0, "n": 1}).status_code == 422
        assert c.post("/validations", json={"space": SPACE, "arch": arch, "predicted_us": 1.0, "measured_us": 0,
                                            "n": 1}).status_code == 422
        assert c.post("/validations", json={"space": SPACE, "device": b, "arch": arch, "predicted_us": 1.0,
                                            "measured_us": 1.0, "n": 1}).status_code == 403
    from scipy.stats import kendalltau

    errs = [abs(100 * (p - m) / m) for p, m in pairs]
    with module_server.client() as c:
        s = c.get(f"/validations/{a}", params={"space": SPACE}).json()
        assert s["count"] == 4
        assert s["mape"] == pytest.approx(sum(errs) / 4)
        assert s["within_10pct"] == pytest.approx(sum(e <= 10 for e in errs) / 4)
        assert s["kendall_tau"] == pytest.approx(kendalltau([p for p, _ in pairs], [m for _, m in pairs]).statistic)
        assert s["worst"][0]["predicted_us"] == 2000.0
        empty = c.get(f"/validations/{b}", params={"space": SPACE}).json()
        assert empty["count"] == 0 and empty["mape"] is None and empty["kendall_tau"] is None
        png = c.get(f"/plots/validations/{a}.png", params={"space": SPACE})
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
