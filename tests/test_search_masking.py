"""DMaskingNAS on the v2 spaces (search.masking, search.v2_cost) on a tiny two-layer space: a masked
layer with one-hot weights is the child's block with sliced weights, the whole masked supernet with
one-hot weights is the inherited child, the expected latency and FLOPs are the exact expectation over
every architecture (enumerated, and FLOPs by Monte Carlo), effective shapes give the same value where
the cost is bilinear, and the cross-entropy and the cost both reach the width logits."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import replace

import pytest
import torch

from fbnet.arch_v2 import ArchV2, LayerChoice
from fbnet.blocks import build_op
from fbnet.ops_v2 import mid_width
from fbnet.space_v2 import SpaceV2, StageV2, WidthRange, enumerate_ops, get_v2_space
from search.masking import MaskedSupernet, MixWeights, V2ArchParams, copy_sliced, inherit_child, one_hot_weights
from search.v2_cost import (
    CostError,
    arch_cost,
    cost_range,
    cost_tables,
    effective_widths,
    expected_cost,
    flops_price,
    params_price,
    price_for,
    table_price,
)

# Layer 0: stride 1, widths {8, 16} from a stem of {8, 16} (identity / residual pairs, e1 bypass);
# layer 1: stride 2, widths {8, 24}. Blocks: plain ReLU, SE + h-swish, skip.
TINY = SpaceV2(
    name="tiny", resolutions=(8, 12), stem_stride=1, stem_widths=WidthRange(8, 16, 8),
    stages=(StageV2(1, (WidthRange(8, 16, 8),)), StageV2(2, (WidthRange(8, 24, 16),))),
    head_widths=(16, 24), expansions=(1.0, 2.0), num_classes=3, head_expansion=2.0,
    blocks=("ir_k3", "ir_k5_sehsig_hs", "skip"))


def arch_of(space: SpaceV2, res: int, stem: int, layers, head: int) -> ArchV2:
    return ArchV2(res, stem, tuple(LayerChoice(*c) for c in layers), head)


def all_archs(space: SpaceV2):
    per_layer = []
    for ls in space.layers:
        per_layer.append([LayerChoice(b, w, None if b == "skip" else e) for b in space.blocks for w in ls.widths
                          for e in ((None,) if b == "skip" else space.expansions)])
    for res, stem, head in itertools.product(space.resolutions, space.stem_widths.options, space.head_widths):
        for layers in itertools.product(*per_layer):
            yield ArchV2(res, stem, layers, head)


def random_weights(space: SpaceV2, seed: int) -> MixWeights:
    g = torch.Generator().manual_seed(seed)

    def p(*shape):
        return torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64), -1)

    return MixWeights(p(len(space.resolutions)), p(len(space.stem_widths.options)),
                      p(space.num_layers, len(space.blocks)), tuple(p(len(ls.widths)) for ls in space.layers),
                      p(space.num_layers, len(space.expansions)), p(len(space.head_widths)))


def arch_prob(space: SpaceV2, w: MixWeights, a: ArchV2) -> float:
    h = one_hot_weights(space, a)
    prob = float(w.resolution @ h.resolution.double()) * float(w.stem @ h.stem.double())
    prob *= float(w.head @ h.head.double())
    for i, c in enumerate(a.layers):
        prob *= float(w.blocks[i] @ h.blocks[i].double()) * float(w.widths[i] @ h.widths[i].double())
        if c.block != "skip":
            prob *= float(w.expansions[i] @ h.expansions[i].double())
    return prob


def randomise_bn(net: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)


def masked_input(c_max: int, c: int, hw: int, seed: int = 1) -> torch.Tensor:
    x = torch.randn(4, c_max, hw, hw, generator=torch.Generator().manual_seed(seed))
    x[:, c:] = 0  # the previous layer's output mask
    return x


# (layer, block, input width, output width, expansion): residual (16 -> 16), width change, the e1 bypass
# (mid == cin: the child has no first 1x1), SE + h-swish, stride 2, skip identity and projection.
CASES = [
    (0, "ir_k3", 16, 16, 2.0), (0, "ir_k3", 8, 16, 2.0), (0, "ir_k3", 16, 8, 1.0), (0, "ir_k5_sehsig_hs", 8, 8, 1.0),
    (0, "ir_k5_sehsig_hs", 16, 8, 2.0), (1, "ir_k5_sehsig_hs", 16, 24, 2.0), (1, "ir_k3", 8, 8, 1.0),
    (0, "skip", 16, 16, None), (0, "skip", 8, 16, None), (1, "skip", 8, 8, None),
]


@pytest.mark.parametrize("layer,block,cin,cout,e", CASES)
def test_a_masked_layer_with_one_hot_weights_is_the_sliced_explicit_block(layer, block, cin, cout, e):
    torch.manual_seed(0)
    net = MaskedSupernet(TINY)
    randomise_bn(net)
    ml = net.layers[layer]
    ins, outs = TINY.input_widths(layer), TINY.layers[layer].widths
    g_in = torch.tensor([float(c == cin) for c in ins])
    g_out = torch.tensor([float(c == cout) for c in outs])
    h = torch.tensor([float(x == (e or 1.0)) for x in TINY.expansions])
    m = torch.tensor([float(b == block) for b in TINY.blocks])
    op = TINY.layer_op(layer, 12, cin, LayerChoice(block, cout, e))
    child = build_op(op)
    src = ml.blocks[TINY.blocks.index(block)]
    if any(True for _ in child.parameters()):
        copy_sliced(src.proj if block == "skip" else src, child)
    x = masked_input(ml.shape.cin, cin, 12)
    y = ml(x, g_in, g_out, h, m)
    want = child(x[:, :cin])
    assert y.shape[1] == ml.shape.cout
    torch.testing.assert_close(y[:, :cout], want, rtol=1e-5, atol=1e-5)
    assert float(y[:, cout:].abs().sum()) == 0.0
    if block != "skip":  # the structural cases are really exercised
        assert (child.pw is None) == (mid_width(cin, e) == cin)
        assert child.residual == (op.stride == 1 and cin == cout)


def test_the_masked_supernet_with_one_hot_weights_is_the_inherited_child():
    torch.manual_seed(0)
    net = MaskedSupernet(TINY)
    randomise_bn(net, 3)
    arch = arch_of(TINY, 12, 16, [("ir_k5_sehsig_hs", 16, 1.0), ("ir_k3", 24, 2.0)], 16)
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    child = inherit_child(net, TINY, arch)
    torch.testing.assert_close(net(x, one_hot_weights(TINY, arch)), child(x), rtol=1e-5, atol=1e-5)
    arch = arch_of(TINY, 12, 8, [("skip", 8, None), ("skip", 24, None)], 24)
    child = inherit_child(net, TINY, arch)
    assert isinstance(child.layers[0], torch.nn.Identity)
    torch.testing.assert_close(net(x, one_hot_weights(TINY, arch)), child(x), rtol=1e-5, atol=1e-5)


def test_a_smaller_resolution_is_subsampled_computed_and_interspersed_with_zeros():
    torch.manual_seed(0)
    net = MaskedSupernet(TINY).eval()
    x = torch.randn(2, 3, 12, 12)
    w = one_hot_weights(TINY, arch_of(TINY, 8, 16, [("skip", 16, None), ("skip", 24, None)], 16))
    y = net._stem(x, w)
    idx = torch.tensor([0, 1, 3, 4, 6, 7, 9, 10])  # floor(k * 12 / 8)
    torch.testing.assert_close(y[:, :, idx][:, :, :, idx], net.stem(x[:, :, idx][:, :, :, idx]))
    keep = torch.zeros(12, dtype=torch.bool)
    keep[idx] = True
    assert float(y[:, :, ~keep].abs().max()) == 0.0 and float(y[:, :, :, ~keep].abs().max()) == 0.0


def latency_table(space: SpaceV2, seed: int = 0) -> dict[str, float]:
    rng = random.Random(seed)
    return {op.key: (0.0 if op.is_identity else rng.uniform(1, 100)) for op in enumerate_ops(space)}


def arch_sum(space: SpaceV2, arch: ArchV2, price) -> float:
    return sum(price(op) for op in space.arch_ops(arch, with_identity=True))


def test_the_expected_latency_is_the_enumerated_expectation_over_every_architecture():
    table = latency_table(TINY)
    price = table_price(table, TINY)
    tables = cost_tables(TINY, price, "us")
    w = random_weights(TINY, 1)
    archs = list(all_archs(TINY))
    assert len(archs) == 2 * 2 * 2 * 10 * 10
    probs = [arch_prob(TINY, w, a) for a in archs]
    assert math.isclose(sum(probs), 1.0, rel_tol=1e-12)
    brute = sum(p * arch_sum(TINY, a, lambda op: table.get(op.key, 0.0)) for p, a in zip(probs, archs, strict=True))
    assert float(expected_cost(tables, w)) == pytest.approx(brute, rel=1e-10)
    lats = [arch_sum(TINY, a, lambda op: table.get(op.key, 0.0)) for a in archs]
    assert cost_range(tables) == pytest.approx((min(lats), max(lats)), rel=1e-12)
    a = archs[137]
    assert arch_cost(tables, TINY, a) == pytest.approx(lats[137], rel=1e-12)


def test_expected_flops_and_params_are_the_expectation_over_sampled_architectures():
    w = random_weights(TINY, 2)
    flops, params = cost_tables(TINY, flops_price), cost_tables(TINY, params_price)
    archs = list(all_archs(TINY))
    probs = torch.tensor([arch_prob(TINY, w, a) for a in archs], dtype=torch.float64)
    mflops = torch.tensor([TINY.arch_mflops(a) for a in archs], dtype=torch.float64)
    mparams = torch.tensor([TINY.arch_params(a) / 1e6 for a in archs], dtype=torch.float64)
    assert float(expected_cost(flops, w)) == pytest.approx(float(probs @ mflops), rel=1e-10)
    assert float(expected_cost(params, w)) == pytest.approx(float(probs @ mparams), rel=1e-10)
    # Monte Carlo: draw every choice independently with its weights
    g = torch.Generator().manual_seed(5)
    draws = torch.multinomial(probs, 20000, replacement=True, generator=g)
    sample = mflops[draws]
    se = float(sample.std()) / math.sqrt(len(sample))
    assert abs(float(sample.mean()) - float(expected_cost(flops, w))) < 4 * se


def test_effective_shapes_give_the_expectation_where_the_cost_is_bilinear():
    space = replace(TINY, resolutions=(12,))
    w = random_weights(space, 3)

    def bilinear(op):  # C_in * C_out * H * W for the searchable layers, nothing else
        return 0.0 if op.block in ("conv_k3_hs", "ir_pool_hs", "fc") else op.cin * op.cout * op.h * op.w

    eff = effective_widths(space, w)
    hw = space.layer_hw(12)
    want = sum(e["cin"] * e["cout"] * hw[i] ** 2 for i, e in enumerate(eff["layers"]))
    assert float(expected_cost(cost_tables(space, bilinear), w)) == pytest.approx(want, rel=1e-10)
    assert eff["layers"][1]["cin"] == pytest.approx(eff["layers"][0]["cout"])


def test_the_width_logits_get_gradients_from_the_masks_and_from_the_cost():
    torch.manual_seed(0)
    net, arch = MaskedSupernet(TINY), V2ArchParams(TINY)
    tables = cost_tables(TINY, flops_price)
    x, y = torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 2, 0])
    w = arch.sample(tau=1.0)  # one draw drives the masks and the cost
    ce = torch.nn.functional.cross_entropy(net(x, w), y)
    (g_ce,) = torch.autograd.grad(ce, [arch.widths], retain_graph=True)
    (g_cost,) = torch.autograd.grad(expected_cost(tables, w), [arch.widths])
    for g in (g_ce, g_cost):
        assert torch.isfinite(g).all()
        for i, n in enumerate(arch.counts):
            assert float(g[i, :n].abs().sum()) > 0 and float(g[i, n:].abs().sum()) == 0


def test_a_latency_table_without_the_grid_is_one_line_error():
    table = latency_table(TINY)
    del table[next(k for k, op in TINY.grid.items() if not op.is_identity)]
    with pytest.raises(CostError, match=r"lacks 1 of the .* ops of tiny's grid") as e:
        table_price(table, TINY)
    assert "\n" not in str(e.value)
    with pytest.raises(CostError, match="needs a table"):
        price_for("latency", TINY)
    with pytest.raises(CostError, match="unknown cost"):
        price_for("energy", TINY)


def test_the_cifar_space_builds_and_prices_in_one_draw():
    space = get_v2_space("fbnetv2-cifar")
    params = V2ArchParams(space)
    w = params.sample(tau=5.0)
    assert len(w.widths) == space.num_layers and all(len(t) == len(ls.widths) for t, ls in zip(w.widths, space.layers, strict=True))
    a = space.random_arch(random.Random(0))
    assert arch_cost(cost_tables(space, flops_price), space, a) == pytest.approx(space.arch_mflops(a), rel=1e-9)
    assert set(params.entropies()) == {"resolution", "stem", "blocks", "widths", "expansions", "head"}
    assert params.entropies()["widths"] == pytest.approx(math.log(max(len(ls.widths) for ls in space.layers)), rel=1e-6)


def test_a_hard_draw_without_gradient_runs_only_the_chosen_blocks_at_the_same_result():
    torch.manual_seed(0)
    net = MaskedSupernet(TINY)
    x, y = torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 2, 0])
    arch = arch_of(TINY, 12, 16, [("ir_k5_sehsig_hs", 16, 2.0), ("skip", 24, None)], 24)
    w = one_hot_weights(TINY, arch)
    w_grad = replace(w, blocks=w.blocks.clone().requires_grad_())
    torch.testing.assert_close(net(x, w), net(x, w_grad))
    net.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x, w), y).backward()
    assert net.layers[0].blocks[0].pw[0].weight.grad is None  # ir_k3 of layer 0 did not run
    assert net.layers[0].blocks[1].pw[0].weight.grad is not None


def test_the_widest_path_takes_every_largest_option_and_each_layers_most_likely_block():
    space = get_v2_space("fbnetv2-cifar")
    arch = V2ArchParams(space)
    with torch.no_grad():
        arch.blocks[:, 4] = 1.0  # ir_k5 most likely everywhere ...
        arch.blocks[3, 8] = 2.0  # ... but skip in layer 3
        arch.widths[:, 0] = 5.0  # the narrowest width most likely: the widest path ignores it
    w = arch.widest()
    assert w.resolution.tolist() == [0.0, 0.0, 1.0] and w.stem.tolist() == [0.0, 1.0] and w.head.tolist() == [0.0, 1.0]
    assert [int(g.argmax()) for g in w.widths] == [len(ls.widths) - 1 for ls in space.layers]
    assert all(float(g.sum()) == 1.0 for g in w.widths)
    assert w.expansions.argmax(1).tolist() == [len(space.expansions) - 1] * space.num_layers
    assert w.blocks.argmax(1).tolist() == [8 if i == 3 else 4 for i in range(space.num_layers)]
    assert w.blocks.sum().item() == space.num_layers and not w.blocks.requires_grad


def test_the_mean_entropy_is_the_mean_of_log_n_at_uniform_and_descending_it_sharpens_every_distribution():
    space = get_v2_space("fbnetv2-cifar")
    arch = V2ArchParams(space)
    counts = ([len(space.resolutions), len(space.stem_widths.options), len(space.head_widths)]
              + [len(space.blocks)] * space.num_layers + [len(ls.widths) for ls in space.layers]
              + [len(space.expansions)] * space.num_layers)
    assert arch.mean_entropy().item() == pytest.approx(sum(map(math.log, counts)) / len(counts), rel=1e-6)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in arch.parameters():
            p.add_(0.01 * torch.randn_like(p))
    opt = torch.optim.Adam(arch.parameters(), lr=0.3)
    for _ in range(30):
        opt.zero_grad()
        arch.mean_entropy().backward()
        opt.step()
    assert max(arch.entropies().values()) < 1.0  # the search goal's convergence bar
