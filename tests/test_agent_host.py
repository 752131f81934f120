"""Host transport end to end: real ExecuTorch programs, real HTTP to a real profiler server."""

from __future__ import annotations

import json
import statistics

import httpx
import pytest
from doubles.support import HOST_OPS, QUICK, SPACE, export_cache, measured, run_agent, runs, table


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return export_cache(tmp_path_factory)


def profile_args(server, device, token, cache, spool, *extra):
    return ["profile", "--server", server.url, "--device", device, "--token", token, "--space", SPACE,
            "--transport", "host", "--ops", ",".join(HOST_OPS), "--cache-dir", str(cache), "--spool-dir",
            str(spool), *QUICK, *extra]


def test_calibration_model_gives_the_run_its_context_cost(module_server, cache, tmp_path):
    """A whole calibration model timed in the rounds with its ops: the run's context cost is its
    (median - overhead - the sum of its ops' corrected medians) / its weight MB (and its factor the
    ratio), the table serves both, and the table's rule (fbnet.lut.predict) then prices that model at
    exactly its measured median."""
    from device_agents.targets import calibration_archs
    from fbnet.lut import parse_table, predict, weight_mb
    from fbnet.space import get_space

    sp = get_space(SPACE)
    (arch,) = calibration_archs(1, 0)
    keys = sorted({op.key for op in sp.arch_ops(arch)})
    token = module_server.create_device("host-ctx")
    code, out = run_agent("profile", "--server", module_server.url, "--device", "host-ctx", "--token", token,
                          "--space", SPACE, "--transport", "host", "--ops", ",".join(keys), "--cache-dir", str(cache),
                          "--spool-dir", str(tmp_path / "spool"), *QUICK, "--calibration-models", "1",
                          # what is tested is the context arithmetic, not the stability flag (tested on its own):
                          # two rounds on a loaded machine can spread enough to mark the run unstable
                          "--unstable-threshold", "1000")
    assert code == 0, out
    (run,) = runs(module_server, "host-ctx")
    (model,) = run["extra"]["calibration"]["models"]
    assert model["arch"] == arch.to_text() and model["n"] == 5 * 2
    tab = table(module_server, "host-ctx")
    by_key = {e["key"]: e for e in tab["entries"]}
    absent = [k for k in keys if by_key[k]["corrected_us"] is None]
    assert not absent, f"the table lacks {absent} (run unstable: {run['unstable']})\n{out}"
    ops_sum = sum(by_key[op.key]["corrected_us"] for op in sp.arch_ops(arch))  # per occurrence
    assert model["ops_sum_us"] == pytest.approx(ops_sum)
    mb = sum(op.params * 4 / 1e6 for op in sp.arch_ops(arch))
    assert model["weight_mb"] == pytest.approx(mb) == pytest.approx(sum(weight_mb(op.key) for op in sp.arch_ops(arch)))
    want = (model["median_us"] - tab["overhead_us"] - ops_sum) / mb
    factor = (model["median_us"] - tab["overhead_us"]) / ops_sum
    # its size is the machine's (about 60 us/MB quiet, more under load, when a model is preempted more
    # often than a short op): checked here for consistency, not value
    assert f"context: {want:.1f} us per MB" in out and f"{factor:.3f}x the sum of their ops" in out
    assert run["context_us_per_mb"] == pytest.approx(want) and tab["context_us_per_mb"] == pytest.approx(want)
    assert run["context_factor"] == pytest.approx(factor) and tab["context_factor"] == pytest.approx(factor)
    assert predict(parse_table(tab, "test"), arch, sp)["latency_us"] == pytest.approx(model["median_us"])
    # validate re-times the table's calibration model: the whole-model drift (now / when profiled) scales
    # the prediction, so validating that very model is exact whatever the machine did in between
    code, out = run_agent("validate", "--server", module_server.url, "--device", "host-ctx", "--token", token,
                          "--space", SPACE, "--cache-dir", str(cache), *QUICK, "--archs", "0", "--no-predefined",
                          "--arch", arch.to_text())
    assert code == 0 and "whole-model drift" in out, out
    with httpx.Client(base_url=module_server.url, timeout=30) as c:
        (v,) = c.get("/validations/host-ctx", params={"space": SPACE}).json()["validations"]
    assert v["extra"]["calibration_models"] == [model["key"]]
    assert v["extra"]["model_drift"] == pytest.approx(v["measured_us"] / model["median_us"])
    assert v["predicted_us"] == pytest.approx(v["measured_us"]) and abs(v["error_pct"]) < 1e-6


def test_host_profile_fills_table(module_server, cache, tmp_path):
    token = module_server.create_device("host-cpu")
    # the claim is the table, not the stability verdict: on a loaded 2-core machine two short rounds can
    # spread past the default threshold, and an unstable run is (rightly) left out of the default table
    code, out = run_agent(*profile_args(module_server, "host-cpu", token, cache, tmp_path / "spool",
                                        "--unstable-threshold", "100"))
    assert code == 0, out
    tab = table(module_server, "host-cpu")
    got = measured(tab)
    assert sorted(got) == sorted(HOST_OPS)
    (run,) = runs(module_server, "host-cpu")
    assert f"run {run['id']} finished: 4 ops stored" in out
    for k, e in got.items():  # repeats x rounds, twice that when re-measured (every sample is kept)
        assert e["n"] == 5 * 2 * (2 if k in run["extra"]["remeasured"] else 1)
        assert e["latency_us"] > 0 and e["p10_us"] <= e["latency_us"] <= e["p90_us"]
    assert not tab["complete"] and len(tab["missing"]) == 112 - 6 - 4  # identities are filled as 0
    assert tab["overhead_us"] and tab["overhead_us"] > 0
    # 4 ops cannot make a whole calibration model: the run says so and carries no context factor
    assert "no context calibration" in out and tab["context_factor"] is None and tab["context_us_per_mb"] is None
    (run,) = runs(module_server, "host-cpu")
    assert run["status"] == "finished" and run["transport"] == "host" and run["threads"] == 1
    assert run["runtime"] == "executorch-xnnpack" and run["runtime_version"] and run["agent_version"]
    assert (run["warmup"], run["repeats"], run["rounds"]) == (2, 5, 2)
    assert run["cpu_freqs_before"] and run["cpu_mask"]
    ms = httpx.get(f"{module_server.url}/runs/{run['id']}/measurements", timeout=30).json()["measurements"]
    by_key = {m["key"]: m["overhead_us"] for m in ms}  # each op carries its input shape's overhead
    assert set(by_key) == set(HOST_OPS) and all(v > 0 for v in by_key.values())
    assert run["overhead_us"] == pytest.approx(statistics.median(by_key.values()))
    assert run["extra"]["protocol"]["reference_keys"] and len(run["extra"]["protocol"]["round_factors"]) >= 2
    # the spool holds nothing once the run is closed
    assert not list((tmp_path / "spool").rglob("*.json"))


def test_dry_run_and_op_selection_errors(module_server, cache, tmp_path):
    code, out = run_agent(*profile_args(module_server, "nobody", "x", cache, tmp_path, "--dry-run"))
    assert code == 0 and "plan: 4 ops" in out, out
    code, out = run_agent("profile", "--server", module_server.url, "--device", "d", "--token", "t",
                          "--ops", "k9_e9-*", "--dry-run")
    assert code == 2 and "matches no op" in out and "Traceback" not in out
    code, out = run_agent("profile", "--server", module_server.url, "--device", "d", "--token", "t",
                          "--ops", "skip-16x32x32-16-s1", "--dry-run")
    assert code == 2 and "identity skip" in out


def test_wrong_token_is_one_clear_line(module_server, cache, tmp_path):
    module_server.create_device("host-b")
    code, out = run_agent(*profile_args(module_server, "host-b", "not-the-token", cache, tmp_path / "spool",
                                        "--ops", "fc-1504-10"))
    assert code == 4 and "refused (HTTP 401" in out and "Traceback" not in out, out


def test_remeasure_high_cv_keeps_every_sample(module_server, cache, tmp_path):
    token = module_server.create_device("host-cv")
    # CV threshold 0: every op is re-measured once and keeps ALL its samples (a quieter second set
    # never replaces the first: that would bias exactly the noisy ops low)
    code, out = run_agent(*profile_args(module_server, "host-cv", token, cache, tmp_path / "spool",
                                        "--cv-threshold", "0"))
    assert code == 0, out
    (run,) = runs(module_server, "host-cv")
    assert sorted(run["extra"]["remeasured"]) == sorted(HOST_OPS)
    assert all(e["n"] == 2 * 10 for e in measured(table(module_server, "host-cv")).values())


@pytest.mark.parametrize("recover", ["upload", "resume"])
def test_service_down_then_up_loses_nothing(tmp_path, cache, monkeypatch, recover):
    """The service is down for a whole run: everything is spooled; `upload`, or `profile --resume`
    (which finds the whole run in the spool and says there is nothing left to measure), closes it."""
    import conftest

    port = conftest.free_port()
    url = f"http://127.0.0.1:{port}"
    spool = tmp_path / "spool"
    args = ["profile", "--server", url, "--device", "host-down", "--token", "later", "--space", SPACE,
            "--ops", "fc-1504-10,skip-16x32x32-24-s1", "--cache-dir", str(cache), "--spool-dir", str(spool),
            "--retries", "1", "--cv-threshold", "5", *QUICK]  # no re-measuring on a busy machine: n stays 10
    code, out = run_agent(*args)
    assert code == 3, out  # Exit.UNREACHABLE
    assert "unreachable" in out and "Nothing is lost" in out and "Traceback" not in out
    (state,) = spool.rglob("*.json")
    saved = json.loads(state.read_text())
    assert saved["run_id"] is None and {m["key"] for m in saved["pending"]} == {"fc-1504-10", "skip-16x32x32-24-s1"}

    server, cleanup = conftest.start_server("sqlite", tmp_path / "server", port=port)
    try:
        token = server.create_device("host-down")
        if recover == "upload":
            code, out = run_agent("upload", "--server", url, "--device", "host-down", "--token", token,
                                  "--spool-dir", str(spool))
            assert code == 0 and "closed run" in out, out
        else:
            code, out = run_agent(*[token if a == "later" else a for a in args], "--resume")
            assert code == 0 and "nothing left to measure" in out and "closed run" in out, out
        got = measured(table(server, "host-down"))
        assert sorted(got) == ["fc-1504-10", "skip-16x32x32-24-s1"] and all(e["n"] == 10 for e in got.values())
        (run,) = runs(server, "host-down")
        assert run["status"] == "finished" and run["overhead_us"] > 0
        assert not list(spool.rglob("*.json"))
    finally:
        cleanup()


def test_validate_refuses_incomplete_table_then_uploads(module_server, cache, tmp_path):
    token = module_server.create_device("host-val")
    common = ["--server", module_server.url, "--device", "host-val", "--token", token, "--space", SPACE,
              "--cache-dir", str(cache), *QUICK]
    code, out = run_agent("validate", *common, "--archs", "1", "--seed", "3", "--no-predefined")
    assert code == 2 and "lacks" in out and "stem-3x32x32-16-s1" in out and "Traceback" not in out, out

    # a complete table through the real API (a synthetic run: every op 100 us, 2 us per-call overhead)
    from fbnet.space import get_space

    sp = get_space(SPACE)
    with httpx.Client(base_url=module_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        rid = c.post("/runs", json={"space": SPACE, "agent_version": "test", "runtime": "synthetic",
                                    "runtime_version": "0", "overhead_us": 2.0}).json()["id"]
        ms = [{"key": op.key, "n": 1, "median_us": 100.0, "mean_us": 100.0, "std_us": 0.0, "min_us": 80.0,
               "p10_us": 80.0, "p90_us": 100.0} for op in sp.ops if not op.is_identity]
        assert c.post(f"/runs/{rid}/measurements", json={"measurements": ms}).status_code == 200
        code, out = run_agent("validate", *common, "--archs", "1", "--seed", "3", "--no-predefined")
        assert code == 2 and "lacks" in out, out  # an open run never feeds a table
        assert c.post(f"/runs/{rid}/finish", json={}).status_code == 200
    code, out = run_agent("validate", *common, "--archs", "1", "--seed", "3", "--no-predefined",
                          "--reference-ops", "2")
    assert code == 0, out
    assert "fp32, synthetic 0" in out  # the configuration it validated against
    assert "drift since the table was measured" in out
    r = httpx.get(f"{module_server.url}/validations/host-val", params={"space": SPACE}, timeout=30).json()
    assert r["count"] == 1
    (v,) = r["validations"]
    from device_agents.targets import random_archs

    arch = random_archs(1, 3)[0]
    assert v["arch"] == list(arch.blocks) and v["label"] == "random-3-0"
    n_ops = len(sp.arch_ops(arch))
    # corrected pricing (the default): each op without its per-call overhead, the whole model pays it once
    assert v["extra"]["table_predicted_us"] == pytest.approx(100.0 * n_ops - 2.0 * (n_ops - 1))
    # ... scaled by the drift its reference ops measured (real ops are far from the synthetic 100 us)
    assert v["predicted_us"] == pytest.approx(v["extra"]["table_predicted_us"] * v["extra"]["drift"])
    assert v["extra"]["pricing"] == "corrected" and v["extra"]["configuration"]["runtime"] == "synthetic"
    assert v["extra"]["raw_sum_us"] == pytest.approx(100.0 * n_ops) and v["extra"]["table_overhead_us"] == 2.0
    assert v["measured_us"] > 0 and v["n"] in (10, 20)  # 20: re-measured (high CV) keeps all samples
    # two ops of the table were re-timed in the same rounds: real ops cost far from the synthetic 100 us
    refs = v["extra"]["reference_ops"]
    assert len(refs) == 2 and set(refs) <= {op.key for op in sp.arch_ops(arch)}
    assert v["extra"]["drift"] > 0 and v["extra"]["drift"] != 1.0
    assert v["extra"]["statistic"] == "median" and v["measured_us"] == v["extra"]["median_us"]

    assert v["extra"]["inround_predicted_us"] is None  # 2 reference ops: not every op was timed with the model

    # --statistic p10: the table's p10s (less the same correction) against the model's own p10; with
    # every op of the model among the reference ops, the rule is also priced from the same rounds
    code, out = run_agent("validate", *common, "--archs", "1", "--seed", "3", "--no-predefined",
                          "--reference-ops", "1000", "--statistic", "p10", "--no-drift-adjust")
    assert code == 0 and "corrected p10s" in out, out
    r = httpx.get(f"{module_server.url}/validations/host-val", params={"space": SPACE}, timeout=30).json()
    p10 = next(x for x in r["validations"] if x["extra"]["statistic"] == "p10")
    assert p10["extra"]["table_predicted_us"] == pytest.approx(80.0 * n_ops - 2.0 * (n_ops - 1))
    assert p10["predicted_us"] == p10["extra"]["table_predicted_us"]  # --no-drift-adjust
    assert p10["measured_us"] == p10["extra"]["p10_us"] <= p10["extra"]["median_us"]
    assert set(p10["extra"]["reference_ops"]) == {op.key for op in sp.arch_ops(arch)}
    inround = p10["extra"]["inround_predicted_us"]  # real ops' p10s, not the synthetic table's 80 us
    assert inround > 0 and abs(inround - p10["extra"]["table_predicted_us"]) > 1.0
