"""Choosing an architecture from theta under a latency band, and the table's latency range.

:func:`most_likely_within` is the exact answer to "the most likely architecture under softmax(theta)
whose table latency is in [lo, hi]": a knapsack-style dynamic programme over the 22 layers with the
latency discretised into ``resolution`` buckets, every candidate re-priced exactly with the table
afterwards (so rounding can never admit an architecture outside the band). The search uses it to end
on an architecture within the target band. :func:`random_within` draws random architectures uniform
in latency within a band (:mod:`search.band`), the baseline of found-vs-random comparisons. No torch.
"""

from __future__ import annotations

import numpy as np

from fbnet.lut import LatencyLUT, predict
from fbnet.space import Arch
from search.band import uniform_in_band


def latency_range(lut: LatencyLUT) -> tuple[float, float]:
    """(fastest, slowest) table latency over all architectures of the space (us)."""
    m = np.asarray(lut.matrix, dtype=np.float64)
    return float(m.min(1).sum() + lut.fixed_us), float(m.max(1).sum() + lut.fixed_us)


def _log_softmax(theta) -> np.ndarray:
    t = np.asarray(theta, dtype=np.float64)
    t = t - t.max(-1, keepdims=True)
    return t - np.log(np.exp(t).sum(-1, keepdims=True))


def most_likely_within(theta, lut: LatencyLUT, lo_us: float, hi_us: float, *, resolution: int = 4000,
                       tries: int = 200) -> Arch | None:
    """The architecture maximising sum_l log softmax(theta)[l, i_l] subject to lo <= latency <= hi,
    or None when no architecture of the table is in the band."""
    logp = _log_softmax(theta)
    lat = np.asarray(lut.matrix, dtype=np.float64)
    n_layers, n_cand = lat.shape
    cap = hi_us - lut.fixed_us
    if cap <= 0:
        return None
    step = cap / resolution
    w = np.rint(lat / step).astype(np.int64)
    size = resolution + n_layers + 1  # rounding can carry an in-band architecture a few buckets past cap
    score = np.full(size, -np.inf)
    score[0] = 0.0
    choice = np.full((n_layers, size), -1, dtype=np.int64)
    for layer in range(n_layers):
        new = np.full(size, -np.inf)
        for i in range(n_cand):
            k = w[layer, i]
            if k >= size:
                continue
            s = np.full(size, -np.inf)
            s[k:] = score[:size - k] + logp[layer, i]
            better = s > new
            new[better] = s[better]
            choice[layer, better] = i
        score = new
    lo_b = max(0, int(np.floor((lo_us - lut.fixed_us) / step)) - n_layers)
    ends = [b for b in np.argsort(-score) if np.isfinite(score[b]) and b >= lo_b][:tries]
    for b in ends:
        idx, cur = [0] * n_layers, int(b)
        for layer in range(n_layers - 1, -1, -1):
            i = int(choice[layer, cur])
            idx[layer] = i
            cur -= int(w[layer, i])
        arch = Arch.from_indices(idx)
        if lo_us <= predict(lut, arch)["latency_us"] <= hi_us:
            return arch
    return None


def random_within(lut: LatencyLUT, lo_us: float, hi_us: float, k: int, seed: int = 0) -> list[Arch]:
    """``k`` distinct random architectures uniform in table latency within [lo, hi]: equal shares of
    the band's 20 latency bins, uniform among the architectures of a bin (exact, by rejection:
    :func:`search.band.uniform_in_band`). A band the space cannot fill raises
    :class:`search.band.BandError`. (It replaced the constrained argmax of Gumbel logits, which
    piled its draws at the band edge nearest the unconstrained mean.)"""
    return uniform_in_band(lut, lo_us, hi_us, k, seed)


__all__ = ["latency_range", "most_likely_within", "random_within"]
