"""fbnet-runner, our C++ runner (device_agents/runner), built against the installed executorch wheel:
run directly, through ``--transport native``, and through the adb double (which executes the
host-built binary for real, in both log modes); broken on purpose (bad path, bad program, a crash
mid-round) it fails with one clear line and keeps the finished ops."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest
from doubles.support import (
    ADB_OPS,
    QUICK,
    SPACE,
    export_cache,
    host_runner,
    measured,
    run_agent,
    runs,
    table,
    use_doubles,
)

from device_agents.protocol import AgentError, RunnerCrashError
from device_agents.transports.native import NativeTransport
from device_agents.transports.runner import is_fbnet_runner


@pytest.fixture(scope="module")
def runner():
    return host_runner()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return export_cache(tmp_path_factory, keys=ADB_OPS)


def programs(cache):
    """ADB_OPS and their one overhead program (the cache is shared with other test modules)."""
    from device_agents.exporters import cache_path, overhead_key
    from fbnet.space import get_space

    sp = get_space(SPACE)
    keys = [*ADB_OPS, *{overhead_key(sp.op_by_key[k].input_shape) for k in ADB_OPS}]
    return {k: cache_path(k, "pte", cache) for k in keys}


def test_runner_prints_every_sample_version_and_rounds(runner, cache):
    progs = programs(cache)
    ref = ADB_OPS[0]
    cmd = [str(runner), "--warmup=1", "--repeats=4", "--rounds=3", "--shuffle", "--seed=5", f"--reference={ref}",
           "--stable-tol=0.5", "--sensors", *[f"{k}={p}" for k, p in progs.items()]]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    ev = [json.loads(line) for line in p.stdout.splitlines()]
    start = ev[0]
    assert start["event"] == "start" and start["runner"] == "fbnet-runner" and start["build"].startswith("src:")
    assert start["executorch"].startswith("1.5.1") and start["threads"] == 1
    samples = [e for e in ev if e["event"] == "sample"]
    assert len(samples) == 3 * len(progs) and all(len(e["samples_us"]) == 4 for e in samples)
    assert all(x > 0 for e in samples for x in e["samples_us"])
    # every program in every round, references flagged; shuffled: the rounds' orders differ
    orders = [[e["key"] for e in samples if e["round"] == r] for r in range(3)]
    assert all(sorted(o) == sorted(progs) for o in orders) and len({tuple(o) for o in orders}) > 1
    assert {e["key"] for e in samples if e["reference"]} == {ref}
    ends = [e for e in ev if e["event"] == "round_end"]
    assert len(ends) == 3 and all(ref in e["reference_median_us"] and "temps" in e for e in ends)
    assert [e for e in ev if e["event"] == "warmup"][0]["key"] == ref and ev[-1] == {"event": "done", "samples": 3 * len(progs)}
    assert is_fbnet_runner(runner)


def test_runner_follows_the_plan_and_pins_cpus(runner, cache, tmp_path):
    progs = programs(cache)
    keys = sorted(progs)
    plan = tmp_path / "plan.txt"
    plan.write_text(" ".join(keys) + "\n" + " ".join(reversed(keys)) + "\n")
    cmd = [str(runner), "--repeats=2", "--warmup=0", f"--plan={plan}", "--cpu-mask=1",
           *[f"{k}={p}" for k, p in progs.items()]]
    ev = [json.loads(x) for x in subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()]
    assert ev[0]["cpus"] == [0]
    got = [[e["key"] for e in ev if e["event"] == "sample" and e["round"] == r] for r in (0, 1)]
    assert got == [keys, list(reversed(keys))]


def test_native_transport_breaks_clearly(runner, cache, tmp_path, monkeypatch):
    progs = programs(cache)
    tr = NativeTransport(runner)
    with pytest.raises(AgentError, match=r"cannot read .*nope\.pte"):
        tr.prepare({"nope": tmp_path / "nope.pte"})
    bad = tmp_path / "bad.pte"
    bad.write_bytes(b"not a program at all, but long enough to have a header" * 4)
    tr = NativeTransport(runner)
    with pytest.raises(AgentError, match=r"bad.*not a loadable ExecuTorch program"):
        tr.prepare({"bad": bad})
    # a crash mid-round: the samples that finished before it are delivered, then one clear error
    tr = NativeTransport(runner)
    tr.prepare(progs)
    monkeypatch.setenv("FBNET_RUNNER_ABORT_AFTER", "2")
    got = []
    with pytest.raises(RunnerCrashError, match=r"crashed \(aborted \(SIGABRT\)\) after 2 of 3 measurements"):
        tr.measure_rounds([sorted(progs)], 0, 3, lambda r, k, xs: got.append(k))
    assert got == sorted(progs)[:2]
    with pytest.raises(AgentError, match="not an fbnet-runner"):
        NativeTransport(next(iter(progs.values())))


def native_args(server, device, token, cache, spool, runner, *extra):
    return ["profile", "--server", server.url, "--device", device, "--token", token, "--space", SPACE,
            "--transport", "native", "--runner", str(runner), "--ops", ",".join(ADB_OPS), "--cache-dir", str(cache),
            "--spool-dir", str(spool), "--cv-threshold", "5", *QUICK, *extra]


def test_native_profile_crash_keeps_finished_ops_then_resume(module_server, runner, cache, tmp_path, monkeypatch):
    token = module_server.create_device("native")
    spool = tmp_path / "spool"
    # 2 rounds of 1 overhead program (first) + 2 ops; the runner aborts after round 1, the overhead
    # program and one op of round 2
    monkeypatch.setenv("FBNET_RUNNER_ABORT_AFTER", "5")
    code, out = run_agent(*native_args(module_server, "native", token, cache, spool, runner))
    assert code == 1 and "fbnet-runner crashed (aborted (SIGABRT)) after 5 of 6" in out and "--resume" in out, out
    assert "Traceback" not in out and "1 finished ops are on the service" in out
    monkeypatch.delenv("FBNET_RUNNER_ABORT_AFTER")
    (run,) = runs(module_server, "native")
    kept = httpx.get(f"{module_server.url}/runs/{run['id']}/measurements", timeout=30).json()["keys"]
    assert len(kept) == 1 and set(kept) < set(ADB_OPS)  # the one op whose last round finished
    code, out = run_agent(*native_args(module_server, "native", token, cache, spool, runner, "--resume"))
    assert code == 0, out
    got = measured(table(module_server, "native"))
    assert sorted(got) == sorted(ADB_OPS) and all(e["n"] == 10 for e in got.values())
    (run,) = runs(module_server, "native")
    assert run["transport"] == "native" and run["build"].startswith("fbnet-runner 1.0.0 (src:")
    assert run["runtime_version"] == "1.5.1" and run["overhead_us"] > 0


@pytest.mark.parametrize("pal", ["stderr", "logcat"])
def test_adb_runs_fbnet_runner_for_real(module_server, runner, cache, tmp_path, monkeypatch, pal):
    root = tmp_path / "phone"
    root.mkdir()
    use_doubles(monkeypatch)
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("FAKE_ADB_SERIAL", "R58M00TEST")
    if pal == "logcat":
        monkeypatch.setenv("FAKE_RUNNER_LOGCAT", "1")
    dev = f"s8-ours-{pal}"  # one server for the module: a device of its own per test
    token = module_server.create_device(dev, platform="android")
    args = ["profile", "--server", module_server.url, "--device", dev, "--token", token, "--space", SPACE,
            "--transport", "adb", "--serial", "R58M00TEST", "--runner", str(runner), "--cpu-mask", "1",
            "--ops", ",".join(ADB_OPS), "--cache-dir", str(cache), "--spool-dir", str(tmp_path / "spool"),
            "--cv-threshold", "5", *QUICK]
    code, out = run_agent(*args)
    assert code == 0, out
    got = measured(table(module_server, dev))
    assert sorted(got) == sorted(ADB_OPS) and all(e["n"] == 10 for e in got.values())
    (run,) = runs(module_server, dev)
    assert run["build"].startswith("fbnet-runner 1.0.0") and run["runtime_version"].startswith("1.5.1 sha256:")
    assert run["soc"] == "Exynos 8895" and run["cpu_mask"] == "1"
    # one runner process loads the programs, one runs both rounds: not one per op
    assert json.loads((root / ".phone").read_text())["runner_launches"] == 2
    # the runner read the phone's sysfs (the double's folder) between rounds
    rounds = run["extra"]["runner_rounds"]
    assert any(e.get("freqs", {}).get("cpu7") == 2314.0 for e in rounds)
    assert any(e.get("temps", {}).get("thermal_zone0 cpu-big") == 41.5 for e in rounds)
    logged = (root / "logcat.txt").read_text()
    assert ("Resetting threadpool" in logged) == (pal == "logcat")


@pytest.mark.slow
def test_validate_per_layer_prefix_models(module_server, runner, cache, tmp_path):
    """validate --per-layer through the native runner: every prefix of the model is timed in the same
    rounds; the per-layer rows telescope to the whole model and sit next to the served entries."""
    from fbnet.space import NUM_LAYERS, Arch, get_space

    server = module_server
    token = server.create_device("native-layers")
    sp = get_space(SPACE)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        rid = c.post("/runs", json={"space": SPACE, "agent_version": "test", "runtime": "synthetic",
                                    "runtime_version": "0", "overhead_us": 2.0}).json()["id"]
        ms = [{"key": op.key, "n": 1, "median_us": 100.0 + i % 7, "mean_us": 100.0 + i % 7, "std_us": 0.0,
               "min_us": 100.0 + i % 7, "p10_us": 100.0 + i % 7, "p90_us": 100.0 + i % 7}
              for i, op in enumerate(op for op in sp.ops if not op.is_identity)]
        assert c.post(f"/runs/{rid}/measurements", json={"measurements": ms}).status_code == 200
        assert c.post(f"/runs/{rid}/finish", json={}).status_code == 200  # only finished runs feed a table
    rows_json, png = tmp_path / "rows.json", tmp_path / "layers.png"
    # real ops at 7 layers, identity skips elsewhere: 8 distinct prefixes to export (a skip adds nothing)
    arch = ",".join(["k3_e3", "k3_e1", *(["skip"] * 3 + ["k3_e1"]) * 5])
    code, out = run_agent("validate", "--server", server.url, "--device", "native-layers", "--token", token,
                          "--space", SPACE, "--transport", "native", "--runner", str(runner), "--cache-dir",
                          str(cache), "--archs", "0", "--arch", arch, "--no-predefined", "--reference-ops", "0",
                          "--warmup", "1", "--repeats", "5", "--rounds", "2", "--per-layer", "--per-layer-json",
                          str(rows_json), "--plot", str(png))
    assert code == 0, out
    assert "each layer in context" in out and "largest errors" in out
    (label, got), = json.loads(rows_json.read_text()).items()
    rows = got["rows"]
    assert label == "arch-0" and [r["part"] for r in rows] == ["stem", *[f"layer {i}" for i in range(NUM_LAYERS)],
                                                                   "tail"]
    # each part at the value the table serves, priced by the one rule (fbnet.lut.predict)
    from fbnet.lut import predict
    from fbnet.wire import Table

    tab = Table.model_validate(table(server, "native-layers"))
    priced = [p["latency_us"] for p in predict(tab, Arch.parse(arch), sp)["per_op"]]
    skips = [op.is_identity for op in sp.arch_ops(Arch.parse(arch), with_identity=True)[1:1 + NUM_LAYERS]]
    assert sum(skips) == 15 and rows[0]["table_us"] == pytest.approx(priced[0])
    for r, skip, want in zip(rows[1:-1], skips, priced[1:1 + NUM_LAYERS], strict=True):
        assert r["table_us"] == pytest.approx(want) and (want > 0) != skip  # identity skips are served at 0
        if skip:  # nothing runs: the prefix is the previous one, timed once
            assert r["in_context_us"] == 0.0 and r["table_us"] == 0.0
    (v,) = httpx.get(f"{server.url}/validations/native-layers", params={"space": SPACE}, timeout=30).json()["validations"]
    # prefix differences telescope: the parts add up to the whole model, timed in the same rounds
    assert sum(r["in_context_us"] for r in rows) == pytest.approx(v["measured_us"], rel=1e-6)
    assert got["summary"]["table_us"] == pytest.approx(sum(priced))
    assert sum(r["in_context_us"] > 0 for r in rows if r["table_us"] > 0) > 0.7 * sum(r["table_us"] > 0 for r in rows)
    assert png.read_bytes()[:4] == b"\x89PNG"
