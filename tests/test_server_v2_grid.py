"""The v2 grid end to end against a real server: planning (design, resume, failed ops, adaptive
rounds), v2 keys through the runs API, the fitted table (every grid op marked, the held-out error),
``measured_only``, ETags, the width plot; against a device double with a known staircase."""

from __future__ import annotations

import random
import statistics

import numpy as np
import pytest
from doubles.staircase import latency_us, measure, measurement

from fbnet.arch_v2 import LayerChoice
from fbnet.ops_v2 import parse_key_v2
from fbnet.space_v2 import get_v2_space

SPACE = "fbnetv2-cifar"
SP = get_v2_space(SPACE)
CFG = {"runtime": "executorch", "runtime_version": "1.0"}
N_FIXED = sum(1 for op in SP.grid.values() if op.block in ("conv_k3_hs", "ir_pool_hs", "fc"))


def plan(server, token, device, **kw) -> dict:
    with server.client(token) as c:
        r = c.post(f"/plans/{device}", json={"space": SPACE, **CFG, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def open_run(server, token) -> int:
    with server.client(token) as c:
        r = c.post("/runs", json={"space": SPACE, "agent_version": "test", **CFG})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def upload(server, token, run_id: int, keys: list[str], rng: random.Random, step: int = 8) -> None:
    rows = [measurement(k, measure(parse_key_v2(k), rng, step)) for k in keys]
    with server.client(token) as c:
        for i in range(0, len(rows), 1000):
            r = c.post(f"/runs/{run_id}/measurements", json={"measurements": rows[i:i + 1000]})
            assert r.status_code == 200, r.text


def finish(server, token, run_id: int) -> None:
    with server.client(token) as c:
        assert c.post(f"/runs/{run_id}/finish", json={}).status_code == 200


def table(server, device, **params):
    with server.client() as c:
        return c.get(f"/tables/{device}", params={"space": SPACE, **params})


@pytest.fixture
def dev(module_server):
    name = module_server.unique("v2")
    return name, module_server.create_device(name)


def test_v2_keys_through_the_runs_api(module_server, dev):
    name, token = dev
    run_id = open_run(module_server, token)
    good = next(k for k, op in SP.grid.items() if not op.is_identity)
    with module_server.client(token) as c:
        bad = ["ir_k3-16x32x32-m96-24-s1x", "k3_e1-16x32x32-16-s1", "ir_k3-16x32x32-m96-1000-s1"]
        r = c.post(f"/runs/{run_id}/measurements", json={"measurements": [measurement(k, 5.0) for k in [good, *bad]]})
        assert r.status_code == 422
        detail = r.json()["detail"]
        assert "not a v2 op key" in detail and "not in the grid" in detail and "nothing was stored" in detail
        r = c.post(f"/runs/{run_id}/measurements", json={"measurements": [measurement(good, 5.0)]})
        assert r.status_code == 200 and r.json()["stored"] == 1
        names = {s["space"]: s["n_ops"] for s in c.get("/spaces").json()}
        assert names[SPACE] == len(SP.grid) and "fbnet-cifar" in names
        r = c.get(f"/spaces/{SPACE}")
        assert r.status_code == 422 and "v2" in r.json()["detail"]


def test_plan_resume_failed_and_next_round(module_server, dev):
    name, token = dev
    first = plan(module_server, token, name, batch=60, design=100)
    keys = first["keys"]
    assert first["round"] == 0 and first["phase"] == "design" and len(keys) == 60 and not first["done"]
    assert first["measured"] == 0 and first["grid"] == sum(not op.is_identity for op in SP.grid.values())
    # the fixed families (stem, head, classifier) lead the design; asking again issues nothing new
    assert {parse_key_v2(k).block for k in keys[:N_FIXED]} == {"conv_k3_hs", "ir_pool_hs", "fc"}
    assert plan(module_server, token, name, batch=60, design=100)["keys"] == keys
    # the same seed on another device: the same design
    other = module_server.unique("v2")
    assert plan(module_server, module_server.create_device(other), other, batch=60, design=100)["keys"] == keys
    # an agent uploads part of the batch, is killed; the plan returns the rest (with its open run) ...
    rng = random.Random(1)
    run_id = open_run(module_server, token)
    upload(module_server, token, run_id, keys[:25], rng)
    assert plan(module_server, token, name, run_id=run_id)["keys"] == keys[25:]
    assert plan(module_server, token, name)["keys"] == keys  # an open run counts only when named
    # ... and once that run is finished, without naming it
    finish(module_server, token, run_id)
    again = plan(module_server, token, name)
    assert again["keys"] == keys[25:] and again["round"] == 0 and again["measured"] == 25
    # ops the agent cannot measure are dropped; the rest measured: the next round is new ops
    with module_server.client(token) as c:
        r = c.post(f"/plans/{name}", json={"space": SPACE, **CFG, "failed": ["fc-640-3"]})
        assert r.status_code == 422 and "not in the current batch" in r.json()["detail"]
        r = c.post(f"/plans/{name}", json={"space": "fbnet-cifar", **CFG})
        assert r.status_code == 422 and "v2" in r.json()["detail"]
    run_id = open_run(module_server, token)
    upload(module_server, token, run_id, keys[25:55], rng)
    finish(module_server, token, run_id)
    nxt = plan(module_server, token, name, batch=60, design=100, failed=keys[55:])
    assert nxt["round"] == 1 and nxt["measured"] == 55 and len(nxt["keys"]) == 60
    assert not set(nxt["keys"]) & set(keys)
    # another configuration has a plan of its own
    fp16 = plan(module_server, token, name, batch=60, design=100, precision="fp16")
    assert fp16["round"] == 0 and fp16["keys"] == keys and fp16["configuration"]["precision"] == "fp16"
    # a reader may not plan; a budget stops the plan
    with module_server.client() as anon:
        assert anon.post(f"/plans/{name}", json={"space": SPACE, **CFG}).status_code == 401
    done = plan(module_server, token, name, budget=50, failed=[])
    assert done["keys"] == nxt["keys"]  # the current batch is still open: finish it first


def profile(server, token, device, target: int, step: int = 8, batch: int = 150, design: int = 400) -> list[dict]:
    """Plan, measure with the staircase double, finish, until ``target`` ops are measured; the plans."""
    rng, plans = random.Random(7), []
    while True:
        p = plan(server, token, device, batch=batch, design=design, budget=target)
        plans.append(p)
        if p["done"]:
            return plans
        run_id = open_run(server, token)
        upload(server, token, run_id, p["keys"], rng, step)
        finish(server, token, run_id)


def _blocks(widths: list[int], values, residual: int) -> list[list[float]]:
    """The values of whole 8-channel blocks (widths 8k+1 .. 8k+8), in order; without the width
    ``residual`` (cout == cin: that op adds its input, a different op)."""
    by: dict[int, list[float]] = {}
    for w, v in zip(widths, values, strict=True):
        by.setdefault(-(-w // 8), []).append(float(v) if w != residual else None)
    whole = [v for v in by.values() if len(v) == 8]
    return [[x for x in v if x is not None] for v in whole]


def _steps(blocks: list[list[float]]) -> list[float]:
    return [b[0] / a[-1] - 1 for a, b in zip(blocks, blocks[1:], strict=False)]


def test_fit_recovers_a_staircase(module_server, dev):
    """Profile 700 ops of the double (steps every 8 channels) through the real API: every grid entry is
    served marked, the held-out error is reported and matches the error on the fitted entries (which
    a constant model would fail), and the fitted curve of a layer steps every 8 channels."""
    name, token = dev
    plans = profile(module_server, token, name, target=700)
    assert [p["phase"] for p in plans[:2]] == ["design", "design"] and plans[-1]["reason"] == "budget"
    assert "adaptive" in [p["phase"] for p in plans]
    r = table(module_server, name)
    assert r.status_code == 200
    t = r.json()
    cols, counts, h = t["columns"], t["counts"], t["model"]["heldout"]
    assert len(cols["key"]) == len(SP.grid) and t["format"] == "columnar" and t["complete"] and not t["missing"]
    assert counts["measured"] == plans[-1]["measured"] == 700 and counts["missing"] == 0
    assert counts["measured"] + counts["fitted"] + counts["identity"] == len(SP.grid)
    # the held-out error: every measured op predicted by a fit that did not see it
    assert h["n"] == counts["measured"] and h["folds"] == 5
    assert h["within_10pct"] >= 0.9 and h["mape"] <= 6.0, h
    # honest: the fitted entries' true error is what the held-out error says ...
    true_err = [abs(v / latency_us(parse_key_v2(k)) - 1) for k, v, s in
                zip(cols["key"], cols["corrected_us"], cols["source"], strict=True) if s == "fitted"]
    within = float(np.mean(np.array(true_err) <= 0.10))
    assert within >= 0.9 and abs(within - h["within_10pct"]) <= 0.06, (within, h)
    # ... and a constant model (the measured median) would be far off on the same ops
    measured = [v for v, s in zip(cols["corrected_us"], cols["source"], strict=True) if s == "measured"]
    med = statistics.median(measured)
    const_mape = 100 * statistics.mean(abs(med / v - 1) for v in measured)
    assert const_mape > 10 * h["mape"] and h["within_10pct"] > 0.5 + np.mean([abs(med / v - 1) <= 0.1 for v in measured])
    # the staircase: off the grid, between multiples of 8, the fitted curve is flat; it steps at them
    with module_server.client() as c:
        r = c.get(f"/tables/{name}/width", params={"space": SPACE, "layer": 6, "block": "ir_k5_hs", "resolution": 32})
    assert r.status_code == 200, r.text
    curve = r.json()
    layer, cin = SP.layers[6], max(SP.input_widths(6))
    truth = [latency_us(SP.layer_op(6, 32, cin, LayerChoice("ir_k5_hs", w, 6.0))) for w in curve["widths"]]
    fitted = np.array(curve["fitted_us"])
    err = np.abs(fitted / np.array(truth) - 1)
    assert np.mean(err <= 0.10) >= 0.9, err
    fit_blocks, true_blocks = _blocks(curve["widths"], fitted, cin), _blocks(curve["widths"], truth, cin)
    assert t["model"]["vector_width"]["ir"] == 8  # chosen by k-fold error among 1, 4, 8, 16, 32
    assert max(max(v) / min(v) - 1 for v in fit_blocks) < 0.01  # flat inside every 8 channels
    # and it steps where the double steps, by about as much (a smooth model would ramp instead)
    fit_steps, true_steps = _steps(fit_blocks), _steps(true_blocks)
    assert min(fit_steps) > 0.01 and max(abs(a - b) for a, b in zip(fit_steps, true_steps, strict=True)) < 0.06, \
        (fit_steps, true_steps)
    assert {s for _, _, s in curve["points"]} <= {"measured", "fitted"} and len(curve["points"]) == len(layer.widths)
    with module_server.client() as c:
        png = c.get(f"/plots/width/{name}.png", params={"space": SPACE, "layer": 6, "block": "ir_k5_hs"})
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        assert c.get(f"/plots/width/{name}.png", params={"space": SPACE, "block": "nope"}).status_code == 422
        assert c.get(f"/plots/width/{name}.png", params={"space": "fbnet-cifar"}).status_code in (404, 422)


def test_fitted_entries_marked_refused_under_measured_only_and_etags(module_server, dev):
    name, token = dev
    assert table(module_server, name).status_code == 404 or table(module_server, name).json()["counts"]["measured"] == 0
    p = plan(module_server, token, name, batch=80, design=80)
    run_id = open_run(module_server, token)
    upload(module_server, token, run_id, p["keys"], random.Random(3))
    finish(module_server, token, run_id)
    r = table(module_server, name)
    t, etag = r.json(), r.headers["ETag"]
    assert t["counts"]["measured"] == 80 and t["counts"]["fitted"] > 19000
    src = dict(zip(t["columns"]["key"], t["columns"]["source"], strict=True))
    assert {src[k] for k in p["keys"]} == {"measured"}
    fitted = [i for i, s in enumerate(t["columns"]["source"]) if s == "fitted"]
    assert all(t["columns"]["corrected_us"][i] > 0 for i in fitted)
    assert t["model"]["kind"] == "padded+gbm" and t["model"]["heldout"]["n"] == 80 and "fitted" in t["rule"].lower()
    r = table(module_server, name, measured_only="true")
    assert r.status_code == 409
    assert "fitted" in r.json()["detail"] and "measured_only" in r.json()["detail"] and "MAPE" in r.json()["detail"]
    # the ETag: unchanged without a new run (304), new once a run lands
    with module_server.client() as c:
        assert c.get(f"/tables/{name}", params={"space": SPACE}, headers={"If-None-Match": etag}).status_code == 304
    p2 = plan(module_server, token, name, batch=10, design=80)
    run_id = open_run(module_server, token)
    upload(module_server, token, run_id, p2["keys"], random.Random(4))
    r = table(module_server, name)
    assert r.headers["ETag"] == etag  # an open run is in no table
    finish(module_server, token, run_id)
    r = table(module_server, name)
    assert r.headers["ETag"] != etag and r.json()["counts"]["measured"] == 90
    csv = table(module_server, name, format="csv")
    assert csv.status_code == 200 and csv.text.splitlines()[0] == "key,latency_us,corrected_us,source,n,runs"
    assert len(csv.text.splitlines()) == len(SP.grid) + 1
    with module_server.client() as c:
        cov = c.get(f"/devices/{name}").json()["coverage"][SPACE]
        assert cov["ops"] == len(SP.grid) and cov["covered"] == 90 + t["counts"]["identity"]
        assert c.get(f"/tables/{name}/configurations", params={"space": SPACE}).json()[0]["covered"] == 90 + t["counts"]["identity"]


def test_the_budget_cuts_the_last_batch(module_server, dev):
    """``budget`` is the most ops a profile measures: the batch that reaches it is cut to it (a 600-op
    budget in batches of 100 after 32 fixed ops measured 632 before)."""
    name, token = dev
    rng, sizes = random.Random(3), []
    while not (p := plan(module_server, token, name, batch=30, design=100, budget=45))["done"]:
        sizes.append(len(p["keys"]))
        run_id = open_run(module_server, token)
        upload(module_server, token, run_id, p["keys"], rng)
        finish(module_server, token, run_id)
    assert sizes == [30, 15] and p["reason"] == "budget" and p["measured"] == 45
