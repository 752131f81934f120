"""Random v1 architectures uniform in table latency within a band [lo, hi] (the baseline of a
found-vs-random comparison at equal latency). Exact by construction; numpy only, no torch.

The distribution. The band is cut into ``bins`` equal-width latency bins. A draw picks a bin
uniformly, then an architecture uniformly among all architectures of the space whose table latency
lies in that bin. So every bin holds exactly 1/bins of the draws (the latency histogram at the bins'
resolution is flat), and within a bin the architectures are equally likely (the latency there
follows the space's density of architectures, which over 1/bins of a narrow band barely varies:
measured in ``tests/test_search_band.py``). "Uniform within the latency band" means this.

How one bin is drawn exactly. A latency is ``fixed + sum_l lat[l, a_l]``. Round every entry to a
grid of ``delta`` (``bins * sub`` grid steps across the band): a rounded sum is within
``n_layers * delta / 2`` of the exact one. A dynamic programme counts, for every rounded sum, the
architectures reaching it; sampling an end sum in proportion to its count and walking the layers
back draws an architecture *uniformly* from those whose rounded sum lies in the bin widened by that
bound, a set that contains every architecture of the bin. Keeping a draw only when its exact latency
is in the bin (rejection) leaves a uniform draw from the bin. With ``sub = 32`` about 60 % of
proposals are kept. Counts are float64 (at most 9^22, relative error ~1e-16).

Refused with :class:`BandError` rather than bent: a band outside the table's latency range, a bin
holding no architecture (the band's edge at the space's extreme), a bin where ``tries`` proposals
find no architecture not drawn before (too few there for ``k`` distinct draws).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fbnet.lut import LatencyLUT
from fbnet.space import Arch

MAX_BUCKETS = 1 << 17  # rounded-sum grid size cap (memory: layers x this x 8 bytes)


class BandError(ValueError):
    """A band the sampler cannot draw uniformly from (one line, naming the problem)."""


@dataclass(frozen=True)
class BandCounts:
    """The rounded-latency counting table of one LUT up to ``hi`` (see the module docstring)."""

    lat: np.ndarray  # (layers, candidates) exact latency (us)
    fixed_us: float
    base_us: float  # fastest latency: fixed + sum of each layer's cheapest candidate
    delta: float  # grid step (us)
    steps: np.ndarray  # (layers, candidates) rounded (latency - layer min) in grid steps
    counts: np.ndarray  # (layers + 1, buckets): counts[l, s] = prefixes of l layers with rounded sum s

    @classmethod
    def build(cls, lut: LatencyLUT, hi_us: float, delta: float) -> BandCounts:
        lat = np.asarray(lut.matrix, dtype=np.float64)
        base = float(lat.min(1).sum() + lut.fixed_us)
        if (hi_us - base) / delta > MAX_BUCKETS:
            delta = (hi_us - base) / MAX_BUCKETS
        steps = np.rint((lat - lat.min(1, keepdims=True)) / delta).astype(np.int64)
        size = int(math.ceil((hi_us - base) / delta)) + lat.shape[0] + 2
        counts = np.zeros((lat.shape[0] + 1, size))
        counts[0, 0] = 1.0
        for layer in range(lat.shape[0]):
            for w in steps[layer]:
                if w < size:
                    counts[layer + 1, w:] += counts[layer, :size - w]
        return cls(lat, float(lut.fixed_us), base, delta, steps, counts)

    def latency(self, idx: list[int]) -> float:
        return float(sum(self.lat[layer, i] for layer, i in enumerate(idx)) + self.fixed_us)

    def end_range(self, lo_us: float, hi_us: float) -> tuple[int, int]:
        """Rounded sums of every architecture whose exact latency is in [lo, hi] (a superset)."""
        slack = self.lat.shape[0] / 2
        first = max(0, math.ceil((lo_us - self.base_us) / self.delta - slack))
        last = min(self.counts.shape[1] - 1, math.floor((hi_us - self.base_us) / self.delta + slack))
        return first, last

    def propose(self, first: int, last: int, rng: np.random.Generator) -> list[int]:
        """An architecture drawn uniformly from those whose rounded sum is in [first, last]."""
        ends = self.counts[-1, first:last + 1]
        s = first + int(rng.choice(len(ends), p=ends / ends.sum()))
        idx = [0] * self.lat.shape[0]
        for layer in range(self.lat.shape[0] - 1, -1, -1):
            back = s - self.steps[layer]
            w = np.where(back >= 0, self.counts[layer, np.clip(back, 0, None)], 0.0)
            idx[layer] = int(rng.choice(len(w), p=w / w.sum()))
            s -= int(self.steps[layer, idx[layer]])
        return idx


def _check_band(lut: LatencyLUT, lo_us: float, hi_us: float, bins: int) -> None:
    lat = np.asarray(lut.matrix, dtype=np.float64)
    fast, slow = float(lat.min(1).sum() + lut.fixed_us), float(lat.max(1).sum() + lut.fixed_us)
    if not (math.isfinite(lo_us) and math.isfinite(hi_us) and lo_us < hi_us):
        raise BandError(f"the band must be finite with lo < hi, got [{lo_us}, {hi_us}] us")
    if lo_us < fast or hi_us > slow:
        raise BandError(f"the band [{lo_us:.1f}, {hi_us:.1f}] us reaches outside the table's latency range "
                        f"[{fast:.1f}, {slow:.1f}] us: no architecture lies there")
    if bins < 1:
        raise BandError(f"bins must be >= 1, got {bins}")


def _bin_edges(lo_us: float, hi_us: float, bins: int) -> np.ndarray:
    return np.linspace(lo_us, hi_us, bins + 1)


def _draw_in_bin(bc: BandCounts, edges: tuple[float, float, bool], rng, tries: int, taken: set[Arch]) -> Arch:
    """An architecture uniform among those of the bin ``edges`` (lo, hi, closed at hi) not in ``taken``."""
    b0, b1, closed = edges
    first, last = bc.end_range(b0, b1)
    for _ in range(tries):
        idx = bc.propose(first, last, rng)
        t = bc.latency(idx)
        if b0 <= t < b1 or (closed and t == b1):
            a = Arch.from_indices(idx)
            if a not in taken:
                return a
    raise BandError(f"no new architecture with latency in [{b0:.1f}, {b1:.1f}] us in {tries} proposals: too few "
                    "there for distinct uniform draws; narrow the band, use fewer bins or draw fewer")


def uniform_in_band(lut: LatencyLUT, lo_us: float, hi_us: float, k: int, seed: int = 0, *, bins: int = 20,
                    sub: int = 32, tries: int = 2000) -> list[Arch]:
    """``k`` distinct architectures, uniform in table latency within [lo, hi] (module docstring):
    each draw a uniformly chosen one of ``bins`` equal latency bins, then an architecture uniformly
    among those of that bin not drawn before (so the bins keep their equal shares even where a bin
    at the space's extreme holds few architectures). Deterministic in ``seed``."""
    _check_band(lut, lo_us, hi_us, bins)
    edges = _bin_edges(lo_us, hi_us, bins)
    bc = BandCounts.build(lut, hi_us, (hi_us - lo_us) / (bins * sub))
    for j in range(bins):
        first, last = bc.end_range(edges[j], edges[j + 1])
        if first > last or bc.counts[-1, first:last + 1].sum() == 0:
            raise BandError(f"no architecture of the table has latency in [{edges[j]:.1f}, {edges[j + 1]:.1f}] us "
                            f"(bin {j + 1} of {bins}): narrow the band or use fewer bins")
    rng = np.random.default_rng(seed)
    out: list[Arch] = []
    for _ in range(k):
        j = int(rng.integers(bins))
        out.append(_draw_in_bin(bc, (edges[j], edges[j + 1], j == bins - 1), rng, tries, set(out)))
    return out


__all__ = ["BandCounts", "BandError", "uniform_in_band"]
