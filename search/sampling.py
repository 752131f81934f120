"""Architectures from a trained theta: the most likely one and K samples from softmax(theta)."""

from __future__ import annotations

import torch

from fbnet.lut import LatencyLUT
from fbnet.space import NUM_LAYERS, Arch


def _theta(theta) -> torch.Tensor:
    t = torch.as_tensor(theta, dtype=torch.float64).detach().cpu()
    if t.ndim != 2 or t.shape[0] != NUM_LAYERS:
        raise ValueError(f"theta must be [{NUM_LAYERS}, candidates], got {list(t.shape)}")
    return t


def argmax_arch(theta) -> Arch:
    """The most likely architecture: per layer the candidate with the largest theta."""
    return Arch.from_indices(int(i) for i in _theta(theta).argmax(-1))


def sample_archs(theta, k: int, seed: int = 0) -> list[Arch]:
    """``k`` independent draws from P_theta = softmax(theta), layer by layer (seeded)."""
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(_theta(theta), -1)
    return [Arch.from_indices(int(i) for i in torch.multinomial(p, 1, generator=g).squeeze(1)) for _ in range(k)]


def log_prob(theta, arch: Arch) -> float:
    lp = torch.log_softmax(_theta(theta), -1)
    return float(sum(lp[layer, i] for layer, i in enumerate(arch.indices)))


def describe(theta, archs: list[Arch], lut: LatencyLUT) -> list[dict]:
    """Each arch with its table latency and log-probability under softmax(theta)."""
    return [{"arch": list(a.blocks), "latency_us": lut.arch_latency(a), "log_prob": log_prob(theta, a)}
            for a in archs]


__all__ = ["argmax_arch", "describe", "log_prob", "sample_archs"]
