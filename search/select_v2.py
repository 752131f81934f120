"""Choosing a v2 architecture from the search's distributions under a cost band (the v1
:func:`search.select.most_likely_within` with the width state).

:func:`most_likely_within_v2` is "the most likely architecture under the distributions' probabilities
whose cost is in [lo, hi]": per resolution a dynamic programme over the layers whose state is
(the previous layer's width, the cost so far discretised into ``buckets`` buckets), since an op's cost
depends on the widths on both of its sides. A skip layer has no expansion, so a layer's expansion
is scored relative to its most likely one: log p(block) + log p(expansion) - max log p(expansion). Scored
as a plain probability (log p(block) + log p(expansion)), a skip would carry no expansion factor while
every other block paid for a specific expansion: with undecided expansions (six near 1/6 each) a skip
then beat any block up to six times as likely, and the selection filled the network with skips. With
the relative score the unconstrained best is exactly the per-choice argmax
(:meth:`search.masking.V2ArchParams.argmax_arch`). Candidates are re-priced exactly (:func:`search.v2_cost.arch_cost`)
before one is accepted, so rounding never admits an architecture outside the band.
"""

from __future__ import annotations

import torch

from fbnet.arch_v2 import ArchV2, LayerChoice
from fbnet.space_v2 import SpaceV2
from search.masking import MixWeights
from search.v2_cost import CostTables, arch_cost

NEG = float("-inf")


def _layer_step(v: torch.Tensor, cost: torch.Tensor, lp: torch.Tensor, step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer: ``v`` [I, K] best log-prob per (input width, bucket); ``cost`` [I, C, J] per choice
    c = (block, expansion) flattened; ``lp`` [C, J]. Returns the new [J, K] and the argmax over (i, c)."""
    n_in, n_c, n_out = cost.shape
    k = v.shape[1]
    w = torch.round(cost / step).long()  # [I, C, J]
    src = torch.arange(k)[None, None, None, :] - w[..., None]  # [I, C, J, K]
    ok = src >= 0
    got = v[torch.arange(n_in)[:, None, None, None], src.clamp_min(0)]
    score = torch.where(ok, got, torch.full_like(got, NEG)) + lp[None, :, :, None]
    flat = score.permute(2, 3, 0, 1).reshape(n_out, k, n_in * n_c)
    best, arg = flat.max(-1)
    return best, arg


def _choices(space: SpaceV2, logp: MixWeights, layer: int, table_r: torch.Tensor):
    """The (block, expansion) choices of ``layer`` flattened: cost [I, C, J], log-prob [C, J], the list."""
    combos, costs, lps = [], [], []
    exp_rel = logp.expansions[layer] - logp.expansions[layer].max()  # relative to the most likely (docstring)
    for b, block in enumerate(space.blocks):
        exps = [0] if block == "skip" else range(len(space.expansions))
        for e in exps:
            combos.append((b, None if block == "skip" else e))
            costs.append(table_r[:, b, :, e])  # [I, J]
            lp_e = 0.0 if block == "skip" else exp_rel[e]
            lps.append(logp.blocks[layer][b] + lp_e + logp.widths[layer])
    return torch.stack(costs, 1), torch.stack(lps, 0), combos


def _best_at(space: SpaceV2, tables: CostTables, logp: MixWeights, r: int, step: float, k: int):
    """The programme at resolution index ``r``: the best log-prob per final bucket [K] and the trace."""
    v = torch.full((len(space.stem_widths.options), k), NEG, dtype=torch.float64)
    for s, c in enumerate(tables.stem[r]):
        b = int(round(float(c) / step))
        if b < k:
            v[s, b] = float(logp.stem[s])
    trace = []
    for i, t in enumerate(tables.layers):
        cost, lp, combos = _choices(space, logp, i, t[r])
        v, arg = _layer_step(v, cost, lp.double(), step)
        trace.append((arg, combos, cost))
    head = (tables.head[r] + tables.fc[None, :])[:, None, :]  # [I, 1, H]: the head as one more "layer"
    fin, arg = _layer_step(v, head, logp.head.double()[None, :], step)  # [H, K]
    best, h = fin.max(0)
    trace.append((arg, [(h, None)], head))
    return best + float(logp.resolution[r]), (h, trace)


def _trace_back(space: SpaceV2, r: int, k: int, step: float, traced) -> ArchV2:
    """The architecture that ends in bucket ``k`` of resolution index ``r``'s programme."""
    h_of, trace = traced
    j = int(h_of[k])  # the head width index
    head = space.head_widths[j]
    layers: list[LayerChoice] = []
    for n, (arg, combos, cost) in enumerate(reversed(trace)):
        a = int(arg[j, k])
        n_c = cost.shape[1]
        i, c = divmod(a, n_c)
        k -= int(torch.round(cost[i, c, j] / step))
        if n > 0:  # a layer (the first entry traced back is the head)
            li = len(trace) - 1 - n
            b, e = combos[c]
            block = space.blocks[b]
            layers.append(LayerChoice(block, space.layers[li].widths[j], None if e is None else space.expansions[e]))
        j = i
    return ArchV2(space.resolutions[r], space.stem_widths.options[j], tuple(reversed(layers)), head)


def _log(w: MixWeights) -> MixWeights:
    def lg(t):
        return torch.log(t.double().clamp_min(1e-30))

    return MixWeights(lg(w.resolution), lg(w.stem), lg(w.blocks), tuple(lg(x) for x in w.widths), lg(w.expansions),
                      lg(w.head))


@torch.no_grad()
def most_likely_within_v2(space: SpaceV2, tables: CostTables, probs: MixWeights, lo: float, hi: float, *,
                          buckets: int = 1500, tries: int = 50) -> ArchV2 | None:
    """The most likely architecture under ``probs`` (:meth:`search.masking.V2ArchParams.probs`) whose
    cost (in the tables' unit, no offset) is in [lo, hi]; None when none is found (module docstring)."""
    if hi <= 0:
        return None
    step = hi / buckets
    k = buckets + space.num_layers + 3  # rounding can carry an in-band architecture past the cap
    logp = _log(probs)
    lo_b = max(0, int(lo / step) - space.num_layers - 3)
    ends = []
    for r in range(len(space.resolutions)):
        best, traced = _best_at(space, tables, logp, r, step, k)
        ends += [(float(best[b]), r, b, traced) for b in range(lo_b, k) if best[b] > NEG]
    ends.sort(key=lambda e: -e[0])
    for _, r, b, traced in ends[:tries]:
        arch = _trace_back(space, r, b, step, traced)
        if lo <= arch_cost(tables, space, arch) <= hi:
            return arch
    return None


__all__ = ["most_likely_within_v2"]
