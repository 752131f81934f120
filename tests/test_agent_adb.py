"""adb transport against the phone doubles (tests/doubles/adb, executor_runner): the real agent code
path pushes, runs under taskset, parses the runner's log lines, and uploads to a real server."""

from __future__ import annotations

import json

import httpx
import pytest
from doubles.support import ADB_OPS, DOUBLES, SPACE, export_cache, measured, run_agent, runs, table, use_doubles

# one round: every runner launch costs about a second here (the double imports the host runtime)
ADB_QUICK = ["--warmup", "2", "--repeats", "5", "--rounds", "1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return export_cache(tmp_path_factory)


@pytest.fixture
def phone(tmp_path, monkeypatch):
    root = tmp_path / "phone"
    root.mkdir()
    use_doubles(monkeypatch)
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("FAKE_ADB_SERIAL", "R58M00TEST")
    for knob in ("FAKE_ADB_LOSE_AFTER", "FAKE_RUNNER_CRASH_ON", "FAKE_RUNNER_SILENT_ON", "FAKE_RUNNER_LOGCAT"):
        monkeypatch.delenv(knob, raising=False)
    return root


def adb_args(server, device, token, cache, spool, *extra):
    return ["profile", "--server", server.url, "--device", device, "--token", token, "--space", SPACE,
            "--transport", "adb", "--serial", "R58M00TEST", "--runner", str(DOUBLES / "executor_runner"),
            "--cpu-mask", "80", "--threads", "1", "--ops", ",".join(ADB_OPS), "--cache-dir", str(cache),
            "--spool-dir", str(spool), "--cv-threshold", "5", *ADB_QUICK, *extra]


@pytest.mark.parametrize("pal", ["stderr", "logcat"])
def test_adb_profile(module_server, cache, phone, tmp_path, monkeypatch, pal):
    if pal == "logcat":
        monkeypatch.setenv("FAKE_RUNNER_LOGCAT", "1")
    dev = f"s8-{pal}"  # one server for the module: a device of its own per test
    token = module_server.create_device(dev, platform="android")
    code, out = run_agent(*adb_args(module_server, dev, token, cache, tmp_path / "spool"))
    assert code == 0, out
    got = measured(table(module_server, dev))
    assert sorted(got) == sorted(ADB_OPS) and all(e["n"] == 5 for e in got.values())
    (run,) = runs(module_server, dev)
    assert run["transport"] == "adb" and run["cpu_mask"] == "80" and run["threads"] == 1
    assert run["device_model"] == "samsung SM-G950F" and run["soc"] == "Exynos 8895" and run["os"].startswith("Android 9")
    assert run["temps_before"]["thermal_zone0:cpu-big"] == 41.5 and run["cpu_freqs_before"]["cpu7"] == 2314.0
    assert run["build"].startswith("executor_runner") and run["overhead_us"] > 0
    # the runner binary's own version and sha256 name the configuration, not the host's executorch wheel
    import hashlib

    digest = hashlib.sha256((DOUBLES / "executor_runner").read_bytes()).hexdigest()[:12]
    assert run["runtime_version"] == f"executorch v1.5.1 (fbnet test double) sha256:{digest}"
    assert table(module_server, dev)["configuration"]["runtime_version"] == run["runtime_version"]
    # cleaned up on the phone
    assert not (phone / "data/local/tmp/fbnet").exists()


def test_adb_device_lost_then_resume(module_server, cache, phone, tmp_path, monkeypatch):
    token = module_server.create_device("s8-lost", platform="android")
    spool = tmp_path / "spool"
    # 1 overhead program + 2 ops; the phone goes away after the first op
    monkeypatch.setenv("FAKE_ADB_LOSE_AFTER", "2")
    code, out = run_agent(*adb_args(module_server, "s8-lost", token, cache, spool))
    assert code == 1, out
    assert "lost" in out and "R58M00TEST" in out and "--resume" in out and "Traceback" not in out
    (run,) = runs(module_server, "s8-lost")
    assert run["status"] == "open"
    first = httpx.get(f"{module_server.url}/runs/{run['id']}/measurements", timeout=30).json()["measurements"]
    assert len(first) == 1 and all(m["n"] == 5 for m in first)  # the finished op is on the service
    assert not measured(table(module_server, "s8-lost"))  # but an open run feeds no table

    (phone / ".lost").unlink()  # plugged back in
    monkeypatch.delenv("FAKE_ADB_LOSE_AFTER")
    code, out = run_agent(*adb_args(module_server, "s8-lost", token, cache, spool, "--resume"))
    assert code == 0, out
    assert f"resuming run {run['id']}: 1 ops already measured, 1 to go" in out
    got = measured(table(module_server, "s8-lost"))
    assert sorted(got) == sorted(ADB_OPS) and got[first[0]["key"]]["latency_us"] == first[0]["median_us"]
    (run,) = runs(module_server, "s8-lost")
    assert run["status"] == "finished" and run["n_measurements"] == 2
    # every op keeps the overhead measured with it (first pass or resume); the run's is derived from all of them, not the
    # resumed subset's alone
    both = httpx.get(f"{module_server.url}/runs/{run['id']}/measurements", timeout=30).json()["measurements"]
    ovh = sorted(m["overhead_us"] for m in both)
    assert all(o and o > 0 for o in ovh) and run["overhead_us"] == pytest.approx((ovh[0] + ovh[1]) / 2)


def test_adb_runner_crash_and_no_timings(module_server, cache, phone, tmp_path, monkeypatch):
    token = module_server.create_device("s8-bad", platform="android")
    spool = tmp_path / "spool"
    monkeypatch.setenv("FAKE_RUNNER_CRASH_ON", "skip-16x32x32-24-s1")
    code, out = run_agent(*adb_args(module_server, "s8-bad", token, cache, spool))
    assert code == 1 and "crashed on skip-16x32x32-24-s1: segmentation fault" in out, out
    assert "Traceback" not in out
    monkeypatch.delenv("FAKE_RUNNER_CRASH_ON")
    assert "skip-16x32x32-24-s1" not in measured(table(module_server, "s8-bad"))
    monkeypatch.setenv("FAKE_RUNNER_SILENT_ON", "skip-16x32x32-24-s1")
    code, out = run_agent(*adb_args(module_server, "s8-bad", token, cache, spool, "--resume"))
    assert code == 1 and "printed 0 of 7 'Iteration i of N' timings for skip-16x32x32-24-s1" in out, out
    monkeypatch.delenv("FAKE_RUNNER_SILENT_ON")
    code, out = run_agent(*adb_args(module_server, "s8-bad", token, cache, spool, "--resume"))
    assert code == 0, out
    assert sorted(measured(table(module_server, "s8-bad"))) == sorted(ADB_OPS)
    (run,) = runs(module_server, "s8-bad")
    assert run["status"] == "finished"
    assert not list(spool.rglob("*.json"))


def test_adb_wrong_serial_and_bad_runner(module_server, cache, phone, tmp_path):
    args = adb_args(module_server, "s8-x", "t", cache, tmp_path / "spool")
    code, out = run_agent(*[("R58M00OTHER" if a == "R58M00TEST" else a) for a in args])
    assert code == 1 and "R58M00OTHER" in out and "Traceback" not in out, out
    code, out = run_agent(*[(str(tmp_path / "nope") if a.endswith("executor_runner") else a) for a in args])
    assert code == 1 and "no such file" in out and "build_runner.sh" in out


def test_fake_adb_shell_is_a_real_shell(phone):
    """The double itself: getprop and sysfs answer like a phone (guards the tests above)."""
    import subprocess

    def adb(*a):
        return subprocess.run([str(DOUBLES / "adb"), *a], capture_output=True, text=True, check=False)

    assert "R58M00TEST\tdevice" in adb("devices").stdout
    assert adb("shell", "getprop", "ro.product.model").stdout.strip() == "SM-G950F"
    assert adb("shell", "cat /sys/devices/system/cpu/cpu7/cpufreq/cpuinfo_max_freq").stdout.strip() == "2314000"
    assert json.loads((phone / "props.json").read_text())["ro.soc.model"] == "Exynos 8895"
    assert adb("shell", "taskset", "zz", "true").returncode == 1
