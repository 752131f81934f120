"""The FBNet supernet: every searchable layer holds its 9 candidates, mixed by Gumbel-softmax weights.

The architecture parameters theta live in :class:`ArchParams`, outside the weight module, so that
under DistributedDataParallel only the weights are wrapped and theta is synchronised by hand (see
``search.trainer``). Every candidate is built through :func:`fbnet.blocks.build_op`, the registry
the agents export from, so the timed op and the trained op are the same module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fbnet.blocks import build_op, init_weights
from fbnet.space import CANDIDATE_NAMES, NUM_LAYERS, Space

NUM_CANDIDATES = len(CANDIDATE_NAMES)


class MixedLayer(nn.Module):
    """One searchable layer: output = sum_i m_i * candidate_i(x)."""

    def __init__(self, space: Space, layer: int):
        super().__init__()
        self.layer = layer
        self.candidates = nn.ModuleList(build_op(space.layer_op(layer, i)) for i in range(NUM_CANDIDATES))

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        out = None
        for i, cand in enumerate(self.candidates):
            y = m[i] * cand(x)
            out = y if out is None else out + y
        return out


class Supernet(nn.Module):
    """Stem, 22 mixed layers, head, pool, fc. ``forward(x, m)`` takes the [22, 9] mixing weights."""

    def __init__(self, space: Space):
        super().__init__()
        self.space_name = space.name
        self.stem = build_op(space.stem)
        self.layers = nn.ModuleList(MixedLayer(space, i) for i in range(NUM_LAYERS))
        self.head = build_op(space.head)
        self.pool = build_op(space.pool)
        self.fc = build_op(space.fc)
        init_weights(self)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer, ml in zip(self.layers, m, strict=True):
            x = layer(x, ml)
        return self.fc(self.pool(self.head(x)))


class ArchParams(nn.Module):
    """theta: [22, 9] logits of the per-layer candidate distribution P_theta = softmax(theta)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        # All equal: the distribution starts uniform whatever the constant (JunrQ and jh88 use 1.0).
        self.theta = nn.Parameter(torch.full((NUM_LAYERS, NUM_CANDIDATES), float(init)))

    def gumbel_weights(self, tau: float, hard: bool = False) -> torch.Tensor:
        """One Gumbel-softmax sample m [22, 9], shared by the whole batch of this forward pass."""
        return F.gumbel_softmax(self.theta, tau=tau, hard=hard, dim=-1)

    def probs(self) -> torch.Tensor:
        return torch.softmax(self.theta, dim=-1)

    def entropy(self) -> float:
        """Mean per-layer entropy of softmax(theta), in nats (log 9 = 2.197 when uniform)."""
        p = self.probs().detach()
        return float(-(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean())


__all__ = ["ArchParams", "MixedLayer", "NUM_CANDIDATES", "Supernet"]
