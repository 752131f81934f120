"""The validate flow: time whole architectures with the op protocol, next to reference ops of the table
(the device's drift since the table was measured), and upload measured vs table-predicted latency.

The table comes through :class:`fbnet.client.TableClient` (ETag cache) and every prediction through
:func:`fbnet.lut.predict`, so validate prices an architecture exactly as the search does. The steps
(:class:`Validation`): fetch the table and fit the target to its configuration, export the programs,
measure them in interleaved rounds, upload one validation per architecture.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from device_agents.protocol import NOISE_PANEL, OpResult, Programs, ProtocolConfig, ProtocolInfo, run_protocol
from device_agents.targets import (
    SILENT,
    Exports,
    ProgressFactory,
    Service,
    Target,
    TransportName,
    arch_folder,
    arch_key,
    random_archs,
    reference_ops,
    steps,
)
from fbnet.configuration import Selector
from fbnet.options import cli

# More rounds while the models' split-half tau is below this (bench/README.md, "Table fidelity").
SETTLE_TAU = 0.95
# What validating defaults to besides the protocol's own defaults: 8 reference ops of the table,
# normalised rounds, and rounds until the models' ranking reproduces itself.
VALIDATE_PROTOCOL = {"reference": 8, "normalize": True, "settle_tau": SETTLE_TAU}


class NothingToValidate(ValueError):
    pass


class ValidationConfig(Exports):
    """Which architectures to validate and how the table prices them."""

    archs: int = Field(5, ge=0, description="random architectures besides FBNet-A/B/C")
    arch: list[str] = Field(default_factory=list, description="an extra architecture (repeatable)",
                            json_schema_extra=cli(metavar="<arch>"))
    predefined: bool = Field(True, description="include FBNet-A/B/C")
    raw: bool = Field(False, description="predict with the raw medians (each op with the per-call overhead it "
                      "paid alone) instead of fbnet.lut's corrected pricing")
    statistic: Literal["median", "p10"] = Field("median", description=(
        "what is compared, for the table's ops and the whole models alike: the median, or the 10th percentile "
        "(p10), which a busy device inflates least"))
    drift_adjust: bool = Field(True, description=(
        "scale the prediction by the drift since the table was measured (of its calibration models, else of "
        "the reference ops): the comparison then measures the table, not the machine's mood"),
        json_schema_extra=cli(panel=NOISE_PANEL))
    per_layer: bool = Field(False, description=(
        "also time every prefix of each model (stem + first k layers) in the same rounds: each layer's "
        "in-context cost next to its table entry"))

    @property
    def pricing(self) -> str:
        return "raw" if self.raw else "corrected"


@dataclass
class ArchValidation:
    label: str
    arch: object
    raw_us: float
    corrected_us: float
    measured_us: float
    uploaded_error_pct: float

    @property
    def raw_error_pct(self) -> float:
        return 100 * (self.raw_us - self.measured_us) / self.measured_us


@dataclass
class ValidationReport:
    space: str
    device: str
    transport: str
    table_overhead_us: float | None
    pricing: str
    configuration: str = ""
    rows: list[ArchValidation] = field(default_factory=list)
    drift: float | None = None
    model_drift: float | None = None  # the table's calibration models now / when profiled
    drift_adjusted: bool = False
    protocol: dict = field(default_factory=dict)
    reference_ops: list[str] = field(default_factory=list)
    per_layer: dict[str, list] = field(default_factory=dict)  # label -> [perlayer.LayerRow] (per_layer)

    @property
    def errors(self) -> list[float]:
        return [abs(r.uploaded_error_pct) for r in self.rows]

    @property
    def settle(self) -> dict | None:
        """The last settling check: the models' rounds and their split-half tau (None: not checked)."""
        settle = self.protocol.get("settle") or []
        return settle[-1] if settle and settle[-1]["tau"] is not None else None


def label_archs(space, archs: int, seed: int, predefined: bool, extra: list[str] | None):
    """(label, Arch) pairs: ``archs`` random ones, FBNet-A/B/C, and the given architecture texts."""
    from fbnet.space import PREDEFINED, Arch

    labelled = [(f"random-{seed}-{i}", a) for i, a in enumerate(random_archs(archs, seed))]
    if predefined:
        labelled += [(name, Arch.from_indices(idx)) for name, idx in PREDEFINED.items()]
    labelled += [(a if a in PREDEFINED else f"arch-{i}", Arch.parse(a)) for i, a in enumerate(extra or [])]
    if not labelled:
        raise NothingToValidate("nothing to validate: no random, predefined or given architecture")
    return labelled


def fetch_table(service: Service, space: str, cache_dir: Path, selector: Selector | None = None,
                on_warning: Callable[[str], None] | None = None):
    """The device's served table in the configuration ``selector`` picks (the one table fetcher, with its
    ETag cache beside the export cache)."""
    from fbnet.client import TableClient

    with TableClient(service.server, Path(cache_dir).parent / "tables", token=service.token,
                     on_warning=on_warning) as c:
        return c.fetch(service.device, space, selector).table


def run_calibrations(service: Service, run_ids: Callable[[object], list[int]]) -> Iterator[dict]:
    """The ``extra.calibration`` of each run ``run_ids(client)`` names (a run this token may not read,
    or one that is gone, is left out)."""
    from fbnet.client import RetryPolicy, ServiceClient, ServiceRefused

    with ServiceClient(service.server, service.token, role="agent", timeout_s=60,
                       retry=RetryPolicy(retries=service.retries)) as c:
        for rid in run_ids(c):
            try:
                run = c.get_run(rid)
            except ServiceRefused:
                continue
            yield run.extra.get("calibration") or {}


def median_models(rows: Iterable[tuple[object, float]]) -> dict[str, tuple[object, float]]:
    """program key -> (architecture, the median of its times) from (architecture, time) rows."""
    seen: dict[str, tuple[object, list[float]]] = {}
    for a, us in rows:
        seen.setdefault(arch_key(a), (a, []))[1].append(us)
    return {k: (a, statistics.median(xs)) for k, (a, xs) in seen.items()}


def calibration_models(service: Service, table) -> dict[str, tuple[object, float]]:
    """The whole calibration models the table's runs timed (``extra.calibration``): program key ->
    (Arch, median us when profiled; the median over the runs that timed it)."""
    from fbnet.space import Arch

    run_ids = sorted({rid for e in table.entries for rid in e.run_ids})
    return median_models((Arch.parse(m["arch"]), float(m["median_us"]))
                         for cal in run_calibrations(service, lambda c: run_ids) for m in cal.get("models", []))


def table_selector(selector: Selector, target: Target) -> Selector:
    """The configuration to validate against: on iOS the target's compute units unless the selector
    names some."""
    if target.transport is TransportName.ios and selector.compute_units is None:
        return selector.model_copy(update={"compute_units": target.compute_units})
    return selector


def fit_target(target: Target, selector: Selector, table) -> Target:
    """Threads and CPU mask the selector leaves open follow the table's configuration, so the models run
    as its ops were timed; an int8 table's models are quantized the same way."""
    tc = table.configuration
    if tc is None or target.transport is TransportName.ios:
        return target
    return target.model_copy(update={"threads": selector.threads or tc.threads or target.threads,
                                     "cpu_mask": selector.cpu_mask or tc.cpu_mask or target.cpu_mask,
                                     "precision": tc.precision})


def validate(service: Service, config: ValidationConfig | None = None, *, target: Target | None = None,
             protocol: ProtocolConfig | None = None, selector: Selector | None = None,
             note: Callable[[str], None] = print, progress: ProgressFactory = SILENT) -> ValidationReport:
    """Time the architectures ``config`` names (and, with ``per_layer``, their prefix models: see
    :mod:`device_agents.perlayer`) with the table's reference ops in the same rounds; upload one
    validation per architecture, against the table of the configuration ``selector`` picks. With
    ``drift_adjust`` the prediction is scaled by the drift (now / in the table), so the comparison
    measures the table rather than the machine's mood. ``statistic`` picks what is compared, for ops
    and models alike: the median, or the 10th percentile (``p10``), which a busy device inflates least."""
    v = Validation(service, config or ValidationConfig(), target or Target(),
                   protocol or ProtocolConfig(**VALIDATE_PROTOCOL), selector or Selector(), note, progress)
    v.fetch()
    v.export()
    v.measure()
    return v.upload()


class Validation:
    """The validate flow in named steps: :meth:`fetch`, :meth:`export`, :meth:`measure`, :meth:`upload`."""

    def __init__(self, service: Service, config: ValidationConfig, target: Target, protocol: ProtocolConfig,
                 selector: Selector, note: Callable[[str], None], progress: ProgressFactory):
        from fbnet.space import get_space

        self.service, self.config, self.protocol, self.note, self.progress = service, config, protocol, note, progress
        self.selector = table_selector(selector, target)
        self.target = target
        self.sp = get_space(config.space)
        self.cache_dir = config.cache
        self.labelled = label_archs(self.sp, config.archs, protocol.seed, config.predefined, config.arch)
        self.keys = {label: arch_key(a) for label, a in self.labelled}
        self.table = None
        self.calib: dict[str, tuple[object, float]] = {}
        self.refs: list = []
        self.programs: dict[str, Path] = {}
        self.results: dict[str, OpResult] = {}
        self.info = ProtocolInfo()

    def stat(self, r: OpResult) -> float:
        """The statistic compared, for ops and whole models alike."""
        return r.stats.p10_us if self.config.statistic == "p10" else r.stats.median_us

    def fetch(self) -> None:
        """The table; the target fitted to its configuration; every op the architectures use in it."""
        from fbnet.lut import TableError, describe, latencies

        self.table = fetch_table(self.service, self.sp.name, self.cache_dir, self.selector,
                                 on_warning=lambda m: self.note(f"warning: {m}"))
        self.note(describe(self.table))
        self.target = fit_target(self.target, self.selector, self.table)
        _, missing = latencies(self.table, [op.key for _, a in self.labelled
                                            for op in self.sp.arch_ops(a, with_identity=True)])
        if missing:
            raise TableError(f"the table of {self.service.device} for {self.sp.name} lacks {len(missing)} op(s) "
                             f"these architectures use: {', '.join(sorted(missing))}; run `fbnet-agent profile` "
                             "for them first")

    def export(self) -> None:
        """The whole models, the table's calibration models, the prefixes (per layer) and the reference ops."""
        from device_agents.exporters import export_archs, export_space

        fmt, jobs = self.target.fmt, self.config.jobs
        folder = arch_folder(self.cache_dir, fmt, self.sp)
        todo = {self.keys[label]: (a, folder / f"{self.keys[label]}.{fmt}") for label, a in self.labelled}
        # The table's calibration models, re-timed with the validated ones: how much the whole-model cost
        # moved since profiling (speed AND the cache context: what a neighbour does to shared caches moves
        # a whole model more than an op alone). Median statistic only: the runs recorded medians. When
        # there are some, they are the rounds' references too: each round is normalised by what the whole
        # models did in it (a neighbour that thrashes the cache moves models more than ops).
        if self.config.drift_adjust and self.config.statistic == "median":
            self.calib = calibration_models(self.service, self.table)
        for k, (a, _) in self.calib.items():
            todo.setdefault(k, (a, folder / f"{k}.{fmt}"))
        with steps(self.progress, "export", len(todo)) as tick:
            self.programs = export_archs(self.sp, todo, fmt, jobs=jobs, progress=tick)
        if self.config.per_layer:
            from device_agents import perlayer
            from device_agents.exporters import export_prefixes

            prefixes = perlayer.prefix_programs(self.sp, self.labelled, self.keys, folder, fmt)
            with steps(self.progress, "prefixes", len(prefixes)) as tick:
                self.programs.update(export_prefixes(self.sp, prefixes, fmt, jobs=jobs, progress=tick))
        # Reference ops from the table, timed in the same interleaved rounds as the whole models: how much
        # faster or slower the device is now than when its table was measured (shared hosts, thermal state).
        self.refs = reference_ops(self.sp, [a for _, a in self.labelled], self.protocol.reference)
        if self.refs:
            self.programs.update(export_space(self.sp, fmt, self.cache_dir, ops=self.refs, jobs=jobs))

    def measure(self) -> None:
        """Every program in the protocol's interleaved rounds; the models settle (``settle_tau``)."""
        arch_shapes = {k: self.sp.input_shape for k in self.programs if k not in {op.key for op in self.refs}}
        tr = self.target.open(self.cache_dir / "ios-work")
        if hasattr(tr, "input_shapes"):
            tr.input_shapes.update(arch_shapes)
        programs = Programs(list(self.programs), reference=list(self.calib) or [op.key for op in self.refs],
                            settle=[self.keys[label] for label, _ in self.labelled])
        try:
            tr.prepare(self.programs)
            with steps(self.progress, "measure", len(self.programs) * self.protocol.rounds) as tick:
                self.results = run_protocol(tr, programs, self.protocol, on_sample=tick, info=self.info)
        finally:
            tr.close()

    def report(self) -> ValidationReport:
        """The drifts of the reference ops and of the calibration models, now vs in the table."""
        from fbnet.lut import describe

        table, stat = self.table, self.stat
        table_us = {e.key: (e.p10_us if self.config.statistic == "p10" else e.latency_us) for e in table.entries}
        drift = statistics.median(stat(self.results[op.key]) / table_us[op.key] for op in self.refs
                                  if table_us[op.key]) if self.refs else None
        model_drift = statistics.median(stat(self.results[k]) / then for k, (_, then) in self.calib.items()
                                        if then > 0) if self.calib else None
        return ValidationReport(self.sp.name, self.service.device, self.target.transport.value, table.overhead_us,
                                self.config.pricing, describe(table), drift=drift, model_drift=model_drift,
                                reference_ops=[op.key for op in self.refs],
                                drift_adjusted=bool(self.config.drift_adjust and (model_drift or drift)),
                                protocol=self.info.to_dict())

    def in_round_us(self, a, pred: dict) -> float | None:
        """The table's rule applied to ops timed in the same rounds as the model (every op of the
        architecture among the reference ops): each op at its in-round statistic less the same per-op
        correction, the overhead once. It measures the rule (isolated ops sum to the model), with the
        machine's mood common to both sides. None when an op of the architecture was not timed with it."""
        from fbnet.lut import entry_us, in_context_us, model_overhead_us

        table, pricing = self.table, self.config.pricing
        ref_keys = {op.key for op in self.refs}
        ops = list(zip(self.sp.arch_ops(a, with_identity=True), pred["per_op"], strict=True))
        if not all(op.is_identity or op.key in ref_keys for op, _ in ops):
            return None
        correction = {e.key: e.latency_us - (entry_us(e, table, pricing, in_context=False) or 0.0)
                      for e in table.entries if e.latency_us is not None}
        return math.fsum(p["latency_us"] if op.is_identity
                         else in_context_us(max(0.0, self.stat(self.results[op.key]) - correction[op.key]), op.key,
                                            table, pricing)
                         for op, p in ops) + model_overhead_us(table, pricing)

    def validation(self, label: str, a, pred: dict, report: ValidationReport):
        """The wire form of one architecture's validation."""
        from fbnet.wire import ValidationCreate

        r, table, cfg = self.results[self.keys[label]], self.table, self.config
        scale = (report.model_drift or report.drift or 1.0) if cfg.drift_adjust else 1.0
        tc = table.configuration
        return ValidationCreate(
            space=self.sp.name, arch=list(a.blocks), predicted_us=pred["latency_us"] * scale,
            measured_us=self.stat(r), n=r.stats.n, std_us=r.stats.std_us, table_version=table.version, label=label,
            extra={"raw_sum_us": pred["raw_sum_us"], "pricing": cfg.pricing, "statistic": cfg.statistic,
                   "median_us": r.stats.median_us, "table_predicted_us": pred["latency_us"], "drift_scale": scale,
                   "context_factor": pred["context_factor"], "context_us_per_mb": pred["context_us_per_mb"],
                   "table_context_factor": table.context_factor,  # descriptive when the cost prices
                   # the same pricing without the in-model context (ops as timed alone)
                   "alone_predicted_us": pred["alone_us"], "protocol": report.protocol,
                   "configuration": tc.model_dump() if tc is not None else None,
                   "table_overhead_us": table.overhead_us, "n_ops": len(self.sp.arch_ops(a)),
                   "threads": self.target.threads, "transport": self.target.transport.value,
                   "p10_us": r.stats.p10_us, "p90_us": r.stats.p90_us, "drift": report.drift,
                   "model_drift": report.model_drift, "calibration_models": sorted(self.calib),
                   "reference_ops": report.reference_ops, "inround_predicted_us": self.in_round_us(a, pred)})

    def upload(self) -> ValidationReport:
        """One validation per architecture (the prediction scaled by the drift when ``drift_adjust``)."""
        from device_agents.uploader import Uploader
        from fbnet.lut import predict

        report = self.report()
        up = Uploader.for_service(self.service)
        try:
            for label, a in self.labelled:
                pred = predict(self.table, a, self.sp, pricing=self.config.pricing, statistic=self.config.statistic)
                v = self.validation(label, a, pred, report)
                out = up.post_validation(v)
                report.rows.append(ArchValidation(label, a, pred["raw_sum_us"], v.predicted_us, v.measured_us,
                                                  out.error_pct))
                if self.config.per_layer:
                    self.add_layers(label, a, report)
        finally:
            up.close()
        return report

    def add_layers(self, label: str, a, report: ValidationReport) -> None:
        from device_agents import perlayer

        medians = {k: res.stats.median_us for k, res in self.results.items()}
        report.per_layer[label] = perlayer.layer_rows(self.sp, a, self.table, medians, self.keys[label])
