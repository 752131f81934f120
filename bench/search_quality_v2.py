"""Does the v2 search find something? Found vs uniform-in-band random FBNetV2 architectures at equal cost.

For each target (a fraction of the cost's range: the fastest to the slowest architecture of the space),
``--search-seeds`` DMaskingNAS searches (:mod:`search.trainer_v2`, the CLI's defaults unless
``--search-opt``); each found architecture is trained with ``--child-seeds`` seeds. ``--randoms``
architectures are drawn uniformly in cost within +-5 % of the target (:func:`search.band_v2.uniform_in_band_v2`)
and trained with the same seeds and budget. Every child is built from the architecture without masks
at its own resolution (:func:`search.child.train_child`). The answer per target: each search's mean
accuracy against the random median (found >= median is the goal), and the spread of both.

The cost is FLOPs (``--cost flops``), parameters, or latency from a saved v2 grid table (``--cost latency
--table GRID.json``, what ``fbnet-search fetch`` saves; priced as the search prices it). Prints a table and
writes ``bench/out/search_quality_v2.json``.

    python bench/search_quality_v2.py --cost flops --targets 0.2,0.35,0.5 --search-seeds 3 --randoms 8 \\
        --child-seeds 2 --subset 2000 --epochs 10 --child-subset 2000 --child-epochs 2

Device specialisation (FBNet's section 4.3 on v2): ``--cost latency --table A.json --versus B.json`` searches
at each target fraction of each grid's own range, ``--search-seeds`` times per device, prices every
architecture on both grids and reports the cross-latency product (A's arch on B / B's arch on B) x
(B's arch on A / A's arch on A); above 1 when each device's own architecture is the faster on it. It
compares latencies only (no child is trained), so it says nothing of accuracy.

v2 against v1 at equal latency (does the larger space buy accuracy?): ``--cost latency --table GRID.json
--v1-table V1.json`` with a v1 table of the same device (``fbnet-search fetch --space fbnet-cifar``). Each
target is a fraction of the overlap of the two spaces' latency ranges; at each, ``--search-seeds`` v1
searches (:func:`search.trainer.run_search`) and as many v2 searches, both with ``--subset`` and
``--epochs`` and otherwise the CLI's defaults (``--search-opt`` applies to the v2 searches only), and
every found architecture trained with the same child seeds, images and epochs. The answer per target:
v2's mean child accuracy minus v1's, per search seed, each architecture's latency on its own table and
its MFLOPs. Equal latency is as the two tables price it: they must come from the same device in the
same state, or the comparison mixes the device's drift into the spaces.

    python bench/search_quality_v2.py --cost latency --table v2.json --v1-table v1.json --targets 0.2,0.5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fbnet.configuration import Selector  # noqa: E402
from fbnet.space_v2 import arch_summary, get_v2_space  # noqa: E402
from search.band_v2 import uniform_in_band_v2  # noqa: E402
from search.child import train_child  # noqa: E402
from search.config import ChildConfig, SearchConfig, TableSource, search_overrides  # noqa: E402
from search.data import load_dataset  # noqa: E402
from search.signal import fmt_signal, signal_summary  # noqa: E402
from search.trainer import RunOptions  # noqa: E402
from search.trainer_v2 import V2Cost, run_search_v2, target_field, train_resolution  # noqa: E402
from search.v2_cost import cost_tables, price_for  # noqa: E402

OUT = REPO / "bench" / "out"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="fbnetv2-cifar")
    p.add_argument("--cost", choices=["flops", "params", "latency"], default="flops")
    p.add_argument("--table", type=Path, help="a saved v2 grid table (--cost latency)")
    p.add_argument("--targets", default="0.2,0.35,0.5", help="targets as fractions of the cost's range")
    p.add_argument("--search-seeds", type=int, default=3)
    p.add_argument("--randoms", type=int, default=8, help="random architectures per target")
    p.add_argument("--child-seeds", type=int, default=2)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--subset", type=int, default=2000, help="training images of every search")
    p.add_argument("--epochs", type=int, default=10, help="search epochs")
    p.add_argument("--child-subset", type=int, default=2000)
    p.add_argument("--child-epochs", type=int, default=2)
    p.add_argument("--search-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a SearchConfig field for every search, e.g. theta_lr=0.05")
    p.add_argument("--versus", type=Path, help="another device's saved v2 grid (with --cost latency --table): device "
                   "specialisation instead of found vs random. At each target fraction (of each grid's own range) "
                   "--search-seeds searches on each grid, every architecture priced on both; the answer is the "
                   "cross-latency product (A's arch on B / B's arch on B) x (B's arch on A / A's arch on A), "
                   "> 1 when each device's architecture is the faster on its own device. No child is trained")
    p.add_argument("--v1-table", type=Path, help="a v1 table (fbnet-cifar) of --table's device: v2 against v1 at "
                   "equal latency instead of found vs random (with --cost latency --table)")
    p.add_argument("--v1-space", default="fbnet-cifar")
    p.add_argument("--rescore", type=Path, help="an earlier --v1-table JSON: train its found v1 and v2 architectures "
                   "again with this run's child budget (--child-subset, --child-epochs, --child-seeds); no search")
    p.add_argument("--json", type=Path, default=OUT / "search_quality_v2.json")
    a = p.parse_args()
    try:
        a.search_cfg = search_overrides(a.search_opt)  # validated once, before an hours-long run
    except ValueError as e:
        p.error(f"--search-opt {e}")
    return a


def cost_of(a, space) -> V2Cost:
    if a.cost != "latency":
        return V2Cost(a.cost, cost_tables(space, price_for(a.cost, space)))
    if a.table is None:
        raise SystemExit("--cost latency needs --table GRID.json (a saved v2 grid table)")
    from search.cli.search_v2 import v2_cost

    return v2_cost(SearchConfig(cost="latency"), TableSource(space=space.name, table=a.table), Selector(), space)


class Children:
    """Trains architectures once per (architecture, seed), data loaded once per resolution."""

    def __init__(self, a, space):
        self.a, self.space, self.data, self.done = a, space, {}, {}

    def accs(self, arch) -> list[float]:
        """The architecture's test accuracy per child seed (a v1 architecture: at its space's resolution)."""
        out, res = [], getattr(arch, "resolution", None) or self.space.resolution
        for seed in range(self.a.child_seeds):
            key = (arch.to_text(), seed)
            if key not in self.done:
                if res not in self.data:
                    self.data[res] = load_dataset(self.a.data, res, subset=self.a.child_subset, seed=0)
                cfg = ChildConfig(epochs=self.a.child_epochs, batch_size=32, seed=seed)
                self.done[key] = train_child(self.space, arch, self.data[res], cfg)[1]["test_acc"]
            out.append(self.done[key])
        return out


def one_target(a, space, cost: V2Cost, frac: float, children: Children, sdata) -> dict:
    target = at_fraction(cost, frac)
    searches = []
    for seed in range(a.search_seeds):
        cfg = SearchConfig(cost=cost.kind, epochs=a.epochs, seed=seed, **target_field(cost.kind, target),
                           **a.search_cfg)
        t0, c0 = time.perf_counter(), time.process_time()
        r = run_search_v2(cfg, space, cost, sdata, OUT / "search_quality_v2" / f"t{frac:g}-s{seed}", RunOptions())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        accs = children.accs(r.arch)
        searches.append({"seed": seed, "arch": r.arch.to_text(), "cost": r.cost, "error_pct": 100 * (r.cost / target - 1),
                         "entropies": r.entropies, "theta_signal": signal_summary(r.history),
                         "w_acc": r.history[-1]["w_acc"], "wall_s": wall, "cpu_s": cpu,
                         "accs": accs, "acc": statistics.fmean(accs)})
        print(f"  target {frac:g} search {seed}: {r.cost:.4g} {cost.unit} ({searches[-1]['error_pct']:+.1f} %), "
              f"acc {searches[-1]['acc']:.3f}, max entropy {max(r.entropies.values()):.2f}, "
              f"signal {fmt_signal(searches[-1]['theta_signal'])}, {cpu / 60:.1f} CPU-min",
              flush=True)
    band = (0.95 * target - cost.offset, 1.05 * target - cost.offset)
    randoms = []
    for arch in uniform_in_band_v2(space, cost.tables, band, a.randoms, seed=int(1000 * frac), bins=4):
        accs = children.accs(arch)
        randoms.append({"arch": arch.to_text(), "cost": cost.of(space, arch), "accs": accs, "acc": statistics.fmean(accs)})
        print(f"  target {frac:g} random: {randoms[-1]['cost']:.4g} {cost.unit}, acc {randoms[-1]['acc']:.3f}", flush=True)
    med = statistics.median(r["acc"] for r in randoms)
    return {"fraction": frac, "target": target, "unit": cost.unit, "searches": searches, "randoms": randoms,
            "random_median": med, "random_sd": statistics.pstdev(r["acc"] for r in randoms),
            "found_minus_median": [s["acc"] - med for s in searches],
            "found_at_least_median": sum(s["acc"] >= med for s in searches)}


def main() -> None:
    a = parse()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # the code that runs: read before the hour-long run
    space = get_v2_space(a.space)
    cost = cost_of(a, space)
    if a.versus is not None and (a.cost != "latency" or a.table is None):
        raise SystemExit("--versus needs --cost latency --table GRID.json (specialisation compares two devices' grids)")
    if a.rescore is not None:  # children only: no search data
        return rescore(a, commit, space)
    probe = SearchConfig(cost=cost.kind, **a.search_cfg)
    sdata = load_dataset(a.data, train_resolution(probe, space), subset=a.subset, seed=0)
    if a.v1_table is not None and (a.cost != "latency" or a.versus is not None):
        raise SystemExit("--v1-table needs --cost latency --table GRID.json and no --versus")
    if a.versus is not None:
        return specialise(a, commit, space, cost, sdata)
    if a.v1_table is not None:
        return versus_v1(a, commit, space, cost, sdata)
    children = Children(a, space)
    results = []
    for frac in (float(f) for f in a.targets.split(",")):
        results.append(one_target(a, space, cost, frac, children, sdata))
        write(a, commit, results)  # after every target: an hours-long run keeps what it measured if cut short
    print(f"\n{'target':>7} {'found acc (per search)':>28} {'random median':>14} {'sd':>6} {'found-median':>22}")
    for r in results:
        found = " ".join(f"{s['acc']:.3f}" for s in r["searches"])
        diffs = " ".join(f"{d:+.3f}" for d in r["found_minus_median"])
        print(f"{r['fraction']:>7g} {found:>28} {r['random_median']:>14.3f} {r['random_sd']:>6.3f} {diffs:>22}")
    print(f"wrote {a.json}")


def search_on(a, space, cost: V2Cost, target: float, seed: int, name: str) -> dict:
    """One latency search at ``target`` us on this grid: its architecture, cost error and entropies."""
    cfg = SearchConfig(cost="latency", epochs=a.epochs, seed=seed, target_ms=target / 1000,
                       **a.search_cfg)
    c0 = time.process_time()
    r = run_search_v2(cfg, space, cost, a.sdata, OUT / "search_quality_v2" / f"{name}-s{seed}", RunOptions())
    return {"target_us": target, "arch": r.arch, "error_pct": 100 * (r.cost / target - 1),
            "max_entropy": max(r.entropies.values()), "theta_signal": signal_summary(r.history),
            "cpu_s": time.process_time() - c0}


def specialise(a, commit: str, space, cost_a: V2Cost, sdata) -> None:
    """Device specialisation on two v2 grids (``--table`` A, ``--versus`` B): the cross-latency product per
    target and search seed, every architecture priced on both grids as the search prices it."""
    cost_b = cost_of(argparse.Namespace(cost="latency", table=a.versus), space)
    a.sdata, results = sdata, []
    for frac in (float(f) for f in a.targets.split(",")):
        for seed in range(a.search_seeds):
            sa = search_on(a, space, cost_a, at_fraction(cost_a, frac), seed, f"spec-a-t{frac:g}")
            sb = search_on(a, space, cost_b, at_fraction(cost_b, frac), seed, f"spec-b-t{frac:g}")
            row = {"fraction": frac, "seed": seed,
                   "a_arch_on_a_us": cost_a.of(space, sa["arch"]), "b_arch_on_a_us": cost_a.of(space, sb["arch"]),
                   "b_arch_on_b_us": cost_b.of(space, sb["arch"]), "a_arch_on_b_us": cost_b.of(space, sa["arch"]),
                   "a_search": {**sa, "arch": sa["arch"].to_text()}, "b_search": {**sb, "arch": sb["arch"].to_text()}}
            row["speedup_on_a"] = row["b_arch_on_a_us"] / row["a_arch_on_a_us"]
            row["speedup_on_b"] = row["a_arch_on_b_us"] / row["b_arch_on_b_us"]
            row["cross_product"] = row["speedup_on_a"] * row["speedup_on_b"]
            results.append(row)
            print(f"  target {frac:g} seed {seed}: A's arch {row['a_arch_on_a_us']:.0f} us on A "
                  f"({sa['error_pct']:+.1f} %), B's {row['b_arch_on_a_us']:.0f} ({row['speedup_on_a']:.3f}x); "
                  f"B's arch {row['b_arch_on_b_us']:.0f} us on B ({sb['error_pct']:+.1f} %), A's "
                  f"{row['a_arch_on_b_us']:.0f} ({row['speedup_on_b']:.3f}x); product {row['cross_product']:.3f}; "
                  f"max entropy {sa['max_entropy']:.2f} / {sb['max_entropy']:.2f}", flush=True)
            write(a, commit, results)
    prods = [r["cross_product"] for r in results]
    print(f"\ncross-latency product: median {statistics.median(prods):.3f}, range {min(prods):.3f}-{max(prods):.3f} "
          f"over {len(prods)} pairs of searches (goal >= 1.1)")
    print(f"wrote {a.json}")


def at_fraction(cost: V2Cost, frac: float) -> float:
    lo, hi = cost.range()
    return lo + frac * (hi - lo)


def versus_v1(a, commit: str, space, cost: V2Cost, sdata) -> None:
    """v2 against v1 at equal latency on one device's tables: per target and search seed, a v1 and a v2
    search at the same target, both children trained alike; v2's accuracy minus v1's."""
    from fbnet.client import get_table
    from fbnet.lut import build_lut
    from fbnet.space import get_space
    from search.select import latency_range
    from search.trainer import run_search, search_resolution

    v1space = get_space(a.v1_space)
    lut = build_lut(get_table(space=v1space.name, table_file=str(a.v1_table)), v1space)
    (lo1, hi1), (lo2, hi2) = latency_range(lut), cost.range()
    lo, hi = max(lo1, lo2), min(hi1, hi2)
    if lo >= hi:
        raise SystemExit(f"the tables' latency ranges do not overlap: v1 {lo1:.0f}-{hi1:.0f} us, v2 {lo2:.0f}-{hi2:.0f} us")
    v1data = load_dataset(a.data, search_resolution(SearchConfig(), v1space), subset=a.subset, seed=0)
    a.sdata, kids, kids1, results = sdata, Children(a, space), Children(a, v1space), []
    for frac in (float(f) for f in a.targets.split(",")):
        target = lo + frac * (hi - lo)
        for seed in range(a.search_seeds):
            s2 = search_on(a, space, cost, target, seed, f"v2-t{frac:g}")
            c0 = time.process_time()
            r1 = run_search(SearchConfig(epochs=a.epochs, seed=seed, target_ms=target / 1000), v1space, lut,
                            v1data, OUT / "search_quality_v2" / f"v1-t{frac:g}-s{seed}", RunOptions())
            row = {"fraction": frac, "target_us": target, "seed": seed,
                   "v1": {"arch": r1.arch.to_text(), "latency_us": r1.predicted_latency_us,
                          "error_pct": 100 * (r1.predicted_latency_us / target - 1),
                          "mflops": v1space.arch_mflops(r1.arch), "theta_entropy": r1.history[-1]["theta_entropy"],
                          "cpu_s": time.process_time() - c0, "accs": kids1.accs(r1.arch)},
                   "v2": {"arch": s2["arch"].to_text(), "latency_us": cost.of(space, s2["arch"]),
                          "error_pct": s2["error_pct"], "mflops": arch_summary(space, s2["arch"])["mflops"],
                          "max_entropy": s2["max_entropy"], "cpu_s": s2["cpu_s"], "accs": kids.accs(s2["arch"])}}
            for k in ("v1", "v2"):
                row[k]["acc"] = statistics.fmean(row[k]["accs"])
            row["v2_minus_v1"] = row["v2"]["acc"] - row["v1"]["acc"]
            results.append(row)
            print(f"  target {target:.0f} us ({frac:g}) seed {seed}: v1 {row['v1']['acc']:.3f} at "
                  f"{row['v1']['latency_us']:.0f} us, {row['v1']['mflops']:.1f} MFLOPs; v2 {row['v2']['acc']:.3f} at "
                  f"{row['v2']['latency_us']:.0f} us, {row['v2']['mflops']:.1f} MFLOPs; v2 - v1 {row['v2_minus_v1']:+.3f}",
                  flush=True)
            write(a, commit, results)
    print(f"\nv1 range {lo1:.0f}-{hi1:.0f} us, v2 range {lo2:.0f}-{hi2:.0f} us; v2 - v1 per search seed:")
    for frac in sorted({r["fraction"] for r in results}):
        diffs = [r["v2_minus_v1"] for r in results if r["fraction"] == frac]
        print(f"  {frac:g}: " + " ".join(f"{d:+.3f}" for d in diffs) + f"  (median {statistics.median(diffs):+.3f})")
    print(f"wrote {a.json}")


def rescore(a, commit: str, space) -> None:
    """The found architectures of an earlier ``--v1-table`` run, trained again with this run's child budget:
    is the accuracy gap between the spaces one of the child budget?"""
    from fbnet.arch_v2 import ArchV2
    from fbnet.space import Arch, get_space

    v1space = get_space(a.v1_space)
    kids, kids1, results = Children(a, space), Children(a, v1space), []
    for row in json.loads(a.rescore.read_text())["results"]:
        row = {**row, "rescored_from": str(a.rescore)}
        for k, sp_kids, parse in (("v1", kids1, Arch.parse), ("v2", kids, ArchV2.parse)):
            accs = sp_kids.accs(parse(row[k]["arch"]))
            row[k] = {**row[k], "accs_before": row[k]["accs"], "accs": accs, "acc": statistics.fmean(accs)}
        row["v2_minus_v1"] = row["v2"]["acc"] - row["v1"]["acc"]
        results.append(row)
        print(f"  target {row['target_us']:.0f} us seed {row['seed']}: v1 {row['v1']['acc']:.3f} (before "
              f"{statistics.fmean(row['v1']['accs_before']):.3f}), v2 {row['v2']['acc']:.3f} (before "
              f"{statistics.fmean(row['v2']['accs_before']):.3f}); v2 - v1 {row['v2_minus_v1']:+.3f}", flush=True)
        write(a, commit, results)
    print(f"wrote {a.json}")


def write(a, commit: str, results: list[dict]) -> None:
    a.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.json.with_suffix(".tmp")
    tmp.write_text(json.dumps({"date": datetime.now(UTC).isoformat(timespec="minutes"), "commit": commit,
                               "command": " ".join(sys.argv),
                               "args": {k: str(v) for k, v in vars(a).items() if k != "sdata"},
                               "results": results}, indent=1))
    tmp.replace(a.json)


if __name__ == "__main__":
    main()
