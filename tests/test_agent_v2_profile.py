"""The sampled profile of a v2 space end to end: a real server plans, the agent exports real ExecuTorch
programs, times them on the host transport and uploads; the finished runs refit the served grid.
Kill and resume: a real agent process killed mid-batch, and a batch left half measured, both finish
without measuring an op twice."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from doubles.support import QUICK, run_agent

from fbnet.client import ServiceClient, TableClient
from fbnet.lut import TableError
from fbnet.space_v2 import get_v2_space
from fbnet.wire import GridTable, PlanRequest

SPACE = "fbnetv2-cifar"
SP = get_v2_space(SPACE)
REPO = Path(__file__).resolve().parent.parent
SAMPLE = ["--budget", "24", "--batch", "12", "--design", "24"]


def agent_args(server, device, token, spool, *extra) -> list[str]:
    return ["profile", "--server", server.url, "--device", device, "--token", token, "--space", SPACE,
            "--transport", "host", "--spool-dir", str(spool), "--calibration-models", "0", *QUICK, *SAMPLE, *extra]


def measured_keys(server, device) -> dict[int, list[str]]:
    """run id -> the keys it holds, for every run of the device."""
    out = {}
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for run in c.get("/runs", params={"device": device}).json()["runs"]:
            ms = c.get(f"/runs/{run['id']}/measurements").json()["measurements"]
            out[run["id"]] = [m["key"] for m in ms]
    return out


def test_sampled_profile_fills_the_grid(module_server, tmp_path):
    name = module_server.unique("v2host")
    token = module_server.create_device(name)
    code, out = run_agent(*agent_args(module_server, name, token, tmp_path / "spool"))
    assert code == 0, out
    assert "round 0 (design): 12/12 ops measured" in out and "round 1 (design)" in out, out
    assert "24 of" in out and "done (budget)" in out, out
    by_run = measured_keys(module_server, name)
    keys = [k for ks in by_run.values() for k in ks]
    assert len(by_run) == 2 and len(keys) == len(set(keys)) == 24 and set(keys) <= set(SP.grid)
    with TableClient(module_server.url, tmp_path / "cache") as tc:
        first = tc.fetch(name, SPACE)
        assert isinstance(first.table, GridTable) and first.source == "server"
        t = first.table
        assert t.counts["measured"] == 24 and t.counts.get("fitted", 0) > 0
        src = dict(zip(t.columns.key, t.columns.source, strict=True))
        assert all(src[k] == "measured" for k in keys)
        again = tc.fetch(name, SPACE)  # the ETag cache: revalidated, not sent again
        assert again.source == "revalidated" and again.table.version == t.version
        with pytest.raises(TableError, match="measured_only=true refuses them"):
            tc.fetch(name, SPACE, measured_only=True)
    # the plan says done with the budget reached (asked in the configuration the runs have)
    with httpx.Client(base_url=module_server.url, timeout=30) as c:
        run = c.get("/runs", params={"device": name}).json()["runs"][0]
    cfg = {k: run[k] for k in ("runtime", "runtime_version", "precision", "threads", "cpu_mask")}
    with ServiceClient(module_server.url, token, role="agent") as sc:
        p = sc.plan(name, PlanRequest(space=SPACE, budget=24, batch=12, design=24, **cfg))
    assert p.done and p.reason == "budget" and p.measured == 24 and not p.keys


def test_killed_agent_resumes_without_measuring_twice(module_server, tmp_path):
    name = module_server.unique("v2kill")
    token = module_server.create_device(name)
    spool = tmp_path / "spool"
    argv = [sys.executable, "-m", "device_agents.cli", *agent_args(module_server, name, token, spool, "--cooldown", "0.5")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed_run = None
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:  # the second batch's run is open: kill
            with httpx.Client(base_url=module_server.url, timeout=30) as c:
                runs = c.get("/runs", params={"device": name}).json()["runs"]
            if any(r["status"] == "finished" for r in runs) and any(r["status"] == "open" for r in runs):
                killed_run = next(r["id"] for r in runs if r["status"] == "open")
                time.sleep(1.0)  # mid-timing (0.5 s of cooldown after every op)
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None and killed_run is None:
            proc.kill()
        out = proc.communicate()[0]
    assert killed_run is not None, out
    code, out = run_agent(*agent_args(module_server, name, token, spool, "--resume"))
    assert code == 0, out
    assert f"resuming run {killed_run}" in out and "done (budget)" in out, out
    by_run = measured_keys(module_server, name)
    keys = [k for ks in by_run.values() for k in ks]
    assert len(keys) == len(set(keys)) == 24, by_run  # nothing measured twice
    assert len(by_run) == 2 and by_run[killed_run]  # the killed run was continued, not a new one


def test_half_measured_batch_resumes_with_the_rest(module_server, tmp_path):
    """A batch left half measured in an open run (the agent died after 6 of its 12 ops landed): the
    resumed profile asks the plan with that run and measures only the other 6."""
    from device_agents.profiling import ProfileConfig
    from device_agents.profiling_v2 import V2Profiler, V2Sampling
    from device_agents.protocol import ProtocolConfig
    from device_agents.targets import Service, Target

    name = module_server.unique("v2half")
    token = module_server.create_device(name)
    service = Service(server=module_server.url, device=name, token=token)
    cfg = ProfileConfig(space=SPACE, spool_dir=tmp_path / "spool", calibration=0)
    sampling = V2Sampling(budget=12, batch=12, design=12)
    proto = ProtocolConfig(warmup=2, repeats=5, rounds=2)
    lines: list[str] = []
    first = V2Profiler(service, cfg, sampling, Target(), proto, note=lines.append)
    plan = first.plan()
    programs = first.export(plan.keys)
    first.measure(plan.keys[:6], programs, "half")
    first.up.send(first.state)  # landed on the service; the agent dies here (the run stays open)
    run_id = first.state.run_id
    first.close()
    second = V2Profiler(service, cfg, sampling, Target(), proto, note=lines.append)
    second.resume()
    assert second.plan().keys == plan.keys[6:]
    last = second.run()
    second.close()
    assert last.done and last.measured == 12
    by_run = measured_keys(module_server, name)
    assert list(by_run) == [run_id] and sorted(by_run[run_id]) == sorted(plan.keys)



def _roofline_run(server, device: str, token: str, like: dict, us_per_mmac: float, skip_keys) -> list[str]:
    """A run of a roofline device double posted through the API in ``like``'s configuration: every stem,
    head and classifier op plus a spread of inverted-residual and skip ops, each at ``us_per_mmac`` per
    million multiply-adds + 2 us. Enough of the grid for the fit to price every whole model."""
    from fbnet.wire import MeasurementBatch, RunCreate, RunFinish

    fixed = [k for k, op in SP.grid.items() if not op.block.startswith(("ir_k", "skip"))]
    ir = sorted(k for k, op in SP.grid.items() if op.block.startswith("ir_k"))[::400]
    skip = sorted(k for k, op in SP.grid.items() if op.block == "skip" and not op.is_identity)[::60]
    keys = [k for k in fixed + ir + skip if k not in skip_keys]
    ms = []
    for k in keys:
        us = us_per_mmac * SP.grid[k].macs / 1e6 + 2.0
        ms.append({"key": k, "n": 5, "median_us": us, "mean_us": us, "std_us": 0.01 * us, "min_us": 0.98 * us,
                   "p10_us": 0.99 * us, "p90_us": 1.01 * us, "overhead_us": 0.5})
    with ServiceClient(server.url, token, role="agent") as sc:
        run = sc.create_run(RunCreate(space=SPACE, transport="host", agent_version="roofline-double",
                                      **{f: like[f] for f in ("runtime", "runtime_version", "precision", "threads",
                                                              "cpu_mask", "compute_units")}))
        sc.post_measurements(run.id, MeasurementBatch(measurements=ms))
        sc.finish_run(run.id, RunFinish(overhead_us=0.5))
    return keys


def test_calibration_models_give_the_grid_its_context_cost(module_server, tmp_path):
    """Once the plan is done the agent times whole calibration models (their own random stream, not the
    validate flow's) beside measured references; their cost beyond the sum of their served entries, per
    MB of weights, is the context cost that the grid then serves and predict_v2 adds. The grid is one
    real batch plus a roofline double's run (scaled by the real batch), so that every model is priced."""
    from device_agents.targets import arch_key
    from device_agents.validate_v2 import v2_archs
    from fbnet.arch_v2 import ArchV2
    from fbnet.lut import context_cost
    from fbnet.lut_v2 import predict_v2

    name = module_server.unique("v2ctx")
    token = module_server.create_device(name)
    args = agent_args(module_server, name, token, tmp_path / "spool")
    code, out = run_agent(*args[:-len(SAMPLE)], "--budget", "12", "--batch", "12", "--design", "24")
    assert code == 0, out
    with ServiceClient(module_server.url) as sc:
        real = sc.runs(name)[0]
        got = {m.key: m.median_us - (m.overhead_us or 0) for m in sc.run_measurements(real.id).measurements}
    scale = sorted(us / (SP.grid[k].macs / 1e6) for k, us in got.items() if SP.grid[k].macs)[len(got) // 2]
    n = len(got) + len(_roofline_run(module_server, name, token, real.model_dump(), scale, got))
    i = args.index("--calibration-models")
    args[i + 1] = "2"
    # the double's sums are a roofline's, not this machine's ops: any factor is served (--context-max-factor)
    code, out = run_agent(*args[:-len(SAMPLE)], "--budget", str(n), "--batch", "12", "--design", "24",
                          "--context-max-factor", "100")
    assert code == 0, out
    flat = " ".join(out.split())
    assert "context: " in flat and "over 2 whole calibration models" in flat, out
    assert f"{n} of" in flat and "in 0 batch(es) this call; done (budget)" in flat, out  # nothing more measured
    with ServiceClient(module_server.url) as sc:
        runs = sc.runs(name)
        cal_run = runs[-1]
        refs = sc.run_measurements(cal_run.id).keys
    assert len(runs) == 3 and cal_run.context_us_per_mb is not None, [r.context_us_per_mb for r in runs]
    cal = cal_run.extra["calibration"]
    assert sorted(refs) == sorted(cal["reference_ops"]) and len(refs) >= 4  # the references are measured ops
    assert [m["label"] for m in cal["models"]] == ["calibration-0-0", "calibration-0-1"]
    validated = {a.to_text() for _, a in v2_archs(SP, 2, 0)}
    assert not validated & {m["arch"] for m in cal["models"]}  # calibrated on other models than judged on
    # the run's cost is the rule applied to what it recorded
    rows = [(m["median_us"] / cal["drift"], m["ops_sum_us"], m["weight_mb"]) for m in cal["models"]]
    assert cal_run.context_us_per_mb == pytest.approx(context_cost(rows, cal["overhead_us"])[0])
    with TableClient(module_server.url, tmp_path / "cache") as tc:
        t = tc.fetch(name, SPACE).table
    assert t.context_us_per_mb == pytest.approx(cal_run.context_us_per_mb)
    arch = ArchV2.parse(cal["models"][0]["arch"])
    with_ctx = predict_v2(t, SP, arch)["latency_us"]
    alone = predict_v2(t.model_copy(update={"context_us_per_mb": None}), SP, arch)["latency_us"]
    mb = SP.arch_params(arch) * 4 / 1e6
    assert with_ctx - alone == pytest.approx(t.context_us_per_mb * mb)
    assert cal["models"][0]["weight_mb"] == pytest.approx(mb)
    # a calibration outside the plausible band is recorded and never served: the table keeps the earlier one
    code, out = run_agent(*args[:-len(SAMPLE)], "--budget", str(n), "--batch", "12", "--design", "24",
                          "--context-max-factor", "1.000001")
    assert code == 0 and "is implausible; the calibration run carries none" in " ".join(out.split()), out
    with ServiceClient(module_server.url) as sc:
        last = sc.runs(name)[-1]
    assert last.id != cal_run.id and last.context_us_per_mb is None and last.extra["calibration"]["models"]
    with TableClient(module_server.url, tmp_path / "cache") as tc:
        assert tc.fetch(name, SPACE).table.context_us_per_mb == pytest.approx(cal_run.context_us_per_mb)
    # validate times the table's calibration models again and scales the prediction by their drift: now /
    # then, "then" in the table's state (median / that calibration's drift), of plausible calibrations only
    code, out = run_agent("validate", "--server", module_server.url, "--device", name, "--token", token, "--space",
                          SPACE, "--transport", "host", "--archs", "1", "--reference-ops", "2", "--max-rounds", "2",
                          *QUICK)
    assert code == 0 and "2 calibration model(s) of the table timed too" in " ".join(out.split()), out
    with ServiceClient(module_server.url) as sc:
        (v,) = sc.validations(name, SPACE).validations
    models = {arch_key(ArchV2.parse(m["arch"])): m["median_us"] / cal["drift"] for m in cal["models"]}
    now, then = v.extra["calibration_now_us"], v.extra["calibration_then_us"]
    assert v.extra["calibration_models"] == sorted(models) and then == pytest.approx(models)
    drift = statistics.median(now[k] / then[k] for k in models)
    assert v.extra["model_drift"] == pytest.approx(drift) and v.extra["drift_scale"] == pytest.approx(drift)
    assert v.predicted_us == pytest.approx(v.extra["table_predicted_us"] * drift)
