"""PNG figures of tables, device comparisons and validations, and their cache.

Every figure is its own ``matplotlib.figure.Figure`` rendered by the Agg canvas: no pyplot and no
global figure state, so worker threads may draw at the same time. No torch.
"""

from __future__ import annotations

import hashlib
import io
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from fbnet import wire
from fbnet.space import CANDIDATE_NAMES, NUM_LAYERS, Space


class PlotCache:
    """Rendered PNGs keyed by what they show (table versions, a content hash): a table that has not
    changed is drawn once, like its JSON bytes are assembled once."""

    def __init__(self, size: int = 128):
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()

    def peek(self, key: Hashable) -> bytes | None:
        """The cached figure of ``key``, or None (nothing drawn)."""
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def get(self, key: Hashable, draw: Callable[[], bytes]) -> bytes:
        if (hit := self.peek(key)) is not None:
            return hit
        png = draw()
        with self._lock:
            self._items[key] = png
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return png


def content_key(model: wire.BaseModel) -> str:
    return hashlib.sha256(model.model_dump_json().encode()).hexdigest()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def table_heatmap(table: wire.Table, space: Space) -> bytes:
    """Latency (ms) of every candidate block at every searchable layer, annotated; gaps are grey."""
    by_key = {e.key: e.latency_us for e in table.entries}
    grid = np.full((NUM_LAYERS, len(CANDIDATE_NAMES)), np.nan)
    for layer in range(NUM_LAYERS):
        for j, name in enumerate(CANDIDATE_NAMES):
            v = by_key.get(space.layer_op(layer, name).key)
            if v is not None:
                grid[layer, j] = v / 1000.0
    fig = Figure(figsize=(9, 12))
    ax = fig.subplots()
    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap)
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, "-" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                color="black" if math.isnan(v) or v > np.nanmax(grid) * 0.6 else "white")
    ax.set_xticks(range(len(CANDIDATE_NAMES)), CANDIDATE_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(NUM_LAYERS), [f"{i}" for i in range(NUM_LAYERS)])
    ax.set_ylabel("searchable layer")
    state = "complete" if table.complete else f"{len(table.missing)} missing"
    ax.set_title(f"{table.device} / {table.space}: latency (ms), {state}")
    fig.colorbar(im, ax=ax, label="ms")
    return _png(fig)


def ratio_plot(compare: wire.CompareOut) -> bytes:
    """Per-op latency ratio a / b (log scale), like the FBNet paper's iPhone X vs Samsung S8 figure."""
    pts = [(i, e.ratio, e.block) for i, e in enumerate(compare.entries) if e.ratio is not None]
    fig = Figure(figsize=(12, 4.5))
    ax = fig.subplots()
    blocks = sorted({b for _, _, b in pts})
    colors = {b: colormaps["tab20"](k % 20) for k, b in enumerate(blocks)}
    for b in blocks:
        xs = [i for i, _, bb in pts if bb == b]
        ys = [r for _, r, bb in pts if bb == b]
        ax.scatter(xs, ys, s=14, color=colors[b], label=b)
    ax.axhline(1.0, color="black", lw=0.8)
    if compare.geomean_ratio:
        ax.axhline(compare.geomean_ratio, color="red", ls="--", lw=0.8,
                   label=f"geomean {compare.geomean_ratio:.2f}")
    if pts:
        ax.set_yscale("log")
    ax.set_xlabel("op index in the space's op list")
    na, nb = compare.a, compare.b
    if compare.a == compare.b and compare.a_configuration and compare.b_configuration:
        na, nb = f"{na} [{compare.a_configuration.describe()}]", f"{nb} [{compare.b_configuration.describe()}]"
    ax.set_ylabel("latency a / b" if na != compare.a else f"latency {na} / {nb}")
    ax.set_title(f"{compare.space}: per-op latency ratio {na} vs {nb}", fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="upper left")
    return _png(fig)


def validation_plot(summary: wire.ValidationSummary) -> bytes:
    """Predicted vs measured whole-model latency (ms) with y = x and the ±10% band."""
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    meas = [v.measured_us / 1000 for v in summary.validations]
    pred = [v.predicted_us / 1000 for v in summary.validations]
    hi = max(meas + pred + [1.0]) * 1.1
    xs = np.linspace(0, hi, 50)
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="tab:green", alpha=0.15, label="±10%")
    ax.plot(xs, xs, color="black", lw=0.8, label="y = x")
    ax.scatter(meas, pred, s=18, color="tab:blue", zorder=3)
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("measured (ms)")
    ax.set_ylabel("predicted by the table (ms)")

    def f(x, fmt):
        return "n/a" if x is None else format(x, fmt)

    ax.set_title(f"{summary.device} / {summary.space}: n={summary.count}, MAPE {f(summary.mape, '.1f')}%, "
                 f"±10% {f(summary.within_10pct and 100 * summary.within_10pct, '.0f')}%, "
                 f"tau {f(summary.kendall_tau, '.2f')}", fontsize=9)
    ax.legend(loc="upper left")
    return _png(fig)


def width_plot(title: str, widths: list[int], fitted_us: list[float], points: list[tuple[int, float, str]],
               heldout: str) -> bytes:
    """Latency (us) against output width for one layer: the fitted model at every width as a staircase,
    the grid's measured entries as filled dots and its fitted entries as hollow ones."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    ax.step(widths, fitted_us, where="mid", color="tab:blue", lw=1.2, label="fitted model, every width")
    meas = [(w, v) for w, v, s in points if s == "measured"]
    fit = [(w, v) for w, v, s in points if s == "fitted"]
    if fit:
        ax.scatter(*zip(*fit, strict=True), s=40, facecolors="none", edgecolors="tab:orange", zorder=3,
                   label="grid entry, fitted")
    if meas:
        ax.scatter(*zip(*meas, strict=True), s=30, color="tab:red", zorder=4, label="grid entry, measured")
    ax.set_xlabel("output width (channels)")
    ax.set_ylabel("latency, corrected (us)")
    ax.set_title(f"{title}\nheld-out: {heldout}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _png(fig)
