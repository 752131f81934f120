"""The search's table client against a real profiler server: fetch, ETag, cache, offline, checks, predict."""

from __future__ import annotations

import json
import math

import httpx
import pytest
from conftest import HWNASBENCH
from search_helpers import macs_table
from typer.testing import CliRunner

from fbnet.client import StaleTableWarning, TableClient, save_table
from fbnet.lut import TableError, build_lut, load_table_file, predict
from fbnet.space import Arch, get_space
from search.cli import app

SPACE = get_space("fbnet-cifar")
PIXEL3 = str(HWNASBENCH / "pixel3_latency.json")


def import_hwnasbench(server, device: str, path: str, space: str = "fbnet-cifar", create: bool = True) -> dict:
    if create:
        server.create_device(device, platform="android", runtime="hwnasbench-import")
    with open(path, "rb") as f:
        body = f.read()
    r = httpx.post(f"{server.url}/tables/{device}/import", params={"format": "hwnasbench", "space": space},
                   content=body, headers={"Authorization": f"Bearer {server.admin_token}",
                                          "Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def pixel3(live_server):
    """A server of its own with pixel3's table (for the test that stops it)."""
    result = import_hwnasbench(live_server, "pixel3", PIXEL3)
    assert result["missing"] == []
    return live_server


@pytest.fixture(scope="module")
def pixel3_served(module_server):
    """One server for the module with pixel3's HW-NAS-Bench table imported in both spaces; the tests
    using it only read."""
    assert import_hwnasbench(module_server, "pixel3", PIXEL3)["missing"] == []
    import_hwnasbench(module_server, "pixel3", PIXEL3, space="fbnet-224", create=False)
    return module_server


def test_fetch_caches_and_revalidates_with_etag(pixel3_served, tmp_path):
    with TableClient(pixel3_served.url, tmp_path) as c:
        first = c.fetch("pixel3", "fbnet-cifar")
        assert first.source == "server" and first.etag
        assert c.cache_path("pixel3", "fbnet-cifar").is_file()
        second = c.fetch("pixel3", "fbnet-cifar")
    assert second.source == "revalidated"  # the server answered 304 to If-None-Match
    assert second.table == first.table
    lut = build_lut(first.table, SPACE)
    assert len(lut.matrix) == 22 and all(len(r) == 9 for r in lut.matrix)
    by_key = {e.key: e.latency_us for e in first.table.entries}
    # every cell is the served value, the identity skip of layer 0 (16->16, s1) included
    assert SPACE.layer_op(0, 8).is_identity and lut.matrix[0][8] == by_key[SPACE.layer_op(0, 8).key]
    assert lut.matrix[5][3] == by_key[SPACE.layer_op(5, 3).key]
    assert lut.fixed_us == pytest.approx(sum(by_key[op.key] for op in SPACE.fixed_ops))


def test_offline_uses_the_cached_table_with_a_warning(pixel3, tmp_path):
    with TableClient(pixel3.url, tmp_path) as c:
        online = c.fetch("pixel3", "fbnet-cifar")
    pixel3.process.terminate()
    pixel3.process.wait(10)
    with TableClient(pixel3.url, tmp_path, timeout=2) as c, pytest.warns(StaleTableWarning, match="cached table"):
        offline = c.fetch("pixel3", "fbnet-cifar")
    assert offline.source == "cache" and offline.table == online.table
    with TableClient(pixel3.url, tmp_path / "empty", timeout=2) as c, pytest.raises(TableError, match="no cached"):
        c.fetch("pixel3", "fbnet-cifar")


def test_unknown_device_is_an_error_not_a_cache_hit(module_server, tmp_path):
    with TableClient(module_server.url, tmp_path) as c, pytest.raises(TableError, match="404"):
        c.fetch("no-such-device", "fbnet-cifar")


def test_incomplete_table_is_refused_with_the_missing_ops(module_server, tmp_path):
    module_server.create_device("empty-phone")
    with TableClient(module_server.url, tmp_path) as c:
        t = c.fetch("empty-phone", "fbnet-cifar").table
    assert not t.complete and t.missing
    with pytest.raises(TableError, match="incomplete") as e:
        build_lut(t, SPACE)
    assert t.missing[0] in str(e.value) or sorted(t.missing)[0] in str(e.value)
    assert "no finished run" in str(e.value) and "unstable" in str(e.value)  # why: nothing feeds it
    r = CliRunner().invoke(app, ["run", "--server", module_server.url, "--device", "empty-phone", "--data", "digits",
                                 "--cache-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "incomplete" in r.output and "Traceback" not in r.output


def test_table_of_another_space_version_is_refused():
    t = macs_table(SPACE).model_copy(update={"space_version": "0000000000000000"})
    with pytest.raises(TableError, match="version"):
        build_lut(t, SPACE)
    with pytest.raises(TableError, match="space"):
        build_lut(macs_table(SPACE), get_space("fbnet-224"))


def test_predict_fbnet_b_is_the_sum_of_its_table_entries(pixel3_served, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["predict", "--server", pixel3_served.url, "--device", "pixel3", "--space", "fbnet-cifar",
                            "--arch", "FBNet-B", "--format", "json", "--cache-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    table = TableClient(pixel3_served.url, tmp_path).fetch("pixel3", "fbnet-cifar").table
    by_key = {e.key: e.latency_us for e in table.entries}
    arch = Arch.parse("FBNet-B")
    keys = [SPACE.stem.key] + [SPACE.layer_op(i, b).key for i, b in enumerate(arch.blocks)] + [
        SPACE.head.key, SPACE.pool.key, SPACE.fc.key]
    assert [p["key"] for p in got["per_op"]] == keys
    assert got["latency_us"] == pytest.approx(sum(by_key[k] for k in keys), rel=1e-12)
    # HW-NAS-Bench tables are in ms; the server converts to us: FBNet-B on a Pixel 3 is milliseconds
    assert 1_000 < got["latency_us"] < 1_000_000
    # --table FILE gives the same answer
    save_table(table, tmp_path / "pixel3.json")
    r2 = runner.invoke(app, ["predict", "--table", str(tmp_path / "pixel3.json"), "--arch", "FBNet-B",
                             "--format", "json"])
    assert r2.exit_code == 0 and json.loads(r2.stdout)["latency_us"] == got["latency_us"]
    assert predict(load_table_file(tmp_path / "pixel3.json"), arch, SPACE)["latency_us"] == got["latency_us"]


def test_predict_on_a_partial_table_needs_only_the_arch_ops(tmp_path):
    key = SPACE.layer_op(2, "k3_e6").key
    t = macs_table(SPACE, drop=(key,))
    with pytest.raises(TableError, match=key):
        predict(t, Arch.from_indices([3] * 22), SPACE)
    out = predict(t, Arch.from_indices([0] * 22), SPACE)
    assert math.isfinite(out["latency_us"])
    save_table(t, tmp_path / "t.json")
    r = CliRunner().invoke(app, ["predict", "--table", str(tmp_path / "t.json"), "--arch", ",".join(["k3_e6"] * 22)])
    assert r.exit_code == 2 and key in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["predict", "--table", str(tmp_path / "nope.json"), "--arch", "FBNet-A"])
    assert r.exit_code == 2 and "does not exist" in r.output


def _with_overhead(t, ovh: float, corrected: bool = True):
    """The table with a per-call overhead; ``corrected`` also serves each measured entry's corrected_us."""
    entries = [e.model_copy(update={"corrected_us": max(0.0, e.latency_us - ovh) if e.source == "measured"
                                    else e.latency_us}) if corrected else e for e in t.entries]
    return t.model_copy(update={"overhead_us": ovh, "entries": entries})


@pytest.mark.parametrize("served", [True, False], ids=["corrected_us-served", "legacy-table"])
def test_corrected_pricing_pays_the_call_overhead_once_per_model(tmp_path, served):
    arch = Arch.parse("FBNet-B")
    t = _with_overhead(macs_table(SPACE), 4.0, corrected=served)
    corrected, raw = predict(t, arch, SPACE), predict(t, arch, SPACE, pricing="raw")
    n_ops = len(SPACE.arch_ops(arch))
    assert raw["latency_us"] == raw["raw_sum_us"] == corrected["raw_sum_us"] == sum(p["raw_us"] for p in raw["per_op"])
    assert corrected["pricing"] == "corrected" and corrected["overhead_us"] == 4.0 and raw["overhead_us"] == 0.0
    assert corrected["latency_us"] == pytest.approx(raw["latency_us"] - (n_ops - 1) * 4.0)
    # the supernet's matrix prices the same way (the overhead rides in fixed_us)
    lut = build_lut(t, SPACE)
    onehot = math.fsum(lut.matrix[i][b] for i, b in enumerate(arch.indices)) + lut.fixed_us
    assert onehot == pytest.approx(corrected["latency_us"]) and lut.arch_latency(arch) == pytest.approx(onehot)
    with pytest.raises(TableError, match="pricing"):
        predict(t, arch, SPACE, pricing="cheap")
    save_table(t, tmp_path / "t.json")
    for flags, want in (([], corrected), (["--raw"], raw)):
        r = CliRunner().invoke(app, ["predict", "--table", str(tmp_path / "t.json"), "--arch", "FBNet-B",
                                     "--format", "json", *flags])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["latency_us"] == pytest.approx(want["latency_us"])
    # a table without a recorded overhead: both pricings agree (nothing to correct)
    bare = macs_table(SPACE)
    assert predict(bare, arch, SPACE)["latency_us"] == predict(bare, arch, SPACE, pricing="raw")["latency_us"]


def test_p10_statistic_prices_each_entrys_p10_less_the_same_correction():
    """statistic="p10": every op at its p10 less its own overhead correction, the overhead once; a
    measured entry without a p10 is missing (named), never priced at its median; skips stay 0."""
    arch = Arch.parse(",".join("skip" if i in SKIP_LAYERS else "k3_e1" for i in range(22)))
    base = _with_overhead(macs_table(SPACE), 4.0)
    entries = [e.model_copy(update={"p10_us": None if e.source == "identity" else 0.7 * e.latency_us})
               for e in base.entries]
    t = base.model_copy(update={"entries": entries})
    by_key = {e.key: e for e in t.entries}
    ops = SPACE.arch_ops(arch, with_identity=True)
    want = math.fsum(0.0 if op.is_identity else max(0.0, 0.7 * by_key[op.key].latency_us - 4.0) for op in ops) + 4.0
    p10 = predict(t, arch, SPACE, statistic="p10")
    assert p10["statistic"] == "p10" and p10["latency_us"] == pytest.approx(want)
    assert p10["latency_us"] < predict(t, arch, SPACE)["latency_us"]
    assert p10["raw_sum_us"] == pytest.approx(math.fsum(0.7 * by_key[op.key].latency_us for op in ops))
    lut = build_lut(t, SPACE, statistic="p10")
    assert lut.arch_latency(arch) == pytest.approx(want)
    with pytest.raises(TableError, match="statistic"):
        predict(lut, arch, statistic="median")  # a LatencyLUT keeps the statistic it was built with
    with pytest.raises(TableError, match="statistic"):
        predict(t, arch, SPACE, statistic="p50")
    gone = SPACE.layer_op(0, "k3_e1").key
    holed = t.model_copy(update={"entries": [e.model_copy(update={"p10_us": None}) if e.key == gone else e
                                             for e in t.entries]})
    with pytest.raises(TableError, match=f"lacks a p10 latency for 1 op.*{gone}"):
        predict(holed, arch, SPACE, statistic="p10")
    assert predict(holed, arch, SPACE)["latency_us"] == predict(t, arch, SPACE)["latency_us"]


def test_context_factor_scales_every_corrected_entry_never_raw_nor_the_overhead():
    """A table's context factor k (whole models / the sum of their ops, measured by the agent): corrected
    pricing = k x each corrected entry (p10 too) + the overhead once; raw pricing and identity skips are
    untouched; the supernet's matrix gives the same sum; without a factor nothing changes."""
    from fbnet.lut import context_factor

    arch = _skip_arch()
    plain = _with_overhead(macs_table(SPACE), 4.0)
    plain = plain.model_copy(update={"entries": [e.model_copy(update={"p10_us": None if e.source == "identity"
                                                                      else 0.8 * e.latency_us})
                                                 for e in plain.entries]})
    t = plain.model_copy(update={"context_factor": 1.25})
    by_key = {e.key: e for e in t.entries}
    ops = SPACE.arch_ops(arch, with_identity=True)
    alone = math.fsum(0.0 if op.is_identity else max(0.0, by_key[op.key].latency_us - 4.0) for op in ops)
    base, got = predict(plain, arch, SPACE), predict(t, arch, SPACE)
    assert base["latency_us"] == pytest.approx(alone + 4.0) and base["context_factor"] == 1.0
    assert got["latency_us"] == pytest.approx(1.25 * alone + 4.0) and got["context_factor"] == 1.25
    assert all(p["latency_us"] == 0.0 for p, op in zip(got["per_op"], ops, strict=True) if op.is_identity)
    assert predict(t, arch, SPACE, pricing="raw")["latency_us"] == predict(plain, arch, SPACE, pricing="raw")["latency_us"]
    p10 = math.fsum(0.0 if op.is_identity else max(0.0, 0.8 * by_key[op.key].latency_us - 4.0) for op in ops)
    assert predict(t, arch, SPACE, statistic="p10")["latency_us"] == pytest.approx(1.25 * p10 + 4.0)
    assert build_lut(t, SPACE).arch_latency(arch) == pytest.approx(got["latency_us"])
    # the factor from calibration models: the median of (model - overhead) / corrected sum
    f, ratios = context_factor([(104.0, 80.0), (1004.0, 1000.0), (64.0, 50.0), (10.0, 0.0)], 4.0)
    assert ratios[:3] == pytest.approx([1.25, 1.0, 1.2]) and ratios[3] is None and f == pytest.approx(1.2)
    with pytest.raises(TableError, match="calibration"):
        context_factor([(10.0, 0.0)], None)


def test_context_cost_adds_per_weight_megabyte_and_takes_precedence_over_the_factor():
    """A table's context cost c (us per MB of weights, measured by the agent): corrected pricing = each
    corrected entry + c x the op's weight MB (its parameters x 4 bytes in fp32, 1 in int8) + the overhead
    once; weightless ops (identity skips, pool) get nothing, raw pricing nothing; the scalar factor of
    the same table then prices nothing (it describes); the supernet's matrix gives the same sum."""
    from fbnet.lut import context_cost, weight_mb
    from fbnet.ops import parse_key

    arch = _skip_arch()
    plain = _with_overhead(macs_table(SPACE), 4.0)
    t = plain.model_copy(update={"context_us_per_mb": 60.0, "context_factor": 1.25})
    by_key = {e.key: e for e in t.entries}
    ops = SPACE.arch_ops(arch, with_identity=True)
    alone = math.fsum(0.0 if op.is_identity else max(0.0, by_key[op.key].latency_us - 4.0) for op in ops)
    mb = math.fsum(op.params * 4 / 1e6 for op in ops)
    assert mb > 0.05  # the test can tell the cost from nothing
    got = predict(t, arch, SPACE)
    assert got["latency_us"] == pytest.approx(alone + 60.0 * mb + 4.0)
    assert got["context_us_per_mb"] == 60.0 and got["context_factor"] == 1.0
    assert all(p["latency_us"] == 0.0 for p, op in zip(got["per_op"], ops, strict=True) if op.is_identity)
    heavy = max((op for op in ops if not op.is_identity), key=lambda op: op.params)
    e = next(p for p in got["per_op"] if p["key"] == heavy.key)
    assert e["latency_us"] == pytest.approx(max(0.0, by_key[heavy.key].latency_us - 4.0) + 60.0 * heavy.params * 4 / 1e6)
    assert predict(t, arch, SPACE, pricing="raw")["latency_us"] == predict(plain, arch, SPACE, pricing="raw")["latency_us"]
    assert build_lut(t, SPACE).arch_latency(arch) == pytest.approx(got["latency_us"])
    # what the ops sum to as timed alone (validate records it beside the prediction): no context in it
    assert got["alone_us"] == pytest.approx(alone + 4.0)
    assert predict(build_lut(t, SPACE), arch)["alone_us"] == pytest.approx(alone + 4.0)
    pool = next(op for op in SPACE.fixed_ops if op.block == "pool")
    assert weight_mb(pool.key) == 0.0 and weight_mb("not-an-op") == 0.0
    assert weight_mb(heavy.key, "int8") == pytest.approx(weight_mb(heavy.key) / 4)
    assert weight_mb(heavy.key) == pytest.approx(parse_key(heavy.key).params * 4 / 1e6)
    # the cost from calibration models: the median of (model - overhead - corrected sum) / weight MB
    c, per = context_cost([(164.0, 100.0, 1.0), (1004.0, 1000.0, 0.0), (84.0, 50.0, 0.5), (404.0, 300.0, 2.0)], 4.0)
    assert per == pytest.approx([60.0, None, 60.0, 50.0]) and c == pytest.approx(60.0)
    with pytest.raises(TableError, match="calibration"):
        context_cost([(10.0, 5.0, 0.0)], None)


# Identity skips: the one pricing rule (fbnet.lut) uses the value the table serves. Measured
# tables serve 0.0, HW-NAS-Bench gives them small costs; a client that re-derived 0 would
# disagree with the imported table (it did: 21,790.5 vs 21,901.2 us on Pixel 3 / fbnet-224).
SKIP_LAYERS = (2, 3, 4, 6, 7, 8)


def _skip_arch() -> Arch:
    return Arch.parse(",".join("skip" if i in SKIP_LAYERS else "k3_e1" for i in range(22)))


def _served_sum(table, space, arch) -> float:
    by_key = {e.key: e for e in table.entries}
    ops = space.arch_ops(arch, with_identity=True)
    assert sum(op.is_identity for op in ops) == len(SKIP_LAYERS)  # the skips chosen are identities
    return math.fsum(by_key[op.key].latency_us for op in ops)


def _predict_cli(args, tmp_path) -> float:
    r = CliRunner().invoke(app, ["predict", *args, "--arch", _skip_arch().to_text(), "--format", "json",
                                 "--cache-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)["latency_us"]


@pytest.mark.parametrize("space_name", ["fbnet-224", "fbnet-cifar"])
def test_predict_equals_the_served_sum_with_identity_skips_on_an_imported_table(pixel3_served, tmp_path, space_name):
    space = get_space(space_name)
    table = TableClient(pixel3_served.url, tmp_path).fetch("pixel3", space_name).table
    identities = [e for e in table.entries if space.op_by_key[e.key].is_identity]
    assert identities and all(e.latency_us > 0 for e in identities)  # HW-NAS-Bench prices them
    want = _served_sum(table, space, _skip_arch())
    got = _predict_cli(["--server", pixel3_served.url, "--device", "pixel3", "--space", space_name], tmp_path)
    assert got == pytest.approx(want, rel=1e-12)
    # the supernet's matrix prices the same way: one-hot theta on this arch gives the same sum
    lut = build_lut(table, space)
    onehot = math.fsum(lut.matrix[i][b] for i, b in enumerate(_skip_arch().indices)) + lut.fixed_us
    assert onehot == pytest.approx(want, rel=1e-12) and lut.arch_latency(_skip_arch()) == pytest.approx(want)


def test_predict_equals_the_served_sum_with_identity_skips_on_a_measured_table(module_server, tmp_path):
    """A table the service assembled from an agent's run (statistics posted over HTTP)."""
    token = module_server.create_device("measured-phone")
    space = SPACE
    hdr = {"Authorization": f"Bearer {token}"}
    r = httpx.post(f"{module_server.url}/runs", headers=hdr, json={
        "space": space.name, "runtime": "executorch", "runtime_version": "1.5.1", "agent_version": "test"})
    assert r.status_code in (200, 201), r.text
    run_id = r.json()["id"]
    ops = [op for op in space.ops if not op.is_identity]
    for start in range(0, len(ops), 50):
        batch = [{"key": op.key, "n": 5, "median_us": 10.0 + op.macs / 1e4, "mean_us": 10.0 + op.macs / 1e4,
                  "std_us": 0.5, "min_us": 9.0, "p10_us": 9.5, "p90_us": 11.0 + op.macs / 1e4}
                 for op in ops[start:start + 50]]
        r = httpx.post(f"{module_server.url}/runs/{run_id}/measurements", headers=hdr, json={"measurements": batch})
        assert r.status_code in (200, 201), r.text
    assert httpx.post(f"{module_server.url}/runs/{run_id}/finish", headers=hdr, json={}).status_code == 200
    table = TableClient(module_server.url, tmp_path).fetch("measured-phone", space.name).table
    assert table.complete
    assert all(e.latency_us == 0.0 for e in table.entries if space.op_by_key[e.key].is_identity)
    want = _served_sum(table, space, _skip_arch())
    got = _predict_cli(["--server", module_server.url, "--device", "measured-phone", "--space", space.name], tmp_path)
    assert got == pytest.approx(want, rel=1e-12)
