"""DNAS training (FBNet schedule), child training, and the torchrun scale-out.

Per epoch: one pass over 80% of the training set updates the supernet weights (SGD, momentum 0.9,
cosine schedule, weight decay), then -- after the warm-up epochs -- one pass over the other 20%
updates theta (Adam, lr 0.01, weight decay 5e-4). tau = tau0 * exp(-0.045)^epoch, epoch counted
from the first (warm-up) epoch, so 90 epochs end at tau ~ 0.087 as in the reimplementations.

The weight step minimises cross-entropy. The paper's loss is CE times alpha * log(LAT)^beta, a
positive factor that does not depend on the weights; multiplying by it would only rescale the SGD
learning rate (by ~0.7 at the defaults, by alpha-fold for large alpha), coupling alpha to the
weight learning rate. The theta step uses the full loss of ``search.loss``.

Scale-out: under ``torchrun --nproc_per_node=N`` (WORLD_SIZE > 1) the weights are wrapped in
DistributedDataParallel, both splits go through DistributedSampler, and theta stays outside DDP:
its gradient is all-reduced (averaged) by hand before every Adam step, and theta is broadcast from
rank 0 after it, so all ranks hold bit-identical theta. Backend gloo on CPU, NCCL on CUDA (device
cuda:LOCAL_RANK). Only rank 0 writes logs, checkpoints and arch.json; every rank writes its final
theta to ``theta.rank<r>.json`` so the agreement can be checked.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

from fbnet.blocks import FBNet
from fbnet.lut import LatencyLUT, predict
from fbnet.space import Arch, Space
from search.data import Dataset
from search.loss import expected_latency, fbnet_loss
from search.sampling import argmax_arch
from search.supernet import ArchParams, Supernet

CHECKPOINT = "checkpoint.pt"


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
            raise TrainError(f"--epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise TrainError(f"--warmup-epochs must be in 0..epochs-1 (theta is trained after the warm-up), "
                             f"got {self.warmup_epochs} with --epochs {self.epochs}")
        if self.batch_size < 1:
            raise TrainError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.alpha < 0 or self.beta < 0:
            raise TrainError(f"--alpha and --beta must be >= 0, got {self.alpha}, {self.beta}")
        if self.w_lr is not None and not self.w_lr > 0:
            raise TrainError(f"--lr must be > 0, got {self.w_lr}")
        if not 0 < self.w_share < 1:
            raise TrainError(f"w_share must be in (0, 1), got {self.w_share}")


def scaled_lr(batch: int, base: float = 0.1, base_batch: int = 192) -> float:
    """Linear scaling rule: the reimplementations' SGD lr 0.1 belongs to a batch of 192."""
    return base * batch / base_batch


def tau_at(epoch: int, tau0: float = 5.0, decay: float = math.exp(-0.045)) -> float:
    return tau0 * decay**epoch


# ---- distributed ---------------------------------------------------------------------------------
@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(prefer_cuda: bool = True) -> DistEnv:
    """Read torchrun's environment; init the process group (nccl on GPU, gloo on CPU) if WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = prefer_cuda and torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistEnv(rank, world, local, device)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _all_sum(values: list[float], env: DistEnv) -> list[float]:
    if not env.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return t.tolist()


# ---- data ----------------------------------------------------------------------------------------
def split_indices(n: int, w_share: float, seed: int) -> tuple[list[int], list[int]]:
    """The 80/20 split (seeded, identical on every rank)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, min(n - 1, int(round(n * w_share))))
    return sorted(perm[:k]), sorted(perm[k:])


def _loader(ds, batch: int, env: DistEnv, seed: int, epoch: int, shuffle: bool = True) -> DataLoader:
    if env.distributed:
        sampler = DistributedSampler(ds, num_replicas=env.world, rank=env.rank, shuffle=shuffle, seed=seed)
        sampler.set_epoch(epoch)
        return DataLoader(ds, batch_size=batch, sampler=sampler)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(ds, batch_size=batch, shuffle=shuffle, generator=g)


# ---- logging -------------------------------------------------------------------------------------
class EpochLog:
    """history.csv + TensorBoard (rank 0 only)."""

    def __init__(self, out: Path, tensorboard: bool = True):
        self.csv_path = out / "history.csv"
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"))

    def write(self, history: list[dict]) -> None:
        keys = list(dict.fromkeys(k for h in history for k in h))
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(history)
        os.replace(tmp, self.csv_path)
        if self.tb is not None:
            row = history[-1]
            for k, v in row.items():
                if isinstance(v, int | float) and k != "epoch":
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not enabled:
        return nullcontext(None)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"), transient=False)


class _Bar:
    def __init__(self, progress, description: str, total: int):
        self.p = progress
        self.task = progress.add_task(description, total=total, info="") if progress else None

    def advance(self, info: str = "") -> None:
        if self.p is not None:
            self.p.update(self.task, advance=1, info=info)


# ---- the search ----------------------------------------------------------------------------------
@dataclass
class SearchResult:
    theta: torch.Tensor
    history: list[dict]
    arch: Arch
    predicted_latency_us: float


def _fingerprint(cfg: SearchConfig, space: Space, lut: LatencyLUT, data: Dataset, world: int) -> dict:
    return {"config": asdict(cfg), "space": space.name, "space_version": space.version,
            "device": lut.device, "table_version": lut.table_version, "data": data.name,
            "n_train": int(len(data.train_y)), "world_size": world}


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def run_search(cfg: SearchConfig, space: Space, lut: LatencyLUT, data: Dataset, out: str | os.PathLike, *,
               resume: bool = False, progress: bool = True, tensorboard: bool = True,
               env: DistEnv | None = None, stop_after: int | None = None) -> SearchResult:
    """Search; writes out/arch.json, history.csv, tb/, checkpoint.pt. Returns the result.

    ``stop_after``: train at most that many epochs in this call (time-sliced jobs); ``resume``
    continues from the checkpoint. arch.json says ``"finished": false`` until the last epoch.
    """
    cfg.validate()
    env = env or DistEnv()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = env.device

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    net = Supernet(space).to(dev)
    arch = ArchParams().to(dev)
    lat = torch.tensor(lut.matrix, dtype=torch.float32, device=dev)
    fixed = lut.fixed_us
    if env.distributed:
        # Every rank fetched its own copy; make sure they are the same table.
        ref = lat.clone()
        dist.broadcast(ref, 0)
        if not torch.equal(ref, lat):
            raise TrainError(f"rank {env.rank} holds a different latency table than rank 0")
    model: nn.Module = nn.parallel.DistributedDataParallel(
        net, device_ids=[dev.index] if dev.type == "cuda" else None) if env.distributed else net

    n_train = len(data.train_y)
    w_idx, t_idx = split_indices(n_train, cfg.w_share, cfg.seed)
    full = TensorDataset(data.train_x, data.train_y)
    w_ds, t_ds = Subset(full, w_idx), Subset(full, t_idx)
    steps_per_epoch = math.ceil(len(w_ds) / env.world / cfg.batch_size)

    w_lr = cfg.w_lr if cfg.w_lr is not None else scaled_lr(cfg.batch_size * env.world)
    w_opt = torch.optim.SGD(net.parameters(), lr=w_lr, momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay)
    w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=cfg.epochs * steps_per_epoch)
    t_opt = torch.optim.Adam(arch.parameters(), lr=cfg.theta_lr, weight_decay=cfg.theta_weight_decay)

    fp = _fingerprint(cfg, space, lut, data, env.world)
    history: list[dict] = []
    start = 0
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=dev, weights_only=False)
        diff = {k: (state["fingerprint"].get(k), v) for k, v in fp.items() if state["fingerprint"].get(k) != v}
        if diff:
            raise TrainError(f"cannot resume {ckpt_path}: it was made with different settings: "
                             + "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items()))
        net.load_state_dict(state["net"])
        arch.load_state_dict(state["arch"])
        w_opt.load_state_dict(state["w_opt"])
        w_sched.load_state_dict(state["w_sched"])
        t_opt.load_state_dict(state["t_opt"])
        history = state["history"]
        start = state["epoch"] + 1
    elif resume and env.main:
        print(f"note: no checkpoint in {out}; starting from epoch 0")

    log = EpochLog(out, tensorboard) if env.main else None
    try:
        with _progress(progress and env.main) as prog:
            end = cfg.epochs if stop_after is None else min(cfg.epochs, start + stop_after)
            for epoch in range(start, end):
                row = _epoch(epoch, cfg, env, model, net, arch, lat, fixed, w_ds, t_ds, w_opt, w_sched, t_opt, prog)
                history.append(row)
                if env.main:
                    log.write(history)
                    _save_checkpoint(ckpt_path, {
                        "epoch": epoch, "fingerprint": fp, "net": net.state_dict(), "arch": arch.state_dict(),
                        "w_opt": w_opt.state_dict(), "w_sched": w_sched.state_dict(),
                        "t_opt": t_opt.state_dict(), "history": history,
                    })
    finally:
        if log is not None:
            log.close()

    theta = arch.theta.detach().cpu()
    best = argmax_arch(theta)
    pred = predict(lut, best)["latency_us"]
    if env.distributed:
        (out / f"theta.rank{env.rank}.json").write_text(json.dumps(theta.double().tolist()))
    if env.main:
        doc = {
            "arch": list(best.blocks), "predicted_latency_us": pred, "space": space.name,
            "space_version": space.version, "device": lut.device, "table_version": lut.table_version,
            "theta": theta.double().tolist(), "history": history, "data": data.name, "world_size": env.world,
            "config": asdict(cfg), "finished": len(history) == cfg.epochs,
        }
        tmp = out / "arch.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, out / "arch.json")
    return SearchResult(theta, history, best, pred)


def _epoch(epoch, cfg, env, model, net, arch, lat, fixed, w_ds, t_ds, w_opt, w_sched, t_opt, prog) -> dict:
    dev = env.device
    # Gumbel noise: seeded per (epoch, rank) so a resumed run draws what the uninterrupted one did.
    torch.manual_seed(cfg.seed * 100_003 + epoch * 1_009 + env.rank)
    tau = tau_at(epoch, cfg.tau0, cfg.tau_decay)
    search_epoch = epoch >= cfg.warmup_epochs
    t0 = time.perf_counter()
    net.train()

    # 1. weights on the 80% (theta fixed: one Gumbel sample per batch, no gradient to theta)
    w_loader = _loader(w_ds, cfg.batch_size, env, cfg.seed, epoch)
    bar = _Bar(prog, f"epoch {epoch + 1}/{cfg.epochs} weights", len(w_loader))
    ce_sum = correct = seen = 0.0
    for x, y in w_loader:
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with torch.no_grad():
            m = arch.gumbel_weights(tau)
        logits = model(x, m)
        ce = F.cross_entropy(logits, y)
        w_opt.zero_grad(set_to_none=True)
        ce.backward()
        w_opt.step()
        w_sched.step()
        ce_sum += ce.item() * len(y)
        correct += float((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.advance(f"ce {ce.item():.3f}")
    ce_sum, correct, seen = _all_sum([ce_sum, correct, seen], env)
    row = {"epoch": epoch, "phase": "search" if search_epoch else "warmup", "tau": tau,
           "lr": w_opt.param_groups[0]["lr"], "w_ce": ce_sum / seen, "w_acc": correct / seen}

    # 2. theta on the 20%
    t_ce = t_correct = t_seen = t_loss = 0.0
    if search_epoch:
        t_loader = _loader(t_ds, cfg.batch_size, env, cfg.seed + 1, epoch)
        bar = _Bar(prog, f"epoch {epoch + 1}/{cfg.epochs} theta  ", len(t_loader))
        for x, y in t_loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            m = arch.gumbel_weights(tau)
            logits = net(x, m)  # the bare module: no weight-gradient all-reduce for a theta step
            loss, ce = fbnet_loss(logits, y, expected_latency(m, lat, fixed), cfg.alpha, cfg.beta)
            (g,) = torch.autograd.grad(loss, [arch.theta])
            if env.distributed:
                dist.all_reduce(g)
                g /= env.world
            arch.theta.grad = g
            t_opt.step()
            t_opt.zero_grad(set_to_none=True)
            if env.distributed:
                # all_reduce gives every rank the same sum; the broadcast makes identity certain.
                dist.broadcast(arch.theta.data, 0)
            t_loss += loss.item() * len(y)
            t_ce += ce.item() * len(y)
            t_correct += float((logits.argmax(1) == y).sum())
            t_seen += len(y)
            bar.advance(f"loss {loss.item():.3f}")
        t_loss, t_ce, t_correct, t_seen = _all_sum([t_loss, t_ce, t_correct, t_seen], env)
        row.update(theta_loss=t_loss / t_seen, theta_ce=t_ce / t_seen, theta_acc=t_correct / t_seen)
    else:
        row.update(theta_loss=None, theta_ce=None, theta_acc=None)  # warm-up: theta not trained (JSON null)

    with torch.no_grad():
        p = arch.probs()
        row["expected_latency_us"] = float(expected_latency(p, lat, fixed))
        row["argmax_latency_us"] = float(lat.gather(1, p.argmax(1, keepdim=True)).sum() + fixed)
    row["theta_entropy"] = arch.entropy()
    row["time_s"] = time.perf_counter() - t0
    return row


# ---- child training ------------------------------------------------------------------------------
@dataclass
class ChildConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None  # None: 0.1 * batch / 192
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256,
             device: torch.device | None = None) -> float:
    model.eval()
    device = device or torch.device("cpu")
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            correct += int((model(x[i:i + batch].to(device)).argmax(1).cpu() == y[i:i + batch]).sum())
    return correct / max(1, len(y))


def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch: int = 256, device: torch.device | None = None) -> None:
    """Recompute every BatchNorm's running statistics over ``x`` with the final weights.

    The running averages (momentum 0.1) lag the weights; after a short run they are stale enough
    that eval-mode accuracy drops to chance (measured: 0.15 vs 0.69 after 3 Fashion-MNIST epochs).
    Recomputing them with a cumulative average over the training set, as OFA and SPOS do for their
    subnets, removes the lag.
    """
    device = device or torch.device("cpu")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i:i + batch].to(device))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.eval()


def train_child(space: Space, arch: Arch, data: Dataset, cfg: ChildConfig, *, progress: bool = True,
                device: torch.device | None = None) -> tuple[FBNet, dict]:
    """Train FBNet(space, arch) from scratch (SGD + cosine); returns the model and its accuracies."""
    if cfg.epochs < 1:
        raise TrainError(f"--epochs must be >= 1, got {cfg.epochs}")
    device = device or torch.device("cpu")
    torch.manual_seed(cfg.seed)
    model = FBNet(space, arch).to(device)
    ds = TensorDataset(data.train_x, data.train_y)
    steps = math.ceil(len(ds) / cfg.batch_size)
    lr = cfg.lr if cfg.lr is not None else scaled_lr(cfg.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)
    history = []
    t0 = time.perf_counter()
    with _progress(progress) as prog:
        for epoch in range(cfg.epochs):
            model.train()
            loader = _loader(ds, cfg.batch_size, DistEnv(), cfg.seed, epoch)
            bar = _Bar(prog, f"child epoch {epoch + 1}/{cfg.epochs}", len(loader))
            ce_sum = correct = 0.0
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                logits = model(x)
                ce = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                ce.backward()
                opt.step()
                sched.step()
                ce_sum += ce.item() * len(y)
                correct += float((logits.argmax(1) == y).sum())
                bar.advance(f"ce {ce.item():.3f}")
            history.append({"epoch": epoch, "ce": ce_sum / len(ds), "train_acc": correct / len(ds)})
    recalibrate_bn(model, data.train_x, device=device)
    test_acc = evaluate(model, data.test_x, data.test_y, device=device)
    return model, {"arch": list(arch.blocks), "space": space.name, "data": data.name, "test_acc": test_acc,
                   "train_acc": history[-1]["train_acc"], "n_train": len(ds), "n_test": len(data.test_y),
                   "epochs": cfg.epochs, "wall_s": time.perf_counter() - t0, "history": history}


__all__ = ["ChildConfig", "DistEnv", "SearchConfig", "SearchResult", "TrainError", "cleanup_distributed",
           "evaluate", "recalibrate_bn", "run_search", "scaled_lr", "setup_distributed", "split_indices", "tau_at", "train_child"]
