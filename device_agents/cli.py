"""``fbnet-agent``: export the ops of a space, time them on a target, upload; validate whole models."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from device_agents.targets import Target, TransportName, default_cache_dir, export_ops, select_ops
from fbnet.cli import EXIT_CODES_HELP, Exit, fail, make_selector, run

app = typer.Typer(help="fbnet-lut device agent: profile operators and whole models on a target. " + EXIT_CODES_HELP,
                  no_args_is_help=True, add_completion=False)


class Fmt(StrEnum):
    pte = "pte"
    mlpackage = "mlpackage"


class ComputeUnits(StrEnum):
    cpu = "cpu"
    gpu = "gpu"
    ane = "ane"
    all = "all"


# ---- shared options --------------------------------------------------------------------------
Server = Annotated[str, typer.Option("--server", envvar="FBNET_SERVER", help="profiler service URL")]
Device = Annotated[str, typer.Option("--device", help="device name registered on the service")]
Token = Annotated[str, typer.Option("--token", envvar="FBNET_AGENT_TOKEN", help="the device's agent token")]
SpaceOpt = Annotated[str, typer.Option("--space", help="fbnet-224, fbnet-cifar or fbnet-<res>[-w<width>]")]
TransportOpt = Annotated[TransportName, typer.Option("--transport", help=(
    "where the ops run: host (pybindings in this process), native (our C++ fbnet-runner on this machine), "
    "adb (an Android phone), ios (an iPhone)"))]
Warmup = Annotated[int, typer.Option(min=0, help="untimed executions before the timed ones, same process")]
Repeats = Annotated[int, typer.Option(min=1, help="timed executions per op per round")]
Rounds = Annotated[int, typer.Option(min=1, help="interleaved rounds over the op list (shuffled per round)")]
Threads = Annotated[int, typer.Option(min=1, help="runtime threads (host and adb)")]
CpuMask = Annotated[str | None, typer.Option("--cpu-mask", help="hex CPU mask (taskset), e.g. 80 = cpu7, f0 = cpu4-7")]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help="export cache [default: ~/.cache/fbnet-agent/exports]")]
SpoolDir = Annotated[Path | None, typer.Option("--spool-dir", help="unsent results [default: ~/.cache/fbnet-agent/spool]")]
Jobs = Annotated[int, typer.Option(min=1, help="export worker processes for cold exports")]
Seed = Annotated[int, typer.Option(help="seed of the per-round op order (and of random archs)")]
CvThreshold = Annotated[float, typer.Option("--cv-threshold", help="re-measure ops whose CV is above this")]
Cooldown = Annotated[float, typer.Option("--cooldown", min=0, help="seconds to rest after each op")]
Retries = Annotated[int, typer.Option(min=0, help="retries per request (exponential backoff) before spooling")]
Serial = Annotated[str | None, typer.Option("--serial", help="adb: device serial (adb -s)")]
Runner = Annotated[Path | None, typer.Option("--runner", help=(
    "adb: fbnet-runner or upstream executor_runner built for the phone (android/build_runner.sh); "
    "native: fbnet-runner [default: $FBNET_RUNNER, else build/runner/fbnet-runner from `make runner`]"))]
AdbPath = Annotated[str, typer.Option("--adb", help="adb: the adb executable")]
Udid = Annotated[str | None, typer.Option("--udid", help="ios: the iPhone's UDID / CoreDevice id")]
BundleId = Annotated[str, typer.Option("--bundle-id", help="ios: bundle id of the CoreMLBench app")]
Units = Annotated[ComputeUnits, typer.Option("--compute-units", help="ios: Core ML compute units")]
Xcrun = Annotated[str, typer.Option("--xcrun", help="ios: the xcrun executable")]
_P = "Protocol under noise"
SETTLE_TAU = 0.95  # validate: more rounds while the models' split-half tau is below this (bench/README.md, "Table fidelity")
RefOps = Annotated[int, typer.Option("--reference-ops", min=0, rich_help_panel=_P, help=(
    "reference ops timed in every round: their per-round medians give the round factors (normalisation, "
    "unstable flag); validate: table ops timed with the models (the device's drift)"))]
Normalize = Annotated[bool, typer.Option("--normalize/--no-normalize", rich_help_panel=_P,
                                         help="divide each round's samples by its reference factor")]
WarmupStable = Annotated[bool, typer.Option("--warmup-stable/--no-warmup-stable", rich_help_panel=_P,
                                            help="before the rounds, time a reference op until its median settles")]
Calibration = Annotated[int, typer.Option("--calibration-models", min=0, rich_help_panel=_P, help=(
    "whole random models timed in the same rounds as the ops: what they cost beyond the sum of their "
    "corrected ops, per MB of their weights, is the run's context cost, which corrected pricing adds to "
    "every entry x its weight MB (inside a model each layer reloads the weights the others evicted from "
    "the cache); 0 = none. Needs a full run (no --ops/--limit, not --resume)"))]
UnstableAt = Annotated[float, typer.Option("--unstable-threshold", min=0, rich_help_panel=_P,
                                           help="mark the run unstable when round factors spread more than this")]



def _console():
    from rich.console import Console

    return Console(stderr=True)


def _target(transport, threads, cpu_mask, serial, runner, adb, udid, bundle_id, compute_units, xcrun,
            precision: str | None = None) -> Target:
    return Target(transport=transport, threads=threads, cpu_mask=cpu_mask, serial=serial, runner=runner, adb=adb,
                  udid=udid, bundle_id=bundle_id, compute_units=compute_units.value, xcrun=xcrun, precision=precision)


class PrecisionOpt(StrEnum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class StatisticOpt(StrEnum):
    median = "median"
    p10 = "p10"


Precision = Annotated[PrecisionOpt | None, typer.Option(
    "--precision", help="fp32 or int8 (ExecuTorch: PT2E, XNNPACK quantizer, per-channel weights, static "
    "activations), fp16 (Core ML) [default: the runtime's own: fp32, Core ML fp16]")]


def _summary_table(results, title: str):
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for col in ("op", "n", "median us", "p10", "p90", "CV", "overhead us"):
        t.add_column(col, justify="left" if col == "op" else "right", no_wrap=col == "op")
    for key, r in results.items():
        s = r.stats
        t.add_row(key, str(s.n), f"{s.median_us:.1f}", f"{s.p10_us:.1f}", f"{s.p90_us:.1f}", f"{s.cv:.3f}"
                  + ("*" if r.remeasured else ""), "" if r.overhead_us is None else f"{r.overhead_us:.1f}")
    return t


@app.command()
def profile(
    server: Server, device: Device, token: Token, space: SpaceOpt = "fbnet-cifar",
    transport: TransportOpt = TransportName.host,
    ops: Annotated[str | None, typer.Option(help="comma-separated op keys or globs, e.g. 'k3_e6-*,fc-*'")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N selected ops")] = None,
    warmup: Warmup = 10, repeats: Repeats = 50, rounds: Rounds = 3, threads: Threads = 1, cpu_mask: CpuMask = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the last unfinished run of this space")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan; export, run and upload nothing")] = False,
    cache_dir: CacheDir = None, spool_dir: SpoolDir = None, jobs: Jobs = 2, seed: Seed = 0,
    cv_threshold: CvThreshold = 0.25, cooldown: Cooldown = 0.0, retries: Retries = 3,
    serial: Serial = None, runner: Runner = None, adb: AdbPath = "adb",
    udid: Udid = None, bundle_id: BundleId = "org.fbnetlut.CoreMLBench", compute_units: Units = ComputeUnits.cpu,
    xcrun: Xcrun = "xcrun", precision: Precision = None,
    reference: RefOps = 4, normalize: Normalize = True, warmup_stable: WarmupStable = False,
    unstable_threshold: UnstableAt = 0.5, calibration: Calibration = 8,
):
    """Export every op of SPACE, time it on the target with the shared protocol, upload the statistics."""
    from device_agents.protocol import ProtocolConfig
    from device_agents.session import MeasureFailed, NothingToResume, ProfileSession, SpooledError

    console = _console()
    tgt = _target(transport, threads, cpu_mask, serial, runner, adb, udid, bundle_id, compute_units, xcrun,
                  precision and precision.value)
    cfg = ProtocolConfig(warmup=warmup, repeats=repeats, rounds=rounds, seed=seed, cv_threshold=cv_threshold,
                         cooldown_s=cooldown, reference=reference, normalize=normalize, warmup_stable=warmup_stable,
                         unstable_threshold=unstable_threshold)
    s = ProfileSession(server, token, device, space, tgt, cfg, cache_dir=cache_dir, spool_dir=spool_dir, jobs=jobs,
                       retries=retries, note=console.print, calibration=calibration)
    s.select(ops, limit)
    if dry_run:
        from rich.table import Table

        t = Table(title=f"plan: {len(s.selected)} ops of {s.sp.name} on {transport.value} ({tgt.fmt})")
        for col in ("op", "input", "cached", "executions"):
            t.add_column(col)
        for key, shape, cached in s.plan_rows():
            t.add_row(key, shape, "yes" if cached else "no", f"{rounds} x ({warmup}+{repeats})")
        console.print(t)
        console.print(f"identity skips left out (0 by construction): {sum(o.is_identity for o in s.sp.ops)}; "
                      f"cache {s.cache_dir}")
        return
    flushed = s.flush_spool()
    for line in flushed:
        console.print(line)
    if resume:
        try:
            s.resume()
        except NothingToResume as e:
            closed = [line for line in flushed if "closed run" in line]
            if closed:  # killed after its last op: the spool held the whole run, now closed; nothing is left
                console.print(f"--resume: nothing left to measure ({closed[-1].removeprefix('spool: ')})")
                return
            fail(f"--resume: {e}")
    s.export()
    try:
        results = s.measure()
    except MeasureFailed as e:
        fail(f"{e}; rerun with --resume to continue", Exit.FAILED)
    console.print(_summary_table(results, f"{s.sp.name} on {device} ({transport.value}, {tgt.setting})"))
    try:
        out = s.finish()
    except SpooledError as e:
        fail(str(e), Exit.UNREACHABLE)
    ovh, ctx, cost = s.overhead_us, s.context_factor, s.context_us_per_mb
    console.print(f"run {out.id} finished: {out.n_measurements} ops stored; overhead {ovh and round(ovh, 1)} us/call"
                  + (f"; context {cost:.1f} us per MB of weights (models {ctx:.3f}x their ops)"
                     if cost is not None else ""))


@app.command()
def export(
    space: SpaceOpt = "fbnet-cifar",
    fmt: Annotated[Fmt, typer.Option("--format", help="pte (ExecuTorch, XNNPACK fp32) or mlpackage (Core ML fp16)")] = Fmt.pte,
    out: Annotated[Path | None, typer.Option("--out", help="export cache folder [default: ~/.cache/fbnet-agent/exports]")] = None,
    ops: Annotated[str | None, typer.Option(help="comma-separated op keys or globs")] = None,
    limit: Annotated[int | None, typer.Option(min=1)] = None,
    jobs: Jobs = 2, precision: Precision = None,
):
    """Export the ops of SPACE (and the per-shape overhead programs) into the cache folder OUT."""
    from fbnet.export import export_format
    from fbnet.space import get_space

    sp = get_space(space)
    out = out or default_cache_dir()
    t0 = time.monotonic()
    programs = export_ops(sp, export_format(fmt.value, precision and precision.value), out,
                          select_ops(sp, ops, limit), jobs)
    folder = {p.parent for p in programs.values()}
    _console().print(f"{len(programs)} programs in {', '.join(map(str, folder))} ({time.monotonic() - t0:.1f} s)")


@app.command()
def upload(server: Server, device: Device, token: Token, spool_dir: SpoolDir = None):
    """Send results that an earlier call could not upload (the service was down)."""
    from device_agents.uploader import Uploader

    up = Uploader(server, token, device, spool_dir)
    lines = up.flush_spool()
    _console().print("\n".join(lines) if lines else "nothing spooled")


@app.command()
def validate(
    server: Server, device: Device, token: Token, space: SpaceOpt = "fbnet-cifar",
    transport: TransportOpt = TransportName.host,
    archs: Annotated[int, typer.Option("--archs", min=0, help="random architectures besides FBNet-A/B/C")] = 5,
    seed: Seed = 0,
    arch: Annotated[list[str] | None, typer.Option("--arch", help="an extra architecture (repeatable)")] = None,
    predefined: Annotated[bool, typer.Option(help="include FBNet-A/B/C")] = True,
    raw: Annotated[bool, typer.Option("--raw", help="predict with the raw medians (each op with the per-call "
                                      "overhead it paid alone) instead of fbnet.lut's corrected pricing")] = False,
    statistic: Annotated[StatisticOpt, typer.Option(
        help="what is compared, for the table's ops and the whole models alike: the median, or the 10th "
        "percentile (p10), which a busy device inflates least")] = StatisticOpt.median,
    warmup: Warmup = 10, repeats: Repeats = 50, rounds: Rounds = 3,
    threads: Annotated[int | None, typer.Option(min=1, help="runtime threads; also selects the table "
                                                "[default: the table's, else 1]")] = None,
    cpu_mask: Annotated[str | None, typer.Option("--cpu-mask", help="hex CPU mask (taskset); also selects the "
                                                 "table [default: the table's]")] = None,
    precision: Annotated[PrecisionOpt | None, typer.Option(
        help="the table's precision, and the models' (int8: quantized like the ops) [default: the newest "
        "complete configuration's]")] = None,
    runtime_version: Annotated[str | None, typer.Option(
        help="the table's runtime version [default: the newest complete configuration's]")] = None,
    include_unstable: Annotated[bool, typer.Option("--include-unstable", help="let the table use unstable runs")] = False,
    cache_dir: CacheDir = None, cv_threshold: CvThreshold = 0.25, jobs: Jobs = 2,
    reference: RefOps = 8, normalize: Normalize = True, warmup_stable: WarmupStable = False,
    drift_adjust: Annotated[bool, typer.Option("--drift-adjust/--no-drift-adjust", rich_help_panel=_P, help=(
        "scale the table's prediction by the drift measured now vs in the table: of the table's whole "
        "calibration models when its runs timed them, else of the reference ops (the "
        "comparison then measures the table, not the machine's mood)"))] = True,
    serial: Serial = None, runner: Runner = None, adb: AdbPath = "adb",
    udid: Udid = None, bundle_id: BundleId = "org.fbnetlut.CoreMLBench", compute_units: Units = ComputeUnits.cpu,
    xcrun: Xcrun = "xcrun",
    per_layer: Annotated[bool, typer.Option(
        "--per-layer", help="also time every prefix of each model (stem + first k layers) in the same rounds: "
        "each layer's in-context cost next to its table entry")] = False,
    per_layer_json: Annotated[Path | None, typer.Option("--per-layer-json", help="write the per-layer rows here")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="per-layer plot (PNG) of table vs in-context")] = None,
    settle_tau: Annotated[float, typer.Option(
        "--settle-tau", min=0.0, max=1.0, rich_help_panel=_P, help=(
            "add --rounds more rounds of the models until their ranking reproduces itself: the Kendall tau "
            "between the models' medians over the even and over the odd rounds reaches this (0 = off; the "
            "last value is printed either way, and it bounds the tau any table can reach against this "
            "measurement)"))] = SETTLE_TAU,
    max_rounds: Annotated[int, typer.Option("--max-rounds", min=1, rich_help_panel=_P,
                                            help="at most this many rounds of the models when settling")] = 24,
):
    """Measure whole architectures with the op protocol and upload measured vs table-predicted latency.

    With --per-layer, each layer's cost inside the model (prefix-model differences) is shown next to
    its table entry, so you see which layers make the table's error."""
    from device_agents.protocol import ProtocolConfig
    from device_agents.validate import NothingToValidate, label_archs
    from device_agents.validate import validate as run_validate
    from fbnet.space import get_space

    console = _console()
    try:
        labelled = label_archs(get_space(space), archs, seed, predefined, arch)
    except NothingToValidate:
        fail("nothing to validate: --archs 0 --no-predefined and no --arch")
    ios = transport is TransportName.ios
    sel = make_selector(precision and precision.value, threads, cpu_mask, compute_units.value if ios else None,
                        runtime_version, include_unstable)
    tgt = _target(transport, threads or 1, cpu_mask, serial, runner, adb, udid, bundle_id, compute_units, xcrun)
    cfg = ProtocolConfig(warmup=warmup, repeats=repeats, rounds=rounds, seed=seed, cv_threshold=cv_threshold,
                         normalize=normalize, warmup_stable=warmup_stable, settle_tau=settle_tau,
                         max_rounds=max(max_rounds, rounds))
    if (per_layer_json or plot) and not per_layer:
        fail("--per-layer-json and --plot need --per-layer")
    rep = run_validate(server, token, device, space, labelled, target=tgt, cfg=cfg, cache_dir=cache_dir, jobs=jobs,
                       n_reference=reference, pricing="raw" if raw else "corrected",
                       statistic=statistic.value, selector=sel,
                       drift_adjust=drift_adjust, per_layer=per_layer,
                       note=lambda m: console.print(m, highlight=False, soft_wrap=True))

    from rich.table import Table

    t = Table(title=f"whole-model validation: {rep.space} on {device} ({transport.value})")
    for col in ("arch", "raw sum us", "predicted us", "measured us", "raw error %", "uploaded error %"):
        t.add_column(col, justify="left" if col == "arch" else "right")
    for r in rep.rows:
        t.add_row(r.label, f"{r.raw_us:.0f}", f"{r.corrected_us:.0f}", f"{r.measured_us:.0f}",
                  f"{r.raw_error_pct:+.1f}", f"{r.uploaded_error_pct:+.1f}")
    console.print(t)
    ovh = rep.table_overhead_us or 0
    stat = "p10s" if statistic.value == "p10" else "medians"
    basis = f"raw {stat}, plain sum" if raw else f"corrected {stat} + {ovh:.1f} us overhead once"
    console.print(f"predicted = {basis}; {rep.configuration}", highlight=False, soft_wrap=True)
    if rep.drift is not None:
        note = "" if abs(rep.drift - 1) <= 0.05 else (" [yellow]- the device is not in the state its table was "
                                                      "measured in: errors of this size are drift, not the table[/yellow]")
        if rep.drift_adjusted and rep.model_drift is None:
            note = " (predictions scaled by it; --no-drift-adjust to compare with the table as served)"
        console.print(f"drift since the table was measured: {100 * (rep.drift - 1):+.1f}% (median over "
                      f"{len(rep.reference_ops)} reference ops timed in this run){note}")
    if rep.model_drift is not None:
        console.print(f"whole-model drift: {100 * (rep.model_drift - 1):+.1f}% (the table's calibration models "
                      "now vs when profiled; predictions scaled by it; --no-drift-adjust to compare with the "
                      "table as served)")
    if per_layer:
        _print_per_layer(console, rep, per_layer_json, plot)
    errs = rep.errors
    console.print(f"{len(errs)} validations uploaded; MAPE {sum(errs) / len(errs):.1f}%, "
                  f"within 10%: {sum(e <= 10 for e in errs)}/{len(errs)}")
    settle = rep.protocol.get("settle") or []
    if settle and settle[-1]["tau"] is not None:
        last = settle[-1]
        short = " (--max-rounds reached before --settle-tau)" if settle_tau and last["tau"] < settle_tau else ""
        console.print(f"the measurement's own ranking: split-half Kendall tau {last['tau']:.3f} after "
                      f"{last['rounds']} rounds of the models{short}; a table's tau against it is bounded by this")


def _print_per_layer(console, rep, json_path: Path | None, plot_path: Path | None) -> None:
    import json

    from rich.table import Table

    from device_agents import perlayer
    from fbnet.io import atomic_write

    for label, rows in rep.per_layer.items():
        t = Table(title=f"{label}: each layer in context (prefix differences) vs its table entry")
        for col in ("part", "op", "table us", "in context us", "table - in context us"):
            t.add_column(col, justify="left" if col in ("part", "op") else "right")
        for r in rows:
            t.add_row(r.part, ",".join(r.ops) if len(r.ops) == 1 else f"{len(r.ops)} ops", f"{r.table_us:.1f}",
                      f"{r.in_context_us:.1f}", f"{r.error_us:+.1f}")
        console.print(t)
        s = perlayer.summary(rows)
        worst = ", ".join(f"{w['part']} ({w['error_us']:+.0f} us)" for w in s["worst"])
        console.print(f"{label}: table {s['table_us']:.0f} us vs {s['in_context_us']:.0f} us in context; "
                      f"largest errors: {worst}")
    if json_path:
        atomic_write(json_path, json.dumps({label: {"rows": [r.to_dict() for r in rows], "summary": perlayer.summary(rows)}
                                            for label, rows in rep.per_layer.items()}, indent=1))
        console.print(f"per-layer rows written to {json_path}")
    if plot_path:
        perlayer.plot(rep.per_layer, plot_path, f"{rep.space} on {rep.device} ({rep.transport}): table vs in context")
        console.print(f"plot written to {plot_path}")


def main() -> None:
    from device_agents.protocol import AgentError
    from device_agents.uploader import ServiceDown, UploadError
    from fbnet.export import ExportError

    run(app, [((AgentError, ExportError), Exit.FAILED), (ServiceDown, Exit.UNREACHABLE), (UploadError, Exit.REFUSED),
              ((ValueError, OSError), Exit.BAD_INPUT)])


if __name__ == "__main__":
    main()
