"""End-to-end searches (small, seeded): device tables served by a real server, the latency target,
the latency pressure, resume, and a 2-process torchrun run on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import HWNASBENCH, REPO
from test_search_table import import_hwnasbench
from typer.testing import CliRunner

from fbnet.client import TableClient, save_table
from fbnet.lut import build_lut
from fbnet.space import get_space
from search.cli import app
from search.config import SearchConfig
from search.data import load_dataset
from search.select import latency_range
from search.trainer import RunOptions, run_search, search_resolution

SPACE = get_space("fbnet-cifar")
QUIET = RunOptions(tensorboard=False)
# Tiny on purpose (2-core CI): 64 digits -> 51 weight / 13 theta images, the default proxy supernet.
SMALL = ["--data", "digits", "--subset", "64", "--epochs", "2", "--warmup-epochs", "0", "--batch-size", "16",
         "--seed", "0", "--no-progress", "--no-tensorboard"]


@pytest.fixture(scope="module")
def devices(module_server):
    for dev, f in (("pixel3", "pixel3_latency.json"), ("edgegpu", "edgegpu_latency.json")):
        assert import_hwnasbench(module_server, dev, str(HWNASBENCH / f))["missing"] == []
    return module_server


def test_each_device_table_gets_an_architecture_at_its_target(devices, tmp_path):
    runner = CliRunner()
    docs = {}
    for dev in ("pixel3", "edgegpu"):
        out = tmp_path / dev
        with TableClient(devices.url, tmp_path / "cache") as c:
            lo, hi = latency_range(build_lut(c.fetch(dev, "fbnet-cifar").table, SPACE))
        target_ms = (lo + 0.3 * (hi - lo)) / 1000
        r = runner.invoke(app, ["run", "--server", devices.url, "--device", dev, "--space", "fbnet-cifar",
                                "--target-ms", str(target_ms), "--out", str(out),
                                "--cache-dir", str(tmp_path / "cache"), *SMALL, "--theta-batch-size", "4"])
        assert r.exit_code == 0, r.output
        doc = json.loads((out / "arch.json").read_text())
        assert len(doc["arch"]) == 22 and len(doc["theta"]) == 22 and all(len(t) == 9 for t in doc["theta"])
        assert doc["space"] == "fbnet-cifar" and doc["device"] == dev and doc["table_version"]
        assert len(doc["history"]) == 2 and {"expected_latency_us", "theta_entropy", "argmax_prob", "tau", "w_acc",
                                             "theta_steps", "theta_signal"} <= set(doc["history"][0])
        assert all(-1 <= h["theta_signal"] <= 1 for h in doc["history"])
        assert "theta's accuracy signal (split-half cosine, median of 2 search epochs)" in r.output
        assert doc["target_ms"] == pytest.approx(target_ms) and doc["selection"].startswith("most likely within")
        assert abs(doc["predicted_latency_us"] / 1000 / target_ms - 1) <= 0.10
        assert doc["theta_entropy"] == pytest.approx(doc["history"][-1]["theta_entropy"])
        assert (out / "history.csv").read_text().splitlines()[0].count("theta_entropy") == 1
        assert (out / "history.csv").is_file() and (out / "checkpoint.pt").is_file()
        # the reported latency is what `predict` says for that architecture on that device
        p = runner.invoke(app, ["predict", "--server", devices.url, "--device", dev, "--space", "fbnet-cifar",
                                "--arch", ",".join(doc["arch"]), "--format", "json",
                                "--cache-dir", str(tmp_path / "cache")])
        assert p.exit_code == 0, p.output
        assert json.loads(p.stdout)["latency_us"] == pytest.approx(doc["predicted_latency_us"], rel=1e-9)
        docs[dev] = doc
    assert docs["pixel3"]["arch"] != docs["edgegpu"]["arch"]

    s = runner.invoke(app, ["sample", "--from", str(tmp_path / "pixel3"), "-k", "3", "--server", devices.url,
                            "--format", "json", "--cache-dir", str(tmp_path / "cache")])
    assert s.exit_code == 0, s.output
    sampled = json.loads(s.stdout)
    assert sampled["argmax"]["arch"] == docs["pixel3"]["argmax_arch"]
    assert sampled["argmax"]["latency_us"] == pytest.approx(docs["pixel3"]["argmax_latency_us"])
    assert len(sampled["samples"]) == 3


def test_latency_term_lowers_expected_latency_and_resume_continues(devices, tmp_path):
    with TableClient(devices.url, tmp_path / "cache") as c:
        lut = build_lut(c.fetch("pixel3", "fbnet-cifar").table, SPACE)
    common = dict(epochs=2, warmup_epochs=0, batch_size=16, seed=0, theta_lr=0.05)
    data = load_dataset("digits", search_resolution(SearchConfig(**common), SPACE), subset=64, seed=0)
    plain = run_search(SearchConfig(alpha=0.0, **common), SPACE, lut, data, tmp_path / "a0", QUIET)
    # the latency-aware run is interrupted after one epoch and resumed from its checkpoint
    # alpha cancels out of the multiplicative loss's trade-off (see search.loss); beta sets the latency
    # pressure, so the "large latency weight" run raises both to see the effect within a few steps.
    cfg = SearchConfig(alpha=5.0, beta=3.0, **common)
    part = run_search(cfg, SPACE, lut, data, tmp_path / "a5", QUIET, stop_after=1)
    assert len(part.history) == 1
    assert json.loads((tmp_path / "a5" / "arch.json").read_text())["finished"] is False
    aware = run_search(cfg, SPACE, lut, data, tmp_path / "a5", RunOptions(), resume=True)
    assert len(aware.history) == 2 and aware.history[0] == part.history[0]
    assert (tmp_path / "a5" / "tb").is_dir()
    lat_plain = plain.history[-1]["expected_latency_us"]
    lat_aware = aware.history[-1]["expected_latency_us"]
    assert lat_aware < lat_plain, (lat_aware, lat_plain)
    # theta moved away from uniform in both, towards cheaper candidates only with the latency term
    start = plain.history[0]["expected_latency_us"]
    assert lat_aware < start


@pytest.mark.slow
def test_torchrun_two_ranks_end_with_identical_theta(devices, tmp_path):
    with TableClient(devices.url, tmp_path / "cache") as c:
        save_table(c.fetch("edgegpu", "fbnet-cifar").table, tmp_path / "edgegpu.json")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "search.cli", "run", "--table", str(tmp_path / "edgegpu.json"), "--cpu",
           "--out", str(tmp_path / "ddp"), *SMALL]
    cmd[cmd.index("--batch-size") + 1] = "8"
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    t0 = json.loads((tmp_path / "ddp" / "theta.rank0.json").read_text())
    t1 = json.loads((tmp_path / "ddp" / "theta.rank1.json").read_text())
    assert t0 == t1
    doc = json.loads((tmp_path / "ddp" / "arch.json").read_text())
    assert doc["world_size"] == 2 and doc["theta"] == t0
    assert len({v for row in t0 for v in row}) > 1  # theta was trained, not left at its initial constant
