"""The uniform-in-band v2 sampler (search.band_v2): exactly the law it claims on a space small
enough to enumerate (equal bin shares, every architecture of a bin equally likely), where the
constrained argmax of Gumbel-perturbed probabilities piles at one edge; on fbnetv2-cifar's FLOPs
in band, distinct, spread across the band, deterministic; refusals."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
from scipy import stats

import search.band_v2 as band_v2
from fbnet.arch_v2 import ArchV2, LayerChoice
from fbnet.space_v2 import SpaceV2, StageV2, WidthRange, get_v2_space
from search.band import BandError
from search.band_v2 import BandCountsV2, BandSamplerV2, uniform_in_band_v2
from search.masking import MixWeights
from search.select_v2 import most_likely_within_v2
from search.v2_cost import arch_cost, cost_range, cost_tables, price_for

W = WidthRange(8, 16, 8)
TINY = SpaceV2(name="tiny", resolutions=(8, 12), stem_stride=1, stem_widths=W,
               stages=(StageV2(1, (W,)), StageV2(2, (W, WidthRange(16, 24, 8)))), head_widths=(32, 48),
               expansions=(1.0, 3.0), num_classes=10, blocks=("ir_k3", "skip"))
TINY_T = cost_tables(TINY, price_for("flops", TINY))
BINS = 4


def _layer_options(space: SpaceV2, layer: int) -> list[LayerChoice]:
    return [LayerChoice(b, w, e) for w in space.layers[layer].widths for b in space.blocks
            for e in ((None,) if b == "skip" else space.expansions)]


@pytest.fixture(scope="module")
def tiny():
    """Every architecture of TINY (2 x 2 x 6^3 x 2 = 1728; a skip has no expansion) with its exact
    cost, and the band between the 60th and 90th percentiles of cost."""
    archs = [ArchV2(r, s, tuple(ls), h) for r in TINY.resolutions for s in TINY.stem_widths.options
             for ls in itertools.product(*(_layer_options(TINY, i) for i in range(TINY.num_layers)))
             for h in TINY.head_widths]
    costs = np.array([arch_cost(TINY_T, TINY, a) for a in archs])
    lo, hi = (float(x) for x in np.quantile(costs, [0.6, 0.9]))
    return {a: i for i, a in enumerate(archs)}, costs, (lo, hi)


def _check(draws, index, costs, band, bins):
    """Chi-square statistics of ``draws`` against the exact law: (over the bins' shares, its 99.9 %
    critical value), (over every architecture of the band, expected n / bins / N_bin, its critical)."""
    edges = np.linspace(*band, bins + 1)
    of = np.clip(np.searchsorted(edges, costs, side="right") - 1, 0, bins - 1)
    inside = (costs >= band[0]) & (costs <= band[1])
    drawn = np.zeros(len(costs))
    for a in draws:
        drawn[index[a]] += 1
    c = costs[[index[a] for a in draws]]
    h = np.histogram(c, bins=bins, range=band)[0]
    e = len(draws) / bins
    shares = float(((h - e) ** 2 / e).sum())
    within, df = 0.0, 0
    for j in range(bins):
        m = inside & (of == j)
        e = len(draws) / bins / m.sum()
        within += float(((drawn[m] - e) ** 2 / e).sum())
        df += int(m.sum())
    return (shares, stats.chi2.ppf(0.999, bins - 1)), (within, stats.chi2.ppf(0.999, df - bins)), c


def test_the_counts_are_exact_over_the_whole_chain(tiny):
    """Every architecture counted once (skips not multiplied by the expansions), and every bin's
    reachable count covers the architectures exactly in it."""
    index, costs, band = tiny
    bc = BandCountsV2(TINY, TINY_T, float(costs.max()), 1e-3)
    assert sum(c[-1].sum() for c in bc.counts if c is not None) == len(index) == 1728
    edges = np.linspace(*band, BINS + 1)
    for j in range(BINS):
        assert bc.reachable(edges[j], edges[j + 1]) >= ((costs >= edges[j]) & (costs <= edges[j + 1])).sum() > 0
    rng = np.random.default_rng(0)
    for _ in range(200):  # a proposal's architecture and its fast exact cost: arch_cost's float, bit for bit
        r, path = bc.propose(*band, rng)
        assert bc.cost(r, path) == costs[index[bc.arch(r, path)]]


def test_exact_law_on_an_enumerable_space(tiny):
    index, costs, band = tiny
    sampler = BandSamplerV2(TINY, TINY_T, *band, bins=BINS)
    rng = np.random.default_rng(5)
    draws = [sampler.draw(rng) for _ in range(6000)]  # with replacement: the law itself
    (shares, crit_s), (within, crit_w), c = _check(draws, index, costs, band, BINS)
    assert ((c >= band[0]) & (c <= band[1])).all()
    assert shares < crit_s, shares
    assert within < crit_w, (within, crit_w)
    assert sampler.accepted / sampler.proposals > 0.5


def _gumbel_argmax(space, tables, band, n, seed):
    """The old-style sampler: the constrained argmax of Gumbel-perturbed probabilities."""
    rng = np.random.default_rng(seed)

    def g(*shape):
        return torch.softmax(torch.from_numpy(rng.gumbel(size=shape)), -1)

    L = space.num_layers
    out = []
    for _ in range(n):
        probs = MixWeights(g(len(space.resolutions)), g(len(space.stem_widths.options)), g(L, len(space.blocks)),
                           tuple(g(len(ls.widths)) for ls in space.layers), g(L, len(space.expansions)),
                           g(len(space.head_widths)))
        out.append(most_likely_within_v2(space, tables, probs, *band))
    return out


def test_an_edge_piling_sampler_fails_the_same_check(tiny):
    index, costs, band = tiny
    draws = _gumbel_argmax(TINY, TINY_T, band, 240, seed=1)
    (shares, crit_s), _, c = _check(draws, index, costs, band, BINS)
    assert shares > 3 * crit_s, shares
    assert c.mean() - sum(band) / 2 < -0.1 * (band[1] - band[0])  # piled towards the cheap edge


def test_distinct_draws_and_the_memory_cap(tiny, monkeypatch):
    index, costs, band = tiny
    got = uniform_in_band_v2(TINY, TINY_T, band, k=100, seed=2, bins=BINS)
    c = costs[[index[a] for a in got]]
    assert len(set(got)) == 100 and ((c >= band[0]) & (c <= band[1])).all()
    monkeypatch.setattr(band_v2, "MAX_CELLS", 2000)
    small = BandSamplerV2(TINY, TINY_T, *band, bins=BINS)
    cells = sum(x.size for counts in small.bc.counts if counts is not None for x in counts)
    assert cells <= 2000 + 200  # the cap plus each state's rounding slack
    again = uniform_in_band_v2(TINY, TINY_T, band, k=30, seed=2, bins=BINS)
    assert all(band[0] <= costs[index[a]] <= band[1] for a in again)


CIFAR = get_v2_space("fbnetv2-cifar")


@pytest.fixture(scope="module")
def cifar_flops():
    return cost_tables(CIFAR, price_for("flops", CIFAR))


def test_fbnetv2_cifar_flops_band(cifar_flops):
    cheap, dear = cost_range(cifar_flops)
    mid = (cheap + dear) / 2
    band = (0.95 * mid, 1.05 * mid)
    t0 = time.perf_counter()
    archs = uniform_in_band_v2(CIFAR, cifar_flops, band, k=40, seed=1)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"{elapsed:.2f} s for 40 draws"  # about 0.5 s on an idle core
    c = np.array([arch_cost(cifar_flops, CIFAR, a) for a in archs])
    assert len(set(archs)) == 40 and ((c >= band[0]) & (c <= band[1])).all()
    assert np.allclose(c, [CIFAR.arch_mflops(a) for a in archs])
    assert (c < mid).sum() >= 10 and (c >= mid).sum() >= 10, np.sort(c)
    assert archs == uniform_in_band_v2(CIFAR, cifar_flops, band, k=40, seed=1)
    assert archs != uniform_in_band_v2(CIFAR, cifar_flops, band, k=40, seed=2)


@pytest.mark.parametrize(("which", "words"), [
    ("below", "outside the tables' cost range"),
    ("above", "outside the tables' cost range"),
    ("flat", "lo < hi"),
    ("gap", "no architecture of tiny has a cost in"),
    ("few", "no new architecture with a cost in"),
    ("bins", "bins and sub must be >= 1"),
])
def test_bands_it_cannot_fill_are_refused(tiny, which, words):
    _, costs, band = tiny
    s = np.unique(costs)
    gap = int(np.argmax(np.diff(s)))  # the widest gap between two architectures' costs
    args = {
        "below": ((0.5 * s[0], s[1]), {}),
        "above": ((s[-2], 1.5 * s[-1]), {}),
        "flat": ((band[0], band[0]), {}),
        "gap": ((s[gap], s[gap + 1]), {"bins": 5}),
        "few": ((s[0], s[3]), {"bins": 1, "tries": 200}),  # at most a handful of architectures there
        "bins": (band, {"bins": 0}),
    }[which]
    with pytest.raises(BandError, match=words) as e:
        uniform_in_band_v2(TINY, TINY_T, args[0], k=50, **args[1])
    assert "\n" not in str(e.value)
