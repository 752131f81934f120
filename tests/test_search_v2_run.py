"""The v2 search end to end, CPU-small (200 digits, 2 epochs, the 0.25-width proxy supernet):
``fbnet-search run --space fbnetv2-cifar`` priced in FLOPs and in latency (a saved grid table),
lands within +-10 % of its target and writes a v2 arch.json; the child built from it has the recorded
widths and no masks; train and export read it; bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fbnet.arch_v2 import ArchV2
from fbnet.configuration import Configuration
from fbnet.lut_v2 import predict_v2
from fbnet.space_v2 import get_v2_space
from fbnet.wire import GridTable
from search.child import build_child
from search.cli import app
from search.masking import MaskedLayer, MaskedSupernet, V2ArchParams
from search.select_v2 import most_likely_within_v2
from search.v2_cost import arch_cost, cost_range, cost_tables, flops_price, price_for

SPACE = get_v2_space("fbnetv2-cifar")
SMALL = ["--data", "digits", "--subset", "200", "--epochs", "2", "--warmup-epochs", "0", "--batch-size", "32",
         "--seed", "0", "--no-progress", "--no-tensorboard"]


def grid_table_json(drop: int = 0) -> dict:
    """A saved v2 grid table of fbnetv2-cifar whose corrected entries are 2 us + 1 us per 10 k MACs
    (``drop`` entries missing)."""
    ops = list(SPACE.grid.values())
    src = ["identity" if op.is_identity else "measured" for op in ops]
    us = [None if op.is_identity else 2.0 + op.macs / 1e4 for op in ops]
    for i in [i for i, s in enumerate(src) if s == "measured"][:drop]:
        src[i], us[i] = "missing", None
    n = len(ops)
    return GridTable(
        device="double", space=SPACE.name, space_version=SPACE.version, version="t1", complete=drop == 0,
        counts={s: src.count(s) for s in set(src)}, missing=[op.key for op, s in zip(ops, src, strict=True) if s == "missing"],
        overhead_us=30.0, configuration=Configuration(runtime="host", runtime_version="1", precision="fp32"),
        rule="test double", model=None,
        columns={"key": [op.key for op in ops], "latency_us": us, "corrected_us": us, "source": src,
                 "n": [0] * n, "runs": [0] * n}).model_dump(mode="json")


@pytest.fixture(scope="module")
def flops_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("v2flops")
    lo, hi = cost_range(cost_tables(SPACE, flops_price))
    target = lo + 0.15 * (hi - lo)
    r = CliRunner().invoke(app, ["run", "--space", "fbnetv2-cifar", "--cost", "flops", "--target-mflops", str(target),
                                 "--out", str(out), *SMALL])
    assert r.exit_code == 0, r.output
    assert "theta's accuracy signal (split-half cosine, median of 2 search epochs)" in r.output
    return out, target


def test_flops_search_lands_within_the_target_and_writes_a_v2_arch(flops_run):
    out, target = flops_run
    doc = json.loads((out / "arch.json").read_text())
    arch = ArchV2.parse(doc["arch"])
    SPACE.check_arch(arch)
    assert doc["space"] == "fbnetv2-cifar" and doc["config"]["cost"] == "flops"
    assert abs(SPACE.arch_mflops(arch) / target - 1) <= 0.10
    assert doc["config"]["cost_value"] == pytest.approx(SPACE.arch_mflops(arch), rel=1e-6)
    assert len(doc["history"]) == 2
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert {"expected_cost", "entropy_blocks", "entropy_widths", "entropy_expansions", "entropy_resolution",
            "theta_steps", "theta_signal"} <= set(header)
    assert all(-1 <= h["theta_signal"] <= 1 for h in doc["history"])
    assert (out / "checkpoint.pt").is_file()
    # every layer records block, width and expansion (None only for a skip), and the resolution
    assert arch.resolution in SPACE.resolutions
    assert all((c.expansion is None) == (c.block == "skip") for c in arch.layers)


def _conv_out_widths(model: nn.Module) -> list[int]:
    """Output channels of each layer's last convolution (a skip with identity: its input's)."""
    return [next((m.out_channels for m in reversed(list(layer.modules())) if isinstance(m, nn.Conv2d)), -1)
            for layer in model.layers]


def test_the_child_from_arch_json_has_the_recorded_widths_and_no_masks(flops_run, tmp_path):
    out, _ = flops_run
    arch = ArchV2.parse(json.loads((out / "arch.json").read_text())["arch"])
    child = build_child(SPACE, arch)
    assert not any(isinstance(m, (MaskedSupernet, MaskedLayer)) for m in child.modules())
    widths = _conv_out_widths(child)
    for i, (c, w) in enumerate(zip(arch.layers, widths, strict=True)):
        if w != -1:  # an identity skip has no convolution
            assert w == c.width, f"layer {i}"
    assert child.stem[0].out_channels == arch.stem if isinstance(child.stem, nn.Sequential) else True
    assert child(torch.randn(2, 3, arch.resolution, arch.resolution)).shape == (2, 10)

    r = CliRunner().invoke(app, ["train", "--from", str(out), "--data", "digits", "--subset", "100", "--epochs", "1",
                                 "--out", str(tmp_path / "child"), "--no-progress"])
    assert r.exit_code == 0, r.output
    ck = torch.load(tmp_path / "child" / "child.pt", weights_only=False)
    assert ck["arch"] == arch.to_text() and ck["space"] == "fbnetv2-cifar"
    assert json.loads((tmp_path / "child" / "child.json").read_text())["arch"] == arch.to_text()


def test_latency_search_on_a_saved_grid_table_prices_as_predict(tmp_path):
    table = tmp_path / "grid.json"
    table.write_text(json.dumps(grid_table_json()))
    t = GridTable.model_validate_json(table.read_text())
    prices = {op.key: 2.0 + op.macs / 1e4 for op in SPACE.grid.values() if not op.is_identity}
    lo, hi = cost_range(cost_tables(SPACE, price_for("latency", SPACE, prices)))
    target_ms = (30.0 + lo + 0.3 * (hi - lo)) / 1000
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", "--space", "fbnetv2-cifar", "--table", str(table), "--target-ms",
                                 str(target_ms), "--out", str(out), *SMALL])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "arch.json").read_text())
    arch = ArchV2.parse(doc["arch"])
    pred = predict_v2(t, SPACE, arch)["latency_us"]
    assert doc["predicted_latency_us"] == pytest.approx(pred, rel=1e-9)
    assert abs(pred / 1000 / target_ms - 1) <= 0.10
    assert doc["device"] == "double" and doc["table_version"] == "t1"


def test_selection_is_the_argmax_when_it_is_in_the_band_and_in_the_band_otherwise():
    tables = cost_tables(SPACE, flops_price)
    params = V2ArchParams(SPACE)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in params.parameters():
            p.normal_(0, 2)
    plain = params.argmax_arch(SPACE)
    c = arch_cost(tables, SPACE, plain)
    assert most_likely_within_v2(SPACE, tables, params.probs(), c * 0.97, c * 1.03) == plain
    got = most_likely_within_v2(SPACE, tables, params.probs(), 3 * c * 0.97, 3 * c * 1.03)
    assert got is not None and 3 * c * 0.97 <= arch_cost(tables, SPACE, got) <= 3 * c * 1.03


def test_undecided_expansions_do_not_make_the_selection_prefer_skips():
    """Every layer a little more likely a 3x3 inverted residual than a skip, the expansions uniform: the
    selection is the per-choice argmax (no skip). Scored as a plain probability a skip (no expansion
    factor) would beat any block-and-expansion up to len(expansions) times as likely."""
    tables = cost_tables(SPACE, flops_price)
    params = V2ArchParams(SPACE)
    skip, ir = SPACE.blocks.index("skip"), SPACE.blocks.index("ir_k3")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in (params.resolution, params.stem, params.widths, params.head):
            p.normal_(0, 1)  # one argmax for each (ties would leave the selection free among equals)
        params.blocks[:, skip] = 1.0
        params.blocks[:, ir] = 1.2  # e^0.2 = 1.22 x a skip, far under len(expansions) x
    plain = params.argmax_arch(SPACE)
    assert all(layer.block == "ir_k3" for layer in plain.layers)
    _, hi = cost_range(tables)
    got = most_likely_within_v2(SPACE, tables, params.probs(), 0.0, 2 * hi)
    assert got == plain


def _one_line_error(r, *words):
    assert r.exit_code == 2, r.output
    err = r.output.strip()
    assert err.startswith("error:") and len(err.splitlines()) <= 3, err  # rich may wrap one line
    for w in words:
        assert w in err, err


def test_bad_input_is_one_line(tmp_path):
    runner = CliRunner()
    base = ["run", "--space", "fbnetv2-cifar", "--out", str(tmp_path / "x"), *SMALL]
    _one_line_error(runner.invoke(app, [*base, "--cost", "flops", "--target-mflops", "5000"]), "outside", "MFLOPs")
    _one_line_error(runner.invoke(app, [*base, "--cost", "flops", "--target-ms", "3"]), "--target-ms")
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({"device": "pixel3", "space": "fbnet-cifar", "entries": []}))
    _one_line_error(runner.invoke(app, [*base, "--table", str(v1), "--target-ms", "1"]), "no v2 grid")
    holes = tmp_path / "holes.json"
    holes.write_text(json.dumps(grid_table_json(drop=3)))
    _one_line_error(runner.invoke(app, [*base, "--table", str(holes), "--target-ms", "1"]), "lacks 3")
    _one_line_error(runner.invoke(app, ["run", "--space", "fbnet-cifar", "--cost", "flops", "--target-mflops", "5",
                                        *SMALL]), "v2 spaces")
    _one_line_error(runner.invoke(app, ["train", "--space", "fbnetv2-cifar", "--arch", "res:32,stem:8,bogus",
                                        "--out", str(tmp_path / "c")]), "bogus")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "arch.json").write_text(json.dumps({"arch": "res:31,stem:8,skip:8,head:640", "space": "fbnetv2-cifar"}))
    _one_line_error(runner.invoke(app, ["train", "--from", str(bad), "--out", str(tmp_path / "c")]), "arch.json")


def test_the_weight_step_mixes_softmax_theta_by_default_and_one_path_under_single(tmp_path):
    """The default weight step is the expected mix (softmax(theta): every block type, width and expansion
    weighted, no zero), ``--sampler single`` one hard path; the supernet trains at the proxy resolution
    with the resolution options scaled (24/28/32 -> 6/7/8), and a proxy that merges options is refused."""
    from search.config import SearchConfig, TrainError
    from search.data import load_dataset
    from search.trainer_v2 import V2Cost, V2Searcher, proxy_space_v2, train_resolution

    cost = V2Cost("flops", cost_tables(SPACE, flops_price))
    cfg = SearchConfig(cost="flops", epochs=1, warmup_epochs=0, seed=0)
    assert train_resolution(cfg, SPACE) == 8
    s = V2Searcher(cfg, SPACE, cost, load_dataset("digits", 8, subset=64, seed=0), tmp_path / "a")
    assert s.train_space.resolutions == (6, 7, 8) and s.net.max_res == 8
    with torch.no_grad():
        s.arch.blocks[0, 1] = 1.0  # theta away from uniform: the mix follows it
    w = s.weight_mix(tau=1.0)
    p = s.arch.probs()
    assert torch.equal(w.blocks, p.blocks) and all(torch.equal(a, b) for a, b in zip(w.widths, p.widths, strict=True))
    assert bool((w.blocks > 0).all()) and not w.blocks.requires_grad
    paper = V2Searcher(cfg.model_copy(update={"weight_mix": "sample"}), SPACE, cost,
                       load_dataset("digits", 8, subset=64, seed=0), tmp_path / "d")
    drawn = paper.weight_mix(tau=1.0)  # a soft Gumbel draw: not the distribution itself
    assert not torch.allclose(drawn.blocks, paper.arch.probs().blocks) and torch.allclose(drawn.blocks.sum(-1), torch.ones(SPACE.num_layers))

    single = SearchConfig(cost="flops", epochs=1, warmup_epochs=0, seed=0, sampler="single", proxy_resolution=0)
    h = V2Searcher(single, SPACE, cost, load_dataset("digits", 32, subset=64, seed=0), tmp_path / "b").weight_mix(1.0)
    assert sorted(h.blocks.unique().tolist()) == [0.0, 1.0] and torch.equal(h.blocks.sum(-1), torch.ones(SPACE.num_layers))

    with pytest.raises(TrainError, match="merges the resolutions"):
        proxy_space_v2(SPACE, 1.0, 2)
    with pytest.raises(TrainError, match="trains at 8 px"):
        V2Searcher(cfg, SPACE, cost, load_dataset("digits", 32, subset=64, seed=0), tmp_path / "c")


def test_the_theta_step_prices_the_distribution_by_default_and_the_draw_under_the_paper(tmp_path):
    """At tau 5 a Gumbel draw is near uniform whatever theta is: theta pushed to the cheapest options
    costs far less than its draws. The default cost term prices softmax(theta) exactly, so the hinge sees
    theta's own cost; ``cost_of=draw`` (the paper) prices the draw and sees a cost near the uniform one."""
    from search.config import SearchConfig
    from search.data import load_dataset
    from search.loss import target_loss
    from search.trainer_v2 import V2Cost, V2Searcher
    from search.v2_cost import expected_cost

    cost = V2Cost("flops", cost_tables(SPACE, flops_price))
    lo, hi = cost.range()
    target = lo + 0.5 * (hi - lo)
    data = load_dataset("digits", 8, subset=64, seed=0)
    x, y = data.train_x[:16], data.train_y[:16]
    for cost_of in ("distribution", "draw"):
        cfg = SearchConfig(cost="flops", target_mflops=target, epochs=2, warmup_epochs=0, seed=0, cost_of=cost_of)
        s = V2Searcher(cfg, SPACE, cost, data, tmp_path / cost_of)
        with torch.no_grad():  # theta on the narrowest widths and expansions, the lowest resolution
            s.arch.widths.zero_()[:, 0] = 6.0
            s.arch.expansions.zero_()[:, 0] = 6.0
            s.arch.resolution.zero_()[0] = 6.0
            own = float(expected_cost(s.tables, s.arch.probs()))
        torch.manual_seed(0)
        loss, ce, _ = s.theta_step(x, y, tau=5.0)
        hinge = loss - ce  # target_weight * max(0, |log(cost / T)| - band)
        _, ce_own = target_loss(torch.zeros(1, 10), torch.zeros(1, dtype=torch.long), torch.tensor(own), target)
        expect_own = float(target_loss(torch.zeros(1, 10), torch.zeros(1, dtype=torch.long), torch.tensor(own), target,
                                       cfg.target_weight, cfg.target_band)[0] - ce_own)
        if cost_of == "distribution":
            assert hinge == pytest.approx(expect_own, rel=1e-4)
        else:  # the near-uniform draw costs much more than theta's own distribution: a smaller hinge
            assert hinge < 0.8 * expect_own


def test_theta_mix_expected_runs_the_theta_step_on_softmax_theta_and_draw_on_a_gumbel_draw(tmp_path):
    """``theta_mix=expected``: theta's accuracy term is the supernet on softmax(theta), the mix the weight
    step trains, with no sampling noise; the default is the step's Gumbel draw (the paper)."""
    import torch.nn.functional as F

    from search.config import SearchConfig
    from search.data import load_dataset
    from search.trainer_v2 import V2Cost, V2Searcher

    cost = V2Cost("flops", cost_tables(SPACE, flops_price))
    data = load_dataset("digits", 8, subset=64, seed=0)
    x, y = data.train_x[:16], data.train_y[:16]
    got = {}
    for mix in ("expected", "draw"):
        cfg = SearchConfig(cost="flops", target_mflops=20.0, epochs=2, warmup_epochs=0, seed=0, theta_mix=mix)
        s = V2Searcher(cfg, SPACE, cost, data, tmp_path / mix)
        with torch.no_grad():
            s.arch.blocks[:, 2] = 2.0  # theta away from uniform
            mixed = float(F.cross_entropy(s.net(x, s.arch.probs()), y))
        torch.manual_seed(1)
        got[mix] = (s.theta_step(x, y, tau=1.0)[1], mixed)
    assert got["expected"][0] == pytest.approx(got["expected"][1], rel=1e-5)
    assert abs(got["draw"][0] - got["draw"][1]) > 1e-4


def test_learning_rates_not_given_are_the_v2_ones_for_a_v2_search_and_v1s_for_v1(tmp_path):
    """v1's rates (theta 0.3, weights 0.1 * batch / 192) left the masked supernet at chance; a v2 search
    that is given none uses theta 0.05 and weights 0.1; given ones win; v1 keeps its own."""
    from search_helpers import macs_table

    from fbnet.lut import build_lut
    from fbnet.space import get_space
    from search.config import V1_THETA_LR, V2_THETA_LR, V2_W_LR, SearchConfig, scaled_lr
    from search.data import load_dataset
    from search.trainer import RunOptions, Searcher, search_resolution
    from search.trainer_v2 import V2Cost, V2Searcher

    V1SPACE = get_space("fbnet-cifar")  # noqa: N806

    cost = V2Cost("flops", cost_tables(SPACE, flops_price))
    data = load_dataset("digits", 8, subset=64, seed=0)
    s = V2Searcher(SearchConfig(cost="flops", epochs=1, warmup_epochs=0), SPACE, cost, data, tmp_path / "a")
    assert (s.w_opt.param_groups[0]["lr"], s.t_opt.param_groups[0]["lr"]) == (V2_W_LR, V2_THETA_LR) == (0.1, 0.05)
    given = SearchConfig(cost="flops", epochs=1, warmup_epochs=0, theta_lr=0.2, w_lr=0.03)
    s = V2Searcher(given, SPACE, cost, data, tmp_path / "b")
    assert (s.w_opt.param_groups[0]["lr"], s.t_opt.param_groups[0]["lr"]) == (0.03, 0.2)
    v1cfg = SearchConfig(epochs=1, warmup_epochs=0, batch_size=64)
    v1 = Searcher(v1cfg, V1SPACE, build_lut(macs_table(V1SPACE), V1SPACE),
                  load_dataset("digits", search_resolution(v1cfg, V1SPACE), subset=64, seed=0), tmp_path / "v1",
                  RunOptions(tensorboard=False))
    w_opt, t_opt = v1.w_opt, v1.t_opt
    assert (w_opt.param_groups[0]["lr"], t_opt.param_groups[0]["lr"]) == (scaled_lr(64), V1_THETA_LR) == (scaled_lr(64), 0.3)
