"""``fbnet-search predict --space fbnetv2-cifar``: a v2 architecture priced from the served grid table
(a real server fitted on the staircase double's measurements through the real API): the sum of its ops'
corrected entries at its resolution plus the overhead once, measured vs fitted entries counted;
``--measured-only`` refuses fitted entries; the client's ETag cache serves the grid."""

from __future__ import annotations

import json
import random

from doubles.staircase import measure, measurement
from typer.testing import CliRunner

from fbnet.client import TableClient
from fbnet.ops_v2 import parse_key_v2
from fbnet.space_v2 import get_v2_space
from search.cli import app

SPACE = "fbnetv2-cifar"
SP = get_v2_space(SPACE)
CFG = {"runtime": "executorch", "runtime_version": "1.0"}
AGENT_TOKENS: dict[str, str] = {}


def fitted_device(server) -> str:
    name = server.unique("v2pred")
    token = AGENT_TOKENS[name] = server.create_device(name)
    rng = random.Random(0)
    with server.client(token) as c:
        keys = c.post(f"/plans/{name}", json={"space": SPACE, **CFG, "batch": 120, "design": 120}).json()["keys"]
        run_id = c.post("/runs", json={"space": SPACE, "agent_version": "test", **CFG}).json()["id"]
        rows = [measurement(k, measure(parse_key_v2(k), rng, 8)) for k in keys]
        assert c.post(f"/runs/{run_id}/measurements", json={"measurements": rows}).status_code == 200
        assert c.post(f"/runs/{run_id}/finish", json={"overhead_us": 7.0}).status_code == 200
    return name


def test_predict_prices_a_v2_arch_from_the_grid(module_server, tmp_path):
    name = fitted_device(module_server)
    arch = SP.random_arch(random.Random(5))
    args = ["predict", "--space", SPACE, "--server", module_server.url, "--device", name, "--arch", arch.to_text(),
            "--cache-dir", str(tmp_path / "cache")]
    r = CliRunner().invoke(app, [*args, "--format", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    with TableClient(module_server.url, tmp_path / "cache") as tc:
        got = tc.fetch(name, SPACE)
    assert got.source == "revalidated"  # the command cached it; the ETag revalidates it
    t = got.table
    corr = dict(zip(t.columns.key, t.columns.corrected_us, strict=True))
    ops = SP.arch_ops(arch, with_identity=True)
    want = sum(0.0 if op.is_identity else corr[op.key] for op in ops) + (t.overhead_us or 0.0)
    assert abs(out["latency_us"] - want) < 1e-6 * want and out["resolution"] == arch.resolution
    assert sum(out["sources"].values()) == len(ops) and out["sources"].get("fitted", 0) > 0
    assert out["per_op"][0]["key"].startswith("conv_k3_hs-3x") and out["per_op"][-1]["key"].startswith("fc-")
    text = CliRunner().invoke(app, args)
    assert text.exit_code == 0 and "fitted" in text.output and f"resolution {arch.resolution}" in text.output
    refused = CliRunner().invoke(app, [*args, "--measured-only"])
    assert refused.exit_code == 2 and "measured_only=true refuses them" in refused.output, refused.output
    bad_arch = "res:64," + arch.to_text().split(",", 1)[1]
    bad = CliRunner().invoke(app, [*args[:-3], bad_arch, *args[-2:]])
    assert bad.exit_code == 2 and "resolution 64" in bad.output, bad.output


def test_fetch_saves_the_v2_grid_that_a_latency_search_takes(module_server, tmp_path):
    """``fbnet-search fetch --space fbnetv2-cifar --out FILE`` saves the served grid table (what ``run --table
    FILE`` and ``bench/search_quality_v2.py --table`` read), says how many entries are measured and fitted,
    and the file prices an architecture as ``predict`` does from the server."""
    from fbnet.lut_v2 import predict_v2
    from fbnet.wire import GridTable
    from search.cli.search_v2 import _grid_file

    name = fitted_device(module_server)
    out = tmp_path / "grid.json"
    base = ["fetch", "--space", SPACE, "--server", module_server.url, "--device", name,
            "--cache-dir", str(tmp_path / "cache")]
    r = CliRunner().invoke(app, [*base, "--out", str(out)])
    assert r.exit_code == 0, r.output
    with module_server.client() as c:
        served = GridTable.model_validate(c.get(f"/tables/{name}", params={"space": SPACE}).json())
    saved = _grid_file(out, SP)
    assert saved == served and served.counts["measured"] == 120
    text = " ".join(r.output.split())
    assert "120 measured" in text and f"{served.counts['fitted']} fitted" in text and "held-out" in text
    arch = SP.random_arch(random.Random(7))
    assert predict_v2(saved, SP, arch)["latency_us"] == predict_v2(served, SP, arch)["latency_us"]
    wrong = CliRunner().invoke(app, ["fetch", "--space", "fbnetv2-nope", "--server", module_server.url,
                                     "--device", name])
    assert wrong.exit_code == 2 and "fbnetv2-nope" in wrong.output, wrong.output


def test_agent_validates_a_v2_arch_whole_against_the_grid(module_server, tmp_path):
    """``fbnet-agent validate --space fbnetv2-cifar``: one random v2 model exported whole at its resolution,
    timed on the host, uploaded against the grid's prediction (the staircase double's table: the numbers
    differ, the flow and the prediction are checked)."""
    from doubles.support import QUICK, run_agent

    from fbnet.arch_v2 import ArchV2
    from fbnet.lut_v2 import predict_v2
    from fbnet.wire import GridTable

    name = fitted_device(module_server)
    code, out = run_agent("validate", "--server", module_server.url, "--device", name, "--token", AGENT_TOKENS[name],
                          "--space", SPACE, "--transport", "host", "--archs", "1", "--reference-ops", "0",
                          "--max-rounds", "2", "--cache-dir", str(tmp_path / "exports"), *QUICK)
    assert code == 0, out
    with module_server.client() as c:
        s = c.get(f"/validations/{name}", params={"space": SPACE}).json()
        t = GridTable.model_validate(c.get(f"/tables/{name}", params={"space": SPACE}).json())
    (v,) = s["validations"]
    a = ArchV2.parse(",".join(v["arch"]))
    assert v["predicted_us"] == predict_v2(t, SP, a)["latency_us"] and v["measured_us"] > 0
    assert v["extra"]["resolution"] == a.resolution and v["extra"]["sources"].get("fitted", 0) > 0
    assert "1 validations uploaded" in out
