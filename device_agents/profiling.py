"""The profile flow: spool, resume, export, measure, finish.

Every step is a method, so a command (or a test, or a benchmark) runs them in order and prints what it
likes between them::

    p = Profiler(service, ProfileConfig(space="fbnet-cifar"), target, protocol)
    p.flush_spool(); p.resume()   # optional
    p.export(); p.measure(); p.finish()

With ``calibration`` > 0 the run also times that many whole random models in the same rounds as the
ops and sends what they cost beyond the sum of their corrected ops per MB of their weights, the run's
**context cost** (:func:`fbnet.lut.context_cost`), and their ratio to that sum, its **context factor**
(:func:`fbnet.lut.context_factor`, descriptive); it needs every op of those models in the same run
(a full run, not a subset of ops or a resumed remainder), else the run carries neither.

Measurements go to the spool file before they are sent (:mod:`device_agents.uploader`), so a failure
mid-run keeps every finished op: :class:`MeasureFailed` says where they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import Field

from device_agents.protocol import (
    NOISE_PANEL,
    AgentError,
    OpResult,
    Programs,
    ProtocolConfig,
    ProtocolInfo,
    overhead_summary,
    run_protocol,
    to_measurement,
)
from device_agents.targets import (
    SILENT,
    Exports,
    ProgressFactory,
    Service,
    Target,
    arch_folder,
    arch_key,
    calibration_archs,
    export_ops,
    select_ops,
    steps,
)
from device_agents.uploader import RunState, ServiceDown, Uploader, UploadError
from fbnet.options import cli

# What profiling defaults to besides the protocol's own defaults: normalised rounds against 4 reference ops.
PROFILE_PROTOCOL = {"reference": 4, "normalize": True}


class ProfileConfig(Exports):
    """Which ops of the space a profile run times, where its unsent results wait, its calibration models."""

    ops: str | None = Field(None, description="comma-separated op keys or globs, e.g. 'k3_e6-*,fc-*'")
    limit: int | None = Field(None, ge=1, description="only the first N selected ops")
    spool_dir: Path | None = Field(None, description="unsent results (default: ~/.cache/fbnet-agent/spool)")
    calibration: int = Field(8, ge=0, description=(
        "whole random models timed in the same rounds as the ops: what they cost beyond their corrected ops, "
        "per MB of weights, is the run's context cost, which corrected pricing adds to every entry (a layer "
        "inside a model reloads weights the others evicted); 0 = none; needs a full run"),
        json_schema_extra=cli("--calibration-models", panel=NOISE_PANEL))


class NothingToResume(ValueError):
    """No unfinished run of this space and transport is in the spool."""


class MeasureFailed(AgentError):
    """The measurement broke off; the message says where the finished ops are (service or spool)."""


class SpooledError(ServiceDown):
    """The run is measured but the service is down: everything is in the spool."""


@dataclass
class Profiler:
    """One profile run of ``config.space``'s selected ops on ``target``, reported to ``service``."""

    service: Service
    config: ProfileConfig = field(default_factory=ProfileConfig)
    target: Target = field(default_factory=Target)
    protocol: ProtocolConfig = field(default_factory=lambda: ProtocolConfig(**PROFILE_PROTOCOL))
    note: Callable[[str], None] = print
    progress: ProgressFactory = SILENT

    def __post_init__(self) -> None:
        from fbnet.space import get_space

        self.sp = get_space(self.config.space)
        self.cache_dir = self.config.cache
        self.selected = select_ops(self.sp, self.config.ops, self.config.limit)
        self.state: RunState | None = None
        self.programs: dict[str, Path] = {}
        self.results: dict[str, OpResult] = {}
        self.overhead_us: float | None = None
        self.info = ProtocolInfo()
        self.measure_s = 0.0
        self.sensors_before: tuple[dict, dict] = ({}, {})
        self.sensors_after: tuple[dict, dict] = ({}, {})
        self.runner_events: list[dict] = []  # a native runner's per-round sensors and reference medians
        self.calibration_programs: dict[str, object] = {}  # program key -> Arch
        self.context_factor: float | None = None
        self.context_us_per_mb: float | None = None
        self.calibration_report: dict | None = None
        self.closed: list[str] = []  # runs the spool flush closed (their last ops were spooled)
        self._up: Uploader | None = None

    @property
    def up(self) -> Uploader:
        if self._up is None:
            self._up = Uploader.for_service(self.service, self.config.spool_dir)
        return self._up

    # -- steps ------------------------------------------------------------------------------
    def flush_spool(self) -> list[str]:
        """Send what earlier calls left in the spool; a down service is a warning here, not an error."""
        try:
            lines = [f"spool: {line}" for line in self.up.flush_spool()]
        except ServiceDown as e:
            return [f"warning: spooled results not sent yet: {e}"]
        self.closed = [line.removeprefix("spool: ") for line in lines if "closed run" in line]
        return lines

    def resume(self) -> RunState:
        """Continue the last unfinished run of this space and transport: its measured ops are skipped."""
        state = self.up.resumable(self.sp.name, self.target.transport.value, self.target.run_precision)
        if state is None:
            raise NothingToResume(f"no unfinished {self.target.transport.value} run of {self.sp.name} for "
                                  f"{self.service.device} in {self.up.spool_dir}")
        self.state = state
        done = state.measured
        self.selected = [op for op in self.selected if op.key not in done]
        self.note(f"resuming run {state.run_id}: {len(done)} ops already measured, {len(self.selected)} to go")
        return state

    def export(self) -> dict[str, Path]:
        self.programs = export_ops(self.sp, self.target.fmt, self.cache_dir, self.selected, self.config.jobs,
                                   progress=self.progress)
        self._export_calibration()
        return self.programs

    def _export_calibration(self) -> None:
        from device_agents.exporters import export_archs

        self.calibration_programs = {}
        n = self.config.calibration
        if n <= 0:
            return
        archs = calibration_archs(n, self.protocol.seed)
        have = {op.key for op in self.selected}
        if not all(op.key in have for a in archs for op in self.sp.arch_ops(a)):
            self.note(f"no context calibration: the {n} calibration models need every op of "
                      f"{self.sp.name} in this run (a full run, not a subset or a resumed remainder)")
            return
        folder = arch_folder(self.cache_dir, self.target.fmt, self.sp)
        todo = {arch_key(a): (a, folder / f"{arch_key(a)}.{self.target.fmt}") for a in archs}
        with steps(self.progress, "calibration models", len(todo)) as tick:
            paths = export_archs(self.sp, todo, self.target.fmt, jobs=self.config.jobs, progress=tick)
        self.programs.update(paths)
        self.calibration_programs = {k: todo[k][0] for k in paths}

    def _run_create(self, tr):
        from device_agents import __version__
        from device_agents.exporters import library_versions
        from fbnet.wire import RunCreate

        prov = tr.provenance()
        cfg = self.protocol
        return RunCreate(
            **prov.model_dump(exclude={"extra", "precision"}), precision=self.target.run_precision,
            space=self.sp.name, transport=self.target.transport.value, agent_version=__version__,
            warmup=cfg.warmup, repeats=cfg.repeats, rounds=cfg.rounds, temps_before=self.sensors_before[0],
            cpu_freqs_before=self.sensors_before[1], started_at=datetime.now(UTC),
            extra={**prov.extra, "exporter": library_versions(), "protocol_config": cfg.model_dump(),
                   "seed": cfg.seed, "cv_threshold": cfg.cv_threshold,
                   "cooldown_s": cfg.cooldown_s, "space_version": self.sp.version},
        )

    def measure(self) -> dict[str, OpResult]:
        """Time every selected op with the protocol; each op is spooled (and sent in batches) as it ends."""
        from device_agents.exporters import overhead_key

        if not self.programs:
            self.export()
        tr = self.target.open(self.cache_dir / "ios-work")
        if hasattr(tr, "input_shapes"):  # whole models take the space's input
            tr.input_shapes.update({k: self.sp.input_shape for k in self.calibration_programs})
        up = self.up
        try:
            tr.prepare(self.programs)
            self.sensors_before = tr.sensors()
            if self.state is None:
                self.state = up.new_run(self._run_create(tr))
            state = self.state
            overhead_of = {op.key: overhead_key(op.input_shape) for op in self.selected}
            t0 = time.monotonic()

            def on_result(r: OpResult) -> None:
                self.results[r.key] = r
                up.add(state, [to_measurement(r.key, r.stats, r.samples_us, r.overhead_us)])

            programs = Programs([op.key for op in self.selected], overhead_of=overhead_of,
                                extra=list(self.calibration_programs))
            with steps(self.progress, "measure", len(self.selected) * self.protocol.rounds) as tick:
                timed = run_protocol(tr, programs, self.protocol, on_result=on_result, on_sample=tick, info=self.info)
            self.measure_s = time.monotonic() - t0
            self.sensors_after = tr.sensors()
        except AgentError as e:
            raise MeasureFailed(f"{e}{self._kept()}") from e
        finally:
            self.runner_events = list(getattr(tr, "events", []))
            tr.close()
        self.overhead_us = overhead_summary(self.results)
        self._calibrate(timed)
        return self.results

    def _calibrate(self, timed: dict[str, OpResult]) -> None:
        """The run's context cost and factor: each calibration model's median against the sum of its ops'
        corrected medians from this run and its weight MB (fbnet.lut.context_cost and context_factor, the
        per-model overhead taken off)."""
        from fbnet.lut import context_cost, context_factor, overhead_corrected_us, weight_mb

        if not self.calibration_programs:
            return
        models, rows = [], []
        precision = self.target.run_precision
        for key, arch in self.calibration_programs.items():
            ops = self.sp.arch_ops(arch)
            ops_sum = sum(overhead_corrected_us(self.results[op.key].stats.median_us, self.results[op.key].overhead_us or 0.0)
                          for op in ops)
            mb = sum(weight_mb(op.key, precision) for op in ops)
            measured = timed[key].stats.median_us
            models.append((measured, ops_sum, mb))
            rows.append({"key": key, "arch": arch.to_text(), "median_us": measured, "ops_sum_us": ops_sum,
                         "weight_mb": mb, "n": timed[key].stats.n})
        factor, ratios = context_factor([(m, o) for m, o, _ in models], self.overhead_us)
        cost, per_mb = context_cost(models, self.overhead_us)
        for row, ratio, c in zip(rows, ratios, per_mb, strict=True):
            row["ratio"], row["us_per_mb"] = ratio, c
        self.calibration_report = {"factor": factor, "us_per_mb": cost, "models": rows,
                                   "overhead_us": self.overhead_us}
        shown = [c for c in per_mb if c is not None]
        if 0.2 < factor < 5.0 and -1000.0 < cost < 100000.0:
            self.context_factor, self.context_us_per_mb = factor, cost
            self.note(f"context: {cost:.1f} us per MB of weights inside a model ({min(shown):.1f}..{max(shown):.1f} "
                      f"over {len(rows)} whole models; they run {factor:.3f}x the sum of their ops)")
        else:  # a broken measurement, not a device: recorded, never served
            self.note(f"warning: context {cost:.1f} us/MB, factor {factor:.3f} is implausible; the run carries none")

    def _kept(self) -> str:
        if self.state is None:
            return ""
        try:
            self.up.send(self.state)
            return f"; {len(self.state.uploaded)} finished ops are on the service in run {self.state.run_id}"
        except (ServiceDown, UploadError):
            return f"; {len(self.state.measured)} finished ops spooled in {self.state.path}"

    def finish(self):
        """Close the run on the service (RunOut). Raises :class:`SpooledError` when the service is down."""
        from fbnet.wire import RunFinish

        # the overheads travel with each op (measurements.overhead_us): the service derives the run's from
        # ALL its ops, so a resumed run's subset does not overwrite what the first call measured
        fin = RunFinish(temps_after=self.sensors_after[0], cpu_freqs_after=self.sensors_after[1],
                        overhead_us=self.overhead_us, unstable=self.info.unstable,
                        context_factor=self.context_factor, context_us_per_mb=self.context_us_per_mb,
                        extra={"remeasured": [k for k, r in self.results.items() if r.remeasured],
                               "measure_s": round(self.measure_s, 2), "protocol": self.info.to_dict(),
                               "normalize": self.protocol.normalize,
                               "unstable_threshold": self.protocol.unstable_threshold,
                               **({"runner_rounds": self.runner_events} if self.runner_events else {}),
                               **({"calibration": self.calibration_report} if self.calibration_report else {})})
        try:
            return self.up.finish(self.state, fin)
        except ServiceDown as e:
            raise SpooledError(f"{e}. Nothing is lost: {len(self.state.measured)} ops spooled in "
                               f"{self.state.path}; they upload on the next fbnet-agent call (or `fbnet-agent upload`)"
                               ) from None

    def plan_rows(self) -> list[tuple[str, str, bool]]:
        """(op key, input shape, cached?) for every selected op: what a dry run shows."""
        from device_agents.exporters import cache_path

        return [(op.key, "x".join(map(str, op.input_shape)), cache_path(op.key, self.target.fmt, self.cache_dir).exists())
                for op in self.selected]
