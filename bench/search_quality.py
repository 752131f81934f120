"""Does the search find something? Found vs random architectures at equal latency, device
specialisation with cross-evaluation, and the search's cost per sampler.

    python bench/search_quality.py --table pixel3.json --versus edgegpu.json --versus host-cpu.json \\
        [--json FILE] [--png FILE]

(``--server URL --device D [--versus D2]`` reads the tables from a service instead.) For each of 3
targets spread over the table's range it searches with ``--target-ms``, then trains the found
architecture and ``--randoms`` random architectures drawn uniformly in predicted latency within +-5 %
of it (``search.band``: equal shares of 20 latency bins, uniform among a bin's architectures), all
with the same child-training budget, and reports accuracy against latency (and a Pareto PNG).
For each ``--versus`` table it measures specialisation at an equivalent budget: a reference
architecture R (``--reference``, FBNet-B by default) sets each device's target to R's latency on
that device's own table, each device searches at its target, and each device's architecture is
cross-evaluated on the other's table (``--relative F`` instead uses the old protocol, the same share
F of each table's range, which mixes budget with specialisation). Every budget (images, epochs) is printed with the
results: on a shared 2-core CPU this is a small-budget measurement, not a converged one. The numbers
go to ``bench/out/search_quality.json``, the plot to ``bench/out/search_quality_pareto.png``, the searches'
run folders under ``bench/out/search_quality/`` unless told otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"  # git-ignored: the benchmarks' outputs by default
sys.path.insert(0, str(REPO))
from fbnet.client import get_table  # noqa: E402
from fbnet.lut import build_lut, predict  # noqa: E402
from fbnet.space import get_space  # noqa: E402
from search.child import train_child  # noqa: E402
from search.config import ChildConfig, SearchConfig  # noqa: E402
from search.config import search_overrides as parse_overrides  # noqa: E402
from search.data import DataError, load_dataset  # noqa: E402
from search.dist import DistEnv  # noqa: E402
from search.select import latency_range, random_within  # noqa: E402
from search.signal import fmt_signal, signal_summary  # noqa: E402
from search.supernet import ArchParams, Supernet, proxy_space  # noqa: E402
from search.trainer import LARGEST, RunOptions, run_search, search_resolution  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RANDOM_SAMPLER = "uniform in latency within the band: search.band.uniform_in_band, 20 bins, exact rejection"


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
    largest = torch.nn.functional.one_hot(torch.full((22,), LARGEST), 9).float().to(DEVICE)
    for sampler, width, res, shared in (("gumbel", 1.0, None, False), ("single", 1.0, None, False),
                                        ("gumbel", 0.5, 16, False), ("single", 0.5, 16, False),
                                        ("single", 0.5, 16, True),  # experimental: shared weights + anchor
                                        ("gumbel", 0.25, 8, False)):  # the default proxy
        ps = proxy_space(space, width, res)
        torch.manual_seed(0)
        net, arch = Supernet(ps, shared=shared).to(DEVICE).train(), ArchParams().to(DEVICE)
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
            if shared:  # the default weight step: the sandwich rule's largest path too
                F.cross_entropy(net(x, largest, True), y).backward()
            F.cross_entropy(net(x, m, single), y).backward()
            opt.step()
            m = arch.gumbel_weights(1.0, hard=single)
            t_opt.zero_grad()
            F.cross_entropy(net(x, m, single), y).backward()
            t_opt.step()
            if DEVICE.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        rows.append({"sampler": sampler, "weights": "shared+anchor" if shared else "independent", "proxy": ps.name,
                     "batch": batch, "step_s": min(times[1:])})
    return rows


def noise_floor(a, space, cdata, child_cfg, device: str, earlier: Earlier) -> list[dict]:
    """How much of the random children's spread is the architecture's? For each target of the --reuse runs,
    the best and the worst random child are trained again with --noise-seeds more child seeds. If their
    means meet, the spread at this child budget is training noise (seed and test sample), and no search
    can rise above it there; if they stay apart, the architectures differ by more than the noise."""
    out = []
    for _, t in earlier.searches:
        if t["device"] != device:
            continue
        rand = sorted((c for c in t["children"] if not c["found"]), key=lambda c: c["test_acc"])
        row = {"target_us": t["target_us"], "frac": t.get("frac"), "random_sd": statistics.stdev(
            c["test_acc"] for c in rand), "archs": []}
        for which, c in (("worst", rand[0]), ("best", rand[-1])):
            more = child_accs(space, _arch(c["arch"]), cdata, child_cfg,
                              [a.seed + k for k in range(1, a.noise_seeds + 1)], earlier,
                              f"noise {which:5s} {c['latency_us']:9.0f} us")["accs"]
            accs = [c["test_acc"], *more]  # the earlier run's result first
            row["archs"].append({"which": which, "arch": c["arch"], "latency_us": c["latency_us"], "accs": accs,
                                 "first": accs[0], "mean_other_seeds": statistics.fmean(more),
                                 "sd": statistics.stdev(accs)})
        w, b = row["archs"]
        row["within_sd"] = math.sqrt((w["sd"] ** 2 + b["sd"] ** 2) / 2)  # pooled over the two architectures
        row["gap_first"] = b["first"] - w["first"]
        row["gap_other_seeds"] = b["mean_other_seeds"] - w["mean_other_seeds"]
        out.append(row)
        print(f"noise floor at {t['target_us'] / 1000:.2f} ms: best-worst gap {row['gap_first']:+.3f} on the seed "
              f"that ranked them, {row['gap_other_seeds']:+.3f} over {a.noise_seeds} other seeds; within-arch sd "
              f"{row['within_sd']:.3f} vs random spread {row['random_sd']:.3f}", flush=True)
    return out


class Earlier:
    """What ``--reuse`` runs already measured with the same child budget, data and seed: child accuracies per
    (architecture, child seed) and searches with the same settings
    and the same tau schedule (each search records the tau of every epoch, so a search made under another
    schedule is never taken for one of this code's)."""

    SAME = ("space", "data", "child_subset", "child_epochs", "child_batch", "child_test", "seed")
    SEARCH = ("subset", "epochs", "batch", "search_opt")

    def __init__(self, a):
        self.children: dict[tuple, dict] = {}
        self.searches: list[tuple[dict, dict]] = []
        for path in a.reuse:
            try:
                old = json.loads(path.read_text())
                st = old["settings"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"--reuse {path}: not a JSON written by this script ({type(e).__name__}: {e})") from None
            diff = [k for k in self.SAME if st.get(k) != getattr(a, k)]
            if diff:
                raise SystemExit(f"--reuse {path}: its children were trained with other settings ({', '.join(diff)})")
            for t in old.get("targets", []):
                self.searches.append(({k: st.get(k, []) for k in self.SEARCH}, t))
                for c in t["children"]:
                    accs = c.get("accs") or [c["test_acc"]]
                    seeds = c.get("seeds") or [c.get("child_seed", st["seed"])]
                    for seed, acc in zip(seeds, accs, strict=True):
                        self.children.setdefault((tuple(c["arch"]), seed), {"test_acc": acc, "reused": True})
            for row in old.get("noise", []):
                for c in row["archs"]:
                    for k, acc in enumerate(c["accs"]):
                        self.children.setdefault((tuple(c["arch"]), st["seed"] + k), {"test_acc": acc, "reused": True})

    def search(self, a, device: str, target_us: float, taus: list[float]) -> dict | None:
        want = {k: getattr(a, k) for k in self.SEARCH}
        for st, t in self.searches:
            if (st == want and t["device"] == device and abs(t["target_us"] / target_us - 1) < 1e-9
                    and t.get("tau_per_epoch") is not None
                    and all(abs(x - y) < 1e-9 for x, y in zip(t["tau_per_epoch"], taus, strict=True))):
                return {k: v for k, v in t.items() if k in SEARCH_KEYS}
        return None


SEARCH_KEYS = ("device", "target_us", "arch", "predicted_us", "error_pct", "theta_entropy", "theta_signal", "theta_steps", "wall_s",
               "cpu_s", "time_to_entropy_1_s", "expected_latency_us", "w_acc", "w_acc_per_epoch", "tau_per_epoch")


def child_accs(space, arch, cdata, child_cfg, seeds: list[int], earlier: Earlier, label: str) -> dict:
    """The architecture trained once per child seed (earlier runs' results taken where they exist)."""
    accs, reused = [], 0
    for seed in seeds:
        hit = earlier.children.get((tuple(arch.blocks), seed))
        if hit is None:
            _, rep = train_child(space, arch, cdata, child_cfg.model_copy(update={"seed": seed}),
                                 device=DEVICE)
            hit = {"test_acc": rep["test_acc"], "n_test": rep["n_test"], "train_acc": rep["train_acc"],
                   "wall_s": rep["wall_s"]}
            earlier.children[(tuple(arch.blocks), seed)] = {**hit, "reused": True}
        else:
            reused += 1
        accs.append(hit["test_acc"])
        print(f"  child {label} seed {seed}: acc {hit['test_acc']:.3f}{' (reused)' if hit.get('reused') else ''}",
              flush=True)
    return {"arch": list(arch.blocks), "accs": accs, "seeds": list(seeds), "test_acc": statistics.fmean(accs),
            "reused": reused}


def search_overrides(items: list[str]) -> dict:
    """``--search-opt KEY=VALUE`` pairs as typed SearchConfig fields (a bad key or value exits with a message)."""
    try:
        return parse_overrides(items)
    except ValueError as e:
        raise SystemExit(f"--search-opt {e}") from None


def search_config(a, target_us: float | None = None) -> SearchConfig:
    """Every search's settings: the command line's budget and seed, --search-opt, the target."""
    return SearchConfig(epochs=a.epochs, batch_size=a.batch, target_ms=None if target_us is None else target_us / 1000,
                        seed=a.seed, **a.search_cfg)


def search(a, space, lut, data, target_us: float, out: Path) -> dict:
    cfg = search_config(a, target_us)
    t, cpu = time.perf_counter(), time.process_time()
    r = run_search(cfg, space, lut, data, out, RunOptions(env=DistEnv(device=DEVICE), tensorboard=False))
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    acc_t, conv = 0.0, None
    for h in r.history:
        acc_t += h["time_s"]
        if conv is None and h["theta_entropy"] <= 1.0:
            conv = acc_t
    last = r.history[-1]
    return {"device": lut.device, "target_us": target_us, "arch": list(r.arch.blocks),
            "predicted_us": r.predicted_latency_us, "error_pct": 100 * (r.predicted_latency_us / target_us - 1),
            "theta_entropy": last["theta_entropy"], "theta_signal": signal_summary(r.history),
            "theta_steps": last["theta_steps"], "wall_s": wall, "cpu_s": cpu,
            "time_to_entropy_1_s": conv, "expected_latency_us": last["expected_latency_us"],
            "w_acc": last["w_acc"], "w_acc_per_epoch": [h["w_acc"] for h in r.history],
            "tau_per_epoch": [h["tau"] for h in r.history]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", help="the main device's table (JSON file, or a device name with --server)")
    p.add_argument("--server", help="profiler service URL (tables by device name)")
    p.add_argument("--device", help="the main device on --server")
    p.add_argument("--versus", action="append", default=[], help="another device's table (file or name)")
    p.add_argument("--space", default="fbnet-cifar")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--targets", default="0.2,0.35,0.5", help="targets as fractions of the table's range")
    p.add_argument("--reference", default="FBNet-B",
                   help="specialisation budget: each device's target is this architecture's latency on its own "
                        "table (FBNet-A/B/C or 22 block names / indices)")
    p.add_argument("--relative", type=float, default=None,
                   help="old protocol: the same share of each table's range as the target (mixes budget and "
                        "specialisation)")
    p.add_argument("--subset", type=int, default=1000, help="training images of every search")
    p.add_argument("--epochs", type=int, default=6, help="search epochs")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--randoms", type=int, default=8, help="random architectures per target")
    p.add_argument("--child-subset", type=int, default=1500, help="training images of every child")
    p.add_argument("--child-epochs", type=int, default=2)
    p.add_argument("--child-batch", type=int, default=32)
    p.add_argument("--child-test", type=int, default=None,
                   help="test images of every child (default: a fifth of --child-subset, at least 200); the "
                        "binomial standard error of one child's accuracy is about 0.5/sqrt(N)")
    p.add_argument("--cost-batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--search-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a SearchConfig field for every search, e.g. warmup_epochs=5, proxy_resolution=12, theta_lr=0.1")
    p.add_argument("--found-seeds", type=int, default=1,
                   help="train the found architecture with this many child seeds (its accuracy is their mean)")
    p.add_argument("--random-seeds", type=int, default=1,
                   help="train every random architecture with this many child seeds (its accuracy is their mean)")
    p.add_argument("--reuse", type=Path, action="append", default=[],
                   help="an earlier --json of this script with the same child budget, data and seed: its children's "
                        "accuracies (per architecture and child seed) are taken instead of training again and its "
                        "searches with the same settings and tau schedule are taken instead of searching again "
                        "(random architectures are always drawn afresh, uniform in latency within the band)")
    p.add_argument("--out", type=Path, default=OUT / "search_quality",
                   help="the searches' and children's run folders (default: bench/out/search_quality)")
    p.add_argument("--json", type=Path, default=OUT / "search_quality.json",
                   help="write every number here (default: bench/out/search_quality.json)")
    p.add_argument("--png", type=Path, default=OUT / "search_quality_pareto.png",
                   help="the Pareto plot, accuracy vs predicted latency (default: bench/out/search_quality_pareto.png)")
    p.add_argument("--acc-fractions", default="0.7,0.85",
                   help="accuracy: own searches at these fractions of the other architecture's own-table latency")
    p.add_argument("--noise-seeds", type=int, default=3,
                   help="--only noise: extra child seeds for the best and the worst random child of each target")
    p.add_argument("--only", choices=["cost", "random", "specialisation", "table", "accuracy", "noise"], action="append",
                   help="run only these parts (repeatable; default all). table: specialisation without training, "
                        "each device's architecture is the fastest on its own table with at least the reference's "
                        "MACs (exact DP), cross-evaluated; accuracy (not in the default, it trains children): "
                        "specialisation at equal accuracy, the paper's comparison")
    a = p.parse_args()
    if (a.table is None) == (a.device is None):
        p.error("give --table FILE or --server URL --device NAME")
    if a.found_seeds < 1 or a.random_seeds < 1:
        p.error("--found-seeds and --random-seeds must be >= 1")
    a.search_cfg = search_overrides(a.search_opt)

    space = get_space(a.space)
    main_lut = lut_of(a, a.table or a.device, space)
    versus = [lut_of(a, v, space) for v in a.versus]
    res: dict = {"settings": {k: ([str(x) for x in v] if k == "reuse" else str(v) if isinstance(v, Path) else v)
                              for k, v in vars(a).items()},
                 "torch_threads": torch.get_num_threads()}
    try:
        data_name = a.data
        load_dataset(a.data, 8, subset=8)
    except DataError as e:
        print(f"note: {e}; using scikit-learn digits instead")
        data_name = "digits"
    res["data"] = data_name
    sdata = load_dataset(data_name, search_resolution(search_config(a), space), subset=a.subset, seed=a.seed)
    cdata = load_dataset(data_name, space.resolution, subset=a.child_subset, seed=a.seed + 1)
    if a.child_test:  # a larger test split (evaluation is cheap; training is what costs)
        big = load_dataset(data_name, space.resolution, subset=5 * a.child_test, seed=a.seed + 1)
        cdata = dataclasses.replace(cdata, test_x=big.test_x, test_y=big.test_y)
    child_cfg = ChildConfig(epochs=a.child_epochs, batch_size=a.child_batch, seed=a.seed)
    res["torch_device"] = str(DEVICE) + (f" ({torch.cuda.get_device_name()})" if DEVICE.type == "cuda" else "")

    parts = set(a.only or ["cost", "random", "specialisation", "table"])
    if "cost" in parts:
        res["cost"] = step_cost(space, a.cost_batch, repeats=2)
        for r in res["cost"]:
            print(f"cost: {r['sampler']:6s} {r['weights']:13s} {r['proxy']:32s} batch {r['batch']}: {r['step_s']:.3f} s/step", flush=True)

    lo, hi = latency_range(main_lut)
    res["range_us"] = [lo, hi]
    earlier = Earlier(a)
    res["targets"] = []
    taus = [search_config(a).tau(e) for e in range(a.epochs)]  # what a search's history will record
    for frac in (float(f) for f in a.targets.split(",") if "random" in parts):
        target = lo + frac * (hi - lo)
        s = earlier.search(a, main_lut.device, target, taus)
        if s is not None:
            print(f"target {frac:.2f}: the search of an earlier run (same settings and tau schedule) is reused", flush=True)
        else:
            s = search(a, space, main_lut, sdata, target, a.out / f"{main_lut.device}-{frac}")
        pred = s["predicted_us"]
        found = _arch(s["arch"])
        f_seeds = [a.seed + k for k in range(a.found_seeds)]
        r_seeds = [a.seed + k for k in range(a.random_seeds)]
        trained = [{**child_accs(space, found, cdata, child_cfg, f_seeds, earlier, f"found  {pred:9.0f} us"),
                    "latency_us": pred, "found": True}]
        # uniform in latency within the band (search.band); fresh draws, never an earlier run's pool (a pool
        # drawn for another band, or by the old edge-piling sampler, would not be uniform in this one). The
        # draws are deterministic, so a rerun trains the same architectures and --reuse finds their accuracies.
        band = (0.95 * pred, 1.05 * pred)
        draws = random_within(main_lut, *band, a.randoms + 1, seed=a.seed + int(frac * 1000))
        pool = [x for x in draws if x != found]
        for arch_ in pool[:a.randoms]:
            lat = predict(main_lut, arch_)["latency_us"]
            trained.append({**child_accs(space, arch_, cdata, child_cfg, r_seeds, earlier, f"random {lat:9.0f} us"),
                            "latency_us": lat, "found": False})
        found_accs = trained[0]["accs"]
        accs = [t["test_acc"] for t in trained[1:]]
        s.update(frac=frac, children=trained, found_acc=statistics.fmean(found_accs), found_accs=found_accs,
                 found_seeds=len(f_seeds), random_seeds=len(r_seeds), n_reused=sum(t["reused"] for t in trained),
                 random_sampler=RANDOM_SAMPLER, random_band_us=list(band),
                 random_median=statistics.median(accs), random_mean=statistics.fmean(accs),
                 random_sd=statistics.stdev(accs) if len(accs) > 1 else 0.0, random_max=max(accs), n_random=len(accs))
        res["targets"].append(s)
        _save(a, res)
        print(f"target {frac:.2f} ({target / 1000:.2f} ms): found {s['predicted_us'] / 1000:.2f} ms "
              f"({s['error_pct']:+.1f} %), entropy {s['theta_entropy']:.2f}, signal {fmt_signal(s.get('theta_signal'))}, "
              f"acc {s['found_acc']:.3f} vs random "
              f"median {s['random_median']:.3f} (mean {s['random_mean']:.3f} +- {s['random_sd']:.3f}, "
              f"max {s['random_max']:.3f}, n={len(accs)})", flush=True)

    res["specialisation"] = []
    if versus and "specialisation" in parts:
        res["specialisation"] = specialisation(a, space, main_lut, versus, sdata, res["targets"])
        _save(a, res)
    if versus and "table" in parts:
        res["specialisation_table_only"] = table_only_specialisation(space, main_lut, versus, _ref(a.reference),
                                                                     a.reference)
        _save(a, res)
    if versus and "accuracy" in parts:
        done = [x for c in res["specialisation"] for x in (c["a_search"], c["b_search"])]
        res["specialisation_equal_accuracy"] = equal_accuracy_specialisation(a, space, main_lut, versus, sdata, cdata,
                                                                             child_cfg, done)
        _save(a, res)

    if "noise" in parts:
        res["noise"] = noise_floor(a, space, cdata, child_cfg, main_lut.device, earlier)
        _save(a, res)

    if a.png and res["targets"]:
        _plot(res, a.png, main_lut.device)
    _save(a, res)


def specialisation(a, space, main_lut, versus, sdata, done: list[dict]) -> list[dict]:
    """Each device's own architecture against the other's, on each table, at an equivalent budget."""
    ref = None if a.relative is not None else _ref(a.reference)

    def target(lut):
        if ref is not None:
            return predict(lut, ref)["latency_us"]
        lo, hi = latency_range(lut)
        return lo + a.relative * (hi - lo)

    def own_search(lut, name):
        t = target(lut)
        hit = next((d for d in done if d["device"] == lut.device and abs(d["target_us"] / t - 1) < 1e-9), None)
        return hit or search(a, space, lut, sdata, t, a.out / f"{lut.device}-{name}")

    name = "rel" if ref is None else "ref"
    own = own_search(main_lut, name)
    out = []
    for v in versus:
        other = own_search(v, name)
        am, av = _arch(own["arch"]), _arch(other["arch"])
        cross = {"a": main_lut.device, "b": v.device,
                 "protocol": f"relative {a.relative}" if ref is None else f"reference {a.reference}",
                 "a_target_us": own["target_us"], "b_target_us": other["target_us"],
                 "a_arch_on_a_us": predict(main_lut, am)["latency_us"], "b_arch_on_a_us": predict(main_lut, av)["latency_us"],
                 "b_arch_on_b_us": predict(v, av)["latency_us"], "a_arch_on_b_us": predict(v, am)["latency_us"],
                 "a_search": own, "b_search": other}
        if ref is not None:
            cross["ref_on_a_us"], cross["ref_on_b_us"] = predict(main_lut, ref)["latency_us"], predict(v, ref)["latency_us"]
        cross["speedup_on_a"] = cross["b_arch_on_a_us"] / cross["a_arch_on_a_us"]
        cross["speedup_on_b"] = cross["a_arch_on_b_us"] / cross["b_arch_on_b_us"]
        cross["cross_product"] = cross["speedup_on_a"] * cross["speedup_on_b"]  # > 1: each is faster on its own
        out.append(cross)
        print(f"specialisation ({cross['protocol']}) {main_lut.device} vs {v.device}: targets "
              f"{own['target_us'] / 1000:.2f} / {other['target_us'] / 1000:.2f} ms; {main_lut.device}: own "
              f"{cross['a_arch_on_a_us'] / 1000:.2f} ms, other's {cross['b_arch_on_a_us'] / 1000:.2f} ms "
              f"({cross['speedup_on_a']:.2f}x); {v.device}: own {cross['b_arch_on_b_us'] / 1000:.2f} ms, other's "
              f"{cross['a_arch_on_b_us'] / 1000:.2f} ms ({cross['speedup_on_b']:.2f}x); cross-latency product "
              f"{cross['cross_product']:.3f}", flush=True)
    return out


def equal_accuracy_specialisation(a, space, main_lut, versus, sdata, cdata, child_cfg, done: list[dict]) -> list[dict]:
    """The paper's comparison: at equal accuracy. For each ordered pair (own, other): the other device's
    architecture (searched at the reference budget on its table) is trained; on the own table, searches at
    fractions of that architecture's own-table latency (and the own reference search) give candidates,
    each trained with the same child budget; the speed-up is the other's architecture's own-table latency
    over that of the cheapest own candidate at least as accurate (none: reported as such)."""
    ref = _ref(a.reference)
    trained: dict[tuple, dict] = {}

    def child(arch_) -> dict:
        key = tuple(arch_.blocks)
        if key not in trained:
            _, rep = train_child(space, arch_, cdata, child_cfg, device=DEVICE)
            trained[key] = {"test_acc": rep["test_acc"], "n_test": rep["n_test"], "wall_s": rep["wall_s"]}
        return trained[key]

    def ref_search(lut):
        t = predict(lut, ref)["latency_us"]
        hit = next((d for d in done if d["device"] == lut.device and abs(d["target_us"] / t - 1) < 1e-9), None)
        if hit is None:
            hit = search(a, space, lut, sdata, t, a.out / f"{lut.device}-ref")
            done.append(hit)
        return hit

    out = []
    for v in versus:
        for own, other in ((main_lut, v), (v, main_lut)):
            o_arch = _arch(ref_search(other)["arch"])
            o_lat = predict(own, o_arch)["latency_us"]
            o_acc = child(o_arch)
            cands = [ref_search(own)]
            for f in (float(x) for x in a.acc_fractions.split(",")):
                cands.append(search(a, space, own, sdata, f * o_lat, a.out / f"{own.device}-vs-{other.device}-{f}"))
            rows = []
            for c in cands:
                arch_ = _arch(c["arch"])
                rows.append({"arch": c["arch"], "target_us": c["target_us"], "latency_us": predict(own, arch_)["latency_us"],
                             "theta_entropy": c["theta_entropy"], **child(arch_)})
            ok = [r for r in rows if r["test_acc"] >= o_acc["test_acc"]]
            best = min(ok, key=lambda r: r["latency_us"]) if ok else None
            # "as accurate" within the binomial standard error of a difference of two test accuracies
            p_ = o_acc["test_acc"]
            se = math.sqrt(2 * p_ * (1 - p_) / o_acc["n_test"])
            near = [r for r in rows if r["test_acc"] >= p_ - se]
            best_se = min(near, key=lambda r: r["latency_us"]) if near else None
            r = {"own": own.device, "other": other.device, "other_arch": list(o_arch.blocks),
                 "other_arch_on_own_us": o_lat, "other_acc": o_acc["test_acc"], "n_test": o_acc["n_test"],
                 "candidates": rows, "best": best, "speedup": (o_lat / best["latency_us"]) if best else None,
                 "se_of_difference": se, "best_within_se": best_se,
                 "speedup_within_se": (o_lat / best_se["latency_us"]) if best_se else None}
            out.append(r)
            cand_txt = ", ".join(f"{x['latency_us'] / 1000:.2f} ms acc {x['test_acc']:.3f}" for x in rows)
            speed = "none as accurate" if r["speedup"] is None else f"{r['speedup']:.2f}x"
            if r["speedup_within_se"] is not None:
                speed += f" (within one standard error, {se:.3f}: {r['speedup_within_se']:.2f}x)"
            print(f"equal accuracy on {own.device}: {other.device}'s arch {o_lat / 1000:.2f} ms acc {o_acc['test_acc']:.3f}; "
                  f"own candidates {cand_txt}; speed-up {speed}", flush=True)
    return out


def fastest_with_macs(space, lut, min_macs: int, buckets: int = 4000):
    """The architecture with the lowest table latency among those with at least ``min_macs`` MACs
    (exact feasibility: item MACs are rounded down, the bound up; optimal up to that rounding)."""
    from fbnet.space import CANDIDATE_NAMES, Arch

    fixed = sum(op.macs for op in (space.stem, space.head, space.pool, space.fc))
    need_macs = max(0, min_macs - fixed)
    step = max(1.0, need_macs / buckets)
    need = math.ceil(need_macs / step)
    lat = lut.matrix
    best = [0.0] + [math.inf] * need  # best[b]: least latency reaching bucket b (b = need means >= need)
    choice = []
    for layer in range(len(lat)):
        items = [(min(need, int(space.layer_op(layer, n).macs // step)), lat[layer][i])
                 for i, n in enumerate(CANDIDATE_NAMES)]
        new, pick = [math.inf] * (need + 1), [-1] * (need + 1)
        for b, v in enumerate(best):
            if v == math.inf:
                continue
            for i, (w, t) in enumerate(items):
                nb = min(need, b + w)
                if v + t < new[nb]:
                    new[nb], pick[nb] = v + t, (i, b)
        best = new
        choice.append(pick)
    idx, b = [0] * len(lat), need
    for layer in range(len(lat) - 1, -1, -1):
        idx[layer], b = choice[layer][b]
    arch = Arch.from_indices(idx)
    assert space.arch_mflops(arch) * 1e6 >= min_macs - 1e-6
    return arch


def table_only_specialisation(space, main_lut, versus, ref, ref_name: str) -> list[dict]:
    """Device specialisation without training: at equal capacity (MACs >= the reference's), each
    device's table-optimal architecture, cross-evaluated on the other table."""
    macs = round(space.arch_mflops(ref) * 1e6)
    own = fastest_with_macs(space, main_lut, macs)
    out = []
    for v in versus:
        other = fastest_with_macs(space, v, macs)
        r = {"a": main_lut.device, "b": v.device, "protocol": f"table-only, MACs >= {ref_name}'s ({macs / 1e6:.1f} M)",
             "a_arch": list(own.blocks), "b_arch": list(other.blocks),
             "a_mmacs": space.arch_mflops(own), "b_mmacs": space.arch_mflops(other),
             "ref_on_a_us": predict(main_lut, ref)["latency_us"], "ref_on_b_us": predict(v, ref)["latency_us"],
             "a_arch_on_a_us": predict(main_lut, own)["latency_us"], "b_arch_on_a_us": predict(main_lut, other)["latency_us"],
             "b_arch_on_b_us": predict(v, other)["latency_us"], "a_arch_on_b_us": predict(v, own)["latency_us"]}
        r["speedup_on_a"] = r["b_arch_on_a_us"] / r["a_arch_on_a_us"]
        r["speedup_on_b"] = r["a_arch_on_b_us"] / r["b_arch_on_b_us"]
        out.append(r)
        print(f"table-only specialisation {main_lut.device} vs {v.device} ({r['protocol']}): {main_lut.device}: own "
              f"{r['a_arch_on_a_us'] / 1000:.2f} ms, other's {r['b_arch_on_a_us'] / 1000:.2f} ms ({r['speedup_on_a']:.2f}x); "
              f"{v.device}: own {r['b_arch_on_b_us'] / 1000:.2f} ms, other's {r['a_arch_on_b_us'] / 1000:.2f} ms "
              f"({r['speedup_on_b']:.2f}x); reference {r['ref_on_a_us'] / 1000:.2f} / {r['ref_on_b_us'] / 1000:.2f} ms",
              flush=True)
    return out


def _ref(text: str):
    from fbnet.space import Arch

    return Arch.parse(text)


def _save(a, res: dict) -> None:
    """Written after every part, so a run cut short keeps what it measured."""
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
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
                   label=f"random, target {t['target_us'] / 1000:.1f} ms"
                   + (f" (each the mean of {t['random_seeds']} child seeds)" if t.get("random_seeds", 1) > 1 else ""))
        n = len(t.get("found_accs", [t["found_acc"]]))
        ax.scatter([t["predicted_us"] / 1000], [t["found_acc"]], color=c, marker="*", s=220, edgecolor="k",
                   label=f"found, target {t['target_us'] / 1000:.1f} ms" + (f" (mean of {n} child seeds)" if n > 1 else ""))
    ax.set_xlabel(f"predicted latency on {device} (ms)")
    ax.set_ylabel(f"test accuracy ({res['data']})")
    ax.set_title("found vs random architectures at equal latency (same child budget)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
