"""The FBNet supernet: every searchable layer holds its 9 candidates, mixed by Gumbel-softmax weights.

Two ways to run it (``single`` of :meth:`Supernet.forward`):

* **all candidates** (the paper): ``sum_i m_i * candidate_i(x)`` with a soft Gumbel-softmax sample
  m; every candidate runs forward and backward, a step costs ~9 candidates per layer.
* **single path** (GDAS): m is a hard Gumbel sample with the straight-through estimator (the value
  is one-hot, the gradient that of the soft sample, :meth:`ArchParams.gumbel_weights` with
  ``hard=True``); only the sampled candidate runs: ``m_k * candidate_k(x)`` with ``m_k = 1`` in value.
  ``d m_k / d theta_j`` is non-zero for every j (softmax), so every theta of the layer gets a gradient
  while a step costs ~one candidate per layer.

The architecture parameters theta live in :class:`ArchParams`, outside the weight module, so that
under DistributedDataParallel only the weights are wrapped and theta is synchronised by hand (see
``search.trainer``). Every candidate is built through :func:`fbnet.blocks.build_op`, the registry
the agents export from, so the timed op and the trained op are the same module.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from fbnet.blocks import build_op, init_weights
from fbnet.space import CANDIDATE_NAMES, NUM_LAYERS, Space
from search.superkernels import shared_candidates

NUM_CANDIDATES = len(CANDIDATE_NAMES)


class MixedLayer(nn.Module):
    """One searchable layer: output = sum_i m_i * candidate_i(x)."""

    def __init__(self, space: Space, layer: int, shared: bool = False):
        super().__init__()
        self.layer = layer
        if shared:  # the IR candidates are slices of one set of weights (search.superkernels)
            self.shared, self.candidates = shared_candidates(space, layer)
        else:
            self.candidates = nn.ModuleList(build_op(space.layer_op(layer, i)) for i in range(NUM_CANDIDATES))

    def forward(self, x: torch.Tensor, m: torch.Tensor, single: bool | int | list[int] = False) -> torch.Tensor:
        """``single``: True (or the chosen index) runs only candidate argmax(m). A list of k indices
        (m is then [k, 9]): k paths, the batch split into k consecutive chunks, chunk j through
        candidate ``single[j]`` (each chunk's BatchNorm statistics are its own)."""
        if isinstance(single, list):
            return torch.cat([m[j, k] * self.candidates[k](xj)
                              for j, (k, xj) in enumerate(zip(single, x.tensor_split(len(single)), strict=True))])
        if single is not False:
            k = int(m.detach().argmax()) if single is True else int(single)
            return m[k] * self.candidates[k](x)
        out = None
        for i, cand in enumerate(self.candidates):
            y = m[i] * cand(x)
            out = y if out is None else out + y
        return out


class Supernet(nn.Module):
    """Stem, 22 mixed layers, head, pool, fc. ``forward(x, m)`` takes the [22, 9] mixing weights.
    ``shared``: the candidates of a layer share their weights (``search.superkernels``); otherwise each is
    its own module (the paper)."""

    def __init__(self, space: Space, shared: bool = False):
        super().__init__()
        self.space_name = space.name
        self.stem = build_op(space.stem)
        self.layers = nn.ModuleList(MixedLayer(space, i, shared) for i in range(NUM_LAYERS))
        self.head = build_op(space.head)
        self.pool = build_op(space.pool)
        self.fc = build_op(space.fc)
        init_weights(self)

    def forward(self, x: torch.Tensor, m: torch.Tensor, single: bool = False) -> torch.Tensor:
        """``single``: m is a (straight-through) one-hot sample; run only the chosen candidate per layer.
        With ``single`` and m of shape [k, 22, 9] (k one-hot paths, :meth:`ArchParams.paths`), the batch
        is split into k consecutive chunks and chunk j takes path j; stem, head and fc see the whole
        batch, so one step's gradient on them averages over k paths."""
        x = self.stem(x)
        # one device-to-host read for the 22 choices (not one per layer: matters on a GPU)
        if single and m.dim() == 3:
            k = min(len(m), len(x))
            m = m[:k].transpose(0, 1)  # [22, k, 9]
            ks = m.detach().argmax(-1).tolist()
        else:
            ks = m.detach().argmax(-1).tolist() if single else [False] * len(self.layers)
        for layer, ml, k in zip(self.layers, m, ks, strict=True):
            x = layer(x, ml, k)
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

    @torch.no_grad()
    def paths(self, k: int) -> torch.Tensor:
        """k one-hot paths [k, 22, 9] (no gradient; for the weight step): per layer k *distinct*
        candidates drawn without replacement from softmax(theta) (the Gumbel-top-k trick: the k largest
        theta + Gumbel noise), path j taking the j-th in every layer. Path 0 alone is distributed as
        the argmax of :meth:`gumbel_weights` (hard); with uniform theta and k = 9 every candidate of
        every layer is trained exactly once per step (FairNAS's strict fairness)."""
        if not 1 <= k <= self.theta.shape[1]:
            raise ValueError(f"k must be in 1..{self.theta.shape[1]}, got {k}")
        g = -torch.empty_like(self.theta).exponential_().log()
        top = (self.theta + g).topk(k, dim=-1).indices  # [22, k]
        return F.one_hot(top.T, self.theta.shape[1]).to(self.theta.dtype)

    def probs(self) -> torch.Tensor:
        return torch.softmax(self.theta, dim=-1)

    def layer_entropy(self) -> torch.Tensor:
        """Per-layer entropy of softmax(theta), in nats (log 9 = 2.197 when uniform)."""
        p = self.probs().detach()
        return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)

    def entropy(self) -> float:
        """Mean per-layer entropy of softmax(theta), in nats: ``theta_entropy``."""
        return float(self.layer_entropy().mean())

    def argmax_prob(self) -> list[float]:
        """Per layer, the probability of the most likely candidate."""
        return [float(v) for v in self.probs().detach().max(-1).values]


__all__ = ["ArchParams", "MixedLayer", "NUM_CANDIDATES", "Supernet", "proxy_space"]


def proxy_space(space: Space, width: float = 1.0, resolution: int | None = None) -> Space:
    """The space the supernet trains on when the accuracy side uses a proxy: the same 22 layers and
    candidates, ``width`` x narrower and/or at a lower input ``resolution``. Latency is never read
    from the proxy: the search always prices the target space's table."""
    res = resolution or space.resolution
    if width == 1.0 and res == space.resolution:
        return space
    if not 0 < width <= 1 or res < 8:
        raise ValueError(f"proxy width must be in (0, 1] and resolution >= 8, got {width}, {res}")
    return dataclasses.replace(space, name=f"{space.name}~proxy-r{res}-w{width:g}", resolution=res,
                               width_mult=space.width_mult * width)
