"""Does the search find something? Found vs random architectures at equal latency, device
specialisation with cross-evaluation, and the search's cost per sampler.

    python bench/search_quality.py --table pixel3.json --versus edgegpu.json --versus host-cpu.json \\
        --json search_quality.json --png bench/search-quality-pareto.png

(``--server URL --device D [--versus D2]`` reads the tables from a service instead.) For each of 3
targets spread over the table's range it searches with ``--target-ms``, then trains the found
architecture and ``--randoms`` random architectures whose predicted latency is within +-5 % of it,
all with the same child-training budget, and reports accuracy against latency (and a Pareto PNG).
For each ``--versus`` table it searches at the same relative target and cross-evaluates each
device's architecture on the other's table. Every budget (images, epochs) is printed with the
results: on a shared 2-core CPU this is a small-budget measurement, not a converged one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from fbnet.client import get_table  # noqa: E402
from fbnet.lut import build_lut, predict  # noqa: E402
from fbnet.space import get_space  # noqa: E402
from search.child import ChildConfig, train_child  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from search.data import DataError, load_dataset  # noqa: E402
from search.dist import DistEnv  # noqa: E402
from search.select import latency_range, random_within  # noqa: E402
from search.supernet import ArchParams, Supernet, proxy_space  # noqa: E402
from search.trainer import run_search, search_resolution  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lut_of(a, spec: str | None, space):
    """A table from a file, or a device name on --server."""
    if a.server and spec and not Path(spec).is_file():
        t = get_table(space=space.name, server=a.server, device=spec)
    else:
        t = get_table(space=space.name, table_file=spec)
    return build_lut(t, space)


def step_cost(space, batch: int, repeats: int) -> list[dict]:
    """Seconds per search step (weight step + theta step) for each sampler, at equal batch."""
    rows = []
    for sampler, width, res in (("gumbel", 1.0, None), ("single", 1.0, None), ("gumbel", 0.5, 16),
                                ("single", 0.5, 16)):
        ps = proxy_space(space, width, res)
        torch.manual_seed(0)
        net, arch = Supernet(ps).to(DEVICE).train(), ArchParams().to(DEVICE)
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        t_opt = torch.optim.Adam(arch.parameters(), lr=0.01)
        x = torch.randn(batch, 3, ps.resolution, ps.resolution, device=DEVICE)
        y = torch.randint(0, space.num_classes, (batch,), device=DEVICE)
        single = sampler == "single"
        times = []
        for _ in range(repeats + 1):
            t = time.perf_counter()
            with torch.no_grad():
                m = arch.gumbel_weights(1.0, hard=single)
            opt.zero_grad()
            F.cross_entropy(net(x, m, single), y).backward()
            opt.step()
            m = arch.gumbel_weights(1.0, hard=single)
            t_opt.zero_grad()
            F.cross_entropy(net(x, m, single), y).backward()
            t_opt.step()
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        rows.append({"sampler": sampler, "proxy": ps.name, "batch": batch, "step_s": min(times[1:])})
    return rows


def search(a, space, lut, data, target_us: float, out: Path) -> dict:
    cfg = SearchConfig(epochs=a.epochs, batch_size=a.batch, target_us=target_us, seed=a.seed)
    t = time.perf_counter()
    r = run_search(cfg, space, lut, data, out, progress=False, tensorboard=False, env=DistEnv(device=DEVICE))
    wall = time.perf_counter() - t
    acc_t, conv = 0.0, None
    for h in r.history:
        acc_t += h["time_s"]
        if conv is None and h["theta_entropy"] <= 1.0:
            conv = acc_t
    last = r.history[-1]
    return {"device": lut.device, "target_us": target_us, "arch": list(r.arch.blocks),
            "predicted_us": r.predicted_latency_us, "error_pct": 100 * (r.predicted_latency_us / target_us - 1),
            "theta_entropy": last["theta_entropy"], "theta_steps": last["theta_steps"], "wall_s": wall,
            "time_to_entropy_1_s": conv, "expected_latency_us": last["expected_latency_us"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", help="the main device's table (JSON file, or a device name with --server)")
    p.add_argument("--server", help="profiler service URL (tables by device name)")
    p.add_argument("--device", help="the main device on --server")
    p.add_argument("--versus", action="append", default=[], help="another device's table (file or name)")
    p.add_argument("--space", default="fbnet-cifar")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--targets", default="0.2,0.35,0.5", help="targets as fractions of the table's range")
    p.add_argument("--relative", type=float, default=0.35, help="the relative target of the specialisation")
    p.add_argument("--subset", type=int, default=1000, help="training images of every search")
    p.add_argument("--epochs", type=int, default=6, help="search epochs")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--randoms", type=int, default=8, help="random architectures per target")
    p.add_argument("--child-subset", type=int, default=1500, help="training images of every child")
    p.add_argument("--child-epochs", type=int, default=2)
    p.add_argument("--child-batch", type=int, default=32)
    p.add_argument("--cost-batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("/tmp/search-quality"))
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument("--png", type=Path, help="the Pareto plot (accuracy vs predicted latency)")
    p.add_argument("--only", choices=["cost", "random", "specialisation"], action="append",
                   help="run only these parts (repeatable; default all)")
    a = p.parse_args()
    if (a.table is None) == (a.device is None):
        p.error("give --table FILE or --server URL --device NAME")

    space = get_space(a.space)
    main_lut = lut_of(a, a.table or a.device, space)
    versus = [lut_of(a, v, space) for v in a.versus]
    res: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
                 "torch_threads": torch.get_num_threads()}
    try:
        data_name = a.data
        load_dataset(a.data, 8, subset=8)
    except DataError as e:
        print(f"note: {e}; using scikit-learn digits instead")
        data_name = "digits"
    res["data"] = data_name
    cfg0 = SearchConfig()
    sdata = load_dataset(data_name, search_resolution(cfg0, space), subset=a.subset, seed=a.seed)
    cdata = load_dataset(data_name, space.resolution, subset=a.child_subset, seed=a.seed + 1)
    child_cfg = ChildConfig(epochs=a.child_epochs, batch_size=a.child_batch, seed=a.seed)
    res["torch_device"] = str(DEVICE) + (f" ({torch.cuda.get_device_name()})" if DEVICE.type == "cuda" else "")

    parts = set(a.only or ["cost", "random", "specialisation"])
    if "cost" in parts:
        res["cost"] = step_cost(space, a.cost_batch, repeats=2)
        for r in res["cost"]:
            print(f"cost: {r['sampler']:6s} {r['proxy']:32s} batch {r['batch']}: {r['step_s']:.3f} s/step", flush=True)

    lo, hi = latency_range(main_lut)
    res["range_us"] = [lo, hi]
    res["targets"] = []
    for frac in (float(f) for f in a.targets.split(",") if "random" in parts):
        target = lo + frac * (hi - lo)
        s = search(a, space, main_lut, sdata, target, a.out / f"{main_lut.device}-{frac}")
        pred = s["predicted_us"]
        randoms = random_within(main_lut, 0.95 * pred, 1.05 * pred, a.randoms, seed=a.seed + int(frac * 1000))
        trained = []
        for arch in [None, *randoms]:
            arch_ = arch or _arch(s["arch"])
            _, rep = train_child(space, arch_, cdata, child_cfg, progress=False, device=DEVICE)
            trained.append({"arch": list(arch_.blocks), "latency_us": predict(main_lut, arch_)["latency_us"],
                            "test_acc": rep["test_acc"], "found": arch is None})
            print(f"  child {'found ' if arch is None else 'random'} {trained[-1]['latency_us']:9.0f} us "
                  f"acc {rep['test_acc']:.3f}", flush=True)
        accs = [t["test_acc"] for t in trained[1:]]
        s.update(frac=frac, children=trained, found_acc=trained[0]["test_acc"],
                 random_median=statistics.median(accs), random_mean=statistics.fmean(accs),
                 random_sd=statistics.stdev(accs) if len(accs) > 1 else 0.0, random_max=max(accs), n_random=len(accs))
        res["targets"].append(s)
        _save(a, res)
        print(f"target {frac:.2f} ({target / 1000:.2f} ms): found {s['predicted_us'] / 1000:.2f} ms "
              f"({s['error_pct']:+.1f} %), entropy {s['theta_entropy']:.2f}, acc {s['found_acc']:.3f} vs random "
              f"median {s['random_median']:.3f} (mean {s['random_mean']:.3f} +- {s['random_sd']:.3f}, "
              f"max {s['random_max']:.3f}, n={len(accs)})", flush=True)

    res["specialisation"] = []
    own = next((t for t in res["targets"] if abs(t["frac"] - a.relative) < 1e-9), None)
    if own is None and versus and "specialisation" in parts:
        own = search(a, space, main_lut, sdata, lo + a.relative * (hi - lo), a.out / f"{main_lut.device}-rel")
    for v in versus if "specialisation" in parts else []:
        vlo, vhi = latency_range(v)
        other = search(a, space, v, sdata, vlo + a.relative * (vhi - vlo), a.out / f"{v.device}-rel")
        am, av = _arch(own["arch"]), _arch(other["arch"])
        cross = {"a": main_lut.device, "b": v.device, "relative_target": a.relative,
                 "a_arch_on_a_us": predict(main_lut, am)["latency_us"], "b_arch_on_a_us": predict(main_lut, av)["latency_us"],
                 "b_arch_on_b_us": predict(v, av)["latency_us"], "a_arch_on_b_us": predict(v, am)["latency_us"],
                 "a_search": own, "b_search": other}
        cross["speedup_on_a"] = cross["b_arch_on_a_us"] / cross["a_arch_on_a_us"]
        cross["speedup_on_b"] = cross["a_arch_on_b_us"] / cross["b_arch_on_b_us"]
        res["specialisation"].append(cross)
        _save(a, res)
        print(f"specialisation {main_lut.device} vs {v.device}: own arch faster on {main_lut.device} by "
              f"{cross['speedup_on_a']:.2f}x, on {v.device} by {cross['speedup_on_b']:.2f}x", flush=True)

    if a.png and res["targets"]:
        _plot(res, a.png, main_lut.device)
    _save(a, res)


def _save(a, res: dict) -> None:
    """Written after every part, so a run cut short keeps what it measured."""
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


def _arch(blocks):
    from fbnet.space import Arch

    return Arch(tuple(blocks))


def _plot(res: dict, path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, t in enumerate(res["targets"]):
        c = f"C{i}"
        r = [ch for ch in t["children"] if not ch["found"]]
        ax.scatter([x["latency_us"] / 1000 for x in r], [x["test_acc"] for x in r], color=c, alpha=0.4, s=20,
                   label=f"random, target {t['target_us'] / 1000:.1f} ms")
        f = t["children"][0]
        ax.scatter([f["latency_us"] / 1000], [f["test_acc"]], color=c, marker="*", s=220, edgecolor="k",
                   label=f"found, target {t['target_us'] / 1000:.1f} ms")
    ax.set_xlabel(f"predicted latency on {device} (ms)")
    ax.set_ylabel(f"test accuracy ({res['data']})")
    ax.set_title("found vs random architectures at equal latency (same child budget)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
