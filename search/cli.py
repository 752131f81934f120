"""`fbnet-search`: inspect spaces and architectures, search, predict, sample, train, export."""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table as RichTable

from fbnet.cli import EXIT_CODES_HELP, Exit, fail, make_selector
from fbnet.cli import run as run_app
from fbnet.space import Arch, ArchError, SpaceError, get_space

app = typer.Typer(
    help="FBNet differentiable architecture search on per-device latency tables. " + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)


class Fmt(StrEnum):
    text = "text"
    json = "json"


def _space(name: str):
    try:
        return get_space(name)
    except SpaceError as e:
        fail(str(e))


def _arch(text: str) -> Arch:
    try:
        return Arch.parse(text)
    except ArchError as e:
        fail(str(e))


SPACE_OPT = typer.Option("fbnet-cifar", "--space", "-s", help="fbnet-224, fbnet-cifar or fbnet-<res>[-w<width>]")


SERVER_OPT = typer.Option(None, "--server", help="profiler service URL, e.g. http://127.0.0.1:8000")
DEVICE_OPT = typer.Option(None, "--device", "-d", help="device name on the server (whose table to use)")
TABLE_OPT = typer.Option(None, "--table", help="a saved table JSON instead of --server (see `fetch`)")
CACHE_OPT = typer.Option(Path(".fbnet-cache"), "--cache-dir", help="where fetched tables are cached (ETag)")
TOKEN_OPT = typer.Option(None, "--token", envvar="FBNET_TOKEN", help="reader token, if the server requires one")
# The table's configuration (GET /tables selectors); unset: the device's newest complete configuration.
_CFG = "Table configuration"
PRECISION_OPT = typer.Option(None, "--precision", help="fp32, fp16 or int8", rich_help_panel=_CFG)
THREADS_OPT = typer.Option(None, "--threads", help="threads the table was measured with", rich_help_panel=_CFG)
CPU_MASK_OPT = typer.Option(None, "--cpu-mask", help="CPU mask the table was measured with", rich_help_panel=_CFG)
UNITS_OPT = typer.Option(None, "--compute-units", help="Core ML: cpu, gpu, ane or all", rich_help_panel=_CFG)
RTV_OPT = typer.Option(None, "--runtime-version", help="the runtime version measured", rich_help_panel=_CFG)
UNSTABLE_OPT = typer.Option(False, "--include-unstable", help="also use runs marked unstable", rich_help_panel=_CFG)


def _warn(msg: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {msg}", highlight=False, soft_wrap=True)


def _table(space, server, device, table_file, cache_dir, token, selector=None):
    from fbnet.client import get_table
    from fbnet.lut import TableError, describe

    try:
        t = get_table(space=space.name, server=server, device=device, table_file=table_file, cache_dir=cache_dir,
                      token=token, on_warning=_warn, selector=selector)
    except TableError as e:
        fail(str(e))
    err.print(describe(t), highlight=False, soft_wrap=True)
    return t


def _lut(space, table):
    from fbnet.lut import TableError, build_lut

    try:
        return build_lut(table, space)
    except TableError as e:
        fail(str(e))


def _arch_file(path: Path):
    from fbnet.archfile import ArchFileError, read_arch_file

    try:
        return read_arch_file(path)
    except ArchFileError as e:
        fail(str(e))


def _arch_from(arch_text: str | None, from_file: Path | None) -> tuple[Arch, dict]:
    if (arch_text is None) == (from_file is None):
        fail("give exactly one of --arch ARCH or --from DIR/arch.json")
    if arch_text is not None:
        return _arch(arch_text), {}
    doc = _arch_file(from_file)
    return doc.architecture, {k: v for k, v in {"arch": doc.arch, "space": doc.space}.items() if v is not None}


@app.command()
def fetch(
    server: str = typer.Option(..., "--server", help="profiler service URL"),
    device: str = typer.Option(..., "--device", "-d", help="device name"),
    space: str = SPACE_OPT,
    out: Path = typer.Option(None, "--out", "-o", help="also save the table here (for --table FILE)"),
    cache_dir: Path = CACHE_OPT,
    token: str = TOKEN_OPT,
    precision: str = PRECISION_OPT, threads: int = THREADS_OPT, cpu_mask: str = CPU_MASK_OPT,
    compute_units: str = UNITS_OPT, runtime_version: str = RTV_OPT, include_unstable: bool = UNSTABLE_OPT,
):
    """Fetch a device's latency table of one configuration (cached, ETag-revalidated) and optionally save it."""
    from fbnet.client import TableClient, save_table
    from fbnet.lut import TableError, describe

    s = _space(space)
    sel = make_selector(precision, threads, cpu_mask, compute_units, runtime_version, include_unstable)
    try:
        with TableClient(server, cache_dir, token=token, on_warning=_warn) as client:
            got = client.fetch(device, s.name, sel)
    except TableError as e:
        fail(str(e))
    t = got.table
    console.print(describe(t), highlight=False, soft_wrap=True)
    console.print(f"{t.device}/{t.space}: version {t.version}, {len(t.entries)} entries, "
                  f"{'complete' if t.complete else f'{len(t.missing)} missing'} (from {got.source})", highlight=False)
    if out is not None:
        save_table(t, out)
        console.print(f"saved to {out}")


@app.command()
def predict(
    arch: str = typer.Option(..., "--arch", "-a", help="FBNet-A|B|C, 22 block names or 22 op indices"),
    space: str = SPACE_OPT,
    server: str = SERVER_OPT,
    device: str = DEVICE_OPT,
    table: Path = TABLE_OPT,
    cache_dir: Path = CACHE_OPT,
    token: str = TOKEN_OPT,
    fmt: Fmt = typer.Option(Fmt.text, "--format", help="text or json"),
    raw: bool = typer.Option(
        False, "--raw", help="price the raw medians (each op with the per-call overhead it paid alone) instead "
        "of the overhead-corrected values + the overhead once"),
    precision: str = PRECISION_OPT, threads: int = THREADS_OPT, cpu_mask: str = CPU_MASK_OPT,
    compute_units: str = UNITS_OPT, runtime_version: str = RTV_OPT, include_unstable: bool = UNSTABLE_OPT,
):
    """An architecture's latency on a device: its ops' corrected table entries in their model context
    (the table's cost per MB of weights; identity skips as served) plus the per-call overhead once
    (fbnet.lut's one pricing rule)."""
    from fbnet.lut import TableError
    from fbnet.lut import predict as _predict

    s = _space(space)
    a = _arch(arch)
    sel = make_selector(precision, threads, cpu_mask, compute_units, runtime_version, include_unstable)
    t = _table(s, server, device, table, cache_dir, token, sel)
    try:
        out = _predict(t, a, s, pricing="raw" if raw else "corrected")
    except TableError as e:
        fail(str(e))
    if fmt == Fmt.json:
        cfg = t.configuration.model_dump() if t.configuration else None
        print(json.dumps({**out, "device": t.device, "space": s.name, "table_version": t.version,
                          "configuration": cfg}, indent=2))
        return
    rt = RichTable("op", "latency (us)", title=f"{a} on {t.device}")
    for p in out["per_op"]:
        rt.add_row(p["key"], f"{p['latency_us']:.2f}")
    console.print(rt)
    ctx = (f"; in-model context {out['context_us_per_mb']:.1f} us per MB of weights"
           if out["context_us_per_mb"] is not None
           else f"; context factor {out['context_factor']:.3f}" if out["context_factor"] != 1.0 else "")
    console.print(f"[bold]{out['latency_us']:.1f} us[/bold] ({out['latency_us'] / 1000:.3f} ms; {out['pricing']} "
                  f"pricing, overhead {out['overhead_us']:.1f} us once{ctx}; raw sum {out['raw_sum_us']:.1f} us)")


@app.command()
def run(
    server: str = SERVER_OPT,
    device: str = DEVICE_OPT,
    table: Path = TABLE_OPT,
    space: str = SPACE_OPT,
    data: str = typer.Option("fashion-mnist", "--data", help="fashion-mnist, digits, or a folder (CIFAR-10 "
                             "python format or ImageFolder)"),
    target_ms: float = typer.Option(None, "--target-ms", help="latency target: end on the most likely "
                                    "architecture within +-5 % of it (theta: CE + a two-sided hinge on "
                                    "E(latency)/T). Without it: the paper's alpha/beta loss"),
    epochs: int = typer.Option(None, "--epochs", help="total epochs, warm-up included (default 10; paper 90)"),
    warmup_epochs: int = typer.Option(None, "--warmup-epochs", help="first epochs train only the weights "
                                      "(default epochs/9, the paper's 10 of 90)"),
    sampler: str = typer.Option(None, "--sampler", help="gumbel: all 9 candidates mixed by a Gumbel-softmax "
                                "sample (the paper's; the default: the supernet learns); single: hard Gumbel, "
                                "straight-through, only the sampled candidate runs (GDAS; ~9x cheaper per step, "
                                "but its weights stay near chance in a short search)"),
    weight_mix: str = typer.Option(None, "--weight-mix", help="gumbel sampler, what the weight step mixes: "
                                   "expected (softmax(theta), no noise; the default: learns fastest, measured) or "
                                   "sample (a Gumbel-softmax sample at tau, as theta's step: the paper's)"),
    weights: str = typer.Option(None, "--weights", help="independent: 9 separate modules per layer (default, "
                                "paper); shared: a layer's 8 inverted-residual candidates are slices of one set of "
                                "weights (experimental)"),
    anchor: bool = typer.Option(None, "--anchor/--no-anchor", help="each weight step also trains the largest "
                                "candidate in every layer, stem/head/fc from that path only (experimental; default off)"),
    proxy_width: float = typer.Option(None, "--proxy-width", help="supernet width multiplier (accuracy proxy; "
                                      "latency is always the target table's) (default 0.25; paper 1)"),
    proxy_resolution: int = typer.Option(None, "--proxy-resolution", help="search input resolution, 0 = the "
                                         "space's (default 8; paper 0)"),
    paper: bool = typer.Option(False, "--paper", help="the paper's setting: gumbel (as the default), independent "
                               "weights, no proxy, 90 epochs (10 warm-up), theta lr 0.01, theta batch = batch "
                               "(explicit options still win)"),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="per process (torchrun: per rank)"),
    alpha: float = typer.Option(0.2, "--alpha", help="loss = CE * alpha * log(LAT_us)^beta; 0 = plain CE"),
    beta: float = typer.Option(0.6, "--beta", help="latency exponent (sets the latency pressure)"),
    lr: float = typer.Option(None, "--lr", help="weight SGD lr (default 0.1 * global batch / 192)"),
    theta_lr: float = typer.Option(None, "--theta-lr", help="Adam lr of theta (default 0.3; paper 0.01)"),
    subset: int = typer.Option(None, "--subset", help="use N training images (and N/5, >= 200, test images)"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("runs/search"), "--out", "-o", help="output folder (arch.json, history.csv, "
                             "tb/, checkpoint.pt)"),
    resume: bool = typer.Option(False, "--resume", help="continue from DIR/checkpoint.pt"),
    cache_dir: Path = CACHE_OPT,
    token: str = TOKEN_OPT,
    cpu: bool = typer.Option(False, "--cpu", help="stay on the CPU even if CUDA is available"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar (one plain line per "
                                  "epoch when no terminal is attached)"),
    tensorboard: bool = typer.Option(True, "--tensorboard/--no-tensorboard", help="write DIR/tb"),
    precision: str = PRECISION_OPT, threads: int = THREADS_OPT, cpu_mask: str = CPU_MASK_OPT,
    compute_units: str = UNITS_OPT, runtime_version: str = RTV_OPT, include_unstable: bool = UNSTABLE_OPT,
):
    """FBNet DNAS on a device's latency table; writes DIR/arch.json. Runs under torchrun as well.

    tau anneals from 5 at the first theta epoch (after the warm-up) to 0.087 at the last, whatever the
    run's length; theta_entropy (mean per-layer
    entropy of softmax(theta), nats; 2.197 = uniform) and the theta steps are in history.csv."""
    from search.config import PAPER, SearchConfig, TrainError
    from search.data import DataError, load_dataset
    from search.dist import cleanup_distributed, setup_distributed
    from search.trainer import run_search, search_resolution

    s = _space(space)
    sel = make_selector(precision, threads, cpu_mask, compute_units, runtime_version, include_unstable)
    env = setup_distributed(prefer_cuda=not cpu)
    try:
        t = _table(s, server, device, table, cache_dir, token, sel)
        lut = _lut(s, t)
        given = dict(epochs=epochs, warmup_epochs=warmup_epochs, sampler=sampler, weight_mix=weight_mix, weights=weights, anchor=anchor,
                     proxy_width=proxy_width,
                     proxy_resolution=proxy_resolution, theta_lr=theta_lr)
        opts = {**(PAPER if paper else {}), **{k: v for k, v in given.items() if v is not None}}
        if opts.get("proxy_resolution") == 0:
            opts["proxy_resolution"] = None
        cfg = SearchConfig(**opts, batch_size=batch_size, alpha=alpha, beta=beta, w_lr=lr, seed=seed,
                           target_us=None if target_ms is None else target_ms * 1000)
        conf = getattr(t, "configuration", None)
        try:
            cfg.validate()
            ds = load_dataset(data, search_resolution(cfg, s), subset=subset, seed=seed, num_classes=s.num_classes)
            res = run_search(cfg, s, lut, ds, out, resume=resume, progress=progress, tensorboard=tensorboard,
                             env=env, table_configuration=conf.model_dump() if hasattr(conf, "model_dump") else conf)
        except (DataError, TrainError) as e:
            fail(str(e))
    finally:
        cleanup_distributed()
    if env.main:
        last = res.history[-1] if res.history else {}
        console.print(f"[bold]{res.arch}[/bold]", highlight=False)
        aim = "" if target_ms is None else f" (target {target_ms:g} ms: {res.predicted_latency_us / 10 / target_ms - 100:+.1f} %)"
        console.print(f"predicted {res.predicted_latency_us:.1f} us on {lut.device}{aim} (table {lut.table_version}); "
                      f"expected {last.get('expected_latency_us', float('nan')):.1f} us under softmax(theta), "
                      f"theta entropy {last.get('theta_entropy', float('nan')):.3f} after "
                      f"{last.get('theta_steps', 0)} theta steps; wrote {out / 'arch.json'}", highlight=False)


@app.command()
def sample(
    from_file: Path = typer.Option(..., "--from", help="DIR or DIR/arch.json written by `run`"),
    k: int = typer.Option(5, "-k", help="how many architectures to draw from softmax(theta)"),
    server: str = SERVER_OPT,
    device: str = typer.Option(None, "--device", "-d", help="(default: the device of arch.json)"),
    table: Path = TABLE_OPT,
    cache_dir: Path = CACHE_OPT,
    token: str = TOKEN_OPT,
    seed: int = typer.Option(0, "--seed"),
    fmt: Fmt = typer.Option(Fmt.text, "--format", help="text or json"),
):
    """The most likely architecture and K samples from softmax(theta), each with its table latency."""
    from search.sampling import argmax_arch, describe, sample_archs

    doc = _arch_file(from_file)
    if doc.theta is None or doc.space is None:
        fail(f"{from_file}: no theta/space (not written by `fbnet-search run`)")
    if k < 0:
        fail(f"-k must be >= 0, got {k}")
    s = _space(doc.space)
    if table is None and device is None:
        device = doc.device
    lut = _lut(s, _table(s, server, device, table, cache_dir, token))
    theta = doc.theta
    rows = describe(theta, [argmax_arch(theta)], lut) + describe(theta, sample_archs(theta, k, seed), lut)
    result = {"space": s.name, "device": lut.device, "table_version": lut.table_version,
              "argmax": rows[0], "samples": rows[1:]}
    if fmt == Fmt.json:
        print(json.dumps(result, indent=2))
        return
    rt = RichTable("", "latency (us)", "log p", "architecture", title=f"{s.name} on {lut.device}")
    for i, r in enumerate(rows):
        rt.add_row("argmax" if i == 0 else str(i), f"{r['latency_us']:.1f}", f"{r['log_prob']:.2f}",
                   ",".join(r["arch"]))
    console.print(rt)


def main() -> None:
    # Third-party progress bars (coremltools' MIL pipeline, via tqdm) stay out of the user's log; our own
    # progress is fbnet.cli's. Set before torch (which imports tqdm); TQDM_DISABLE=0 brings them back.
    os.environ.setdefault("TQDM_DISABLE", "1")
    from fbnet.archfile import ArchFileError
    from fbnet.export import ExportError
    from search.config import TrainError
    from search.data import DataError

    run_app(app, [((DataError, ArchFileError), Exit.BAD_INPUT), ((TrainError, ExportError), Exit.FAILED)])


# The other commands, registered on ``app`` (at the end: they import this module's helpers).
from search import cli_child, cli_space  # noqa: E402,F401

if __name__ == "__main__":  # `python -m search.cli` (torchrun): run the imported module's app
    from search.cli import main as _main

    _main()
