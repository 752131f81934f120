"""The sampled profile of a v2 (FBNetV2) space: the service plans, the agent measures.

A v2 grid is too large to measure op by op (``fbnetv2-cifar``: 20 k ops), so the service keeps the
fitting state and answers ``POST /plans/{device}`` with the next batch of op configurations (a
space-filling design, then adaptive rounds where its latency model is least sure). Each round::

    plan = ask the service (with the open run's id when resuming, and the ops that failed to export)
    export the batch's ops (the export cache, worker processes) and their input shapes' overhead programs
    time them with the shared protocol on the target (host, native, adb, ios alike), spooled as they end
    finish the run: the service refits, and the next plan sees the new held-out error

until the plan says ``done`` (the budget of measured ops, the held-out goal, or the grid exhausted).
An agent killed mid-round resumes with :meth:`V2Profiler.resume`: the spooled open run is flushed and
named to the plan, so its measured ops are not measured again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from device_agents.profiling import ProfileConfig
from device_agents.protocol import OpResult, Programs, ProtocolConfig, run_protocol, to_measurement
from device_agents.targets import SILENT, ProgressFactory, Service, Target, export_ops, steps
from device_agents.uploader import RunState, Uploader
from fbnet.options import cli
from fbnet.wire import PlanOut, PlanRequest, RunCreate, RunFinish

SAMPLING_PANEL = "Sampled profile (v2 spaces: fbnetv2-*)"


class V2Sampling(BaseModel):
    """How much of a v2 space's grid a sampled profile measures, and in what batches (the service plans
    which ops)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget: int | None = Field(None, ge=1, description="v2: stop once this many grid ops are measured",
                               json_schema_extra=cli(panel=SAMPLING_PANEL))
    goal: float | None = Field(None, gt=0, le=1, description=(
        "v2: stop once the model's held-out share within ±10 % reaches this (e.g. 0.95)"),
        json_schema_extra=cli(panel=SAMPLING_PANEL))
    batch: int = Field(50, ge=1, le=1000, description="v2: ops per planned batch (one run per batch)",
                       json_schema_extra=cli(panel=SAMPLING_PANEL))
    design: int = Field(300, ge=0, le=20_000, description="v2: ops of the space-filling design before adaptive "
                        "rounds", json_schema_extra=cli(panel=SAMPLING_PANEL))
    design_seed: int = Field(0, ge=0, description="v2: the design's seed", json_schema_extra=cli(panel=SAMPLING_PANEL))
    context_max_factor: float = Field(2.0, gt=1, le=100, description=(
        "v2: the calibration serves a context only when its whole models run within 1/F..F x the sum of "
        "their ops (beyond it a busy machine preempted the models, not weight reloads)"),
        json_schema_extra=cli(panel=SAMPLING_PANEL))
    max_batches: int | None = Field(None, ge=1, description="v2: stop after this many batches in this call",
                                    json_schema_extra=cli(panel=SAMPLING_PANEL, hidden=True))


class NothingToResume(ValueError):
    """No unfinished run of this space and transport is in the spool."""


@dataclass
class RoundReport:
    """One round of a sampled profile: what the plan asked, what was measured, how long each part took."""

    round: int
    phase: str
    asked: int
    measured: int
    failed: list[str]
    export_s: float
    measure_s: float
    run_id: int | None
    heldout: dict | None  # the plan's held-out error before this round


@dataclass
class V2Profiler:
    """A sampled profile of ``config.space`` on ``target``, planned by and reported to ``service``."""

    service: Service
    config: ProfileConfig = field(default_factory=lambda: ProfileConfig(space="fbnetv2-cifar"))
    sampling: V2Sampling = field(default_factory=V2Sampling)
    target: Target = field(default_factory=Target)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    note: Callable[[str], None] = print
    progress: ProgressFactory = SILENT

    def __post_init__(self) -> None:
        from fbnet.space_v2 import get_v2_space

        self.sp = get_v2_space(self.config.space)
        self.state: RunState | None = None
        self.failed: list[str] = []  # ops of the current batch that could not be exported
        self.rounds: list[RoundReport] = []
        self.last: PlanOut | None = None
        self._up: Uploader | None = None
        self._prov = None

    @property
    def up(self) -> Uploader:
        if self._up is None:
            self._up = Uploader.for_service(self.service, self.config.spool_dir)
        return self._up

    def close(self) -> None:
        if self._up is not None:
            self._up.close()

    def provenance(self):
        """The transport's provenance (its configuration is the plan's): read once, from a fresh transport."""
        if self._prov is None:
            tr = self.target.open(self.config.cache / "ios-work")
            try:
                self._prov = tr.provenance()
            finally:
                tr.close()
        return self._prov

    # -- the plan ---------------------------------------------------------------------------
    def plan_request(self) -> PlanRequest:
        prov, c = self.provenance(), self.sampling
        return PlanRequest(space=self.sp.name, runtime=prov.runtime, runtime_version=prov.runtime_version,
                           precision=self.target.run_precision, threads=prov.threads, cpu_mask=prov.cpu_mask,
                           compute_units=prov.compute_units, batch=c.batch, design=c.design, budget=c.budget,
                           goal_within_10pct=c.goal, seed=c.design_seed, failed=list(self.failed),
                           run_id=self.state.run_id if self.state is not None else None)

    def plan(self) -> PlanOut:
        """Ask the service what to measure now (the current batch less what is measured)."""
        self.last = self.up.service.plan(self.service.device, self.plan_request())
        return self.last

    # -- steps ------------------------------------------------------------------------------
    def resume(self) -> RunState:
        """Continue the newest unfinished run of this space and transport: spooled ops are sent, and
        the plan skips what the run holds."""
        self.up.flush_spool()
        st = self.up.resumable(self.sp.name, self.target.transport.value, self.target.run_precision)
        if st is None:
            raise NothingToResume(f"no unfinished {self.target.transport.value} run of {self.sp.name} for "
                                  f"{self.service.device} in {self.up.spool_dir}")
        self.up.send(st)  # opens it on the service if it never was
        self.state = st
        self.note(f"resuming run {st.run_id}: {len(st.measured)} ops already measured")
        return st

    def export(self, keys: list[str]) -> dict[str, Path]:
        """Export the batch's ops (cached by op configuration); ops that fail are added to ``failed``."""
        ops = [self.sp.grid[k] for k in keys]
        bad: dict[str, str] = {}
        programs = export_ops(self.sp, self.target.fmt, self.config.cache, ops, self.config.jobs,
                              progress=self.progress, failed=bad)
        for key, why in bad.items():
            self.note(f"warning: {why}; reported to the service as failed")
            if key in self.sp.grid:
                self.failed.append(key)
        return programs

    def _run_create(self, prov) -> RunCreate:
        from device_agents import __version__
        from device_agents.exporters import library_versions

        cfg = self.protocol
        return RunCreate(**prov.model_dump(exclude={"extra", "precision"}), precision=self.target.run_precision,
                         space=self.sp.name, transport=self.target.transport.value, agent_version=__version__,
                         warmup=cfg.warmup, repeats=cfg.repeats, rounds=cfg.rounds, started_at=datetime.now(UTC),
                         extra={**prov.extra, "exporter": library_versions(), "protocol_config": cfg.model_dump(),
                                "space_version": self.sp.version, "sampled": True})

    def measure(self, keys: list[str], programs: dict[str, Path], label: str) -> dict[str, OpResult]:
        """Time ``keys`` with the protocol into the open run (opened here when there is none)."""
        from device_agents.exporters import overhead_key

        keys = [k for k in keys if k in programs]
        if not keys:
            return {}
        tr = self.target.open(self.config.cache / "ios-work")
        results: dict[str, OpResult] = {}
        if hasattr(tr, "input_shapes"):  # v2 keys are not v1 keys: the shapes come from the grid
            tr.input_shapes.update({k: self.sp.grid[k].input_shape for k in keys})
        try:
            tr.prepare({k: p for k, p in programs.items() if k in keys or k.startswith("overhead-")})
            if self.state is None:
                self.state = self.up.new_run(self._run_create(tr.provenance()))
            st, up = self.state, self.up

            def on_result(r: OpResult) -> None:
                results[r.key] = r
                up.add(st, [to_measurement(r.key, r.stats, r.samples_us, r.overhead_us)])

            progs = Programs(keys, overhead_of={k: overhead_key(self.sp.grid[k].input_shape) for k in keys})
            with steps(self.progress, label, len(keys) * self.protocol.rounds) as tick:
                run_protocol(tr, progs, self.protocol, on_result=on_result, on_sample=tick)
        finally:
            tr.close()
        return results

    def finish(self, results: dict[str, OpResult]):
        """Close the open run: the service refits the grid."""
        from device_agents.protocol import overhead_summary

        fin = RunFinish(overhead_us=overhead_summary(results) if results else None,
                        extra={"sampled": True, "plan_round": self.last.round if self.last else None})
        out = self.up.finish(self.state, fin)
        self.state = None
        return out

    def calibrate(self) -> dict | None:
        """The in-model context once the plan is done (:mod:`device_agents.calibration_v2`): whole
        calibration models against the served grid, uploaded as a run of their references whose finish
        carries the context cost. None with ``calibration`` 0."""
        from device_agents.calibration_v2 import V2Calibration, reference_measurements
        from device_agents.protocol import overhead_summary
        from fbnet.lut import TableError

        if not self.config.calibration:
            return None
        t0 = time.monotonic()
        cal = V2Calibration(self.service, self.config, self.target, self.protocol, note=self.note,
                            progress=self.progress, max_factor=self.sampling.context_max_factor)
        try:
            cal.fetch()
        except TableError as e:  # a grid too thinly measured for the fit to price whole models yet
            self.note(f"no context calibration: {e}; a larger --budget measures enough of the grid")
            return None
        cal.export()
        t1 = time.monotonic()
        cal.measure()
        report, refs = cal.context(), cal.reference_results()
        self.state = self.up.new_run(self._run_create(self.provenance()))
        self.up.add(self.state, reference_measurements(refs))
        ok = report["plausible"]
        self.up.finish(self.state, RunFinish(
            overhead_us=overhead_summary(refs), context_factor=report["factor"] if ok else None,
            context_us_per_mb=report["us_per_mb"] if ok else None, extra={"sampled": True, "calibration": report}))
        self.state = None
        per = [m["us_per_mb"] for m in report["models"] if m["us_per_mb"] is not None]
        timing = f"(export {t1 - t0:.1f} s, timing {time.monotonic() - t1:.1f} s)"
        if ok:
            self.note(f"context: {report['us_per_mb']:.1f} us per MB of weights inside a model ({min(per):.1f}.."
                      f"{max(per):.1f} over {len(per)} whole calibration models, drift {report['drift']:.3f}; they "
                      f"run {report['factor']:.3f}x the sum of their ops) {timing}")
        else:  # a broken measurement, not a device: recorded, never served
            self.note(f"warning: context {report['us_per_mb']:.1f} us/MB, factor {report['factor']:.3f} is "
                      f"implausible; the calibration run carries none {timing}")
        return report

    # -- the loop ---------------------------------------------------------------------------
    def round(self, plan: PlanOut) -> RoundReport:
        """Export, measure and finish one planned batch."""
        held = plan.heldout.model_dump() if plan.heldout else None
        t0 = time.monotonic()
        programs = self.export(plan.keys)
        t1 = time.monotonic()
        label = f"round {plan.round} ({plan.phase})" + (f", held-out {100 * held['within_10pct']:.0f} % within "
                                                       f"±10 %" if held and held["within_10pct"] is not None else "")
        results = self.measure(plan.keys, programs, label)
        t2 = time.monotonic()
        run_id = self.state.run_id if self.state is not None else None
        if self.state is not None:
            self.finish(results)
        rep = RoundReport(plan.round, plan.phase, len(plan.keys), len(results), list(self.failed), round(t1 - t0, 2),
                          round(t2 - t1, 2), run_id, held)
        self.rounds.append(rep)
        return rep

    def run(self) -> PlanOut:
        """Plan and measure rounds until the plan is done (or ``max_batches`` rounds); the last plan. The
        export workers stay alive across the rounds (:func:`device_agents.exporters.worker_pool`)."""
        from device_agents.exporters import worker_pool

        with worker_pool(self.config.jobs):
            return self._rounds()

    def _rounds(self) -> PlanOut:
        while True:
            plan = self.plan()
            self.failed = []
            if plan.done or not plan.keys:
                if self.state is not None:  # a resumed run whose last ops were spooled: close it
                    self.finish({})
                    plan = self.plan()
                if plan.done:
                    self.calibrate()
                    return plan
            rep = self.round(plan)
            self.note(_round_line(rep, plan))
            if self.sampling.max_batches is not None and len(self.rounds) >= self.sampling.max_batches:
                return self.plan()


def _round_line(rep: RoundReport, plan: PlanOut) -> str:
    held = rep.heldout
    err = (f"; held-out before it: {100 * held['within_10pct']:.1f} % within ±10 %, MAPE {held['mape']:.1f} % "
           f"over {held['n']} ops" if held and held.get("within_10pct") is not None else "")
    fails = f", {len(rep.failed)} failed to export" if rep.failed else ""
    return (f"round {rep.round} ({rep.phase}): {rep.measured}/{rep.asked} ops measured{fails} into run {rep.run_id} "
            f"(export {rep.export_s:.1f} s, timing {rep.measure_s:.1f} s); {plan.measured + rep.measured} measured "
            f"of {plan.grid}{err}")


__all__ = ["NothingToResume", "RoundReport", "V2Profiler", "V2Sampling"]
