"""The in-model context of a sampled v2 profile: whole calibration models timed after the last batch.

An op timed alone keeps its weights in the core's cache; inside a whole model the other layers evict
them, so a model costs more than the sum of its ops (:mod:`fbnet.lut`, "The in-model context"). A v1
profile measures every op of a few whole calibration models in the same rounds as the models, and its
run carries the **context cost** (``context_us_per_mb``). A v2 profile measures a sample of the grid,
so most ops of a random model are fitted; its calibration therefore comes after the plan is done:

1. draw ``calibration`` random architectures from their own stream (``v2-calibration-<seed>``, never
   the validate flow's ``v2-validate-<seed>``: the models a table is judged on are not the ones it was
   calibrated on);
2. fetch the served grid (measured and fitted entries) and price each model without a context;
3. export the models whole and time them in the protocol's interleaved rounds with a few measured grid
   ops as references (and their overhead programs);
4. per model, (its median / the references' drift - overhead - the sum of its ops) / its weight MB:
   :func:`fbnet.lut.context_cost` takes the median over the models; the drift (references now / in
   the table) puts the models' time in the state the ops were measured in;
5. upload the references as a run of their own whose finish carries the context cost and factor, and
   the models in ``extra['calibration']``. The service serves the median over the table's runs, and
   :func:`fbnet.lut_v2.predict_v2` adds ``context_us_per_mb x`` the op's weight MB to every entry.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from device_agents.profiling import ProfileConfig
from device_agents.protocol import OpResult, Programs, ProtocolConfig, to_measurement
from device_agents.targets import ProgressFactory, Service, Target, export_ops
from device_agents.validate import ValidationConfig
from device_agents.validate_v2 import V2Validation
from fbnet.configuration import Selector

MIN_REFERENCES = 4  # the drift of step 4 needs a few measured ops timed beside the models
# A plausible context: whole models within 1/MAX_FACTOR..MAX_FACTOR x the sum of their ops
# (V2Sampling.context_max_factor). Weight reloads cost a few to twenty percent on a CPU (v1: 1.05-1.22
# on this host); a model at 3.2x its ops, with references that did not drift, was measured under a
# load that preempted the 2 ms models and not the 20 us ops, and served it would have put whole-model
# predictions 2-3x off (bench/README.md, "Table fidelity"). Outside the band the run records the
# calibration and carries no context.
MAX_FACTOR = 2.0
COST_RANGE = (-1000.0, 100000.0)  # fbnet.wire.runs.ContextCost


def calibration_archs_v2(space, n: int, seed: int) -> list[tuple[str, object]]:
    """(label, ArchV2): ``n`` uniformly drawn architectures of ``space`` from the calibration stream."""
    rng = random.Random(f"v2-calibration-{seed}")
    return [(f"calibration-{seed}-{i}", space.random_arch(rng)) for i in range(n)]


class V2Calibration(V2Validation):
    """:meth:`fetch`, :meth:`export`, :meth:`measure` (the validate flow's, with the references'
    overhead programs) and :meth:`context` (module docstring)."""

    def __init__(self, service: Service, plan: ProfileConfig, target: Target, protocol: ProtocolConfig, *,
                 note: Callable[[str], None], progress: ProgressFactory, max_factor: float = MAX_FACTOR):
        """``plan.calibration`` models of ``plan.space``, exported into ``plan``'s cache."""
        from fbnet.space_v2 import get_v2_space

        self.max_factor = max_factor
        protocol = protocol.model_copy(update={"reference": max(protocol.reference, MIN_REFERENCES)})
        config = ValidationConfig(space=plan.space, cache_dir=plan.cache_dir, jobs=plan.jobs, archs=0,
                                  predefined=False)
        super().__init__(service, config, target, protocol, Selector(), note, progress,
                         labelled=calibration_archs_v2(get_v2_space(plan.space), plan.calibration, protocol.seed))

    def export(self) -> None:
        """The models whole, the references and their input shapes' overhead programs."""
        super().export()
        if self.refs:
            got = export_ops(self.sp, self.target.fmt, self.config.cache, [self.sp.grid[k] for k in self.refs],
                             self.config.jobs)
            self.programs.update({k: p for k, p in got.items() if k.startswith("overhead-")})

    def measure(self) -> None:
        """Models, references and overhead programs in the protocol's interleaved rounds."""
        from device_agents.exporters import overhead_key

        models = [self.keys[label] for label, _ in self.labelled]
        programs = Programs(models + self.refs, reference=self.refs or None,
                            overhead_of={k: overhead_key(self.sp.grid[k].input_shape) for k in self.refs})
        self.run_rounds(programs, "calibration", len(models) + len(self.refs))

    def context(self) -> dict:
        """``{"factor", "us_per_mb", "drift", "models": [...], "plausible"}`` from the timed models."""
        from fbnet.lut import BYTES_PER_WEIGHT, context_cost, context_factor
        from fbnet.lut_v2 import predict_v2

        t = self.table
        alone = t.model_copy(update={"context_us_per_mb": None})  # the sum of the ops as timed alone
        bytes_per = BYTES_PER_WEIGHT.get(t.configuration.precision if t.configuration else "fp32", 4)
        drift = self.drift() or 1.0
        models, rows = [], []
        for label, a in self.labelled:
            p = predict_v2(alone, self.sp, a)
            ops_sum, r = p["latency_us"] - p["overhead_us"], self.results[self.keys[label]]
            mb = self.sp.arch_params(a) * bytes_per / 1e6
            models.append((r.stats.median_us / drift, ops_sum, mb))
            rows.append({"label": label, "arch": a.to_text(), "median_us": r.stats.median_us, "n": r.stats.n,
                         "ops_sum_us": ops_sum, "weight_mb": mb, "sources": p["sources"]})
        factor, ratios = context_factor([(m, s) for m, s, _ in models], t.overhead_us)
        cost, per_mb = context_cost(models, t.overhead_us)
        for row, ratio, c in zip(rows, ratios, per_mb, strict=True):
            row["ratio"], row["us_per_mb"] = ratio, c
        plausible = 1 / self.max_factor < factor < self.max_factor and COST_RANGE[0] < cost < COST_RANGE[1]
        return {"factor": factor, "us_per_mb": cost, "drift": drift, "overhead_us": t.overhead_us,
                "table_version": t.version, "reference_ops": list(self.refs), "models": rows, "plausible": plausible}

    def reference_results(self) -> dict[str, OpResult]:
        """The references' results: measurements of grid ops like any other (uploaded with the context)."""
        return {k: self.results[k] for k in self.refs if k in self.results}


def reference_measurements(results: dict[str, OpResult]) -> list:
    return [to_measurement(r.key, r.stats, r.samples_us, r.overhead_us) for r in results.values()]


__all__ = ["MAX_FACTOR", "V2Calibration", "calibration_archs_v2", "reference_measurements"]
