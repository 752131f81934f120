"""Random FBNetV2 architectures uniform in cost within a band [lo, hi] (the v2 analogue of
:mod:`search.band`, the baseline of a found-vs-random comparison at equal cost). Exact by
construction; numpy inside the counting, the torch tables of :class:`search.v2_cost.CostTables`
are read once with ``.numpy()``.

The distribution is :mod:`search.band`'s: the band is cut into ``bins`` equal-width cost bins; a
draw picks a bin uniformly, then an architecture uniformly among all architectures of the space
whose cost lies in that bin. ``lo`` and ``hi`` are in the tables' unit *without* any
per-architecture offset (a latency table's fixed overhead, say): a caller holding a band in total
cost subtracts that offset first, as :func:`search.select_v2.most_likely_within_v2`'s caller does.

The cost of a v2 architecture (:func:`search.v2_cost.arch_cost`) is a chain::

    STEM[r, s] + sum_l T_l[r, w_{l-1}, b_l, w_l, e_l] + HEAD[r, w_L, h] + FC[h]

(``w_{-1}`` = the stem width s): a layer's cost depends on the width carried in from the layer
before. So the counting runs, per resolution r, over steps -- the stem (from one start state to the
stem width), each layer (from its input width to its output width through its (block, expansion)
choices), the head with the classifier (from the last width to the head width) -- with the state
(output width option, rounded cost so far). Every step's costs are rounded to a grid of ``delta``
(``bins * sub`` steps across the band) after subtracting the step's cheapest entry; the rounded sum
is within ``slack`` (the sum of each step's largest rounding error, <= delta / 2 each) of the exact
one. ``counts[t][j, q]`` is the number of chains of the first t steps ending in state j at rounded
sum q. Drawing an end (r, head width, q) in proportion to its count over the rounded sums a bin can
reach, then walking the steps back choosing each predecessor (input width, choice) in proportion to
its count, draws an architecture uniformly from those whose rounded sum lies in the bin widened by
``slack``, a superset of the bin; keeping a proposal only when its exact cost is in the bin
(rejection) leaves a uniform draw from the bin.

Skip layers: a skip has no expansion, so a layer's choices are every (block, expansion) of the
inverted residuals plus one per skip block; the choices map one-to-one to distinct
:class:`fbnet.arch_v2.LayerChoice` values and each architecture is counted once. The exact cost of
a proposal is the tables' entries summed in :func:`search.v2_cost.arch_cost`'s order (the same
float64 value; an accepted architecture is confirmed with ``arch_cost`` itself).

Memory is bounded: the grid step is coarsened so a resolution's programme has at most
:data:`MAX_BUCKETS` rounded sums and all of them together about :data:`MAX_CELLS` counts at most
(float64); a coarser grid only lowers the acceptance rate. Counts are float64 (fbnetv2-cifar holds
4e59 architectures, far below float64's range; relative error ~1e-15).

Refused with :class:`search.band.BandError` rather than bent: a band outside the tables' cost range
(:func:`search.v2_cost.cost_range`), a bin no architecture's rounded cost reaches, a bin where
``tries`` proposals find no architecture not drawn before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fbnet.arch_v2 import ArchV2, LayerChoice
from fbnet.space_v2 import SpaceV2
from search.band import BandError
from search.v2_cost import CostTables, arch_cost, cost_range

MAX_BUCKETS = 1 << 17  # rounded sums per resolution
MAX_CELLS = 1 << 23  # counts held over every resolution, step and state (64 MiB of float64)


@dataclass(frozen=True)
class _Step:
    """One step of a resolution's chain: exact ``cost`` [I, C, J] (from input state i through
    choice c to output state j), ``steps`` the rounded (cost - min) in grid steps, its ``low`` min
    and ``err`` its largest rounding error."""

    cost: np.ndarray
    steps: np.ndarray
    low: float
    err: float


def _choices(space: SpaceV2) -> list[tuple[int, int | None]]:
    """A layer's (block index, expansion index) choices; a skip block once, with no expansion."""
    out: list[tuple[int, int | None]] = []
    for block in dict.fromkeys(space.blocks):
        if block == "skip":
            out.append((space.blocks.index(block), None))
        else:
            out += [(space.blocks.index(block), space.expansions.index(x)) for x in dict.fromkeys(space.expansions)]
    return out


def _raw_steps(space: SpaceV2, tables: CostTables, r: int, choices) -> list[np.ndarray]:
    """The exact [I, C, J] cost of every step at resolution index ``r``."""
    stem = tables.stem[r].numpy()[None, None, :]
    out = [stem]
    for t in tables.layers:
        tr = t[r].numpy()  # [I, B, J, E]
        out.append(np.stack([tr[:, b, :, 0 if e is None else e] for b, e in choices], axis=1))
    head = tables.head[r].numpy() + tables.fc.numpy()[None, :]  # [I, H]
    out.append(head[:, None, :])
    return out


class BandCountsV2:
    """The rounded-cost counting programme of one space's tables up to ``hi`` (module docstring)."""

    def __init__(self, space: SpaceV2, tables: CostTables, hi: float, delta: float):
        if len(tables.layers) != space.num_layers:
            raise BandError(f"the tables have {len(tables.layers)} layers, {space.name} {space.num_layers}")
        self.space, self.tables = space, tables
        self.choices = _choices(space)
        self._np = (tables.stem.numpy(), [t.numpy() for t in tables.layers], tables.head.numpy(), tables.fc.numpy())
        raw = [_raw_steps(space, tables, r, self.choices) for r in range(len(space.resolutions))]
        lows = [sum(float(c.min()) for c in steps) for steps in raw]
        states = [sum(c.shape[2] for c in steps) + 1 for steps in raw]
        reach = [max(hi - low, 0.0) for low in lows]
        delta = max(delta, max(reach) / MAX_BUCKETS, sum(s * x for s, x in zip(states, reach, strict=True)) / MAX_CELLS)
        self.delta = delta
        self.steps: list[list[_Step] | None] = []
        self.base: list[float] = []
        self.slack: list[float] = []
        self.counts: list[list[np.ndarray] | None] = []
        for costs in raw:
            chain = []
            for c in costs:
                low = float(c.min())
                q = np.rint((c - low) / delta).astype(np.int64)
                chain.append(_Step(c, q, low, float(np.abs(q * delta - (c - low)).max())))
            base = sum(s.low for s in chain)
            slack = sum(s.err for s in chain) + 1e-9 * (abs(hi) + delta)  # + float fuzz
            self.base.append(base)
            self.slack.append(slack)
            if hi + slack < base:  # nothing at this resolution is cheap enough
                self.steps.append(None)
                self.counts.append(None)
                continue
            size = int(math.floor((hi - base + slack) / delta)) + 1
            self.steps.append(chain)
            self.counts.append(_count(chain, size))
        self._ends: dict[tuple[float, float], tuple[list, np.ndarray]] = {}

    def end_range(self, r: int, lo: float, hi: float) -> tuple[int, int]:
        """Rounded sums at resolution index ``r`` of every architecture whose cost is in [lo, hi] (a superset)."""
        size = self.counts[r][-1].shape[1]
        first = max(0, math.ceil((lo - self.base[r] - self.slack[r]) / self.delta))
        last = min(size - 1, math.floor((hi - self.base[r] + self.slack[r]) / self.delta))
        return first, last

    def ends(self, lo: float, hi: float) -> tuple[list[tuple[int, int, int]], np.ndarray]:
        """The ends (resolution, head state, first rounded sum) of the blocks a bin can reach, and
        their counts flattened (cached per bin)."""
        key = (lo, hi)
        if key not in self._ends:
            where, weights = [], []
            for r, counts in enumerate(self.counts):
                if counts is None:
                    continue
                first, last = self.end_range(r, lo, hi)
                if first > last:
                    continue
                block = counts[-1][:, first:last + 1]  # [H, n]
                where.append((r, first, block.shape[1]))
                weights.append(block.ravel())
            w = np.concatenate(weights) if weights else np.zeros(0)
            self._ends[key] = (where, w)
        return self._ends[key]

    def reachable(self, lo: float, hi: float) -> float:
        """How many architectures' rounded costs a bin [lo, hi] can reach (0: none can be in it)."""
        return float(self.ends(lo, hi)[1].sum())

    def propose(self, lo: float, hi: float, rng: np.random.Generator) -> tuple[int, list[tuple[int, int]]]:
        """An architecture drawn uniformly from those whose rounded cost a bin [lo, hi] can reach:
        (resolution index, per step (state, choice index)) -- the stem's state is its width, a
        layer's its output width, the head's the head width."""
        where, w = self.ends(lo, hi)
        pick = _choose(w, rng)
        for block in where:
            r, first, n = block
            size = self.counts[r][-1].shape[0] * n
            if pick < size:
                break
            pick -= size
        j, q = divmod(pick, n)
        q += first
        chain, counts = self.steps[r], self.counts[r]
        path: list[tuple[int, int]] = []
        for t in range(len(chain) - 1, -1, -1):
            back = q - chain[t].steps[:, :, j]  # [I, C]
            prev = counts[t]
            w = np.where(back >= 0, prev[np.arange(prev.shape[0])[:, None], np.clip(back, 0, None)], 0.0)
            i, c = divmod(_choose(w.ravel(), rng), w.shape[1])
            path.append((j, c))
            q, j = int(back[i, c]), i
        return r, path[::-1]

    def arch(self, r: int, path: list[tuple[int, int]]) -> ArchV2:
        sp = self.space
        layers = []
        for layer, (j, c) in enumerate(path[1:-1]):
            b, e = self.choices[c]
            layers.append(LayerChoice(sp.blocks[b], sp.layers[layer].widths[j], None if e is None else sp.expansions[e]))
        return ArchV2(sp.resolutions[r], sp.stem_widths.options[path[0][0]], tuple(layers), sp.head_widths[path[-1][0]])

    def cost(self, r: int, path: list[tuple[int, int]]) -> float:
        """The exact cost, summed in :func:`search.v2_cost.arch_cost`'s order (the same float)."""
        stem, layers, head, fc = self._np
        s = path[0][0]
        total = float(stem[r, s])
        i = s
        for t, (j, c) in zip(layers, path[1:-1], strict=True):
            b, e = self.choices[c]
            total = total + float(t[r, i, b, j, 0 if e is None else e])
            i = j
        h = path[-1][0]
        return total + float(head[r, i, h]) + float(fc[h])


def _count(chain: list[_Step], size: int) -> list[np.ndarray]:
    """``counts[t]`` [states after t steps, size] (module docstring); counts[0] is the one start state."""
    cur = np.zeros((1, size))
    cur[0, 0] = 1.0
    out = [cur]
    for step in chain:
        n_in, _, n_out = step.steps.shape
        new = np.zeros((n_out, size))
        for i in range(n_in):
            for j in range(n_out):
                ws, mult = np.unique(step.steps[i, :, j], return_counts=True)
                for w, m in zip(ws.tolist(), mult.tolist(), strict=True):
                    if w < size:
                        new[j, w:] += m * cur[i, :size - w]
        out.append(new)
        cur = new
    return out


def _choose(w: np.ndarray, rng: np.random.Generator) -> int:
    """An index drawn in proportion to the non-negative weights ``w`` (not all zero)."""
    cum = np.cumsum(w)
    return min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(w) - 1)


class BandSamplerV2:
    """Draws from the uniform-in-band distribution (module docstring) one architecture at a time;
    :func:`uniform_in_band_v2` draws distinct ones with it. The constructor refuses a band it
    cannot fill (:class:`search.band.BandError`)."""

    def __init__(self, space: SpaceV2, tables: CostTables, lo: float, hi: float, *, bins: int = 20, sub: int = 32):
        unit = f" {tables.unit}" if tables.unit else ""
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise BandError(f"the band must be finite with lo < hi, got [{lo}, {hi}]{unit}")
        if bins < 1 or sub < 1:
            raise BandError(f"bins and sub must be >= 1, got bins={bins} sub={sub}")
        cheap, dear = cost_range(tables)
        if lo < cheap or hi > dear:
            raise BandError(f"the band [{lo:.6g}, {hi:.6g}] reaches outside the tables' cost range "
                            f"[{cheap:.6g}, {dear:.6g}]{unit}: no architecture lies there")
        self.space, self.tables, self.bins = space, tables, bins
        self.edges = np.linspace(lo, hi, bins + 1)
        self.bc = BandCountsV2(space, tables, hi, (hi - lo) / (bins * sub))
        for j in range(bins):
            if self.bc.reachable(self.edges[j], self.edges[j + 1]) == 0:
                raise BandError(f"no architecture of {space.name} has a cost in [{self.edges[j]:.6g}, "
                                f"{self.edges[j + 1]:.6g}] (bin {j + 1} of {bins}): narrow the band or use fewer bins")
        self.proposals = 0  # proposals made, for the acceptance rate
        self.accepted = 0

    def draw_in_bin(self, j: int, rng: np.random.Generator, *, tries: int = 2000,
                    taken: set[ArchV2] | frozenset = frozenset()) -> ArchV2:
        """An architecture uniform among those whose cost is in bin ``j`` (closed at the band's top)
        and not in ``taken``."""
        b0, b1 = float(self.edges[j]), float(self.edges[j + 1])
        closed = j == self.bins - 1
        for _ in range(tries):
            self.proposals += 1
            r, path = self.bc.propose(b0, b1, rng)
            t = self.bc.cost(r, path)
            if b0 <= t < b1 or (closed and t == b1):
                a = self.bc.arch(r, path)
                if a not in taken:
                    self.accepted += 1
                    return a
        raise BandError(f"no new architecture with a cost in [{b0:.6g}, {b1:.6g}] in {tries} proposals: too few "
                        "there for distinct uniform draws; narrow the band, use fewer bins or draw fewer")

    def draw(self, rng: np.random.Generator, *, tries: int = 2000,
             taken: set[ArchV2] | frozenset = frozenset()) -> ArchV2:
        """One draw: a uniformly chosen bin, then an architecture uniform in it (not in ``taken``)."""
        return self.draw_in_bin(int(rng.integers(self.bins)), rng, tries=tries, taken=taken)


def uniform_in_band_v2(space: SpaceV2, tables: CostTables, band: tuple[float, float], k: int, seed: int = 0, *,
                       bins: int = 20, sub: int = 32, tries: int = 2000) -> list[ArchV2]:
    """``k`` distinct architectures of ``space``, uniform in cost (``tables``, e.g.
    ``cost_tables(space, price_for("flops", space))``) within [lo, hi] (module docstring): each draw a
    uniformly chosen one of ``bins`` equal cost bins, then an architecture uniformly among those of
    that bin not drawn before. ``lo``/``hi`` are in the tables' unit without any per-architecture
    offset (the caller subtracts it). Deterministic in ``seed``."""
    lo, hi = band
    sampler = BandSamplerV2(space, tables, lo, hi, bins=bins, sub=sub)
    rng = np.random.default_rng(seed)
    out: list[ArchV2] = []
    taken: set[ArchV2] = set()
    while len(out) < k:
        a = sampler.draw(rng, tries=tries, taken=taken)
        if not lo <= arch_cost(tables, space, a) <= hi:  # the exact sum above is arch_cost's; kept as a guard
            raise BandError(f"internal: {a} priced inside the band but arch_cost disagrees")
        out.append(a)
        taken.add(a)
    return out


__all__ = ["MAX_BUCKETS", "MAX_CELLS", "BandCountsV2", "BandError", "BandSamplerV2", "uniform_in_band_v2"]
