"""The latency-aware loss, Gumbel-softmax weights and sampling (no server, no training)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from search_helpers import macs_table

from fbnet.lut import build_lut
from fbnet.space import CANDIDATE_NAMES, NUM_LAYERS, Arch, get_space
from search.loss import LAT_FLOOR_US, expected_latency, fbnet_loss, latency_factor
from search.sampling import argmax_arch, log_prob, sample_archs
from search.supernet import ArchParams, MixedLayer

SPACE = get_space("fbnet-cifar")


def _lut_tensor():
    lut = build_lut(macs_table(SPACE), SPACE)
    return torch.tensor(lut.matrix, dtype=torch.float64), lut.fixed_us


def test_latency_term_gradient_matches_finite_differences():
    lat, fixed = _lut_tensor()
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(NUM_LAYERS, len(CANDIDATE_NAMES), dtype=torch.float64, generator=g)
    gumbel = -torch.log(-torch.log(torch.rand(theta.shape, dtype=torch.float64, generator=g)))
    ce = torch.tensor(1.7, dtype=torch.float64)
    tau, alpha, beta = 2.0, 0.2, 0.6

    def loss_of(th):
        m = torch.softmax((th + gumbel) / tau, -1)  # Gumbel-softmax with the noise held fixed
        return ce * latency_factor(expected_latency(m, lat, fixed), alpha, beta)

    th = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_of(th), th)
    eps = 1e-6
    num = torch.zeros_like(theta)
    for idx in [(0, 0), (0, 8), (5, 3), (11, 7), (21, 2), (21, 8)] + [(k, k % 9) for k in range(NUM_LAYERS)]:
        e = torch.zeros_like(theta)
        e[idx] = eps
        num[idx] = (loss_of(theta + e) - loss_of(theta - e)) / (2 * eps)
        assert grad[idx].item() == pytest.approx(num[idx].item(), rel=1e-5, abs=1e-12), idx
    assert grad.abs().sum() > 0
    # Also torch's own check over the whole tensor.
    assert torch.autograd.gradcheck(loss_of, (theta.clone().requires_grad_(True),))


def test_loss_is_log_lat_to_the_beta_not_log_of_lat_to_the_beta():
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    y = torch.tensor([0])
    lat = torch.tensor(5000.0)
    loss, ce = fbnet_loss(logits, y, lat, alpha=0.2, beta=0.6)
    assert loss.item() == pytest.approx(ce.item() * 0.2 * math.log(5000.0) ** 0.6)
    assert loss.item() != pytest.approx(ce.item() * 0.2 * math.log(5000.0**0.6))


def test_loss_is_finite_for_tiny_latencies_and_alpha_zero_is_plain_ce():
    logits = torch.randn(4, 10)
    y = torch.arange(4)
    for lat in (0.0, 0.5, 1.0, 2.0):
        loss, ce = fbnet_loss(logits, y, torch.tensor(lat), alpha=0.2, beta=0.6)
        assert torch.isfinite(loss)
        assert loss.item() == pytest.approx(ce.item() * 0.2 * math.log(LAT_FLOOR_US) ** 0.6)
    loss, ce = fbnet_loss(logits, y, torch.tensor(1e4), alpha=0.0)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item())
    with pytest.raises(ValueError):
        fbnet_loss(logits, y, torch.tensor(1e4), alpha=-1.0)


def test_gumbel_weights_become_one_hot_as_tau_falls():
    torch.manual_seed(0)
    ap = ArchParams()
    with torch.no_grad():
        ap.theta.normal_()

    def mean_max(tau):
        return torch.stack([ap.gumbel_weights(tau).max(-1).values.mean() for _ in range(50)]).mean().item()
    values = [mean_max(t) for t in (5.0, 1.0, 0.2, 0.05, 0.005)]
    assert values == sorted(values), values
    assert values[0] < 0.5
    assert values[-1] > 0.98
    m = ap.gumbel_weights(5.0)
    assert torch.allclose(m.sum(-1), torch.ones(NUM_LAYERS))


def test_mixed_layer_is_the_weighted_sum_of_its_candidates():
    torch.manual_seed(0)
    layer = MixedLayer(SPACE, 5).eval()
    x = torch.randn(2, SPACE.layers[5].cin, 32, 32)
    m = torch.softmax(torch.randn(9), 0)
    want = sum(m[i] * c(x) for i, c in enumerate(layer.candidates))
    assert torch.allclose(layer(x, m), want, atol=1e-5)
    one_hot = torch.zeros(9)
    one_hot[3] = 1
    assert torch.allclose(layer(x, one_hot), layer.candidates[3](x), atol=1e-6)


def test_argmax_and_samples_follow_theta():
    theta = torch.zeros(NUM_LAYERS, 9)
    theta[:, 4] = 8.0  # nearly one-hot on k5_e1
    theta[3, :] = 0.0
    theta[3, 8] = 8.0
    a = argmax_arch(theta)
    assert a.blocks[0] == "k5_e1" and a.blocks[3] == "skip"
    samples = sample_archs(theta, 20, seed=1)
    assert len(samples) == 20
    assert sum(s == a for s in samples) >= 15
    assert sample_archs(theta, 5, seed=3) == sample_archs(theta, 5, seed=3)
    uniform = torch.zeros(NUM_LAYERS, 9)
    assert len(set(sample_archs(uniform, 10, seed=0))) == 10
    assert log_prob(uniform, Arch.parse("FBNet-B")) == pytest.approx(NUM_LAYERS * math.log(1 / 9))
