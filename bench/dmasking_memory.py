"""Memory and time of one supernet training step against the number of width options per layer:
DMaskingNAS's masked max-width block (search.masking) vs one explicit candidate per width (the
DARTS/FBNet way), and the max-width fixed network as the reference.

The supernet is a small v2 space (``bench_space``): a 3x3 h-swish stem, ``--layers`` searchable
``ir_k3`` layers at one expansion (the second half at stride 2 on its first layer), the ir_pool head
and the classifier; each layer has ``n`` output widths ``W - (n-1) s, ..., W`` with ``s = W / 16``.
A step is the search's weight step: one Gumbel draw (no gradient to the logits), forward, cross
entropy, backward, SGD with momentum.

* masked: :class:`search.masking.MaskedSupernet`, one max-width module per layer, widths as masks.
* explicit: per layer one :class:`fbnet.blocks.IRFBlockV2` per width option (input: the previous
  layer's max width), outputs zero-padded to the widest and summed with the Gumbel weights.
* fixed: :class:`fbnet.blocks.FBNetV2Net` of the architecture with every width at its maximum.

**Memory, how.** Each (mode, n) runs in a fresh Python process (``--point``) with one torch thread
and ``MALLOC_MMAP_THRESHOLD_=65536``, so every tensor above 64 KiB is its own mmap and goes back
to the kernel when freed (glibc would otherwise keep freed heap pages resident and hide a second
step's peak). After two warm-up steps (gradients and momentum buffers exist), the process writes
``5`` to ``/proc/self/clear_refs``, which resets the kernel's peak resident set (VmHWM) to the
current RSS, runs one step and reads VmHWM back. ``step_mb`` = VmHWM - VmRSS before the step: what
the step itself adds (activations kept for backward, gradients, temporaries); ``peak_mb`` = VmHWM,
the whole process (interpreter, torch, weights, optimiser state) at the step's peak. tracemalloc
does not see torch's allocations, hence the kernel's figures.

**Time, how.** In another fresh process (one torch thread, the default allocator), after a warm-up
step each, ``--repeats`` steps of the mode alternate with steps of the fixed network on the same
batch (AB BA AB ..., so the load of the shared machine and the order hit both alike). Each step's wall time and CPU
time (``time.process_time``: one thread, so it leaves out the time other processes hold the cores)
are recorded; the ratio ``time_vs_fixed`` is of the CPU-time medians, ``wall_vs_fixed`` of the wall
medians.

    .venv/bin/python bench/dmasking_memory.py [--options 1,2,4,8,16] [--layers 4] [--width 32] [--res 16]
        [--batch 32] [--repeats 15]

Prints a table; writes bench/out/dmasking_memory.json and .png (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))
from fbnet.arch_v2 import ArchV2, LayerChoice  # noqa: E402
from fbnet.blocks import ConvBNAct, FBNetV2Net, IRFBlockV2, IRPoolHead, init_weights  # noqa: E402
from fbnet.ops_v2 import mid_width  # noqa: E402
from fbnet.space_v2 import SpaceV2, StageV2, WidthRange  # noqa: E402
from search.masking import MaskedSupernet, V2ArchParams  # noqa: E402

GOAL_MEMORY, GOAL_TIME = 1.25, 1.3


def bench_space(n: int, a: argparse.Namespace) -> SpaceV2:
    step = max(1, a.width // 16)
    wr = WidthRange(a.width - step * (n - 1), a.width, step)
    half = a.layers // 2
    return SpaceV2(name=f"bench-w{n}", resolutions=(a.res,), stem_stride=1, stem_widths=WidthRange(a.width, a.width, 8),
                   stages=(StageV2(1, (wr,) * half), StageV2(2, (wr,) * (a.layers - half))),
                   head_widths=(4 * a.width,), expansions=(float(a.expansion),), num_classes=10, blocks=("ir_k3",))


def max_arch(space: SpaceV2) -> ArchV2:
    e = space.expansions[0]
    return ArchV2(space.resolutions[0], space.stem_widths.hi,
                  tuple(LayerChoice("ir_k3", max(ls.widths), e) for ls in space.layers), space.head_widths[0])


class ExplicitSupernet(nn.Module):
    """One explicit ir_k3 candidate per width option and layer: y = sum_j g_j pad(b_j(x))."""

    def __init__(self, space: SpaceV2):
        super().__init__()
        res, e = space.resolutions[0], space.expansions[0]
        hw = space.layer_hw(res)
        self.stem = ConvBNAct(space.in_channels, space.stem_widths.hi, 1, 3, act="hswish")
        self.layers = nn.ModuleList()
        cin = space.stem_widths.hi
        for i, ls in enumerate(space.layers):
            self.layers.append(nn.ModuleList(
                IRFBlockV2(cin, c, ls.stride, mid=mid_width(cin, e), kernel=3, se=False, act="relu", hw=hw[i])
                for c in ls.widths))
            cin = max(ls.widths)
        self.head = IRPoolHead(cin, space.head_widths[0], mid=mid_width(cin, space.head_expansion), hw=hw[-1],
                               act="hswish")
        self.fc = nn.Linear(space.head_widths[0], space.num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor, w) -> torch.Tensor:
        x = self.stem(x)
        for cands, g in zip(self.layers, w.widths, strict=True):
            c = max(b.pwl[0].out_channels for b in cands)
            x = sum(g[j] * F.pad(b(x), (0, 0, 0, 0, 0, c - b.pwl[0].out_channels)) for j, b in enumerate(cands))
        return self.fc(self.head(x))


def make_step(mode: str, n: int, a: argparse.Namespace):
    """A closure running one weight step of ``mode`` with ``n`` width options, and its parameter count."""
    space = bench_space(n, a)
    if mode == "fixed":
        net, arch = FBNetV2Net(space, max_arch(space)), None
    else:
        net, arch = (MaskedSupernet if mode == "masked" else ExplicitSupernet)(space), V2ArchParams(space)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, a.res, a.res, generator=g)
    y = torch.randint(0, 10, (a.batch,), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        if arch is None:
            logits = net(x)
        else:
            with torch.no_grad():
                w = arch.sample(tau=1.0)
            logits = net(x, w)
        F.cross_entropy(logits, y).backward()
        opt.step()

    return step, sum(p.numel() for p in net.parameters())


def vm_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_memory(mode: str, n: int, a: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    step, params = make_step(mode, n, a)
    step()
    step()
    gc.collect()
    before = vm_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    step()
    peak = vm_mb("VmHWM")
    return {"params": params, "rss_before_mb": before, "peak_mb": peak, "step_mb": peak - before}


def measure_time(mode: str, n: int, a: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    step, _ = make_step(mode, n, a)
    fixed, _ = make_step("fixed", n, a)
    step()
    fixed()
    wall: dict[str, list[float]] = {"step": [], "fixed": []}
    cpu: dict[str, list[float]] = {"step": [], "fixed": []}
    pair = (("step", step), ("fixed", fixed))
    for i in range(a.repeats):
        for name, fn in pair if i % 2 == 0 else pair[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(1000 * (time.perf_counter() - t0))
            cpu[name].append(1000 * (time.process_time() - c0))
    med = {f"{k}_{kind}_ms": statistics.median(v[k]) for kind, v in (("wall", wall), ("cpu", cpu)) for k in v}
    return {**med, "time_vs_fixed": med["step_cpu_ms"] / med["fixed_cpu_ms"],
            "wall_vs_fixed": med["step_wall_ms"] / med["fixed_wall_ms"], "wall_ms": wall, "cpu_ms": cpu}


def run_point(mode: str, n: int, a: argparse.Namespace) -> dict:
    """Memory in one fresh process (mmap threshold set), time in another (the default allocator: the
    mmap threshold makes every large allocation a page-faulting syscall, which would inflate times)."""
    row = {"mode": mode, "options": n}
    for what, extra in (("memory", {"MALLOC_MMAP_THRESHOLD_": "65536"}), ("time", {})):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}
        cmd = [sys.executable, __file__, "--point", f"{what}:{mode}:{n}", *forwarded(a)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"point {what}:{mode}:{n} failed: {out.stderr.strip().splitlines()[-1:]}")
        row.update(json.loads(out.stdout.strip().splitlines()[-1]))
    return row


def forwarded(a: argparse.Namespace) -> list[str]:
    return [f"--layers={a.layers}", f"--width={a.width}", f"--expansion={a.expansion}", f"--res={a.res}",
            f"--batch={a.batch}", f"--repeats={a.repeats}"]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (m_ax, t_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, style, color in (("masked", "o-", "C0"), ("explicit", "s--", "C3")):
        rs = [r for r in rows if r["mode"] == mode]
        xs = [r["options"] for r in rs]
        m_ax.plot(xs, [r["step_mb"] for r in rs], style, color=color, label=f"{mode}: step")
        m_ax.plot(xs, [r["peak_mb"] for r in rs], style, color=color, alpha=0.35, label=f"{mode}: process peak")
        t_ax.plot(xs, [r["time_vs_fixed"] for r in rs], style, color=color, label=f"{mode} (CPU time)")
        t_ax.plot(xs, [r["wall_vs_fixed"] for r in rs], style, color=color, alpha=0.35, label=f"{mode} (wall)")
    t_ax.axhline(GOAL_TIME, color="grey", ls=":", label=f"goal {GOAL_TIME}x (masked, 8 options)")
    for ax, label in ((m_ax, "peak memory of one step (MB)"), (t_ax, "step time / max-width fixed net")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width options per layer")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    t_ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(rows: list[dict]) -> dict:
    print(f"{'mode':9} {'options':>7} {'params':>7} {'step MB':>8} {'peak MB':>8} {'cpu ms':>7} {'fixed':>7} "
          f"{'x fixed':>7} {'wall ms':>7} {'fixed':>7} {'x fixed':>7}")
    for r in rows:
        print(f"{r['mode']:9} {r['options']:7d} {r['params']:7d} {r['step_mb']:8.1f} {r['peak_mb']:8.1f} "
              f"{r['step_cpu_ms']:7.1f} {r['fixed_cpu_ms']:7.1f} {r['time_vs_fixed']:7.2f} "
              f"{r['step_wall_ms']:7.1f} {r['fixed_wall_ms']:7.1f} {r['wall_vs_fixed']:7.2f}")
    masked = {r["options"]: r for r in rows if r["mode"] == "masked"}
    lo, hi = min(masked), max(masked)
    goals = {"masked_step_mb_growth": masked[hi]["step_mb"] / masked[lo]["step_mb"],
             "masked_peak_mb_growth": masked[hi]["peak_mb"] / masked[lo]["peak_mb"],
             "from_to_options": [lo, hi], "goal_memory": GOAL_MEMORY}
    if 8 in masked:
        goals.update(masked8_cpu_vs_fixed=masked[8]["time_vs_fixed"], masked8_wall_vs_fixed=masked[8]["wall_vs_fixed"],
                     goal_time=GOAL_TIME)
    print(json.dumps(goals))
    return goals


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--options", default="1,2,4,8,16", help="width options per layer, comma-separated")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=32, help="the widest option W (the step is W / 16)")
    p.add_argument("--expansion", type=float, default=4.0)
    p.add_argument("--res", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--point", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.point:
        torch.set_num_threads(1)
        what, mode, n = a.point.split(":")
        print(json.dumps((measure_memory if what == "memory" else measure_time)(mode, int(n), a)))
        return
    options = [int(x) for x in a.options.split(",")]
    rows = []
    for n in options:
        for mode in ("masked", "explicit"):
            rows.append(run_point(mode, n, a))
            print(f"  {mode} {n}: {rows[-1]['step_mb']:.1f} MB, {rows[-1]['time_vs_fixed']:.2f}x fixed", flush=True)
    goals = report(rows)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    a.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["bench/dmasking_memory.py", *sys.argv[1:]]), "commit": commit,
            "date": datetime.date.today().isoformat(), "load_avg": os.getloadavg(), "torch": torch.__version__,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items() if k != "point"}}
    (a.out / "dmasking_memory.json").write_text(json.dumps({**meta, "goals": goals, "rows": rows}, indent=2))
    plot(rows, a.out / "dmasking_memory.png")
    print(f"wrote {a.out / 'dmasking_memory.json'} and .png")


if __name__ == "__main__":
    main()
