"""The search's typed settings (no torch): what a search, a child training and a dataset are, and
where the latency table comes from. Each model is declared once, here; the library takes it as is
and ``fbnet-search`` turns its fields into options (a field's description is its option's help,
``cli(panel=...)`` groups the rarely-used ones), a ``--config run.toml`` and ``--preset`` names.

Defaults are the measured setting for a CPU (``bench/README.md``, "Search quality"): the
paper's all-candidates Gumbel-softmax mix (its supernet learns; the cheaper single path's does not
in a short search) on a cheap proxy (width x0.25, 8 px) so that a 10-epoch search on 2000 images fits
in 10 CPU-minutes. The paper's setting (:data:`PAPER`, ``--preset paper``) is ``sampler="gumbel"``,
``weights="independent"``, ``proxy_width=1``, full resolution, 90 epochs with 10 warm-up, theta lr
0.01, batch 192 on ImageNet-100.

Schedule scaled to the run: tau goes from ``tau0`` = 5 at the first theta epoch (the first after the
warm-up) to ``tau_end`` = 0.087 at the last (geometric), so a 10-epoch run anneals as far as the
paper's 90 (5 e^(-0.045 epoch) with epoch = 90 gives 0.087). The warm-up, when not given, is the
paper's share: round(epochs / 9) epochs (10 of 90).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from fbnet.client import DEFAULT_CACHE_DIR, TOKEN_ENV
from fbnet.options import cli

TAU_END = 5.0 * math.exp(-0.045 * 90)  # 0.0872: where the paper's 90-epoch schedule ends
METHOD_PANEL = "Search method"
TUNING_PANEL = "Optimisers and schedule"
CHILD_PANEL = "Optimiser"


class TrainError(RuntimeError):
    """A resume or training problem (one-line message)."""


def _none_if_zero(v: Any) -> Any:
    """0 stands for "not set" where a file or a command line cannot say None (TOML has no null)."""
    return None if v == 0 and not isinstance(v, bool) else v


class SearchConfig(BaseModel):
    """The settings of one search; checked when built (a bad value is a pydantic ValidationError)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_ms: float | None = Field(
        None, gt=0, description="latency target: the result is the most likely architecture within "
        "+-5 % of it (else the paper's alpha/beta loss)")
    cost: Literal["latency", "flops", "params"] = Field(
        "latency", description="what the search prices: latency (the table), flops or params (v2 spaces)")
    target_mflops: float | None = Field(None, gt=0, description="v2 FLOPs target (--cost flops), millions of multiply-adds")
    target_mparams: float | None = Field(None, gt=0, description="v2 parameter target (--cost params), millions")
    epochs: int = Field(10, ge=1, description="total epochs, warm-up included")
    batch_size: int = Field(64, ge=1, description="batch per process (rank)", json_schema_extra=cli(short="-b"))
    alpha: float = Field(0.2, ge=0, description="theta loss CE * alpha * log(LAT)^beta")
    beta: float = Field(0.6, ge=0, description="latency exponent")
    seed: int = Field(0, description="random seed")

    warmup_epochs: int | None = Field(
        None, ge=0, description="weights-only epochs first (default epochs/9)",
        json_schema_extra=cli(panel=METHOD_PANEL))
    sampler: Literal["gumbel", "single"] = Field(
        "gumbel", description="gumbel: all 9 candidates mixed (paper); single: one sampled (GDAS)",
        json_schema_extra=cli(panel=METHOD_PANEL))
    paths: int = Field(1, ge=1, le=9, description="single: paths per weight step", json_schema_extra=cli(panel=METHOD_PANEL))
    weight_mix: Literal["expected", "sample"] = Field(
        "expected", description="gumbel: the weight step mixes softmax(theta) or a sample (paper)",
        json_schema_extra=cli(panel=METHOD_PANEL))
    weights: Literal["independent", "shared"] = Field(
        "independent", description="shared: a layer's candidates slice one set of weights (experimental)",
        json_schema_extra=cli(panel=METHOD_PANEL))
    anchor: bool = Field(False, description="also train the largest path (experimental)", json_schema_extra=cli(panel=METHOD_PANEL))
    sandwich: bool = Field(
        False, description="v2: each weight step also trains the widest path (max widths, expansion, "
        "resolution; the most likely blocks)", json_schema_extra=cli(panel=METHOD_PANEL))
    entropy_weight: float = Field(
        0.0, ge=0, description="v2: weight of theta's mean entropy in its loss, ramped from 0 at the first "
        "theta epoch to this at the last (forces low entropies; it does not make the supernet learn)",
        json_schema_extra=cli(panel=METHOD_PANEL))
    theta_mix: Literal["draw", "expected"] = Field(
        "draw", description="the theta step's supernet runs on its Gumbel draw (paper) or on softmax(theta), "
        "the mix the default weight step trains (DARTS-like: no sampling noise in theta's accuracy term)",
        json_schema_extra=cli(panel=METHOD_PANEL))
    cost_of: Literal["distribution", "draw"] = Field(
        "distribution", description="v2: the theta step's cost term prices the distribution softmax(theta) "
        "(its exact expected cost) or the step's Gumbel draw (paper; at a high tau the draw is near uniform "
        "whatever theta is, so a target is met by the draw while theta's own cost drifts off it)",
        json_schema_extra=cli(panel=METHOD_PANEL))
    proxy_width: float = Field(0.25, gt=0, le=1, description="supernet width multiplier (paper 1)", json_schema_extra=cli(panel=METHOD_PANEL))
    proxy_resolution: int | None = Field(8, ge=8, description="search resolution; 0 = the space's (paper); v2: "
                                         "the largest of the scaled resolution options",
                                         json_schema_extra=cli(panel=METHOD_PANEL))

    theta_batch_size: int | None = Field(16, ge=1, description="theta's batch; 0 = --batch-size", json_schema_extra=cli(panel=TUNING_PANEL))
    w_lr: float | None = Field(None, gt=0, description="weight SGD lr (default: v1 0.1 * batch / 192, v2 0.1)",
                               json_schema_extra=cli("--lr", panel=TUNING_PANEL))
    w_momentum: float = Field(0.9, ge=0, description="weight SGD momentum", json_schema_extra=cli(panel=TUNING_PANEL))
    w_weight_decay: float = Field(1e-4, ge=0, description="weight SGD weight decay",
                                  json_schema_extra=cli(panel=TUNING_PANEL))
    theta_lr: float | None = Field(None, gt=0, description="theta Adam lr (default: v1 0.3, v2 0.05; paper 0.01)",
                                   json_schema_extra=cli(panel=TUNING_PANEL))
    theta_weight_decay: float = Field(5e-4, ge=0, description="theta Adam weight decay",
                                      json_schema_extra=cli(panel=TUNING_PANEL))
    tau0: float = Field(5.0, gt=0, description="Gumbel tau at the first theta epoch",
                        json_schema_extra=cli(panel=TUNING_PANEL))
    tau_end: float = Field(TAU_END, gt=0, validate_default=True, description="Gumbel tau at the last epoch",
                           json_schema_extra=cli(panel=TUNING_PANEL))
    w_share: float = Field(0.8, gt=0, lt=1, description="share of images for the weights", json_schema_extra=cli(panel=TUNING_PANEL))
    target_weight: float = Field(2.0, ge=0, description="target: weight of the hinge",
                                 json_schema_extra=cli(panel=TUNING_PANEL))
    target_band: float = Field(0.02, ge=0, lt=1, description="target: hinge-free band",
                               json_schema_extra=cli(panel=TUNING_PANEL))
    select_band: float = Field(0.05, gt=0, lt=1, description="target: result band", json_schema_extra=cli(panel=TUNING_PANEL))

    _zero_is_none = field_validator("proxy_resolution", "theta_batch_size", mode="before")(_none_if_zero)

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup_before_the_end(cls, v: int | None, info: ValidationInfo) -> int | None:
        epochs = info.data.get("epochs")
        if v is not None and epochs is not None and v >= epochs:
            raise PydanticCustomError("warmup", "must be in 0..epochs-1 (theta is trained after the warm-up), "
                                      "got {v} with {epochs} epochs", {"v": v, "epochs": epochs})
        return v

    @field_validator("tau_end")
    @classmethod
    def _tau_falls(cls, v: float, info: ValidationInfo) -> float:
        tau0 = info.data.get("tau0")
        if tau0 is not None and v > tau0:
            raise PydanticCustomError("tau", "must be <= tau0 ({tau0}), got {v}", {"v": v, "tau0": tau0})
        return v

    @property
    def target_us(self) -> float | None:
        return None if self.target_ms is None else self.target_ms * 1000

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


PAPER: dict[str, Any] = dict(epochs=90, warmup_epochs=10, sampler="gumbel", weight_mix="sample",
                             weights="independent", anchor=False, sandwich=False, entropy_weight=0.0, cost_of="draw",
                             proxy_width=1.0, proxy_resolution=None,
                             theta_lr=0.01, theta_batch_size=None)
SEARCH_PRESETS: dict[str, dict[str, Any]] = {"paper": PAPER}  # name -> SearchConfig fields (``--preset``)


def search_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` texts as typed :class:`SearchConfig` fields, validated; ``none`` is None.

    Raises ValueError naming the bad pair (an unknown key, no ``=``, or a value the field refuses), so a
    command line can turn it into a one-line message.
    """
    fields = SearchConfig.model_fields
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}")
        out[key] = None if text == "none" else text  # pydantic converts the text to the field's type
    try:
        return SearchConfig(**out).model_dump(include=set(out))
    except ValidationError as e:
        first = e.errors()[0]
        raise ValueError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


class ChildConfig(BaseModel):
    """How an architecture is trained from scratch (SGD + cosine)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(10, ge=1, description="training epochs")
    batch_size: int = Field(64, ge=1, description="batch size", json_schema_extra=cli(short="-b"))
    lr: float | None = Field(None, gt=0, description="SGD lr (default 0.1 * batch / 192)")
    seed: int = Field(0, description="seeds the weights and the batches")
    momentum: float = Field(0.9, ge=0, description="SGD momentum", json_schema_extra=cli(panel=CHILD_PANEL))
    weight_decay: float = Field(1e-4, ge=0, description="SGD weight decay", json_schema_extra=cli(panel=CHILD_PANEL))


class DataConfig(BaseModel):
    """Which images (``search.data.load_dataset``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str = Field("fashion-mnist", description="fashion-mnist, digits or a folder")
    subset: int | None = Field(None, ge=1, description="use N training images")


class TableSource(BaseModel):
    """Where the latency table comes from: the space, and a service and a device or a saved table file
    (the arguments of ``fbnet.client.get_table`` but the selector, which is a
    ``fbnet.configuration.Selector``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    space: str = Field("fbnet-cifar", description="search space (see `spaces`)",
                       json_schema_extra=cli(short="-s"))
    server: str | None = Field(None, description="profiler service URL")
    device: str | None = Field(None, description="device on the server",
                               json_schema_extra=cli(short="-d"))
    table: Path | None = Field(None, description="a saved table (see `fetch`)")
    cache_dir: Path = Field(DEFAULT_CACHE_DIR, description="table cache")
    token: str | None = Field(None, description="reader token",
                              json_schema_extra=cli(envvar=TOKEN_ENV))


class Execution(BaseModel):
    """Where a run writes, what it shows, and whether it may use CUDA (not what it computes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out: Path = Field(Path("runs/search"), description="output folder",
                      json_schema_extra=cli(short="-o"))
    resume: bool = Field(False, description="continue from its checkpoint")
    cpu: bool = Field(False, description="never use CUDA")
    progress: bool = Field(True, description="show progress")
    tensorboard: bool = Field(True, description="write DIR/tb")


# The v2 search's learning rates when not given. With v1's (theta 0.3, weights 0.1 * 64 / 192) the
# masked supernet stayed at chance (training accuracy 0.11-0.16 after 6-10 epochs, search/trainer_v2.py
# and the v2-against-v1 row of bench/README.md); with these it reached 0.31-0.50.
V2_THETA_LR, V2_W_LR, V1_THETA_LR = 0.05, 0.1, 0.3


def scaled_lr(batch: int, base: float = 0.1, base_batch: int = 192) -> float:
    """Linear scaling rule: the reimplementations' SGD lr 0.1 belongs to a batch of 192."""
    return base * batch / base_batch


def tau_at(epoch: int, epochs: int, tau0: float = 5.0, tau_end: float = TAU_END) -> float:
    """tau0 at the first epoch, tau_end at the last, geometric in between."""
    if epochs <= 1:
        return tau0
    return tau0 * (tau_end / tau0) ** (epoch / (epochs - 1))


__all__ = ["PAPER", "SEARCH_PRESETS", "ChildConfig", "DataConfig", "Execution", "SearchConfig", "TAU_END",
           "TableSource", "TrainError", "V1_THETA_LR", "V2_THETA_LR", "V2_W_LR", "scaled_lr", "tau_at"]
