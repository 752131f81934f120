"""FBNet's latency-aware loss (paper Eq. 2): L = CE * alpha * log(LAT)^beta, LAT in microseconds.

Written as ``(log LAT) ** beta`` -- not ``log(LAT ** beta)`` = beta * log LAT, the bug of the
most-forked reimplementation (FBNET.md section 4).

Two definitions this module makes on purpose:

* **LAT below e.** ``log(LAT) <= 0`` for LAT <= 1 us and a fractional power of a negative number
  is NaN; for 1 < LAT < e the factor would shrink CE. LAT is therefore clamped to at least
  ``LAT_FLOOR_US`` = e microseconds before the log, so the factor is always >= alpha. No real
  network comes near 3 us; the clamp only keeps degenerate tables (e.g. all-zero test tables)
  finite. Below the floor the latency gradient is zero.
* **alpha = 0.** The multiplicative form would make the whole loss zero (nothing is learned).
  alpha = 0 is defined as "no latency term": the loss is plain cross-entropy.

Note the multiplicative form's trade-off does not depend on alpha: d log L = d log CE + beta *
d log log LAT. alpha only scales the loss (and, with Adam on theta, barely matters); beta sets the
pressure towards low latency. alpha = 0 vs alpha > 0 is the meaningful switch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LAT_FLOOR_US = math.e


def expected_latency(m: torch.Tensor, lat: torch.Tensor, fixed_us: float | torch.Tensor = 0.0) -> torch.Tensor:
    """fixed + sum_l sum_i m[l, i] * lat[l, i]: differentiable in m (and so in theta)."""
    return (m * lat).sum() + fixed_us


def latency_factor(lat_us: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """alpha * (log max(LAT, e)) ** beta."""
    return alpha * torch.log(lat_us.clamp_min(LAT_FLOOR_US)) ** beta


def fbnet_loss(logits: torch.Tensor, target: torch.Tensor, lat_us: torch.Tensor, alpha: float = 0.2,
               beta: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, ce). ``lat_us`` is the expected latency of the sampled architecture in microseconds."""
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    ce = F.cross_entropy(logits, target)
    if alpha == 0:
        return ce, ce
    return ce * latency_factor(lat_us, alpha, beta), ce


def target_loss(logits: torch.Tensor, target: torch.Tensor, lat_us: torch.Tensor, target_us: float,
                weight: float = 2.0, band: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, ce) of the latency-target mode: ``CE + weight * max(0, |log(LAT / T)| - band)``.

    A two-sided hinge on the relative error: it pulls LAT to T from above and from below and is
    flat (only accuracy counts) within +-band; relative, so the weight means the same on a 200 us
    and on a 20 ms table."""
    ce = F.cross_entropy(logits, target)
    gap = torch.log(lat_us.clamp_min(1e-9) / target_us).abs()
    return ce + weight * torch.relu(gap - band), ce


__all__ = ["LAT_FLOOR_US", "expected_latency", "fbnet_loss", "latency_factor", "target_loss"]
