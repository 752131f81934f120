"""The DNAS search as one object: :class:`Searcher` owns the supernet, theta, the optimisers, the
latency table and checkpoint/resume. Distributed helpers live in ``search.dist``, the log in
``search.history``, child training in ``search.child``.

Per epoch: one pass over 80% of the training set updates the supernet weights (SGD, momentum 0.9,
cosine schedule, weight decay), then -- after the warm-up epochs -- one pass over the other 20%
updates theta (Adam, weight decay 5e-4). tau anneals from 5 at the first theta epoch to 0.087 at the
last, whatever the run's length and warm-up (``SearchConfig.tau``). The sampler is the paper's all-candidates Gumbel-softmax or the
single path (``search.supernet``); the supernet may be a narrower / lower-resolution proxy of the
space, but latency is always the target space's table.

The theta loss. Without a target, the paper's ``CE * alpha * log(LAT)^beta`` with LAT the latency of
the Gumbel sample m (``search.loss``). With a target T (``target_ms``): ``CE + lambda *
max(0, |log(E[LAT] / T)| - band)``, a two-sided hinge on the expected latency under softmax(theta)
(deterministic: it prices the distribution the result is drawn from, not one noisy sample): outside
+-band (2 %) it pulls the distribution to T from either side, inside only accuracy counts. The
result is then the most likely architecture under softmax(theta) whose table latency is within
+-``select_band`` (5 %) of T (``search.select.most_likely_within``, exact); ``argmax_arch`` in
arch.json is the plain per-layer argmax for comparison.

The weight step. By default (``sampler="gumbel"``) it trains the paper's all-candidates mix, whose
output is one consistent function of the weights: it learns (bench/README.md,
"Search quality"). Under the single path the path changes every step and the shared stem, head and fc fit
whichever path came last: the weights stay near chance in a short search, with or without k paths
per step (one per chunk of the batch). ``cfg.weights == "shared"`` ties a layer's candidates
(``search.superkernels``); ``cfg.anchor`` adds the largest candidate in every layer to each weight step
(gradients summed, the stem, head and fc updated from that path only). Both are experimental and off
by default. The theta step runs the sample only.

The weight step minimises cross-entropy. The paper's loss is CE times alpha * log(LAT)^beta, a
positive factor that does not depend on the weights; multiplying by it would only rescale the SGD
learning rate (by ~0.7 at the defaults, by alpha-fold for large alpha), coupling alpha to the
weight learning rate. The theta step uses the full loss of ``search.loss``.

Under torchrun only rank 0 writes logs, checkpoints and arch.json; every rank writes its final
theta to ``theta.rank<r>.json`` so the agreement can be checked (see ``search.dist``).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset, TensorDataset

from fbnet.archfile import ArchFile, write_arch_file
from fbnet.lut import LatencyLUT, predict
from fbnet.space import CANDIDATE_NAMES, CANDIDATES, Arch, Space
from search.config import V1_THETA_LR, SearchConfig, TrainError, scaled_lr
from search.data import Dataset
from search.dist import DistEnv, all_sum, average_grad, broadcast_, loader, same_on_all_ranks
from search.history import EpochLog, ProgressFactory, no_progress
from search.loss import expected_latency, fbnet_loss, target_loss
from search.sampling import argmax_arch
from search.select import latency_range, most_likely_within
from search.signal import SplitHalf, cost_part_grad
from search.supernet import ArchParams, Supernet, proxy_space

CHECKPOINT = "checkpoint.pt"
LARGEST = max(range(len(CANDIDATES)), key=lambda i: (CANDIDATES[i].expansion or 0, CANDIDATES[i].kernel or 0,
                                                      -(CANDIDATES[i].groups or 1)))  # k5_e6


@dataclass
class SearchResult:
    theta: torch.Tensor
    history: list[dict]
    arch: Arch
    predicted_latency_us: float


def search_resolution(cfg: SearchConfig, space: Space) -> int:
    """The input resolution the search trains at (load the data at this size)."""
    return cfg.proxy_resolution or space.resolution


def split_indices(n: int, w_share: float, seed: int) -> tuple[list[int], list[int]]:
    """The 80/20 split (seeded, identical on every rank)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, min(n - 1, int(round(n * w_share))))
    return sorted(perm[:k]), sorted(perm[k:])


@dataclass(frozen=True)
class RunOptions:
    """How a search runs, apart from what it computes: the torchrun environment (default: one
    process on the CPU), the progress factory (default: silent; the command passes
    ``fbnet.progress.progress``), TensorBoard logging, and the table's configuration to record in
    arch.json."""

    env: DistEnv | None = None
    progress: ProgressFactory = no_progress
    tensorboard: bool = True
    table_configuration: dict | None = None


def make_optimizers(cfg: SearchConfig, net, arch, w_steps: int, default_lrs: tuple[float, float]):
    """The weights' SGD with its cosine schedule over the run, and theta's Adam: the same for the v1 and
    the v2 search. ``default_lrs`` (weights, theta) are the caller's rates for those ``cfg`` leaves unset."""
    w_lr = cfg.w_lr if cfg.w_lr is not None else default_lrs[0]
    theta_lr = cfg.theta_lr if cfg.theta_lr is not None else default_lrs[1]
    w_opt = torch.optim.SGD(net.parameters(), lr=w_lr, momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay)
    w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=cfg.epochs * w_steps)
    t_opt = torch.optim.Adam(arch.parameters(), lr=theta_lr, weight_decay=cfg.theta_weight_decay)
    return w_opt, w_sched, t_opt


class Searcher:
    """One search: ``Searcher(cfg, space, lut, data, out).run()`` writes out/arch.json, history.csv,
    tb/ and checkpoint.pt and returns a :class:`SearchResult`."""

    def __init__(self, cfg: SearchConfig, space: Space, lut: LatencyLUT, data: Dataset, out: str | os.PathLike,
                 options: RunOptions | None = None):
        self.cfg, self.space, self.lut, self.data = cfg, space, lut, data
        self.options = options or RunOptions()
        self.env = self.options.env or DistEnv()
        self.train_space = proxy_space(space, cfg.proxy_width, search_resolution(cfg, space))
        self._check_inputs()
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._build_model()
        self._build_optimisers()
        self.history: list[dict] = []
        self.start_epoch = 0
        self.theta_steps = 0
        self.signal = SplitHalf()  # this theta epoch's accuracy gradients (search.signal)

    def _check_inputs(self) -> None:
        cfg, lut, data = self.cfg, self.lut, self.data
        if data.train_x.shape[-1] != self.train_space.resolution:
            raise TrainError(f"the data is {data.train_x.shape[-1]} px but the search trains at "
                             f"{self.train_space.resolution} px: load it at search_resolution(cfg, space)")
        if cfg.target_us is not None:
            lo, hi = latency_range(lut)
            if not lo * (1 + cfg.select_band) <= cfg.target_us <= hi * (1 - cfg.select_band):
                raise TrainError(f"target {cfg.target_us / 1000:.4g} ms is outside what {lut.device}'s table allows "
                                 f"with a +-{100 * cfg.select_band:.0f} % band: {lo / 1000:.4g} to {hi / 1000:.4g} ms")

    def _build_model(self) -> None:
        cfg, dev = self.cfg, self.env.device
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts them)
        self.net = Supernet(self.train_space, shared=cfg.weights == "shared").to(dev)
        self.arch = ArchParams().to(dev)
        self.lat = torch.tensor(self.lut.matrix, dtype=torch.float32, device=dev)
        # the anchor path of the sandwich rule: the largest candidate (most expansion, then kernel) everywhere
        self.fixed_params = [p for mod in (self.net.stem, self.net.head, self.net.fc) for p in mod.parameters()]
        self.largest = F.one_hot(torch.full((len(self.net.layers),), LARGEST), len(CANDIDATE_NAMES)).float().to(dev)
        self.fixed = self.lut.fixed_us
        if not same_on_all_ranks(self.lat, self.env):  # every rank fetched its own copy
            raise TrainError(f"rank {self.env.rank} holds a different latency table than rank 0")
        self.model: nn.Module = nn.parallel.DistributedDataParallel(
            self.net, device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=cfg.single) if self.env.distributed else self.net

    def _build_optimisers(self) -> None:
        cfg, data = self.cfg, self.data
        w_idx, t_idx = split_indices(len(data.train_y), cfg.w_share, cfg.seed)
        full = TensorDataset(data.train_x, data.train_y)
        self.w_ds, self.t_ds = Subset(full, w_idx), Subset(full, t_idx)
        self.w_steps = math.ceil(len(self.w_ds) / self.env.world / cfg.batch_size)
        self.t_batch = cfg.theta_batch_size or cfg.batch_size
        self.w_opt, self.w_sched, self.t_opt = make_optimizers(
            cfg, self.net, self.arch, self.w_steps, (scaled_lr(cfg.batch_size * self.env.world), V1_THETA_LR))

    # ---- checkpoint / resume -------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT

    def fingerprint(self) -> dict:
        return {"config": self.cfg.model_dump(), "space": self.space.name, "space_version": self.space.version,
                "device": self.lut.device, "table_version": self.lut.table_version, "data": self.data.name,
                "n_train": int(len(self.data.train_y)), "world_size": self.env.world}

    def save_checkpoint(self, epoch: int) -> None:
        state = {"epoch": epoch, "fingerprint": self.fingerprint(), "net": self.net.state_dict(),
                 "arch": self.arch.state_dict(), "w_opt": self.w_opt.state_dict(),
                 "w_sched": self.w_sched.state_dict(), "t_opt": self.t_opt.state_dict(), "history": self.history,
                 "theta_steps": self.theta_steps}
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def resume(self) -> bool:
        """Load checkpoint.pt if there is one (refused if it was made with other settings)."""
        path = self.checkpoint_path
        if not path.is_file():
            return False
        state = torch.load(path, map_location=self.env.device, weights_only=False)
        fp = self.fingerprint()
        diff = {k: (state["fingerprint"].get(k), v) for k, v in fp.items() if state["fingerprint"].get(k) != v}
        if diff:
            raise TrainError(f"cannot resume {path}: it was made with different settings: "
                             + "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items()))
        self.net.load_state_dict(state["net"])
        self.arch.load_state_dict(state["arch"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.w_sched.load_state_dict(state["w_sched"])
        self.t_opt.load_state_dict(state["t_opt"])
        self.history = state["history"]
        self.theta_steps = state.get("theta_steps", 0)
        self.start_epoch = state["epoch"] + 1
        return True

    # ---- steps ---------------------------------------------------------------------------------
    @torch.no_grad()
    def weight_sample(self, tau: float) -> torch.Tensor:
        """The mixing weights m of one weight step (no gradient to theta): a Gumbel-softmax sample at tau
        (hard under the single path; k paths [k, 22, 9] with ``cfg.paths`` > 1), or softmax(theta) itself
        with ``cfg.weight_mix == "expected"`` (all-candidates mix only)."""
        cfg = self.cfg
        if cfg.single:
            return self.arch.paths(cfg.paths) if cfg.paths > 1 else self.arch.gumbel_weights(tau, hard=True)
        return self.arch.probs() if cfg.weight_mix == "expected" else self.arch.gumbel_weights(tau)

    def weight_step(self, x: torch.Tensor, y: torch.Tensor, tau: float) -> tuple[float, int]:
        """One SGD step of the weights on one Gumbel sample (no gradient to theta): (ce, correct)."""
        m = self.weight_sample(tau)
        self.w_opt.zero_grad(set_to_none=True)
        logits = self.model(x, m, self.cfg.single)
        ce = F.cross_entropy(logits, y)
        ce.backward()
        if self.cfg.anchor:  # the largest path too, one step; stem, head and fc follow the largest path only
            for p in self.fixed_params:
                p.grad = None
            F.cross_entropy(self.model(x, self.largest, True), y).backward()
        self.w_opt.step()
        self.w_sched.step()
        return ce.item(), int((logits.argmax(1) == y).sum())

    def theta_step(self, x: torch.Tensor, y: torch.Tensor, tau: float) -> tuple[float, float, int]:
        """One Adam step of theta on the latency-aware loss: (loss, ce, correct)."""
        cfg = self.cfg
        if cfg.theta_mix == "expected":  # softmax(theta), the mix the weights train on: no sampling noise
            m, single = self.arch.probs(), False
        else:
            m, single = self.arch.gumbel_weights(tau, hard=cfg.single), cfg.single
        logits = self.net(x, m, single)  # the bare module: no weight-gradient all-reduce for a theta step
        if cfg.target_us is None:
            lat = expected_latency(m, self.lat, self.fixed)
            loss_of = partial(fbnet_loss, target=y, lat_us=lat, alpha=cfg.alpha, beta=cfg.beta)
        else:
            lat = expected_latency(self.arch.probs(), self.lat, self.fixed)
            loss_of = partial(target_loss, target=y, lat_us=lat, target_us=cfg.target_us, weight=cfg.target_weight,
                              band=cfg.target_band)
        loss, ce = loss_of(logits)
        g_cost = cost_part_grad(loss_of(logits.detach())[0], [self.arch.theta])
        (g,) = torch.autograd.grad(loss, [self.arch.theta])
        self.signal.add(g.flatten() - g_cost)
        self.arch.theta.grad = average_grad(g, self.env)
        self.t_opt.step()
        self.t_opt.zero_grad(set_to_none=True)
        broadcast_(self.arch.theta.data, self.env)  # all_reduce gave every rank the same; make it certain
        self.theta_steps += 1
        return loss.item(), ce.item(), int((logits.argmax(1) == y).sum())

    def train_epoch(self, epoch: int, tick=lambda info, advance: None) -> dict:
        cfg, env, dev = self.cfg, self.env, self.env.device
        # Gumbel noise: seeded per (epoch, rank) so a resumed run draws what the uninterrupted one did.
        torch.manual_seed(cfg.seed * 100_003 + epoch * 1_009 + env.rank)
        tau = cfg.tau(epoch)
        search_epoch = epoch >= cfg.warmup
        t0 = time.perf_counter()
        self.net.train()

        ce_sum = correct = seen = 0.0
        for x, y in loader(self.w_ds, cfg.batch_size, env, cfg.seed, epoch):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            ce, ok = self.weight_step(x, y, tau)
            ce_sum, correct, seen = ce_sum + ce * len(y), correct + ok, seen + len(y)
            tick(f"epoch {epoch + 1}/{cfg.epochs} weights ce {ce:.3f}", 0)
        ce_sum, correct, seen = all_sum([ce_sum, correct, seen], env)
        row = {"epoch": epoch, "phase": "search" if search_epoch else "warmup", "tau": tau,
               "lr": self.w_opt.param_groups[0]["lr"], "w_ce": ce_sum / seen, "w_acc": correct / seen}

        if search_epoch:
            t_loss = t_ce = t_correct = t_seen = 0.0
            self.signal = SplitHalf()
            for x, y in loader(self.t_ds, self.t_batch, env, cfg.seed + 1, epoch):
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                loss, ce, ok = self.theta_step(x, y, tau)
                t_loss, t_ce = t_loss + loss * len(y), t_ce + ce * len(y)
                t_correct, t_seen = t_correct + ok, t_seen + len(y)
                tick(f"epoch {epoch + 1}/{cfg.epochs} theta loss {loss:.3f}", 0)
            t_loss, t_ce, t_correct, t_seen = all_sum([t_loss, t_ce, t_correct, t_seen], env)
            row.update(theta_loss=t_loss / t_seen, theta_ce=t_ce / t_seen, theta_acc=t_correct / t_seen,
                       theta_signal=self.signal.cosine())
        else:  # warm-up: theta not trained (JSON null)
            row.update(theta_loss=None, theta_ce=None, theta_acc=None, theta_signal=None)

        with torch.no_grad():
            p = self.arch.probs()
            row["expected_latency_us"] = float(expected_latency(p, self.lat, self.fixed))
            row["argmax_latency_us"] = float(self.lat.gather(1, p.argmax(1, keepdim=True)).sum() + self.fixed)
        row["theta_entropy"] = self.arch.entropy()
        row["argmax_prob"] = self.arch.argmax_prob()
        row["theta_steps"] = self.theta_steps
        row["time_s"] = time.perf_counter() - t0
        sig = "" if row["theta_signal"] is None else f", signal {row['theta_signal']:.2f}"
        tick(f"epoch {epoch + 1}/{cfg.epochs} tau {tau:.3f} entropy {row['theta_entropy']:.3f} "
             f"E[lat] {row['expected_latency_us']:.0f} us, {self.theta_steps} theta steps{sig}", 1)
        return row

    # ---- the whole run ---------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> SearchResult:
        """Train up to the last epoch (or ``stop_after`` more epochs: time-sliced jobs); arch.json
        says ``"finished": false`` until the last epoch."""
        cfg, env = self.cfg, self.env
        end = cfg.epochs if stop_after is None else min(cfg.epochs, self.start_epoch + stop_after)
        log = EpochLog(self.out, self.options.tensorboard) if env.main else None
        try:
            # one step of the bar per epoch (one plain line per epoch without a terminal)
            with (self.options.progress if env.main else no_progress)(every=1) as prog:
                task = prog.add_task("search", total=end - self.start_epoch, info="")
                for epoch in range(self.start_epoch, end):
                    row = self.train_epoch(epoch, lambda info, adv: prog.update(task, advance=adv, info=info))
                    self.history.append(row)
                    if env.main:
                        log.write(self.history)
                        self.save_checkpoint(epoch)
        finally:
            if log is not None:
                log.close()
        return self.finish()

    def finish(self) -> SearchResult:
        cfg = self.cfg
        theta = self.arch.theta.detach().cpu()
        plain = argmax_arch(theta)
        best, selection = plain, "argmax"
        if cfg.target_us is not None:
            band = (cfg.target_us * (1 - cfg.select_band), cfg.target_us * (1 + cfg.select_band))
            best = most_likely_within(theta, self.lut, *band)
            if best is None:  # cannot happen for a target checked against the range; said, not hidden
                raise TrainError(f"no architecture of {self.lut.device}'s table within +-{100 * cfg.select_band:.0f} % "
                                 f"of {cfg.target_us:.0f} us")
            selection = f"most likely within +-{100 * cfg.select_band:g} % of the target"
        pred = predict(self.lut, best)["latency_us"]
        if self.env.distributed:
            (self.out / f"theta.rank{self.env.rank}.json").write_text(json.dumps(theta.double().tolist()))
        if self.env.main:
            write_arch_file(ArchFile(
                arch=list(best.blocks), predicted_latency_us=pred, space=self.space.name,
                space_version=self.space.version, device=self.lut.device, table_version=self.lut.table_version,
                table_configuration=self.options.table_configuration, theta=theta.double().tolist(),
                theta_entropy=self.arch.entropy(), argmax_prob=self.arch.argmax_prob(), theta_steps=self.theta_steps,
                target_ms=cfg.target_ms, selection=selection,
                argmax_arch=list(plain.blocks), argmax_latency_us=predict(self.lut, plain)["latency_us"],
                history=self.history, data=self.data.name, world_size=self.env.world,
                config={**cfg.model_dump(), "search_space": self.train_space.name},
                finished=len(self.history) == cfg.epochs), self.out)
        return SearchResult(theta, self.history, best, pred)


def run_search(cfg: SearchConfig, space: Space, lut: LatencyLUT, data: Dataset, out: str | os.PathLike,
               options: RunOptions | None = None, *, resume: bool = False, stop_after: int | None = None,
               ) -> SearchResult:
    """Search; writes out/arch.json, history.csv, tb/, checkpoint.pt. ``resume`` continues from the
    checkpoint (a note is printed when there is none)."""
    s = Searcher(cfg, space, lut, data, out, options)
    if resume and not s.resume() and s.env.main:
        print(f"note: no checkpoint in {s.out}; starting from epoch 0")
    return s.run(stop_after=stop_after)


__all__ = ["CHECKPOINT", "RunOptions", "SearchConfig", "SearchResult", "Searcher", "TrainError", "run_search", "search_resolution",
           "split_indices"]
