"""The validate flow of a v2 (FBNetV2) space: whole random architectures at their resolutions against
the served grid table (measured and fitted entries, :func:`fbnet.lut_v2.predict_v2`).

Steps as in :mod:`device_agents.validate`: fetch the grid table (ETag cache) and fit the target to its
configuration; export each architecture whole (``FBNetV2Net`` at its resolution) and a few measured grid
ops as references; time them in the protocol's interleaved rounds; upload one validation per
architecture (its text's tokens as ``arch``). With ``drift_adjust`` the prediction is scaled by the
drift since the table was measured, so the comparison measures the table, not how busy the machine is
now: the drift of the table's calibration models when it has some (the whole models the profile timed
to calibrate the in-model context, :mod:`device_agents.calibration_v2`; timed again here, now / then,
"then" put in the table's state by that calibration's own drift), else of the reference ops (their
medians now / in the table). Whole models drift as whole models do: a load that preempts a 2 ms model
but not a 20 us op shows in the first and not in the second, as in v1 (:mod:`device_agents.validate`).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from pathlib import Path

from device_agents.protocol import OpResult, Programs, ProtocolConfig, ProtocolInfo, run_protocol
from device_agents.targets import ProgressFactory, Service, Target, arch_folder, arch_key, export_ops, steps
from device_agents.validate import (
    ArchValidation,
    NothingToValidate,
    ValidationConfig,
    ValidationReport,
    fetch_table,
    fit_target,
    median_models,
    run_calibrations,
    table_selector,
)
from fbnet.configuration import Selector


def v2_archs(space, n: int, seed: int, extra: list[str] | None = None) -> list[tuple[str, object]]:
    """(label, ArchV2): ``n`` uniformly drawn architectures of ``space`` (their own stream of ``seed``)
    and the given architecture texts."""
    from fbnet.arch_v2 import ArchV2

    rng = random.Random(f"v2-validate-{seed}")
    labelled = [(f"random-{seed}-{i}", space.random_arch(rng)) for i in range(n)]
    for i, text in enumerate(extra or []):
        a = ArchV2.parse(text)
        space.check_arch(a)
        labelled.append((f"arch-{i}", a))
    if not labelled:
        raise NothingToValidate("nothing to validate: no random or given architecture")
    return labelled


def calibration_models_v2(service: Service, table, space) -> dict[str, tuple[object, float]]:
    """The whole calibration models of the table's configuration (the plausible calibrations its finished
    runs carry in ``extra['calibration']``): program key -> (ArchV2, median us in the table's state: the
    median over the runs that timed it of the model's median / that calibration's drift). An implausible
    calibration was timed under a load the table's ops did not see: left out."""
    from fbnet.arch_v2 import ArchV2

    if table.configuration is None:
        return {}

    def run_ids(c) -> list[int]:
        return next((x.runs for x in c.configurations(service.device, space.name)
                     if x.id == table.configuration.config_id), [])

    return median_models((ArchV2.parse(m["arch"]), float(m["median_us"]) / float(cal["drift"]))
                         for cal in run_calibrations(service, run_ids) if cal.get("plausible") and cal.get("drift")
                         for m in cal.get("models", []))


class V2Validation:
    """:meth:`fetch`, :meth:`export`, :meth:`measure`, :meth:`upload` (module docstring)."""

    def __init__(self, service: Service, config: ValidationConfig, target: Target, protocol: ProtocolConfig,
                 selector: Selector, note: Callable[[str], None], progress: ProgressFactory,
                 labelled: list[tuple[str, object]] | None = None):
        from fbnet.space_v2 import get_v2_space

        self.service, self.config, self.protocol, self.note, self.progress = service, config, protocol, note, progress
        self.selector = table_selector(selector, target)
        self.target = target
        self.sp = get_v2_space(config.space)
        self.labelled = labelled or v2_archs(self.sp, config.archs, protocol.seed, config.arch)
        self.keys = {label: arch_key(a) for label, a in self.labelled}
        self.table = None
        self.calib: dict[str, tuple[object, float]] = {}
        self.refs: list[str] = []
        self.programs: dict[str, Path] = {}
        self.results: dict[str, OpResult] = {}
        self.info = ProtocolInfo()

    def fetch(self) -> None:
        """The grid table; the target fitted to its configuration; every architecture priced by it."""
        from fbnet.lut_v2 import predict_v2

        self.table = fetch_table(self.service, self.sp.name, self.config.cache, self.selector,
                                 on_warning=lambda m: self.note(f"warning: {m}"))
        t = self.table
        h = t.model.heldout if t.model else None
        self.note(f"{t.device}/{t.space}: version {t.version}, {t.counts.get('measured', 0)} measured and "
                  f"{t.counts.get('fitted', 0)} fitted entries" + (f" (held-out {100 * h.within_10pct:.1f} % within "
                                                                   f"±10 %)" if h and h.within_10pct is not None else ""))
        self.target = fit_target(self.target, self.selector, t)
        self.preds = {label: predict_v2(t, self.sp, a) for label, a in self.labelled}

    def load_calibration(self) -> None:
        """The table's calibration models (when ``drift_adjust`` with the median statistic): timed too."""
        if self.config.drift_adjust and self.config.statistic == "median":
            self.calib = calibration_models_v2(self.service, self.table, self.sp)
            if self.calib:
                self.note(f"{len(self.calib)} calibration model(s) of the table timed too: the prediction is "
                          f"scaled by their drift")

    def export(self) -> None:
        """The whole models (and the calibration models), up to ``protocol.reference`` measured grid ops as
        references."""
        from device_agents.exporters import export_archs

        fmt, jobs = self.target.fmt, self.config.jobs
        folder = arch_folder(self.config.cache, fmt, self.sp)
        todo = {self.keys[label]: (a, folder / f"{self.keys[label]}.{fmt}") for label, a in self.labelled}
        todo.update({k: (a, folder / f"{k}.{fmt}") for k, (a, _) in self.calib.items() if k not in todo})
        with steps(self.progress, "export", len(todo)) as tick:
            self.programs = export_archs(self.sp, todo, fmt, jobs=jobs, progress=tick)
        c = self.table.columns
        measured = sorted(k for k, s in zip(c.key, c.source, strict=True) if s == "measured")
        n = self.protocol.reference
        self.refs = measured[:: max(1, len(measured) // n)][:n] if n and measured else []
        if self.refs:
            ops = [self.sp.grid[k] for k in self.refs]
            got = export_ops(self.sp, fmt, self.config.cache, ops, jobs)
            self.programs.update({k: p for k, p in got.items() if k in self.refs})

    def measure(self) -> None:
        """Every program in the protocol's interleaved rounds; the models settle (``settle_tau``)."""
        models = [self.keys[label] for label, _ in self.labelled]
        self.run_rounds(Programs(list(self.programs), reference=self.refs or None, settle=models), "measure",
                        len(self.programs))

    def run_rounds(self, programs: Programs, label: str, n: int) -> None:
        """``programs`` (``n`` of them) on the target in the protocol's rounds, into ``results``."""
        tr = self.target.open(self.config.cache / "ios-work")
        if hasattr(tr, "input_shapes"):
            tr.input_shapes.update({self.keys[label]: self.sp.input_shape(a.resolution) for label, a in self.labelled})
            tr.input_shapes.update({k: self.sp.input_shape(a.resolution) for k, (a, _) in self.calib.items()})
            tr.input_shapes.update({k: self.sp.grid[k].input_shape for k in self.refs})
        try:
            tr.prepare(self.programs)
            with steps(self.progress, label, n * self.protocol.rounds) as tick:
                self.results = run_protocol(tr, programs, self.protocol, on_sample=tick, info=self.info)
        finally:
            tr.close()

    def drift(self) -> float | None:
        """Median of the reference ops' medians now / their table latency (None: no references)."""
        c = self.table.columns
        then = dict(zip(c.key, c.latency_us, strict=True))
        ratios = [self.results[k].stats.median_us / then[k] for k in self.refs if then.get(k)]
        return statistics.median(ratios) if ratios else None

    def model_drift(self) -> float | None:
        """Median of the calibration models' medians now / then (None: the table has none)."""
        ratios = [self.results[k].stats.median_us / then for k, (_, then) in self.calib.items() if k in self.results]
        return statistics.median(ratios) if ratios else None

    def upload(self) -> ValidationReport:
        """One validation per architecture (the prediction scaled by the drift when ``drift_adjust``)."""
        from device_agents.uploader import Uploader
        from fbnet.wire import ValidationCreate

        t, drift, model_drift = self.table, self.drift(), self.model_drift()
        scale = (model_drift or drift or 1.0) if self.config.drift_adjust else 1.0
        report = ValidationReport(self.sp.name, self.service.device, self.target.transport.value, t.overhead_us,
                                  "corrected", f"table {t.version}", drift=drift, model_drift=model_drift,
                                  drift_adjusted=scale != 1.0, protocol=self.info.to_dict(),
                                  reference_ops=list(self.refs))
        up = Uploader.for_service(self.service)
        try:
            for label, a in self.labelled:
                pred, r = self.preds[label], self.results[self.keys[label]]
                v = ValidationCreate(
                    space=self.sp.name, arch=a.to_text().split(","), predicted_us=pred["latency_us"] * scale,
                    measured_us=r.stats.median_us, n=r.stats.n, std_us=r.stats.std_us, table_version=t.version,
                    label=label, extra={"table_predicted_us": pred["latency_us"], "sources": pred["sources"],
                                        "drift": drift, "model_drift": model_drift, "drift_scale": scale,
                                        "calibration_models": sorted(self.calib), "calibration_now_us": {
                                            k: self.results[k].stats.median_us for k in self.calib},
                                        "calibration_then_us": {k: then for k, (_, then) in self.calib.items()},
                                        "resolution": a.resolution,
                                        "mflops": self.sp.arch_mflops(a), "reference_ops": list(self.refs),
                                        "transport": self.target.transport.value, "threads": self.target.threads,
                                        "p10_us": r.stats.p10_us, "p90_us": r.stats.p90_us})
                out = up.post_validation(v)
                report.rows.append(ArchValidation(label, a, pred["latency_us"], v.predicted_us, v.measured_us,
                                                  out.error_pct))
        finally:
            up.close()
        return report


def validate_v2(service: Service, config: ValidationConfig, *, target: Target, protocol: ProtocolConfig,
                selector: Selector, note: Callable[[str], None] = print,
                progress: ProgressFactory | None = None) -> ValidationReport:
    """The v2 validate flow, step by step (module docstring)."""
    from device_agents.targets import SILENT

    v = V2Validation(service, config, target, protocol, selector, note, progress or SILENT)
    v.fetch()
    v.load_calibration()
    v.export()
    v.measure()
    return v.upload()


__all__ = ["V2Validation", "calibration_models_v2", "v2_archs", "validate_v2"]
