"""The search's settings and schedules (no torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass


class TrainError(RuntimeError):
    """A configuration or resume problem (one-line message)."""


@dataclass
class SearchConfig:
    epochs: int = 90
    warmup_epochs: int = 10
    batch_size: int = 64
    alpha: float = 0.2
    beta: float = 0.6
    w_lr: float | None = None  # None: 0.1 * global batch / 192 (the reimplementations' lr at batch 192)
    w_momentum: float = 0.9
    w_weight_decay: float = 1e-4
    theta_lr: float = 0.01
    theta_weight_decay: float = 5e-4
    tau0: float = 5.0
    tau_decay: float = math.exp(-0.045)
    w_share: float = 0.8
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 1:
            raise TrainError(f"epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise TrainError(f"warm-up epochs must be in 0..epochs-1 (theta is trained after the warm-up), "
                             f"got {self.warmup_epochs} with {self.epochs} epochs")
        if self.batch_size < 1:
            raise TrainError(f"batch size must be >= 1, got {self.batch_size}")
        if self.alpha < 0 or self.beta < 0:
            raise TrainError(f"alpha and beta must be >= 0, got {self.alpha}, {self.beta}")
        if self.w_lr is not None and not self.w_lr > 0:
            raise TrainError(f"the weight learning rate must be > 0, got {self.w_lr}")
        if not 0 < self.w_share < 1:
            raise TrainError(f"w_share must be in (0, 1), got {self.w_share}")


def scaled_lr(batch: int, base: float = 0.1, base_batch: int = 192) -> float:
    """Linear scaling rule: the reimplementations' SGD lr 0.1 belongs to a batch of 192."""
    return base * batch / base_batch


def tau_at(epoch: int, tau0: float = 5.0, decay: float = math.exp(-0.045)) -> float:
    return tau0 * decay**epoch


__all__ = ["SearchConfig", "TrainError", "scaled_lr", "tau_at"]
