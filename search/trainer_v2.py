"""The DMaskingNAS search over a v2 space (``fbnet-search run --space fbnetv2-cifar``): the masked
supernet (:mod:`search.masking`), its distributions (:class:`search.masking.V2ArchParams`) and a cost
(:mod:`search.v2_cost`: latency from a grid table, FLOPs or parameters), on v1's schedule
(:mod:`search.trainer`): per epoch the weights on ``w_share`` of the training images, then -- after
the warm-up -- the distributions on the rest; tau from ``tau0`` at the first theta epoch to
``tau_end`` at the last; checkpoint and resume. What each default below rests on was measured on the
CPU host; the runs are in ``docs/v2_search.md``.

**The weight step** trains the supernet on the **expected mix** softmax(theta) (``weight_mix``
expected, v1's default): every block type of a layer runs at max width, weighted by its probability,
with the widths and expansions masked by theirs, at the **proxy resolution** (``proxy_resolution``,
default 8 px: the resolution options scaled so that the largest is 8, 6/7/8 for fbnetv2-cifar; the
cost is always the space's own). A mix over 9 block types costs about 9 hard paths (10.0 s per step
at 32 px on one CPU thread), and the proxy resolution pays for it. ``weight_mix`` sample mixes a soft
Gumbel draw instead (the paper); ``--sampler single`` draws one **hard** path per step (about 9x
cheaper), which leaves a short search's supernet at chance: switching between block types with
independent weights gives downstream layers a different basis every step. With ``sandwich`` the same
step also trains the **widest path** (:meth:`search.masking.V2ArchParams.widest`: the largest
resolution, stem, widths, expansion and head, each layer's most likely block).

**The theta step** draws one **soft** Gumbel sample that drives the masks (``theta_mix`` draw, the
paper; ``theta_mix`` expected runs the supernet on softmax(theta), the mix the weights train on, with
no sampling noise): loss = CE + ``target_weight`` * max(0, |log(E[cost] / T)| - ``target_band``)
(v1's target hinge); without a target, v1's ``CE * alpha * log(cost)^beta``. E[cost] is the exact
expectation (bilinear in adjacent width weights, summed over resolutions) under softmax(theta) by
default (``cost_of`` distribution), under the draw's weights with ``cost_of`` draw (the paper;
``--preset paper``). Not the draw by default: at tau 5 a draw is near uniform whatever theta is, so
the hinge is met by the draws while theta's own cost drifts off the target (measured: to 43-68 % of
it), and once tau is low the draws are one-hot and pass no gradient back. ``entropy_weight`` adds that
weight times the distributions' mean entropy (:meth:`search.masking.V2ArchParams.mean_entropy`) to
the theta loss, ramped linearly from 0 at the first theta epoch to the full weight at the last; it
makes theta commit without the accuracy term choosing, so it is off by default (``--preset paper``
turns it and the sandwich off too).

On a CPU budget (10 epochs on 2,000 images) theta does not converge: the accuracy gradient between a
layer's options is too small to choose, even measured without noise (``theta_mix`` expected), and the
result is the selection's pick within the band.

**Proxy**: the supernet is built on the space with every width scaled by ``proxy_width`` (the v1
default 0.25; 1 = the paper's full size), so a CPU search fits in minutes; the width options keep
their count and order (an option index means the same width in the proxy and the space), and the
cost is always the space's own. The data is at the proxy resolution (the largest of the scaled
options; the space's largest with ``--proxy-resolution 0``), and the supernet searches the resolution
by subsampling it. The result is chosen as in v1: the most likely architecture whose
cost is within +-``select_band`` of the target (:func:`search.select_v2.most_likely_within_v2`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Subset, TensorDataset

from fbnet.arch_v2 import ArchV2
from fbnet.archfile import ArchFile, write_arch_file
from fbnet.space_v2 import SpaceV2, StageV2, WidthRange
from search.config import V2_THETA_LR, V2_W_LR, SearchConfig, TrainError
from search.data import Dataset
from search.dist import DistEnv, loader
from search.history import EpochLog, no_progress
from search.loss import fbnet_loss, target_loss
from search.masking import MaskedSupernet, MixWeights, V2ArchParams
from search.select_v2 import most_likely_within_v2
from search.signal import SplitHalf, cost_part_grad, flat_grad
from search.trainer import CHECKPOINT, RunOptions, make_optimizers, split_indices
from search.v2_cost import COSTS, CostTables, arch_cost, cost_range, expected_cost

KINDS = ("resolution", "stem", "blocks", "widths", "expansions", "head")


@dataclass(frozen=True)
class V2Cost:
    """What a v2 search prices: ``kind`` (latency|flops|params), the space's :class:`CostTables`,
    ``offset`` added once per architecture (a latency table's per-call overhead, us), and where the
    table came from (``device``, ``table_version``; None for FLOPs and params)."""

    kind: str
    tables: CostTables
    offset: float = 0.0
    device: str | None = None
    table_version: str | None = None

    @property
    def unit(self) -> str:
        return COSTS[self.kind]

    def range(self) -> tuple[float, float]:
        lo, hi = cost_range(self.tables)
        return lo + self.offset, hi + self.offset

    def of(self, space: SpaceV2, arch: ArchV2) -> float:
        return arch_cost(self.tables, space, arch) + self.offset


def target_field(cost: str, value: float) -> dict:
    """The SearchConfig target of ``value`` in the cost's unit (us, MFLOPs, M params): the inverse of
    :func:`target_of`."""
    return {"latency": {"target_ms": value / 1000}, "flops": {"target_mflops": value},
            "params": {"target_mparams": value}}[cost]


def target_of(cfg: SearchConfig) -> float | None:
    """The target in the cost's unit (us, MFLOPs, M params); one-line TrainError for a target of
    another cost."""
    given = {"latency": cfg.target_ms, "flops": cfg.target_mflops, "params": cfg.target_mparams}
    names = {"latency": "--target-ms", "flops": "--target-mflops", "params": "--target-mparams"}
    for kind, v in given.items():
        if v is not None and kind != cfg.cost:
            raise TrainError(f"{names[kind]} is a {kind} target but the search prices {cfg.cost} "
                             f"(use --cost {kind} or {names[cfg.cost]})")
    v = given[cfg.cost]
    return None if v is None else v * 1000 if cfg.cost == "latency" else v


def _scaled(r: WidthRange, f: float) -> WidthRange:
    lo, step = max(1, round(r.lo * f)), max(1, round(r.step * f))
    return WidthRange(lo, lo + step * (len(r.options) - 1), step)


def train_resolution(cfg: SearchConfig, space: SpaceV2) -> int:
    """The resolution the supernet trains at: ``proxy_resolution`` (capped at the space's largest), else
    the space's largest."""
    return min(cfg.proxy_resolution or max(space.resolutions), max(space.resolutions))


def proxy_space_v2(space: SpaceV2, width: float, resolution: int | None = None) -> SpaceV2:
    """``space`` with every width option scaled by ``width`` and, with ``resolution``, every resolution
    option scaled so that the largest is ``resolution`` (same number of options per choice, same order)."""
    name, changes = space.name, {}
    if width != 1:
        heads = tuple(max(1, round(h * width)) for h in space.head_widths)
        if len(set(heads)) != len(heads):
            raise TrainError(f"proxy width {width} merges the head widths {list(space.head_widths)}")
        changes.update(stem_widths=_scaled(space.stem_widths, width), head_widths=heads,
                       stages=tuple(StageV2(st.stride, tuple(_scaled(r, width) for r in st.widths)) for st in space.stages))
        name += f"-w{width:g}"
    top = max(space.resolutions)
    if resolution is not None and resolution != top:
        res = tuple(max(1, round(r * resolution / top)) for r in space.resolutions)
        if len(set(res)) != len(res):
            raise TrainError(f"proxy resolution {resolution} merges the resolutions {list(space.resolutions)} "
                             f"(into {list(res)}): use a larger --proxy-resolution or 0 (the space's)")
        changes["resolutions"] = res
        name += f"-r{resolution}"
    return dataclasses.replace(space, name=name, **changes) if changes else space


class V2Searcher:
    """One v2 search: ``V2Searcher(cfg, space, cost, data, out).run()`` writes out/arch.json,
    history.csv and checkpoint.pt (module docstring)."""

    def __init__(self, cfg: SearchConfig, space: SpaceV2, cost: V2Cost, data: Dataset, out: str | os.PathLike,
                 options: RunOptions | None = None):
        self.cfg, self.space, self.cost, self.data = cfg, space, cost, data
        self.options = options or RunOptions()
        self.env = self.options.env or DistEnv()
        if self.env.distributed:
            raise TrainError("a v2 search runs in one process (no torchrun yet)")
        self.target = target_of(cfg)
        self._check_inputs()
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._build()
        self.history: list[dict] = []
        self.start_epoch = 0
        self.theta_steps = 0
        self.signal = SplitHalf()  # this theta epoch's accuracy gradients (search.signal)

    def _check_inputs(self) -> None:
        res = train_resolution(self.cfg, self.space)
        if self.data.train_x.shape[-1] != res:
            raise TrainError(f"the data is {self.data.train_x.shape[-1]} px but this {self.space.name} search "
                             f"trains at {res} px (its largest resolution, or --proxy-resolution)")
        if self.cfg.single and self.cfg.paths > 1:
            raise TrainError("a v2 search draws one path per weight step (--paths 1)")
        if self.target is not None:
            lo, hi = self.cost.range()
            band = self.cfg.select_band
            if not lo * (1 + band) <= self.target <= hi * (1 - band):
                raise TrainError(f"target {self.target:.4g} {self.cost.unit} is outside what {self.space.name} "
                                 f"allows with a +-{100 * band:.0f} % band: {lo:.4g} to {hi:.4g} {self.cost.unit}")

    def _build(self) -> None:
        cfg, dev = self.cfg, self.env.device
        torch.manual_seed(cfg.seed)
        self.train_space = proxy_space_v2(self.space, cfg.proxy_width, train_resolution(cfg, self.space))
        self.net = MaskedSupernet(self.train_space).to(dev)
        self.arch = V2ArchParams(self.space).to(dev)
        self.tables = self.cost.tables.to(dev)
        w_idx, t_idx = split_indices(len(self.data.train_y), cfg.w_share, cfg.seed)
        full = TensorDataset(self.data.train_x, self.data.train_y)
        self.w_ds, self.t_ds = Subset(full, w_idx), Subset(full, t_idx)
        self.w_steps = math.ceil(len(self.w_ds) / cfg.batch_size)
        self.t_batch = cfg.theta_batch_size or cfg.batch_size
        self.w_opt, self.w_sched, self.t_opt = make_optimizers(cfg, self.net, self.arch, self.w_steps, (V2_W_LR, V2_THETA_LR))

    # ---- checkpoint / resume -------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT

    def fingerprint(self) -> dict:
        return {"config": self.cfg.model_dump(), "space": self.space.name, "space_version": self.space.version,
                "cost": self.cost.kind, "device": self.cost.device, "table_version": self.cost.table_version,
                "data": self.data.name, "n_train": int(len(self.data.train_y))}

    def save_checkpoint(self, epoch: int) -> None:
        state = {"epoch": epoch, "fingerprint": self.fingerprint(), "net": self.net.state_dict(),
                 "arch": self.arch.state_dict(), "w_opt": self.w_opt.state_dict(), "w_sched": self.w_sched.state_dict(),
                 "t_opt": self.t_opt.state_dict(), "history": self.history, "theta_steps": self.theta_steps}
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def resume(self) -> bool:
        """Load checkpoint.pt if there is one (refused if it was made with other settings)."""
        if not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.env.device, weights_only=False)
        fp = self.fingerprint()
        diff = {k: (state["fingerprint"].get(k), v) for k, v in fp.items() if state["fingerprint"].get(k) != v}
        if diff:
            raise TrainError(f"cannot resume {self.checkpoint_path}: it was made with different settings: "
                             + "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items()))
        for name in ("net", "arch", "w_opt", "w_sched", "t_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.history, self.theta_steps = state["history"], state["theta_steps"]
        self.start_epoch = state["epoch"] + 1
        return True

    # ---- steps ---------------------------------------------------------------------------------
    @torch.no_grad()
    def weight_mix(self, tau: float) -> MixWeights:
        """The weights of one weight step (no gradient to the distributions): the expected mix
        softmax(theta) (``weight_mix`` expected, the default), a soft Gumbel draw (``sample``, the paper),
        or one hard draw (``sampler`` single)."""
        if self.cfg.single:
            return self.arch.sample(tau, hard=True).detach()
        return (self.arch.probs() if self.cfg.weight_mix == "expected" else self.arch.sample(tau)).detach()

    def weight_step(self, x: torch.Tensor, y: torch.Tensor, tau: float) -> tuple[float, int, int]:
        """One SGD step of the weights on :meth:`weight_mix` (no gradient to the distributions), with
        ``sandwich`` also on the widest path: (the mix's ce, its correct count, the widest's)."""
        w = self.weight_mix(tau)
        self.w_opt.zero_grad(set_to_none=True)
        widest_ok = 0
        if self.cfg.sandwich:
            wide = self.net(x, self.arch.widest())
            F.cross_entropy(wide, y).backward()
            widest_ok = int((wide.argmax(1) == y).sum())
        logits = self.net(x, w)
        ce = F.cross_entropy(logits, y)
        ce.backward()
        self.w_opt.step()
        self.w_sched.step()
        return ce.item(), int((logits.argmax(1) == y).sum()), widest_ok

    def theta_step(self, x: torch.Tensor, y: torch.Tensor, tau: float, entropy_weight: float = 0.0
                   ) -> tuple[float, float, int]:
        """One Adam step of the distributions: the supernet on one soft draw (softmax(theta) under
        ``theta_mix`` expected), the cost of softmax(theta) (of the draw under ``cost_of`` draw), plus
        ``entropy_weight`` times their mean entropy: (loss, ce, correct)."""
        cfg = self.cfg
        probs = self.arch.probs()
        w = self.arch.sample(tau) if cfg.theta_mix == "draw" else probs
        logits = self.net(x, w)
        cost = expected_cost(self.tables, w if cfg.cost_of == "draw" else probs) + self.cost.offset
        loss, ce = self._theta_loss(logits, y, cost, entropy_weight)
        params = list(self.arch.parameters())
        g_cost = cost_part_grad(self._theta_loss(logits.detach(), y, cost, entropy_weight)[0], params)
        self.t_opt.zero_grad(set_to_none=True)
        self.net.zero_grad(set_to_none=True)
        loss.backward()
        self.signal.add(flat_grad(params) - g_cost)
        self.t_opt.step()
        self.net.zero_grad(set_to_none=True)
        self.theta_steps += 1
        return loss.item(), ce.item(), int((logits.argmax(1) == y).sum())

    def _theta_loss(self, logits: torch.Tensor, y: torch.Tensor, cost: torch.Tensor, entropy_weight: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if self.target is None:
            loss, ce = fbnet_loss(logits, y, cost, cfg.alpha, cfg.beta)
        else:
            loss, ce = target_loss(logits, y, cost, self.target, cfg.target_weight, cfg.target_band)
        if entropy_weight > 0:
            loss = loss + entropy_weight * self.arch.mean_entropy()
        return loss, ce

    def _theta_epoch(self, epoch: int, tau: float, tick) -> dict:
        dev, cfg = self.env.device, self.cfg
        t_loss = t_ce = t_correct = t_seen = 0.0
        n = cfg.epochs - cfg.warmup
        ent_w = cfg.entropy_weight * ((epoch - cfg.warmup) / (n - 1) if n > 1 else 1.0)
        self.signal = SplitHalf()
        for x, y in loader(self.t_ds, self.t_batch, self.env, cfg.seed + 1, epoch):
            x, y = x.to(dev), y.to(dev)
            loss, ce, ok = self.theta_step(x, y, tau, ent_w)
            t_loss, t_ce, t_correct, t_seen = t_loss + loss * len(y), t_ce + ce * len(y), t_correct + ok, t_seen + len(y)
            tick(f"epoch {epoch + 1}/{cfg.epochs} theta loss {loss:.3f}", 0)
        return {"theta_loss": t_loss / t_seen, "theta_ce": t_ce / t_seen, "theta_acc": t_correct / t_seen,
                "theta_signal": self.signal.cosine()}

    def train_epoch(self, epoch: int, tick=lambda info, advance: None) -> dict:
        cfg, dev = self.cfg, self.env.device
        torch.manual_seed(cfg.seed * 100_003 + epoch * 1_009)  # a resumed run draws what the whole one did
        tau, t0 = cfg.tau(epoch), time.perf_counter()
        self.net.train()
        ce_sum = correct = wide = seen = 0.0
        for x, y in loader(self.w_ds, cfg.batch_size, self.env, cfg.seed, epoch):
            x, y = x.to(dev), y.to(dev)
            ce, ok, ok_wide = self.weight_step(x, y, tau)
            ce_sum, correct, wide, seen = ce_sum + ce * len(y), correct + ok, wide + ok_wide, seen + len(y)
            tick(f"epoch {epoch + 1}/{cfg.epochs} weights ce {ce:.3f}", 0)
        row = {"epoch": epoch, "phase": "search" if epoch >= cfg.warmup else "warmup", "tau": tau,
               "lr": self.w_opt.param_groups[0]["lr"], "w_ce": ce_sum / seen, "w_acc": correct / seen,
               "w_acc_widest": wide / seen if cfg.sandwich else None}
        if epoch >= cfg.warmup:
            row.update(self._theta_epoch(epoch, tau, tick))
        else:
            row.update(theta_loss=None, theta_ce=None, theta_acc=None, theta_signal=None)
        with torch.no_grad():
            row["expected_cost"] = float(expected_cost(self.tables, self.arch.probs())) + self.cost.offset
        row["argmax_cost"] = self.cost.of(self.space, self.arch.argmax_arch(self.space))
        row.update({f"entropy_{k}": v for k, v in self.arch.entropies().items()})
        row["theta_steps"], row["time_s"] = self.theta_steps, time.perf_counter() - t0
        sig = "" if row["theta_signal"] is None else f", signal {row['theta_signal']:.2f}"
        tick(f"epoch {epoch + 1}/{cfg.epochs} tau {tau:.3f} E[{self.cost.kind}] {row['expected_cost']:.4g} "
             f"{self.cost.unit}, entropy max {max(self.arch.entropies().values()):.3f}{sig}", 1)
        return row

    # ---- the whole run ---------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> V2Result:
        cfg = self.cfg
        end = cfg.epochs if stop_after is None else min(cfg.epochs, self.start_epoch + stop_after)
        log = EpochLog(self.out, self.options.tensorboard)
        try:
            with self.options.progress(every=1) as prog:
                task = prog.add_task("search", total=end - self.start_epoch, info="")
                for epoch in range(self.start_epoch, end):
                    self.history.append(self.train_epoch(epoch, lambda i, a: prog.update(task, advance=a, info=i)))
                    log.write(self.history)
                    self.save_checkpoint(epoch)
        finally:
            log.close()
        return self.finish()

    def select(self) -> tuple[ArchV2, str]:
        """The result: the most likely architecture within the band (the argmax without a target)."""
        plain = self.arch.argmax_arch(self.space)
        if self.target is None:
            return plain, "argmax"
        band, off = self.cfg.select_band, self.cost.offset
        lo, hi = self.target * (1 - band), self.target * (1 + band)
        if lo <= self.cost.of(self.space, plain) <= hi:
            return plain, f"argmax (within +-{100 * band:g} % of the target)"
        best = most_likely_within_v2(self.space, self.cost.tables, self.arch.probs(), lo - off, hi - off)
        if best is None:
            raise TrainError(f"no architecture of {self.space.name} found within +-{100 * band:g} % of "
                             f"{self.target:.4g} {self.cost.unit}")
        return best, f"most likely within +-{100 * band:g} % of the target"

    def finish(self) -> V2Result:
        best, selection = self.select()
        plain = self.arch.argmax_arch(self.space)
        cost = self.cost.of(self.space, best)
        theta = {k: v.detach().cpu().double().tolist() for k, v in self.arch.state_dict().items()}
        ents = self.arch.entropies()
        write_arch_file(ArchFile(
            arch=best.to_text(), predicted_latency_us=cost if self.cost.kind == "latency" else None,
            space=self.space.name, space_version=self.space.version, device=self.cost.device,
            table_version=self.cost.table_version, table_configuration=self.options.table_configuration,
            theta_steps=self.theta_steps, target_ms=self.cfg.target_ms, selection=selection,
            argmax_arch=plain.to_text(), argmax_latency_us=self.cost.of(self.space, plain)
            if self.cost.kind == "latency" else None, history=self.history, data=self.data.name,
            config={**self.cfg.model_dump(), "search_space": self.train_space.name, "cost": self.cost.kind,
                    "cost_unit": self.cost.unit, "target": self.target, "cost_value": cost,
                    "argmax_cost": self.cost.of(self.space, plain), "entropies": ents, "v2_logits": theta},
            finished=len(self.history) == self.cfg.epochs), self.out)
        return V2Result(best, cost, self.cost.unit, selection, ents, self.history)


@dataclass
class V2Result:
    arch: ArchV2
    cost: float
    unit: str
    selection: str
    entropies: dict
    history: list[dict]


def run_search_v2(cfg: SearchConfig, space: SpaceV2, cost: V2Cost, data: Dataset, out: str | os.PathLike,
                  options: RunOptions | None = None, *, resume: bool = False) -> V2Result:
    """A v2 search; writes out/arch.json, history.csv, checkpoint.pt (``resume``: from the checkpoint)."""
    s = V2Searcher(cfg, space, cost, data, out, options or RunOptions(progress=no_progress))
    if resume and not s.resume():
        print(f"note: no checkpoint in {s.out}; starting from epoch 0")
    return s.run()


__all__ = ["KINDS", "V2Cost", "V2Result", "V2Searcher", "proxy_space_v2", "run_search_v2", "target_field", "target_of",
           "train_resolution"]
