"""``fbnet-agent``: export the ops of a space, time them on a target, upload; validate whole models.

Each command reads its settings into typed configs declared once, next to the library code that takes
them: the service account and the target (:mod:`device_agents.targets`), the measurement protocol
(:mod:`device_agents.protocol`), the table selector (:mod:`fbnet.configuration`), what a profile run
or a validation covers (:mod:`device_agents.profiling`, :mod:`device_agents.validate`). A command
parses, calls the flow and prints; ``--config FILE`` (TOML) holds any of its settings.
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from device_agents.profiling import PROFILE_PROTOCOL, ProfileConfig
from device_agents.profiling_v2 import V2Sampling
from device_agents.protocol import ProtocolConfig
from device_agents.targets import Service, Target, default_cache_dir, export_ops, select_ops
from device_agents.validate import VALIDATE_PROTOCOL, ValidationConfig
from fbnet.cli import EXIT_CODES_HELP, Exit, Use, envvars_help, fail, options, progress, run
from fbnet.configuration import PRECISIONS, Selector

app = typer.Typer(help="fbnet-lut device agent: profile operators and whole models on a target. " + EXIT_CODES_HELP,
                  no_args_is_help=True, add_completion=False)

_SERVICE_ENV = {"FBNET_SERVER": "--server", "FBNET_AGENT_TOKEN": "--token"}
_CACHE_ENV = {"FBNET_AGENT_CACHE": "the export cache", "XDG_CACHE_HOME": "where the cache and spool live"}
_RUNNER_ENV = {"FBNET_RUNNER": "the native transport's fbnet-runner"}


class Fmt(StrEnum):
    pte = "pte"
    mlpackage = "mlpackage"


PrecisionChoice = StrEnum("PrecisionChoice", {p: p for p in PRECISIONS})
Precision = Annotated[PrecisionChoice | None, typer.Option(
    "--precision", help="fp32 or int8 (ExecuTorch: PT2E, XNNPACK quantizer, per-channel weights, static "
    "activations), fp16 (Core ML) (default: the runtime's own: fp32, Core ML fp16)")]
Jobs = Annotated[int, typer.Option(min=1, help="export worker processes for cold exports")]
SpoolDir = Annotated[Path | None, typer.Option("--spool-dir", help="unsent results (default: "
                                               "$XDG_CACHE_HOME/fbnet-agent/spool, else ~/.cache/fbnet-agent/spool)")]

# validate: the table selector's options also set the target (one --threads fills both)
_VALIDATE_SELECTOR_HELP = {
    "threads": "runtime threads; also selects the table (default: the table's, else 1)",
    "cpu_mask": "hex CPU mask (taskset); also selects the table (default: the table's)",
    "precision": "the table's precision, and the models' (int8: quantized like the ops) (default: the newest "
                 "complete configuration's)",
    "compute_units": "ios: Core ML compute units; also selects the table (default: cpu)",
    "include_unstable": "let the table use unstable runs",
    "runtime_version": "the table's runtime version (default: the newest complete configuration's)",
}
_VALIDATE_REFERENCE_HELP = {"reference": "table ops timed in every round with the models: the device's drift since "
                                         "the table was measured"}


def _console():
    from rich.console import Console

    return Console(stderr=True)


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


def _print_plan(console, p) -> None:
    from rich.table import Table

    cfg = p.protocol
    t = Table(title=f"plan: {len(p.selected)} ops of {p.sp.name} on {p.target.transport.value} ({p.target.fmt})")
    for col in ("op", "input", "cached", "executions"):
        t.add_column(col)
    for key, shape, cached in p.plan_rows():
        t.add_row(key, shape, "yes" if cached else "no", f"{cfg.rounds} x ({cfg.warmup}+{cfg.repeats})")
    console.print(t)
    console.print(f"identity skips left out (0 by construction): {sum(o.is_identity for o in p.sp.ops)}; "
                  f"cache {p.cache_dir}")


def _print_finished(console, p, out) -> None:
    ovh, ctx, cost = p.overhead_us, p.context_factor, p.context_us_per_mb
    console.print(f"run {out.id} finished: {out.n_measurements} ops stored; overhead {ovh and round(ovh, 1)} us/call"
                  + (f"; context {cost:.1f} us per MB of weights (models {ctx:.3f}x their ops)"
                     if cost is not None else ""))


@app.command(epilog=envvars_help(**_SERVICE_ENV, **_CACHE_ENV, **_RUNNER_ENV))
@options(config_file=True, service=Service,
         protocol=Use(ProtocolConfig, exclude=("settle_tau", "max_rounds"), defaults=PROFILE_PROTOCOL),
         plan=ProfileConfig, sampling=V2Sampling, target=Target)
def profile(
    resume: Annotated[bool, typer.Option("--resume", help="continue the last unfinished run of this space")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan; export, run and upload nothing")] = False,
    *, service: Service, plan: ProfileConfig, sampling: V2Sampling, target: Target, protocol: ProtocolConfig,
):
    """Export every op of SPACE, time it on the target with the shared protocol, upload the statistics.

    A v2 space (fbnetv2-cifar) is sampled: the service plans batches of ops (a space-filling design, then where its latency model is least sure), each batch is exported, timed and uploaded as one run, until --budget ops are measured or the model's held-out error meets --goal."""  # noqa: E501 (one paragraph: rich keeps line breaks)
    from device_agents.profiling import MeasureFailed, NothingToResume, Profiler, SpooledError
    from fbnet.space_v2 import is_v2_space

    console = _console()
    if is_v2_space(plan.space):
        if dry_run or plan.ops or plan.limit:
            fail("a v2 space is profiled by sample: the service plans the ops (no --dry-run, --ops or --limit)")
        return _profile_v2(console, resume, service=service, plan=plan, sampling=sampling, target=target,
                           protocol=protocol)
    p = Profiler(service, plan, target, protocol, note=console.print, progress=progress)
    if dry_run:
        return _print_plan(console, p)
    for line in p.flush_spool():
        console.print(line)
    if resume:
        try:
            p.resume()
        except NothingToResume as e:
            if not p.closed:
                fail(f"--resume: {e}")
            # killed after its last op: the spool held the whole run, now closed; nothing is left
            return console.print(f"--resume: nothing left to measure ({p.closed[-1]})")
    p.export()
    try:
        results = p.measure()
    except MeasureFailed as e:
        fail(f"{e}; rerun with --resume to continue", Exit.FAILED)
    console.print(_summary_table(results, f"{p.sp.name} on {service.device} ({target.transport.value}, "
                                          f"{p.target.setting})"))
    try:
        out = p.finish()
    except SpooledError as e:
        fail(str(e), Exit.UNREACHABLE)
    _print_finished(console, p, out)


def _profile_v2(console, resume: bool, *, service: Service, plan: ProfileConfig, sampling: V2Sampling,
                target: Target, protocol: ProtocolConfig) -> None:
    from device_agents.profiling_v2 import NothingToResume, V2Profiler
    from device_agents.protocol import AgentError

    p = V2Profiler(service, plan, sampling, target, protocol, note=console.print, progress=progress)
    try:
        if resume:
            try:
                p.resume()
            except NothingToResume as e:
                console.print(f"--resume: {e}; the service's plan continues where it stopped")
        try:
            last = p.run()
        except AgentError as e:
            kept = f"; {len(p.state.measured)} finished ops spooled in {p.state.path}" if p.state else ""
            fail(f"{e}{kept}; rerun with --resume to continue", Exit.FAILED)
    finally:
        p.close()
    h = last.heldout
    err = (f"; held-out {100 * h.within_10pct:.1f} % within ±10 %, MAPE {h.mape:.1f} % over {h.n} ops"
           if h and h.within_10pct is not None else "")
    console.print(f"{p.sp.name} on {service.device}: {last.measured} of {last.grid} grid ops measured in "
                  f"{len(p.rounds)} batch(es) this call; {'done (' + str(last.reason) + ')' if last.done else 'not done'}"
                  f"{err}")


@app.command(epilog=envvars_help(**_CACHE_ENV))
def export(
    space: Annotated[str, typer.Option(help="fbnet-224, fbnet-cifar, fbnet-<res>[-w<width>], fbnetv2-224 or fbnetv2-cifar")] = "fbnet-cifar",
    fmt: Annotated[Fmt, typer.Option("--format", help="pte (ExecuTorch, XNNPACK fp32) or mlpackage (Core ML fp16)")] = Fmt.pte,
    out: Annotated[Path | None, typer.Option("--out", help="export cache folder (default: $FBNET_AGENT_CACHE, else "
                                             "~/.cache/fbnet-agent/exports)")] = None,
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
                          select_ops(sp, ops, limit), jobs, progress=progress)
    folder = {p.parent for p in programs.values()}
    _console().print(f"{len(programs)} programs in {', '.join(map(str, folder))} ({time.monotonic() - t0:.1f} s)")


@app.command(epilog=envvars_help(**_SERVICE_ENV, XDG_CACHE_HOME="where the spool lives"))
@options(service=Service)
def upload(spool_dir: SpoolDir = None, *, service: Service):
    """Send results that an earlier call could not upload (the service was down)."""
    from device_agents.uploader import Uploader

    up = Uploader.for_service(service, spool_dir)
    lines = up.flush_spool()
    _console().print("\n".join(lines) if lines else "nothing spooled")


@app.command(epilog=envvars_help(**_SERVICE_ENV, **_CACHE_ENV, **_RUNNER_ENV))
@options(config_file=True, service=Service,
         protocol=Use(ProtocolConfig, exclude=("unstable_threshold",), defaults=VALIDATE_PROTOCOL,
                      help=_VALIDATE_REFERENCE_HELP),
         models=ValidationConfig, selector=Use(Selector, help=_VALIDATE_SELECTOR_HELP), target=Target)
def validate(
    per_layer_json: Annotated[Path | None, typer.Option("--per-layer-json", help="write the per-layer rows here")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="per-layer plot (PNG) of table vs in-context")] = None,
    *, service: Service, models: ValidationConfig, selector: Selector, target: Target, protocol: ProtocolConfig,
):
    """Measure whole architectures with the op protocol and upload measured vs table-predicted latency.

    With --per-layer, each layer's cost inside the model (prefix-model differences) is shown next to its table entry, so you see which layers make the table's error."""
    from device_agents.validate import validate as run_validate
    from device_agents.validate_v2 import validate_v2
    from fbnet.space_v2 import is_v2_space

    if (per_layer_json or plot) and not models.per_layer:
        fail("--per-layer-json and --plot need --per-layer")
    v2 = is_v2_space(models.space)
    if v2 and (models.per_layer or models.raw or models.statistic != "median"):
        fail(f"{models.space} is validated with corrected medians, whole models only (no --per-layer, --raw, "
             "--statistic p10)")
    console = _console()
    rep = (validate_v2 if v2 else run_validate)(
        service, models, target=target, protocol=protocol, selector=selector, progress=progress,
        note=lambda m: console.print(m, highlight=False, soft_wrap=True))
    _print_validation(console, rep, models)
    if models.per_layer:
        _print_per_layer(console, rep, per_layer_json, plot)
    _print_summary(console, rep, protocol)


def _print_validation(console, rep, models: ValidationConfig) -> None:
    from rich.table import Table

    t = Table(title=f"whole-model validation: {rep.space} on {rep.device} ({rep.transport})")
    for col in ("arch", "raw sum us", "predicted us", "measured us", "raw error %", "uploaded error %"):
        t.add_column(col, justify="left" if col == "arch" else "right")
    for r in rep.rows:
        t.add_row(r.label, f"{r.raw_us:.0f}", f"{r.corrected_us:.0f}", f"{r.measured_us:.0f}",
                  f"{r.raw_error_pct:+.1f}", f"{r.uploaded_error_pct:+.1f}")
    console.print(t)
    ovh = rep.table_overhead_us or 0
    stat = "p10s" if models.statistic == "p10" else "medians"
    basis = f"raw {stat}, plain sum" if models.raw else f"corrected {stat} + {ovh:.1f} us overhead once"
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


def _print_summary(console, rep, protocol: ProtocolConfig) -> None:
    errs = rep.errors
    console.print(f"{len(errs)} validations uploaded; MAPE {sum(errs) / len(errs):.1f}%, "
                  f"within 10%: {sum(e <= 10 for e in errs)}/{len(errs)}")
    last = rep.settle
    if last is not None:
        tau = protocol.settle_tau
        short = " (--max-rounds reached before --settle-tau)" if tau and last["tau"] < tau else ""
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
