"""How much of theta's movement is accuracy signal: the split-half cosine of its accuracy gradient.

A theta step follows the gradient of its loss, which has two parts: the **accuracy** part (the
cross-entropy through the supernet) and the **cost** part (the target hinge or the latency factor,
and the entropy term). The cost part is a smooth function of theta; the accuracy part is an average
over the step's images, whose mean is what the data say about the options and whose spread is noise.

Over one theta epoch, :class:`SplitHalf` sums the accuracy gradients of the even batches and of the
odd batches: two independent estimates of one direction. Their cosine (``theta_signal`` in
history.csv) is near 1 when the epoch's images agree on which options help, and near 0 -- within
about +-1/sqrt(number of theta entries), the cosine of two random directions -- when they do not:
then theta's accuracy steps are a random walk, and whatever it commits to comes from the cost term,
the entropy term or the walk, not from accuracy (negative: consecutive steps undo each other). The
runs in ``docs/search_signal.md`` say what raised it and what did not. The accuracy gradient is the loss's minus the
gradient of the same loss with the logits held fixed (:func:`cost_part_grad`): one extra backward
through the small cost graph, none through the supernet.

``fbnet-search run`` prints the median over the search epochs and warns below :data:`NOISY_BELOW`
(0.2: four fifths of each half's sum is noise). The runs behind it are in ``docs/search_signal.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median

import torch

NOISY_BELOW = 0.2


class SplitHalf:
    """Sums alternate gradients into two halves; :meth:`cosine` is the cosine of the two sums."""

    def __init__(self) -> None:
        self.halves: list[torch.Tensor | None] = [None, None]
        self.count = 0

    def add(self, grad: torch.Tensor) -> None:
        g = grad.detach().flatten().double()
        i = self.count % 2
        self.halves[i] = g.clone() if self.halves[i] is None else self.halves[i] + g
        self.count += 1

    def cosine(self) -> float | None:
        """None with fewer than two gradients or a zero half (no direction to compare)."""
        a, b = self.halves
        if a is None or b is None:
            return None
        norms = float(a.norm() * b.norm())
        return None if norms == 0 else float(a @ b) / norms


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params, strict=True)])


def flat_grad(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The parameters' ``.grad`` as one vector (zeros where there is none)."""
    return _flat([p.grad for p in params], params)


def cost_part_grad(cost_only: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """d ``cost_only`` / d ``params`` as one vector, where ``cost_only`` is the theta loss computed on
    detached logits (so only its cost and entropy terms reach theta). Keeps the graph, so the loss's
    own backward can follow."""
    if not cost_only.requires_grad:
        return torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    return _flat(torch.autograd.grad(cost_only, list(params), retain_graph=True, allow_unused=True), params)


def signal_summary(history: Sequence[dict]) -> float | None:
    """The median ``theta_signal`` over the search epochs of a history (None if none was recorded)."""
    vals = [h["theta_signal"] for h in history if h.get("theta_signal") is not None]
    return median(vals) if vals else None


def fmt_signal(value: float | None) -> str:
    """A ``theta_signal`` for a table or a line: two decimals, or ``n/a`` (no search epoch had two batches)."""
    return "n/a" if value is None else f"{value:.2f}"


def signal_line(history: Sequence[dict]) -> tuple[str, bool]:
    """The command line's summary of a search's ``theta_signal`` and whether it is a warning."""
    m = signal_summary(history)
    if m is None:
        return "", False
    n = sum(h.get("theta_signal") is not None for h in history)
    text = f"theta's accuracy signal (split-half cosine, median of {n} search epochs): {m:.2f}"
    if m >= NOISY_BELOW:
        return text, False
    return (text + " -- theta's accuracy steps were mostly noise: a low entropy means theta walked, and the "
            "architecture comes from the cost term and the selection more than from accuracy "
            "(docs/search_signal.md: what gives theta a signal)", True)


__all__ = ["NOISY_BELOW", "SplitHalf", "fmt_signal", "signal_line", "cost_part_grad", "flat_grad", "signal_summary"]
