"""theta's accuracy signal (search.signal): the split-half cosine, the separation of the accuracy
gradient from the cost gradient, and the v2 search's per-epoch ``theta_signal`` when its theta
images agree (one image repeated: near 1) and when they do not (random labels, with the target hinge
pulling the whole time: near 0; it would be near 1 if the cost's gradient were not taken out)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from search_helpers import macs_table

from fbnet.lut import build_lut
from fbnet.space import get_space
from fbnet.space_v2 import get_v2_space
from search.config import SearchConfig
from search.data import Dataset
from search.loss import fbnet_loss, target_loss
from search.select import latency_range
from search.signal import SplitHalf, cost_part_grad, signal_line, signal_summary
from search.trainer import RunOptions, Searcher
from search.trainer_v2 import V2Cost, V2Searcher
from search.v2_cost import cost_range, cost_tables, flops_price


def test_split_half_cosine_is_one_for_agreeing_gradients_and_near_zero_for_independent_ones():
    g = torch.Generator().manual_seed(0)
    d = 400
    direction = torch.randn(d, generator=g)
    agree, noise = SplitHalf(), SplitHalf()
    assert agree.cosine() is None
    for _ in range(40):
        agree.add(direction + 0.1 * torch.randn(d, generator=g))
        noise.add(torch.randn(d, generator=g))
    assert agree.cosine() > 0.99
    assert abs(noise.cosine()) < 4 / math.sqrt(d)  # two random directions: sd 1/sqrt(d)
    one = SplitHalf()
    one.add(direction)
    assert one.cosine() is None  # one half only: nothing to compare


@pytest.mark.parametrize("kind", ["target", "fbnet"])
def test_cost_part_grad_leaves_exactly_the_accuracy_gradient(kind):
    torch.manual_seed(0)
    theta = torch.zeros(4, requires_grad=True)
    lat = torch.tensor([10.0, 40.0, 90.0, 200.0])
    w = torch.randn(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    p = theta.softmax(0)
    logits = (x * p) @ w
    cost = (p * lat).sum()
    if kind == "target":
        def loss_of(lg):
            return target_loss(lg, y, cost, target_us=20.0, weight=2.0, band=0.02)
    else:
        def loss_of(lg):
            return fbnet_loss(lg, y, cost, alpha=0.2, beta=0.6)
    loss, ce = loss_of(logits)
    g_cost = cost_part_grad(loss_of(logits.detach())[0], [theta])
    assert g_cost.abs().sum() > 0  # the cost term pulls
    (g,) = torch.autograd.grad(loss, [theta], retain_graph=True)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(logits, y), [theta])
    scale = 1.0 if kind == "target" else float(loss / ce)  # CE * factor: the accuracy part is factor * dCE
    torch.testing.assert_close(g - g_cost, scale * g_ce)


def test_signal_summary_is_the_median_over_search_epochs():
    hist = [{"theta_signal": None}, {"theta_signal": 0.1}, {"theta_signal": 0.5}, {"theta_signal": 0.2}]
    assert signal_summary(hist) == pytest.approx(0.2)
    assert signal_summary([{"theta_signal": None}]) is None


SPACE = get_v2_space("fbnetv2-cifar")


def _search(tmp_path, x: torch.Tensor, y: torch.Tensor, target: float, target_weight: float = 2.0) -> list[dict]:
    cfg = SearchConfig(cost="flops", target_mflops=target, target_weight=target_weight, epochs=1, warmup_epochs=0,
                       batch_size=32, theta_batch_size=8, theta_mix="expected", seed=0)
    data = Dataset("test", x, y, x[:16], y[:16], [str(i) for i in range(10)])
    cost = V2Cost("flops", cost_tables(SPACE, flops_price))
    return V2Searcher(cfg, SPACE, cost, data, tmp_path).run().history


def test_v2_theta_signal_is_high_when_the_images_agree_and_low_when_they_do_not(tmp_path):
    torch.manual_seed(0)
    n = 320  # 64 theta images: 8 theta steps of 8
    lo, hi = cost_range(cost_tables(SPACE, flops_price))
    same = _search(tmp_path / "same", torch.randn(1, 3, 8, 8).expand(n, 3, 8, 8).clone(), torch.full((n,), 3),
                   target=(lo + hi) / 2)
    # random labels on random images, and a heavy hinge with a target far below the start: the cost's
    # gradient, the same direction at every step, outweighs the accuracy's (the signal would be ~1 with it)
    target = lo * 1.1
    noise = _search(tmp_path / "noise", torch.randn(n, 3, 8, 8), torch.randint(0, 10, (n,)), target, 1000.0)
    assert noise[-1]["expected_cost"] > target * 1.5  # the hinge pulled at every step
    assert same[-1]["theta_signal"] > 0.8
    assert abs(noise[-1]["theta_signal"]) < 0.4


def test_the_command_line_summary_warns_when_theta_moved_on_noise():
    quiet, noisy = signal_line([{"theta_signal": 0.5}, {"theta_signal": 0.7}]), signal_line([{"theta_signal": 0.02}])
    assert quiet == ("theta's accuracy signal (split-half cosine, median of 2 search epochs): 0.60", False)
    assert noisy[1] and "mostly noise" in noisy[0] and "docs/search_signal.md" in noisy[0]
    assert signal_line([{"theta_signal": None}]) == ("", False)


def test_v1_theta_signal_leaves_out_the_target_hinge(tmp_path):
    """v1's theta step: random labels on random images under a heavy hinge far below the start. The
    hinge's gradient is the same at every step (a signal of ~1 if it were counted); the accuracy
    part left is noise."""
    space = get_space("fbnet-cifar")
    lut = build_lut(macs_table(space), space)
    lo, _ = latency_range(lut)
    cfg = SearchConfig(target_ms=1.1 * lo / 1000, target_weight=1000.0, epochs=1, warmup_epochs=0, batch_size=32,
                       theta_batch_size=8, seed=0)
    torch.manual_seed(0)
    n = 320
    x, y = torch.randn(n, 3, 8, 8), torch.randint(0, 10, (n,))
    data = Dataset("test", x, y, x[:16], y[:16], [str(i) for i in range(10)])
    s = Searcher(cfg, space, lut, data, tmp_path, RunOptions(tensorboard=False))
    hist = s.run().history
    assert hist[-1]["expected_latency_us"] > 1.5 * 1.1 * lo  # the hinge pulled at every step
    assert abs(hist[-1]["theta_signal"]) < 0.4, hist[-1]["theta_signal"]
