"""``fbnet-agent``: export the ops of a space, time them on a target, upload; validate whole models."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import random
import statistics
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from fbnet.cli import EXIT_CODES_HELP, Exit, fail, progress, run, ticker

app = typer.Typer(help="fbnet-lut device agent: profile operators and whole models on a target. " + EXIT_CODES_HELP,
                  no_args_is_help=True, add_completion=False)


class TransportName(StrEnum):
    host = "host"
    adb = "adb"
    ios = "ios"


class Fmt(StrEnum):
    pte = "pte"
    mlpackage = "mlpackage"


class ComputeUnits(StrEnum):
    cpu = "cpu"
    gpu = "gpu"
    ane = "ane"
    all = "all"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("FBNET_AGENT_CACHE", Path(base) / "fbnet-agent" / "exports"))


# ---- shared options --------------------------------------------------------------------------
Server = Annotated[str, typer.Option("--server", envvar="FBNET_SERVER", help="profiler service URL")]
Device = Annotated[str, typer.Option("--device", help="device name registered on the service")]
Token = Annotated[str, typer.Option("--token", envvar="FBNET_AGENT_TOKEN", help="the device's agent token")]
SpaceOpt = Annotated[str, typer.Option("--space", help="fbnet-224, fbnet-cifar or fbnet-<res>[-w<width>]")]
TransportOpt = Annotated[TransportName, typer.Option("--transport", help="where the ops run")]
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
Runner = Annotated[Path | None, typer.Option("--runner", help="adb: executor_runner built for the phone (android/build_runner.sh)")]
AdbPath = Annotated[str, typer.Option("--adb", help="adb: the adb executable")]
Udid = Annotated[str | None, typer.Option("--udid", help="ios: the iPhone's UDID / CoreDevice id")]
BundleId = Annotated[str, typer.Option("--bundle-id", help="ios: bundle id of the CoreMLBench app")]
Units = Annotated[ComputeUnits, typer.Option("--compute-units", help="ios: Core ML compute units")]
Xcrun = Annotated[str, typer.Option("--xcrun", help="ios: the xcrun executable")]


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _fail(msg: str, code: int = Exit.FAILED):
    fail(msg, code)


def select_ops(space, ops: str | None, limit: int | None):
    """Non-identity ops of the space, filtered by comma-separated keys/globs, then limited."""
    from fbnet.space import Op

    all_ops: list[Op] = [op for op in space.ops if not op.is_identity]
    if ops:
        chosen: dict[str, Op] = {}
        for pat in (p.strip() for p in ops.split(",") if p.strip()):
            if any(c in pat for c in "*?["):
                hits = [op for op in all_ops if fnmatch.fnmatchcase(op.key, pat)]
                if not hits:
                    raise ValueError(f"--ops pattern {pat!r} matches no op of {space.name}")
            else:
                if pat not in space.op_by_key:
                    raise ValueError(f"--ops: {pat!r} is not an op of {space.name} (see `fbnet-search ops`)")
                if space.op_by_key[pat].is_identity:
                    raise ValueError(f"--ops: {pat!r} is an identity skip; it costs 0 by construction")
                hits = [space.op_by_key[pat]]
            for op in hits:
                chosen.setdefault(op.key, op)
        all_ops = [op for op in all_ops if op.key in chosen]
    return all_ops[:limit] if limit else all_ops


def make_transport(transport: TransportName, *, threads: int, cpu_mask: str | None, serial, runner, adb,
                   udid, bundle_id, compute_units, xcrun, work_dir: Path):
    if transport is TransportName.host:
        from device_agents.transports.host import HostTransport

        return HostTransport(threads=threads, cpu_mask=cpu_mask)
    if transport is TransportName.adb:
        from device_agents.transports.adb import AdbTransport

        if runner is None:
            raise ValueError("--transport adb needs --runner PATH (an executor_runner built with android/build_runner.sh)")
        return AdbTransport(runner=runner, serial=serial, adb=adb, threads=threads, cpu_mask=cpu_mask)
    from device_agents.transports.ios import IosTransport

    if not udid:
        raise ValueError("--transport ios needs --udid (see `xcrun devicectl list devices`)")
    return IosTransport(udid=udid, bundle_id=bundle_id, compute_units=compute_units.value, xcrun=xcrun,
                        work_dir=work_dir)


def _export(console, space, fmt: str, cache_dir: Path, ops, jobs: int) -> dict[str, Path]:
    from device_agents.exporters import cache_path, export_space, overhead_key

    n_prog = len(ops) + len({op.input_shape for op in ops})
    cold = sum(not cache_path(op.key, fmt, cache_dir).exists() for op in ops) + sum(
        not cache_path(overhead_key(s), fmt, cache_dir).exists() for s in {op.input_shape for op in ops})
    with progress() as prog:
        task = prog.add_task("export", total=n_prog, info=f"{cold} to export, {n_prog - cold} cached")
        return export_space(space, fmt, cache_dir, ops=ops, jobs=jobs, overheads=True,
                            progress=lambda key, path, cached: prog.update(task, advance=1, info=key))


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


def _flush_spool(console, up) -> None:
    from device_agents.uploader import ServiceDown

    try:
        for line in up.flush_spool():
            console.print(f"spool: {line}")
    except ServiceDown as e:
        console.print(f"[yellow]warning:[/yellow] spooled results not sent yet: {e}")


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
    xcrun: Xcrun = "xcrun",
):
    """Export every op of SPACE, time it on the target with the shared protocol, upload the statistics."""
    from device_agents import __version__
    from device_agents.exporters import cache_path, library_versions, overhead_key
    from device_agents.protocol import AgentError, ProtocolConfig, overhead_summary, run_protocol, to_measurement
    from device_agents.uploader import ServiceDown, Uploader, UploadError
    from fbnet.space import get_space
    from fbnet.wire import RunCreate, RunFinish

    console = _console()
    sp = get_space(space)
    selected = select_ops(sp, ops, limit)
    fmt = "mlpackage" if transport is TransportName.ios else "pte"
    cache_dir = cache_dir or default_cache_dir()
    cfg = ProtocolConfig(warmup=warmup, repeats=repeats, rounds=rounds, seed=seed, cv_threshold=cv_threshold,
                         cooldown_s=cooldown)
    if dry_run:
        from rich.table import Table

        t = Table(title=f"plan: {len(selected)} ops of {sp.name} on {transport.value} ({fmt})")
        for col in ("op", "input", "cached", "executions"):
            t.add_column(col)
        for op in selected:
            t.add_row(op.key, "x".join(map(str, op.input_shape)), "yes" if cache_path(op.key, fmt, cache_dir).exists()
                      else "no", f"{rounds} x ({warmup}+{repeats})")
        console.print(t)
        console.print(f"identity skips left out (0 by construction): {sum(o.is_identity for o in sp.ops)}; "
                      f"cache {cache_dir}")
        return

    up = Uploader(server, token, device, spool_dir, retries=retries)
    _flush_spool(console, up)
    state = None
    if resume:
        state = up.resumable(sp.name, transport.value)
        if state is None:
            _fail(f"--resume: no unfinished {transport.value} run of {sp.name} for {device} in {up.spool_dir}")
        done = state.measured
        selected = [op for op in selected if op.key not in done]
        console.print(f"resuming run {state.run_id}: {len(done)} ops already measured, {len(selected)} to go")

    programs = _export(console, sp, fmt, cache_dir, selected, jobs)
    tr = make_transport(transport, threads=threads, cpu_mask=cpu_mask, serial=serial, runner=runner, adb=adb,
                        udid=udid, bundle_id=bundle_id, compute_units=compute_units, xcrun=xcrun,
                        work_dir=cache_dir / "ios-work")
    results: dict = {}
    try:
        tr.prepare(programs)
        prov = tr.provenance()
        temps0, freqs0 = tr.sensors()
        if state is None:
            rc = RunCreate(
                **prov.model_dump(exclude={"extra"}),
                space=sp.name, transport=transport.value, agent_version=__version__, warmup=warmup,
                repeats=repeats, rounds=rounds, temps_before=temps0, cpu_freqs_before=freqs0,
                started_at=datetime.now(UTC),
                extra={**prov.extra, "exporter": library_versions(), "seed": seed, "cv_threshold": cv_threshold,
                       "cooldown_s": cooldown, "space_version": sp.version},
            )
            state = up.new_run(rc)
        overhead_of = {op.key: overhead_key(op.input_shape) for op in selected}
        t0 = time.monotonic()
        with progress() as prog:
            task = prog.add_task("measure", total=len(selected) * rounds, info="")

            def on_result(r):
                results[r.key] = r
                up.add(state, [to_measurement(r.key, r.stats, r.samples_us)])

            run_protocol(tr, [op.key for op in selected], cfg, overhead_of, on_result=on_result,
                         on_sample=ticker(prog, task))
        temps1, freqs1 = tr.sensors()
    except AgentError as e:
        sent = ""
        if state is not None:
            try:
                up.send(state)
                sent = f"; {len(state.uploaded)} finished ops are on the service in run {state.run_id}"
            except (ServiceDown, UploadError):
                sent = f"; {len(state.measured)} finished ops spooled in {state.path}"
        _fail(f"{e}{sent}; rerun with --resume to continue")
    finally:
        tr.close()

    setting = f"{compute_units.value} compute units" if transport is TransportName.ios else f"{threads} thread(s)"
    console.print(_summary_table(results, f"{sp.name} on {device} ({transport.value}, {setting})"))
    ovh = overhead_summary(results)
    fin = RunFinish(temps_after=temps1, cpu_freqs_after=freqs1, overhead_us=ovh,
                    extra={"overhead_us_by_key": {k: r.overhead_us for k, r in results.items()},
                           "remeasured": [k for k, r in results.items() if r.remeasured],
                           "measure_s": round(time.monotonic() - t0, 2)})
    try:
        out = up.finish(state, fin)
    except ServiceDown as e:
        _fail(f"{e}. Nothing is lost: {len(state.measured)} ops spooled in {state.path}; they upload on the "
              f"next fbnet-agent call (or `fbnet-agent upload`)", code=Exit.UNREACHABLE)
    console.print(f"run {out.id} finished: {out.n_measurements} ops stored; overhead {ovh and round(ovh, 1)} us/call")


@app.command()
def export(
    space: SpaceOpt = "fbnet-cifar",
    fmt: Annotated[Fmt, typer.Option("--format", help="pte (ExecuTorch, XNNPACK fp32) or mlpackage (Core ML fp16)")] = Fmt.pte,
    out: Annotated[Path | None, typer.Option("--out", help="export cache folder [default: ~/.cache/fbnet-agent/exports]")] = None,
    ops: Annotated[str | None, typer.Option(help="comma-separated op keys or globs")] = None,
    limit: Annotated[int | None, typer.Option(min=1)] = None,
    jobs: Jobs = 2,
):
    """Export the ops of SPACE (and the per-shape overhead programs) into the cache folder OUT."""
    from fbnet.space import get_space

    console = _console()
    sp = get_space(space)
    out = out or default_cache_dir()
    t0 = time.monotonic()
    programs = _export(console, sp, fmt.value, out, select_ops(sp, ops, limit), jobs)
    folder = {p.parent for p in programs.values()}
    console.print(f"{len(programs)} programs in {', '.join(map(str, folder))} ({time.monotonic() - t0:.1f} s)")


@app.command()
def upload(server: Server, device: Device, token: Token, spool_dir: SpoolDir = None):
    """Send results that an earlier call could not upload (the service was down)."""
    from device_agents.uploader import Uploader

    up = Uploader(server, token, device, spool_dir)
    lines = up.flush_spool()
    _console().print("\n".join(lines) if lines else "nothing spooled")


def random_archs(n: int, seed: int):
    from fbnet.space import CANDIDATE_NAMES, NUM_LAYERS, Arch

    rng = random.Random(seed)
    return [Arch(tuple(rng.choice(CANDIDATE_NAMES) for _ in range(NUM_LAYERS))) for _ in range(n)]


def reference_ops(space, archs, n: int) -> list:
    """Up to ``n`` ops the architectures use, spread evenly over their sorted keys (identity skips excluded)."""
    keys = sorted({op.key for a in archs for op in space.arch_ops(a)})
    if n <= 0 or not keys:
        return []
    step = max(1, len(keys) // n)
    return [space.op_by_key[k] for k in keys[::step][:n]]


@app.command()
def validate(
    server: Server, device: Device, token: Token, space: SpaceOpt = "fbnet-cifar",
    transport: TransportOpt = TransportName.host,
    archs: Annotated[int, typer.Option("--archs", min=0, help="random architectures besides FBNet-A/B/C")] = 5,
    seed: Seed = 0,
    arch: Annotated[list[str] | None, typer.Option("--arch", help="an extra architecture (repeatable)")] = None,
    predefined: Annotated[bool, typer.Option(help="include FBNet-A/B/C")] = True,
    overhead_correction: Annotated[bool, typer.Option(
        help="predict sum(ops) - (ops - 1) x the table's per-call overhead instead of the plain sum")] = False,
    warmup: Warmup = 10, repeats: Repeats = 50, rounds: Rounds = 3, threads: Threads = 1, cpu_mask: CpuMask = None,
    cache_dir: CacheDir = None, cv_threshold: CvThreshold = 0.25, jobs: Jobs = 2,
    reference: Annotated[int, typer.Option(
        "--reference-ops", min=0, help="ops of the table re-timed alongside, to report the device's drift")] = 8,
    serial: Serial = None, runner: Runner = None, adb: AdbPath = "adb",
    udid: Udid = None, bundle_id: BundleId = "org.fbnetlut.CoreMLBench", compute_units: Units = ComputeUnits.cpu,
    xcrun: Xcrun = "xcrun",
):
    """Measure whole architectures with the op protocol and upload measured vs table-predicted latency."""
    from device_agents.exporters import export_archs, export_space, fingerprint
    from device_agents.protocol import AgentError, ProtocolConfig, run_protocol
    from device_agents.uploader import Uploader
    from fbnet.lut import latencies, predict
    from fbnet.space import PREDEFINED, Arch, get_space
    from fbnet.wire import ValidationCreate

    console = _console()
    sp = get_space(space)
    fmt = "mlpackage" if transport is TransportName.ios else "pte"
    labelled: list[tuple[str, Arch]] = [(f"random-{seed}-{i}", a) for i, a in enumerate(random_archs(archs, seed))]
    if predefined:
        labelled += [(name, Arch.from_indices(idx)) for name, idx in PREDEFINED.items()]
    labelled += [(f"arch-{i}", Arch.parse(a)) for i, a in enumerate(arch or [])]
    if not labelled:
        _fail("nothing to validate: --archs 0 --no-predefined and no --arch")
    up = Uploader(server, token, device)
    table = up.get_table(sp.name)
    _, missing = latencies(table, [op.key for _, a in labelled for op in sp.arch_ops(a, with_identity=True)])
    if missing:
        _fail(f"the table of {device} for {sp.name} lacks {len(missing)} op(s) these architectures use: "
              f"{', '.join(sorted(missing))}; run `fbnet-agent profile` for them first")

    cache_dir = cache_dir or default_cache_dir()
    folder = cache_dir / f"arch-{fmt}-{fingerprint(fmt)}" / sp.name
    keys = {label: "arch-" + hashlib.sha256(a.to_text().encode()).hexdigest()[:12] for label, a in labelled}
    todo = {keys[label]: (a, folder / f"{keys[label]}.{fmt}") for label, a in labelled}
    with progress() as prog:
        task = prog.add_task("export", total=len(todo), info="")
        programs = export_archs(sp, todo, fmt, jobs=jobs,
                                progress=lambda key, path, cached: prog.update(task, advance=1, info=key))
    # Reference ops from the table, timed in the same interleaved rounds as the whole models: how much
    # faster or slower the device is now than when its table was measured (shared hosts, thermal state).
    refs = reference_ops(sp, [a for _, a in labelled], reference)
    arch_shapes = {k: sp.input_shape for k in programs}
    if refs:
        programs.update(export_space(sp, fmt, cache_dir, ops=refs, jobs=jobs))
    tr = make_transport(transport, threads=threads, cpu_mask=cpu_mask, serial=serial, runner=runner, adb=adb,
                        udid=udid, bundle_id=bundle_id, compute_units=compute_units, xcrun=xcrun,
                        work_dir=cache_dir / "ios-work")
    if hasattr(tr, "input_shapes"):
        tr.input_shapes.update(arch_shapes)
    cfg = ProtocolConfig(warmup=warmup, repeats=repeats, rounds=rounds, seed=seed, cv_threshold=cv_threshold)
    try:
        tr.prepare(programs)
        with progress() as prog:
            task = prog.add_task("measure", total=len(programs) * rounds, info="")
            results = run_protocol(tr, list(programs), cfg, on_sample=ticker(prog, task))
    except AgentError as e:
        _fail(str(e))
    finally:
        tr.close()

    from rich.table import Table

    table_us = {e.key: e.latency_us for e in table.entries}
    drift = statistics.median(results[op.key].stats.median_us / table_us[op.key] for op in refs) if refs else None
    t = Table(title=f"whole-model validation: {sp.name} on {device} ({transport.value})")
    for col in ("arch", "sum of ops us", "corrected us", "measured us", "raw error %", "uploaded error %"):
        t.add_column(col, justify="left" if col == "arch" else "right")
    errs = []
    for label, a in labelled:
        r = results[keys[label]]
        n_ops = len(sp.arch_ops(a))
        pred = predict(table, a, sp, overhead_us=table.overhead_us or 0.0)  # one lookup: both sums
        raw, fixed = pred["raw_sum_us"], pred["latency_us"]
        v = ValidationCreate(
            space=sp.name, arch=list(a.blocks), predicted_us=fixed if overhead_correction else raw,
            measured_us=r.stats.median_us, n=r.stats.n, std_us=r.stats.std_us, table_version=table.version,
            label=label,
            extra={"raw_sum_us": raw, "overhead_corrected_us": fixed, "overhead_correction": overhead_correction,
                   "table_overhead_us": table.overhead_us, "n_ops": n_ops, "threads": threads,
                   "transport": transport.value, "p10_us": r.stats.p10_us, "p90_us": r.stats.p90_us,
                   "drift": drift, "reference_ops": [op.key for op in refs]},
        )
        out = up.post_validation(v)
        errs.append(abs(out.error_pct))
        raw_err = 100 * (raw - r.stats.median_us) / r.stats.median_us
        t.add_row(label, f"{raw:.0f}", f"{fixed:.0f}", f"{r.stats.median_us:.0f}", f"{raw_err:+.1f}",
                  f"{out.error_pct:+.1f}")
    console.print(t)
    basis = f"sum - (ops - 1) x {table.overhead_us or 0:.1f} us overhead" if overhead_correction else "plain sum"
    console.print(f"predicted = {basis}")
    if drift is not None:
        note = "" if abs(drift - 1) <= 0.05 else (" [yellow]- the device is not in the state its table was "
                                                  "measured in: errors of this size are drift, not the table[/yellow]")
        console.print(f"drift since the table was measured: {100 * (drift - 1):+.1f}% (median over {len(refs)} "
                      f"reference ops timed in this run){note}")
    console.print(f"{len(errs)} validations uploaded; MAPE {sum(errs) / len(errs):.1f}%, "
                  f"within 10%: {sum(e <= 10 for e in errs)}/{len(errs)}")


def main() -> None:
    from device_agents.protocol import AgentError
    from device_agents.uploader import ServiceDown, UploadError
    from fbnet.export import ExportError

    run(app, [((AgentError, ExportError), Exit.FAILED), (ServiceDown, Exit.UNREACHABLE), (UploadError, Exit.REFUSED),
              ((ValueError, OSError), Exit.BAD_INPUT)])


if __name__ == "__main__":
    main()
