"""The table client and `fbnet-search fetch|predict` pick a configuration and say which one they used."""

from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

from fbnet.client import TableClient, get_table, save_table
from fbnet.configuration import Selector
from fbnet.lut import TableError, predict
from fbnet.space import Arch, get_space
from search.cli import app

SPACE = get_space("fbnet-cifar")


def _finished_run(server, token, us: float, **run) -> int:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        rid = c.post("/runs", json={"space": SPACE.name, "agent_version": "t", "runtime": "executorch",
                                    "runtime_version": "1.5.1", "overhead_us": 3.0, **run}).json()["id"]
        ms = [{"key": op.key, "n": 3, "median_us": us, "mean_us": us, "std_us": 0.0, "min_us": us, "p10_us": us,
               "p90_us": us} for op in SPACE.ops if not op.is_identity]
        assert c.post(f"/runs/{rid}/measurements", json={"measurements": ms}).status_code == 200
        assert c.post(f"/runs/{rid}/finish", json={}).status_code == 200
    return rid


def test_selectors_reach_the_server_and_the_cache_keeps_them_apart(live_server, tmp_path):
    token = live_server.create_device("two-configs")
    _finished_run(live_server, token, 100.0, threads=1)
    _finished_run(live_server, token, 40.0, threads=4, precision="int8")
    with TableClient(live_server.url, tmp_path) as c:
        t1 = c.fetch("two-configs", SPACE.name, Selector(threads=1))
        t8 = c.fetch("two-configs", SPACE.name, Selector(precision="int8"))
        again = c.fetch("two-configs", SPACE.name, Selector(threads=1))
        default = c.fetch("two-configs", SPACE.name)
        assert c.cache_path("two-configs", SPACE.name, Selector(threads=1)) != c.cache_path("two-configs", SPACE.name)
    assert t1.table.configuration.threads == 1 and t8.table.configuration.precision == "int8"
    assert again.source == "revalidated" and again.table == t1.table  # its own ETag, its own file
    assert default.table == t8.table  # newest complete
    arch = Arch.parse("FBNet-B")
    assert predict(t1.table, arch, SPACE)["raw_sum_us"] > predict(t8.table, arch, SPACE)["raw_sum_us"]

    runner = CliRunner()
    common = ["--server", live_server.url, "--device", "two-configs", "--cache-dir", str(tmp_path / "c")]
    r = runner.invoke(app, ["predict", *common, "--arch", "FBNet-B", "--threads", "1", "--format", "json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["configuration"]["threads"] == 1
    assert "fp32, executorch 1.5.1, 1 thread(s)" in r.stderr
    assert json.loads(r.stdout)["latency_us"] == pytest.approx(predict(t1.table, arch, SPACE)["latency_us"])
    r = runner.invoke(app, ["fetch", *common, "--precision", "int8", "-o", str(tmp_path / "int8.json")])
    assert r.exit_code == 0 and "int8, executorch 1.5.1, 4 thread(s)" in r.stdout, r.output
    r = runner.invoke(app, ["fetch", *common, "--threads", "2"])
    assert r.exit_code == 2 and "no configuration" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["fetch", *common, "--precision", "fp64"])
    assert r.exit_code == 2 and "--precision" in r.output
    # a saved file is one configuration: asking for another one is refused
    save_table(t1.table, tmp_path / "t1.json")
    assert get_table(space=SPACE.name, table_file=tmp_path / "t1.json", selector=Selector(threads=1)) == t1.table
    with pytest.raises(TableError, match="threads=4"):
        get_table(space=SPACE.name, table_file=tmp_path / "t1.json", selector=Selector(threads=4))
