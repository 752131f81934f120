"""The validate flow: time whole architectures with the op protocol, next to reference ops of the table
(the device's drift since the table was measured), and upload measured vs table-predicted latency.

The table comes through :class:`fbnet.client.TableClient` (ETag cache) and every prediction through
:func:`fbnet.lut.predict`, so validate prices an architecture exactly as the search does.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from device_agents.protocol import ProtocolConfig, ProtocolInfo, run_protocol
from device_agents.targets import Target, arch_folder, arch_key, default_cache_dir, random_archs, reference_ops


class NothingToValidate(ValueError):
    pass


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
    per_layer: dict[str, list] = field(default_factory=dict)  # label -> [perlayer.LayerRow] (--per-layer)

    @property
    def errors(self) -> list[float]:
        return [abs(r.uploaded_error_pct) for r in self.rows]


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


def fetch_table(server: str, token: str, device: str, space: str, cache_dir: Path,
                on_warning: Callable[[str], None] | None = None, selector=None):
    """The device's served table in the configuration ``selector`` picks (the one table fetcher, with its
    ETag cache beside the export cache)."""
    from fbnet.client import TableClient

    with TableClient(server, Path(cache_dir).parent / "tables", token=token, on_warning=on_warning) as c:
        return c.fetch(device, space, selector).table


def calibration_models(server: str, token: str, table) -> dict[str, tuple[object, float]]:
    """The whole calibration models the table's runs timed (``extra.calibration``): program key ->
    (Arch, median us when profiled; the median over the runs that timed it)."""
    from fbnet.client import ServiceClient, ServiceRefused
    from fbnet.space import Arch

    run_ids = sorted({rid for e in table.entries for rid in e.run_ids})
    seen: dict[str, tuple[object, list[float]]] = {}
    with ServiceClient(server, token, role="agent", timeout_s=60) as c:
        for rid in run_ids:
            try:
                run = c.get_run(rid)
            except ServiceRefused:
                continue  # a run this token may not read (or one that is gone): its models are left out
            for m in (run.extra.get("calibration") or {}).get("models", []):
                a = Arch.parse(m["arch"])
                seen.setdefault(arch_key(a), (a, []))[1].append(float(m["median_us"]))
    return {k: (a, statistics.median(xs)) for k, (a, xs) in seen.items()}


def validate(server: str, token: str, device: str, space: str, labelled, *, target: Target | None = None,
             cfg: ProtocolConfig | None = None, cache_dir: Path | None = None, jobs: int = 2,
             n_reference: int = 8, pricing: str = "corrected", statistic: str = "median", selector=None,
             drift_adjust: bool = True,
             per_layer: bool = False, show_progress: bool = True,
             note: Callable[[str], None] = print) -> ValidationReport:
    """Time the architectures (and, with ``per_layer``, their prefix models: see
    :mod:`device_agents.perlayer`) with the table's reference ops in the same rounds; upload one
    validation per architecture, against the table of the configuration ``selector`` picks. Threads
    and CPU mask the selector leaves open follow that table's configuration, so the models run as its
    ops were timed. With ``drift_adjust`` the prediction is scaled by the reference ops' drift (now /
    in the table), so the comparison measures the table rather than the machine's mood. ``statistic``
    picks what is compared, for ops and models alike: the median, or the 10th percentile (``p10``),
    which a busy device inflates least."""
    from device_agents.exporters import export_archs, export_space
    from device_agents.uploader import Uploader
    from fbnet.progress import progress, ticker
    from fbnet.lut import TableError, describe, entry_us, in_context_us, latencies, model_overhead_us, predict
    from fbnet.space import get_space
    from fbnet.wire import ValidationCreate

    target = target or Target()
    cfg = cfg or ProtocolConfig()
    sp = get_space(space)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    table = fetch_table(server, token, device, sp.name, cache_dir, on_warning=lambda m: note(f"warning: {m}"),
                        selector=selector)
    note(describe(table))
    tc = table.configuration
    if tc is not None and target.transport.value != "ios":
        target = replace(target, threads=(selector and selector.threads) or tc.threads or target.threads,
                         cpu_mask=(selector and selector.cpu_mask) or tc.cpu_mask or target.cpu_mask,
                         precision=tc.precision)  # int8 table: the models are quantized the same way
    _, missing = latencies(table, [op.key for _, a in labelled for op in sp.arch_ops(a, with_identity=True)])
    if missing:
        raise TableError(f"the table of {device} for {sp.name} lacks {len(missing)} op(s) these architectures use: "
                         f"{', '.join(sorted(missing))}; run `fbnet-agent profile` for them first")

    fmt = target.fmt
    folder = arch_folder(cache_dir, fmt, sp)
    keys = {label: arch_key(a) for label, a in labelled}
    todo = {keys[label]: (a, folder / f"{keys[label]}.{fmt}") for label, a in labelled}
    # The table's calibration models, re-timed with the validated ones: how much the whole-model cost
    # moved since profiling (speed AND the cache context: what a neighbour does to shared caches moves
    # a whole model more than an op alone). Median statistic only: the runs recorded medians.
    calib = calibration_models(server, token, table) if drift_adjust and statistic == "median" else {}
    # and, when there are some, they are the rounds' references too: each round is normalised by what the
    # whole models did in it (a neighbour that thrashes the cache moves models more than ops)
    for k, (a, _) in calib.items():
        todo.setdefault(k, (a, folder / f"{k}.{fmt}"))
    with progress(enabled=show_progress) as prog:
        task = prog.add_task("export", total=len(todo), info="")
        programs = export_archs(sp, todo, fmt, jobs=jobs,
                                progress=lambda key, path, cached: prog.update(task, advance=1, info=key))
    # Reference ops from the table, timed in the same interleaved rounds as the whole models: how much
    # faster or slower the device is now than when its table was measured (shared hosts, thermal state).
    if per_layer:
        from device_agents import perlayer
        from device_agents.exporters import export_prefixes

        prefixes = perlayer.prefix_programs(sp, labelled, keys, folder, fmt)
        with progress(enabled=show_progress) as prog:
            task = prog.add_task("prefixes", total=len(prefixes), info="")
            programs.update(export_prefixes(sp, prefixes, fmt, jobs=jobs,
                                            progress=lambda key, path, cached: prog.update(task, advance=1, info=key)))
    refs = reference_ops(sp, [a for _, a in labelled], n_reference)
    arch_shapes = {k: sp.input_shape for k in programs}
    if refs:
        programs.update(export_space(sp, fmt, cache_dir, ops=refs, jobs=jobs))
    tr = target.open(cache_dir / "ios-work")
    info = ProtocolInfo()
    if hasattr(tr, "input_shapes"):
        tr.input_shapes.update(arch_shapes)
    try:
        tr.prepare(programs)
        with progress(enabled=show_progress) as prog:
            task = prog.add_task("measure", total=len(programs) * cfg.rounds, info="")
            results = run_protocol(tr, list(programs), cfg, on_sample=ticker(prog, task),
                                   reference_keys=list(calib) or [op.key for op in refs], info=info,
                                   settle_keys=[keys[label] for label, _ in labelled])
    finally:
        tr.close()

    def stat(r):  # the statistic compared, for ops and whole models alike
        return r.stats.p10_us if statistic == "p10" else r.stats.median_us

    table_us = {e.key: (e.p10_us if statistic == "p10" else e.latency_us) for e in table.entries}
    drift = statistics.median(stat(results[op.key]) / table_us[op.key] for op in refs
                              if table_us[op.key]) if refs else None
    model_drift = statistics.median(stat(results[k]) / then for k, (_, then) in calib.items()
                                    if then > 0) if calib else None
    report = ValidationReport(sp.name, device, target.transport.value, table.overhead_us, pricing,
                              describe(table), drift=drift, model_drift=model_drift,
                              reference_ops=[op.key for op in refs],
                              drift_adjusted=bool(drift_adjust and (model_drift or drift)), protocol=info.to_dict())
    # the whole models' drift when the table's runs timed calibration models, else the ops'
    scale = (model_drift or drift or 1.0) if drift_adjust else 1.0
    # The table's rule applied to ops timed in the same rounds as the models (every op of an
    # architecture among the reference ops: --reference-ops at least the ops they use): each op at
    # its in-round statistic less the same per-op correction, the overhead once. It measures the rule
    # (isolated ops sum to the model), with the machine's mood common to both sides.
    correction = {e.key: e.latency_us - (entry_us(e, table, pricing, in_context=False) or 0.0)
                  for e in table.entries if e.latency_us is not None}

    def in_round(a, pred: dict) -> float | None:
        ops = list(zip(sp.arch_ops(a, with_identity=True), pred["per_op"], strict=True))
        if not all(op.is_identity or op.key in ref_keys for op, _ in ops):
            return None  # an op of this architecture was not timed with it
        return math.fsum(p["latency_us"] if op.is_identity
                         else in_context_us(max(0.0, stat(results[op.key]) - correction[op.key]), op.key, table, pricing)
                         for op, p in ops) + model_overhead_us(table, pricing)

    ref_keys = {op.key for op in refs}
    up = Uploader(server, token, device)
    try:
        for label, a in labelled:
            r = results[keys[label]]
            pred = predict(table, a, sp, pricing=pricing, statistic=statistic)  # the one rule; raw_sum_us beside it
            raw, fixed = pred["raw_sum_us"], pred["latency_us"]
            v = ValidationCreate(
                space=sp.name, arch=list(a.blocks), predicted_us=fixed * scale,
                measured_us=stat(r), n=r.stats.n, std_us=r.stats.std_us, table_version=table.version,
                label=label,
                extra={"raw_sum_us": raw, "pricing": pricing, "statistic": statistic, "median_us": r.stats.median_us,
                       "table_predicted_us": fixed, "drift_scale": scale, "context_factor": pred["context_factor"],
                       "context_us_per_mb": pred["context_us_per_mb"],
                       "table_context_factor": table.context_factor,  # descriptive when the cost prices
                       # the same pricing without the in-model context (ops as timed alone)
                       "alone_predicted_us": pred["alone_us"],
                       "protocol": report.protocol,
                       "configuration": tc.model_dump() if tc is not None else None,
                       "table_overhead_us": table.overhead_us, "n_ops": len(sp.arch_ops(a)),
                       "threads": target.threads, "transport": target.transport.value, "p10_us": r.stats.p10_us,
                       "p90_us": r.stats.p90_us, "drift": drift, "model_drift": model_drift,
                       "calibration_models": sorted(calib), "reference_ops": report.reference_ops,
                       "inround_predicted_us": in_round(a, pred)},
            )
            out = up.post_validation(v)
            report.rows.append(ArchValidation(label, a, raw, fixed * scale, stat(r), out.error_pct))
            if per_layer:
                medians = {k: res.stats.median_us for k, res in results.items()}
                report.per_layer[label] = perlayer.layer_rows(sp, a, table, medians, keys[label])
    finally:
        up.close()
    return report
