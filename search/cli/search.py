"""``fbnet-search fetch|predict|run|sample``: the commands that read a device's latency table.

Each reads its settings into typed configs (:mod:`search.config`: where the table comes from, the
search, the data, where the run writes; :class:`fbnet.configuration.Selector`: which configuration of
the table), calls the library and prints.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import typer
from rich.table import Table as RichTable

from fbnet.cli import Use, fail, options
from fbnet.configuration import Selector
from search.cli.common import (
    FMT_OPT,
    RUN_ENV_HELP,
    TOKEN_ENV_HELP,
    Fmt,
    build_lut,
    console,
    load_table,
    parse_arch,
    print_signal,
    read_arch,
    space_named,
    warn,
)
from search.config import SEARCH_PRESETS, DataConfig, Execution, SearchConfig, TableSource

commands = typer.Typer()
PRESETS = {name: {"search": values} for name, values in SEARCH_PRESETS.items()}
SERVER_ONLY = Use(TableSource, exclude=("table",), help={"server": "profiler service URL (required)",
                                                          "device": "device name (required)"})


@commands.command(epilog=TOKEN_ENV_HELP)
@options(source=SERVER_ONLY, selector=Selector)
def fetch(
    out: Path = typer.Option(None, "--out", "-o", help="also save the table here (for --table FILE)"),
    *, source: TableSource, selector: Selector,
):
    """Fetch a device's latency table of one configuration (cached, ETag-revalidated) and optionally save it.
    A v2 space (fbnetv2-cifar) gives its grid table (measured and fitted entries, the fit's held-out
    error), which ``run --space fbnetv2-cifar --table FILE`` takes."""
    from fbnet.client import TableClient, save_table
    from fbnet.lut import TableError, describe
    from fbnet.space_v2 import is_v2_space

    if source.server is None or source.device is None:
        fail("fetch needs --server and --device")
    name = source.space if is_v2_space(source.space) else space_named(source.space).name
    try:
        with TableClient(source.server, source.cache_dir, token=source.token, on_warning=warn) as client:
            got = client.fetch(source.device, name, selector)
    except TableError as e:
        fail(str(e))
    t = got.table
    console.print(describe(t), highlight=False, soft_wrap=True)
    console.print(f"{t.device}/{t.space}: version {t.version}, {_entries(t)}, "
                  f"{'complete' if t.complete else f'{len(t.missing)} missing'} (from {got.source})", highlight=False)
    if out is not None:
        save_table(t, out)
        console.print(f"saved to {out}")


def _entries(t) -> str:
    """"N entries" of a v1 table; a v2 grid's entries by source and its fit's held-out error."""
    if not hasattr(t, "counts"):
        return f"{len(t.entries)} entries"
    by = ", ".join(f"{n} {k}" for k, n in sorted(t.counts.items()))
    h = t.model.heldout if t.model else None
    err = (f"; the fit's held-out error {100 * h.within_10pct:.1f} % within ±10 %, MAPE {h.mape:.1f} %"
           if h and h.within_10pct is not None else "")
    return f"{sum(t.counts.values())} grid entries ({by}){err}"


@commands.command(epilog=TOKEN_ENV_HELP)
@options(source=TableSource, selector=Selector)
def predict(
    arch: str = typer.Option(..., "--arch", "-a", help="FBNet-A|B|C, 22 block names or 22 op indices; a v2 "
                             "space: a v2 architecture text (with its resolution) or FBNetV2-F1..L2"),
    fmt: Fmt = FMT_OPT,
    raw: bool = typer.Option(
        False, "--raw", help="price the raw medians (each op with the per-call overhead it paid alone) instead "
        "of the overhead-corrected values + the overhead once"),
    measured_only: bool = typer.Option(
        False, "--measured-only", help="v2 spaces: refuse fitted (model-predicted) entries of the grid table"),
    *, source: TableSource, selector: Selector,
):
    """An architecture's latency on a device: its ops' corrected table entries in their model context
    (the table's cost per MB of weights; identity skips as served) plus the per-call overhead once
    (fbnet.lut's one pricing rule). A v2 space (fbnetv2-cifar) is priced from the served grid table at
    the architecture's resolution, saying how many entries were measured and how many fitted."""
    from fbnet.lut import TableError
    from fbnet.lut import predict as _predict
    from fbnet.space_v2 import is_v2_space

    if is_v2_space(source.space):
        return _predict_v2(arch, fmt, raw, measured_only, source, selector)
    if measured_only:
        fail(f"--measured-only is for v2 spaces; every entry of a v1 table ({source.space}) is measured")
    s = space_named(source.space)
    a = parse_arch(arch)
    t = load_table(source, selector)
    try:
        out = _predict(t, a, s, pricing="raw" if raw else "corrected")
    except TableError as e:
        fail(str(e))
    if fmt == Fmt.json:
        cfg = t.configuration.model_dump() if t.configuration else None
        print(json.dumps({**out, "device": t.device, "space": s.name, "table_version": t.version,
                          "configuration": cfg}, indent=2))
        return
    _print_prediction(out, a, t.device)


def _predict_v2(arch: str, fmt: Fmt, raw: bool, measured_only: bool, source: TableSource, selector: Selector):
    from fbnet.arch_v2 import REFERENCES, ArchV2, ArchV2Error
    from fbnet.client import get_grid_table
    from fbnet.lut import TableError
    from fbnet.lut_v2 import predict_v2
    from fbnet.space_v2 import get_v2_space

    if raw:
        fail("--raw is for v1 tables; a v2 grid serves corrected entries (measured or fitted)")
    if source.server is None or source.device is None or source.table is not None:
        fail("a v2 space is priced from the served grid table: give --server and --device (no --table)")
    s = get_v2_space(source.space)
    named = {n.lower(): a for n, a in REFERENCES.items()}
    try:
        a = named.get(arch.strip().lower()) or ArchV2.parse(arch)
        s.check_arch(a)
        t = get_grid_table(space=s.name, server=source.server, device=source.device, cache_dir=source.cache_dir,
                           token=source.token, on_warning=warn, selector=selector, measured_only=measured_only)
        out = predict_v2(t, s, a, measured_only=measured_only)
    except (ArchV2Error, TableError) as e:
        fail(str(e))
    h = t.model.heldout if t.model else None
    if fmt == Fmt.json:
        cfg = t.configuration.model_dump() if t.configuration else None
        print(json.dumps({**out, "arch": a.to_text(), "device": t.device, "space": s.name, "configuration": cfg,
                          "heldout": h.model_dump() if h else None}, indent=2))
        return
    rt = RichTable("op", "latency (us)", "source", title=f"{a.to_text()} on {t.device}")
    for p in out["per_op"]:
        rt.add_row(p["key"], f"{p['latency_us']:.2f}", p["source"])
    console.print(rt)
    src = ", ".join(f"{n} {k}" for k, n in sorted(out["sources"].items()))
    err = f"; the model's held-out error: {100 * h.within_10pct:.1f} % within ±10 %, MAPE {h.mape:.1f} %" if (
        h and h.within_10pct is not None) else ""
    console.print(f"[bold]{out['latency_us']:.1f} us[/bold] ({out['latency_us'] / 1000:.3f} ms at resolution "
                  f"{a.resolution}; corrected entries + overhead {out['overhead_us']:.1f} us once; entries: {src}{err})",
                  highlight=False)


def _print_prediction(out: dict, a, device: str) -> None:
    rt = RichTable("op", "latency (us)", title=f"{a} on {device}")
    for p in out["per_op"]:
        rt.add_row(p["key"], f"{p['latency_us']:.2f}")
    console.print(rt)
    ctx = (f"; in-model context {out['context_us_per_mb']:.1f} us per MB of weights"
           if out["context_us_per_mb"] is not None
           else f"; context factor {out['context_factor']:.3f}" if out["context_factor"] != 1.0 else "")
    console.print(f"[bold]{out['latency_us']:.1f} us[/bold] ({out['latency_us'] / 1000:.3f} ms; {out['pricing']} "
                  f"pricing, overhead {out['overhead_us']:.1f} us once{ctx}; raw sum {out['raw_sum_us']:.1f} us)")


@commands.command(epilog=RUN_ENV_HELP)
@options(presets=PRESETS, config_file=True, source=TableSource, selector=Selector, data=DataConfig,
         search=SearchConfig, execution=Execution)
def run(
    paper: bool = typer.Option(False, "--paper", hidden=True, help="replaced by --preset paper"),
    *, source: TableSource, selector: Selector, data: DataConfig, search: SearchConfig, execution: Execution,
):
    """FBNet DNAS on a device's latency table; writes DIR/arch.json (under torchrun too). A v2 space
    (--space fbnetv2-cifar): the DMaskingNAS search priced by --cost latency|flops|params.

    --preset paper: the paper's setting (90 epochs, full net); --config FILE: a TOML file of these options (names with _); explicit options win. history.csv: per epoch tau, theta entropy, theta steps.
    """
    from fbnet.space_v2 import is_v2_space
    from search.dist import cleanup_distributed, setup_distributed

    if paper:
        fail("--paper is now --preset paper")
    if is_v2_space(source.space):
        from search.cli.search_v2 import run_v2

        return run_v2(source, selector, data, search, execution)
    if search.cost != "latency" or search.target_mflops is not None or search.target_mparams is not None:
        fail(f"--cost flops|params and --target-mflops/--target-mparams are for v2 spaces (fbnetv2-cifar); "
             f"{source.space} searches latency (--target-ms)")
    env = setup_distributed(prefer_cuda=not execution.cpu)
    try:
        table = load_table(source, selector)
        lut = build_lut(space_named(source.space), table)
        res = _search(lut, table.configuration, source, data, search, execution, env)
    finally:
        cleanup_distributed()
    if env.main:
        _print_search(res, lut, search, execution.out)


def _search(lut, conf, source: TableSource, data: DataConfig, search: SearchConfig, execution: Execution, env):
    """Load the data at the search's resolution and search (a bad dataset or resume: one line, exit 2)."""
    from fbnet.progress import progress
    from search.config import TrainError
    from search.data import DataError, load_dataset
    from search.trainer import RunOptions, run_search, search_resolution

    s = space_named(source.space)
    run_options = RunOptions(env=env, progress=partial(progress, enabled=execution.progress),
                             tensorboard=execution.tensorboard,
                             table_configuration=None if conf is None else conf.model_dump())
    try:
        ds = load_dataset(data.data, search_resolution(search, s), subset=data.subset, seed=search.seed,
                          num_classes=s.num_classes)
        return run_search(search, s, lut, ds, execution.out, run_options, resume=execution.resume)
    except (DataError, TrainError) as e:
        fail(str(e))


def _print_search(res, lut, search: SearchConfig, out: Path) -> None:
    last = res.history[-1] if res.history else {}
    console.print(f"[bold]{res.arch}[/bold]", highlight=False)
    target_ms = search.target_ms
    aim = "" if target_ms is None else f" (target {target_ms:g} ms: {res.predicted_latency_us / 10 / target_ms - 100:+.1f} %)"
    console.print(f"predicted {res.predicted_latency_us:.1f} us on {lut.device}{aim} (table {lut.table_version}); "
                  f"expected {last.get('expected_latency_us', float('nan')):.1f} us under softmax(theta), "
                  f"theta entropy {last.get('theta_entropy', float('nan')):.3f} after "
                  f"{last.get('theta_steps', 0)} theta steps; wrote {out / 'arch.json'}", highlight=False)
    print_signal(res.history)


@commands.command(epilog=TOKEN_ENV_HELP)
@options(source=Use(TableSource, exclude=("space",),
                    help={"device": "device on the server (default: the device of arch.json)"}), selector=Selector)
def sample(
    from_file: Path = typer.Option(..., "--from", help="DIR or DIR/arch.json written by `run`"),
    k: int = typer.Option(5, "-k", help="how many architectures to draw from softmax(theta)"),
    seed: int = typer.Option(0, "--seed"),
    fmt: Fmt = FMT_OPT,
    *, source: TableSource, selector: Selector,
):
    """The most likely architecture and K samples from softmax(theta), each with its table latency."""
    from search.sampling import argmax_arch, describe, sample_archs

    doc = read_arch(from_file)
    if doc.theta is None or doc.space is None:
        fail(f"{from_file}: no theta/space (not written by `fbnet-search run`)")
    if k < 0:
        fail(f"-k must be >= 0, got {k}")
    s = space_named(doc.space)
    update = {"space": s.name, **({"device": doc.device} if source.table is None and source.device is None else {})}
    lut = build_lut(s, load_table(source.model_copy(update=update), selector))
    theta = doc.theta
    rows = describe(theta, [argmax_arch(theta)], lut) + describe(theta, sample_archs(theta, k, seed), lut)
    if fmt == Fmt.json:
        print(json.dumps({"space": s.name, "device": lut.device, "table_version": lut.table_version,
                          "argmax": rows[0], "samples": rows[1:]}, indent=2))
        return
    rt = RichTable("", "latency (us)", "log p", "architecture", title=f"{s.name} on {lut.device}")
    for i, r in enumerate(rows):
        rt.add_row("argmax" if i == 0 else str(i), f"{r['latency_us']:.1f}", f"{r['log_prob']:.2f}",
                   ",".join(r["arch"]))
    console.print(rt)
