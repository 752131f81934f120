"""The search's settings and schedules (no torch).

Defaults are the measured setting for a CPU (``bench/README.md``, "Search quality"): the
paper's all-candidates Gumbel-softmax mix (its supernet learns; the cheaper single path's does not
in a short search) on a cheap proxy (width x0.25, 8 px) so that a 10-epoch search on 2000 images fits
in 10 CPU-minutes. The paper's setting is ``sampler="gumbel"``, ``weights="independent"``,
``proxy_width=1``, full resolution, 90 epochs with 10 warm-up, theta lr 0.01, batch 192 on
ImageNet-100 (``--paper`` on the command line).

Schedule scaled to the run: tau goes from ``tau0`` = 5 at the first theta epoch (the first after the
warm-up) to ``tau_end`` = 0.087 at the last (geometric), so a 10-epoch run anneals as far as the
paper's 90 (5 e^(-0.045 epoch) with epoch = 90 gives 0.087). The warm-up, when not given, is the
paper's share: round(epochs / 9) epochs (10 of 90).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TAU_END = 5.0 * math.exp(-0.045 * 90)  # 0.0872: where the paper's 90-epoch schedule ends


class TrainError(RuntimeError):
    """A configuration or resume problem (one-line message)."""


@dataclass
class SearchConfig:
    epochs: int = 10
    warmup_epochs: int | None = None  # None: round(epochs / 9), the paper's 10 of 90
    batch_size: int = 64
    theta_batch_size: int | None = 16  # None: batch_size. Small theta batches: more theta steps per epoch
    sampler: str = "gumbel"  # "gumbel": the paper's soft Gumbel-softmax over all 9 candidates (the supernet learns);
    #                          "single": hard Gumbel, straight-through, one candidate runs (GDAS; ~9x cheaper per
    #                          step, but its weights do not learn in a short search: bench/README.md)
    paths: int = 1  # single sampler: the weight step splits its batch into this many chunks, each with its own
    #                 path (per layer distinct candidates drawn from softmax(theta), search.supernet.ArchParams.paths)
    weight_mix: str = "expected"  # gumbel sampler, weight step: "expected" (softmax(theta), no noise: the supernet
    #                               is one function that changes only as theta does; it learns best, measured) or
    #                               "sample" (the paper: a Gumbel-softmax sample at tau, as theta's step)
    weights: str = "independent"  # "independent": 9 modules per layer (the paper); "shared": a layer's IR
    #                               candidates slice one set of weights (search.superkernels; experimental, see bench/README.md)
    anchor: bool = False  # each weight step also trains the largest candidate in every layer (the sandwich rule
    #                       of slimmable networks / BigNAS; stem, head and fc follow that path only). Experimental
    proxy_width: float = 0.25  # the supernet's width multiplier (1.0 = the target space's widths)
    proxy_resolution: int | None = 8  # input resolution of the search (None = the space's)
    alpha: float = 0.2
    beta: float = 0.6
    target_us: float | None = None  # latency target: replaces alpha/beta with the band hinge
    target_weight: float = 2.0  # lambda of the target term
    target_band: float = 0.02  # no latency pressure within +-2 % of the target
    select_band: float = 0.05  # with a target: the most likely architecture within +-5 % is the result
    w_lr: float | None = None  # None: 0.1 * global batch / 192 (the reimplementations' lr at batch 192)
    w_momentum: float = 0.9
    w_weight_decay: float = 1e-4
    theta_lr: float = 0.3
    theta_weight_decay: float = 5e-4
    tau0: float = 5.0
    tau_end: float = TAU_END
    w_share: float = 0.8
    seed: int = 0

    @property
    def warmup(self) -> int:
        return round(self.epochs / 9) if self.warmup_epochs is None else self.warmup_epochs

    def tau(self, epoch: int) -> float:
        """The Gumbel temperature of an epoch: tau0 at the first theta epoch, tau_end at the last. tau only
        matters where theta's samples are drawn, so the warm-up does not spend the anneal: a theta that first
        moves at a low tau ranks near one-hot paths of a supernet trained as a soft mix, which it cannot
        tell apart (measured: theta accuracy at chance after 5 of 10 warm-up epochs, bench/README.md,
        "Search quality"). Warm-up epochs report tau0."""
        return tau_at(max(0, epoch - self.warmup), self.epochs - self.warmup, self.tau0, self.tau_end)

    @property
    def single(self) -> bool:
        return self.sampler == "single"

    def validate(self) -> None:
        if self.epochs < 1:
            raise TrainError(f"epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.warmup < self.epochs:
            raise TrainError(f"warm-up epochs must be in 0..epochs-1 (theta is trained after the warm-up), "
                             f"got {self.warmup} with {self.epochs} epochs")
        if self.batch_size < 1:
            raise TrainError(f"batch size must be >= 1, got {self.batch_size}")
        if self.theta_batch_size is not None and self.theta_batch_size < 1:
            raise TrainError(f"theta batch size must be >= 1, got {self.theta_batch_size}")
        if self.sampler not in ("single", "gumbel"):
            raise TrainError(f"sampler must be 'single' or 'gumbel', got {self.sampler!r}")
        if not 1 <= self.paths <= 9:
            raise TrainError(f"paths must be in 1..9 (distinct candidates per layer), got {self.paths}")
        if self.weight_mix not in ("sample", "expected"):
            raise TrainError(f"weight_mix must be 'sample' or 'expected', got {self.weight_mix!r}")
        if self.weights not in ("shared", "independent"):
            raise TrainError(f"weights must be 'shared' or 'independent', got {self.weights!r}")
        if not 0 < self.proxy_width <= 1:
            raise TrainError(f"proxy width must be in (0, 1], got {self.proxy_width}")
        if self.proxy_resolution is not None and self.proxy_resolution < 8:
            raise TrainError(f"proxy resolution must be >= 8, got {self.proxy_resolution}")
        if self.alpha < 0 or self.beta < 0:
            raise TrainError(f"alpha and beta must be >= 0, got {self.alpha}, {self.beta}")
        if self.target_us is not None and not self.target_us > 0:
            raise TrainError(f"the latency target must be > 0, got {self.target_us} us")
        if self.w_lr is not None and not self.w_lr > 0:
            raise TrainError(f"the weight learning rate must be > 0, got {self.w_lr}")
        if not self.theta_lr > 0:
            raise TrainError(f"the theta learning rate must be > 0, got {self.theta_lr}")
        if not 0 < self.w_share < 1:
            raise TrainError(f"w_share must be in (0, 1), got {self.w_share}")
        if not 0 < self.tau_end <= self.tau0:
            raise TrainError(f"need 0 < tau_end <= tau0, got {self.tau_end}, {self.tau0}")


PAPER = dict(epochs=90, warmup_epochs=10, sampler="gumbel", weight_mix="sample", weights="independent", anchor=False, proxy_width=1.0,
             proxy_resolution=None, theta_lr=0.01, theta_batch_size=None)


def scaled_lr(batch: int, base: float = 0.1, base_batch: int = 192) -> float:
    """Linear scaling rule: the reimplementations' SGD lr 0.1 belongs to a batch of 192."""
    return base * batch / base_batch


def tau_at(epoch: int, epochs: int, tau0: float = 5.0, tau_end: float = TAU_END) -> float:
    """tau0 at the first epoch, tau_end at the last, geometric in between."""
    if epochs <= 1:
        return tau0
    return tau0 * (tau_end / tau0) ** (epoch / (epochs - 1))


__all__ = ["PAPER", "SearchConfig", "TAU_END", "TrainError", "scaled_lr", "tau_at"]
