"""`make demo DEMO_ARGS=--space fbnetv2-cifar`: the loop of demo.py on an FBNetV2 space.

The grid of fbnetv2-cifar (about 20 k op configurations) is too large to measure op by op, so step 3 is
a **sampled profile**: the service plans batches of ops (a space-filling design, then the ops where its
latency model is least sure), the agent measures them, and the service fits its model and serves
every entry of the grid marked measured or fitted, with the fit's held-out error. The search is the
DMaskingNAS one (masked supernet over block types, widths, expansions and the input resolution)
priced from that grid; the child is built from arch.json at the chosen widths and resolution without
masks, trained, exported, measured whole and uploaded against the grid's prediction.

The steps are the commands a user would type; the functions here only run them and read their files.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from fbnet.archfile import read_arch_file
from fbnet.client import ServiceClient, get_grid_table
from fbnet.configuration import Selector
from fbnet.space_v2 import get_v2_space

TOTAL = 8


def profile(d, step, console):
    """A sampled profile of ``--budget`` ops; returns the served grid table (measured + fitted)."""
    a = d.a
    step(3, TOTAL, f"sampled profile of {a.space} on the host: {a.budget} ops planned by the service "
                   f"(design of {a.design}, then batches of {a.batch} where its model is least sure)")
    d.timed("profile", lambda: d.agent("profile", "--transport", "host", *d.common, "--budget", a.budget,
                                       "--batch", a.batch, "--design", a.design))
    t = get_grid_table(space=a.space, server=d.server.url, device=d.device, cache_dir=d.cache / "tables")
    console.print(f"grid table {t.version}: {_counts(t)}; the fit's held-out error: {_share(t)} within ±10 %, "
                  f"MAPE {_mape(t)}")
    return t


def _counts(t) -> str:
    return ", ".join(f"{n} {source}" for source, n in sorted(t.counts.items()))


def _share(t) -> str:
    v = t.model.heldout.within_10pct if t.model is not None else None
    return "n/a" if v is None else f"{100 * v:.0f} %"


def _mape(t) -> str:
    v = t.model.heldout.mape if t.model is not None else None
    return "n/a" if v is None else f"{v:.1f} %"


def cost_of(d):
    """The search's own pricing of the grid (search.cli.search_v2.v2_cost: corrected entries, the in-model
    context and the per-call overhead), so the demo's target and random archs use the search's numbers."""
    from search.cli.search_v2 import v2_cost
    from search.config import SearchConfig, TableSource

    src = TableSource(space=d.a.space, server=d.server.url, device=d.device, cache_dir=d.cache / "tables")
    return v2_cost(SearchConfig(cost="latency"), src, Selector(), get_v2_space(d.a.space))


def search(d, cost, step, sh, bin_dir: Path):
    a = d.a
    lo, hi = cost.range()
    target_ms = (lo + a.target * (hi - lo)) / 1000
    step(4, TOTAL, f"DMaskingNAS search on {a.data} with the host grid, target {target_ms:.3f} ms "
                   f"({100 * a.target:.0f} % of the range {lo / 1000:.3f}..{hi / 1000:.3f} ms)")
    d.timed("search", lambda: sh(
        bin_dir / "fbnet-search", "run", "--server", d.server.url, "--device", d.device, "--space", a.space,
        "--cost", "latency", "--data", a.data, "--epochs", a.epochs, "--target-ms", f"{target_ms:.4f}",
        "--subset", a.subset, "--seed", a.seed, "--out", d.out / "search", "--cache-dir", d.cache / "tables"))
    return read_arch_file(d.out / "search")


def train(d, cost, found, step, sh, bin_dir: Path) -> list[tuple]:
    """The found architecture and random ones uniform in predicted latency within +-5 % of it
    (search.band_v2), each trained with the same budget: (architecture, predicted us, accuracy)."""
    from search.band_v2 import uniform_in_band_v2

    a, space = d.a, get_v2_space(d.a.space)
    step(5, TOTAL, f"train the found architecture and {a.randoms} random ones uniform in latency within "
                   f"±5 % of it, same budget")
    arch = found.architecture
    pred = cost.of(space, arch)
    randoms = uniform_in_band_v2(space, cost.tables, (0.95 * pred - cost.offset, 1.05 * pred - cost.offset),
                                 a.randoms, seed=a.seed, bins=max(1, min(4, a.randoms))) if a.randoms else []
    trained = []
    for i, arch_ in enumerate([arch, *randoms]):
        child_dir = d.out / ("child" if i == 0 else f"random-{i}")
        source = ["--from", d.out / "search"] if i == 0 else ["--arch", arch_.to_text(), "--space", a.space]
        d.timed(f"train {i}", lambda source=source, child_dir=child_dir: sh(
            bin_dir / "fbnet-search", "train", *source, "--data", a.data, "--epochs", a.child_epochs,
            "--subset", a.child_subset, "--seed", a.seed, "--out", child_dir))
        trained.append((arch_, cost.of(space, arch_), json.loads((child_dir / "child.json").read_text())["test_acc"]))
    return trained


def plots(d, step) -> tuple[Path, dict]:
    """The service's v2 figures (latency against width for a layer: measured points over the fitted
    staircase; predicted vs measured whole models) and its validation summary."""
    step(8, TOTAL, "plots: latency against width (measured over the fitted model), predicted vs measured")
    folder = d.out / "plots"
    folder.mkdir()
    space, device = d.a.space, d.device
    with httpx.Client(base_url=d.server.url, timeout=60) as c:
        for name, path in [("width-layer5.png", f"/plots/width/{device}.png?space={space}&layer=5"),
                           ("width-layer20.png", f"/plots/width/{device}.png?space={space}&layer=20"),
                           ("validations.png", f"/plots/validations/{device}.png?space={space}")]:
            r = c.get(path)
            r.raise_for_status()
            (folder / name).write_bytes(r.content)
    with ServiceClient(d.server.url, timeout_s=60) as sc:
        summary = sc.validations(device, space).model_dump(mode="json")
    return folder, summary


def report_rows(d, table, found, trained, summary) -> list[tuple[str, str]]:
    """The demo's closing table for a v2 run (demo.report prints it)."""
    a = d.a
    cfg = found.config or {}
    ents = cfg.get("entropies") or {}
    child = json.loads((d.out / "child" / "child.json").read_text())
    mine = next(v for v in summary["validations"] if v["arch"] == found.arch.split(","))
    target_us = 1000 * found.target_ms
    rows = [
        ("device / space", f"{d.device} / {a.space}  (grid {table.version}: {_counts(table)}; "
                           f"fit held-out {_share(table)} within ±10 %, MAPE {_mape(table)})"),
        ("found architecture", found.arch),
        ("search", f"target {target_us:.0f} us, predicted {found.predicted_latency_us:.0f} us "
                   f"({100 * (found.predicted_latency_us / target_us - 1):+.1f} %); largest entropies "
                   + ", ".join(f"{k} {v:.2f}" for k, v in ents.items()) + f" nats after {found.theta_steps} theta steps"),
        ("child accuracy", f"{100 * child['test_acc']:.1f}% on {a.data} test ({a.child_epochs} epochs, "
                           f"{a.child_subset} images)"),
        ("found vs random\n(uniform in ±5 %, same budget)", "\n".join(
            f"{'found ' if i == 0 else 'random'} {lat:7.0f} us  acc {100 * acc:5.1f}%  {arch.to_text()[:60]}"
            for i, (arch, lat, acc) in enumerate(trained))),
        ("predicted latency", f"{mine['predicted_us']:.0f} us (measured and fitted grid entries)"),
        ("measured latency", f"{mine['measured_us']:.0f} us  (whole .pte, median of {mine['n']})"),
        ("error", f"{mine['error_pct']:+.1f}%"),
        ("all validations", f"{summary['count']} archs: MAPE {summary['mape']:.1f}%, within ±10% "
                            f"{100 * summary['within_10pct']:.0f}%, Kendall tau {summary['kendall_tau']:.2f}"),
    ]
    return rows


__all__ = ["TOTAL", "cost_of", "plots", "profile", "report_rows", "search", "train"]
