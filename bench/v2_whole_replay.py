"""Which latency model prices whole v2 models best? Replays recorded ``bench/lut_fidelity.py --space
fbnetv2-cifar`` runs offline: each model kind (``profiler_server/domain/fitting.py``) is fitted on the
run's measured ops and the run's random whole models are re-priced with it, then scored against the
models' measured latencies (share within ±10 %, Kendall τ, MAPE), beside the kind's held-out error
on the ops (5-fold, what the table reports), split into the planner's space-filling design ops and the
adaptive ones (chosen where bootstrap fits disagree most: the hardest ops, so the held-out error over
all measured ops is a pessimistic estimate of the error of a grid entry).

A whole model's prediction is priced as :func:`fbnet.lut_v2.predict_v2` prices it: its ops' corrected
latencies (measured where the run measured the op, the model's otherwise), the in-model context per
weight MB and the per-call overhead once (the run's ``table`` record), times the validation's drift
scale. The ``reproduced`` column is the largest difference from the recorded predictions: near 0 for
the kind (and model revision) the service served in that run, so the replay prices as the service did.

``--fit-everywhere`` also prices the measured ops by the model (the fit as a smoother of noisy
measurements: on this host two measurements of one op agree within ±10 % about 57 % of the time).

    python bench/v2_whole_replay.py bench/out/lut600_c.json [more runs ...]

Prints a table per run and writes ``bench/out/v2_whole_replay.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))

from fbnet.arch_v2 import ArchV2  # noqa: E402
from fbnet.lut_v2 import op_context_us  # noqa: E402
from fbnet.space_v2 import get_v2_space  # noqa: E402
from profiler_server.domain import fitting  # noqa: E402
from profiler_server.domain.grid import grid_of  # noqa: E402
from profiler_server.domain.planning import design_order  # noqa: E402
from profiler_server.domain.validations import fidelity_stats  # noqa: E402


def scores(pred: np.ndarray, measured: np.ndarray) -> dict:
    """The validation summary's figures (share within ±10 %, Kendall tau, MAPE) and the median error."""
    out = fidelity_stats(list(zip(pred.tolist(), measured.tolist(), strict=True)))
    return {**out, "median_err_pct": float(100 * np.median(pred / measured - 1))}


class Run:
    """One recorded run: its measured ops and its whole models, each as the list of its op rows."""

    def __init__(self, path: Path):
        doc = json.loads(path.read_text())
        self.path, self.space = path, get_v2_space(doc["space"])
        self.measured = {o["key"]: o["corrected_us"] for o in doc["ops"]}
        keys = sorted(self.measured)
        self.s = fitting.shape_array([self.space.grid[k] for k in keys])
        self.y = np.array([self.measured[k] for k in keys])
        order = design_order(self.space.name, self.space.version, 0, int(doc.get("design", 0)))
        design = {grid_of(self.space).keys[i] for i in order}
        self.design = np.array([k in design for k in keys])
        if not doc.get("table"):
            raise SystemExit(f"{path}: no 'table' record (overhead_us, context_us_per_mb); bench/lut_fidelity.py "
                             "writes it")
        self.overhead = float(doc["table"]["overhead_us"] or 0.0)
        self.context = float(doc["table"]["context_us_per_mb"] or 0.0)
        archs = [a for a in doc["archs"] if a["measured_us"] and a["table_predicted_us"]]
        self.ops = [self.space.arch_ops(ArchV2.parse(a["arch"])) for a in archs]
        self.measured_us = np.array([a["measured_us"] for a in archs])
        self.table_us = np.array([a["table_predicted_us"] for a in archs])
        self.scale = np.array([a["predicted_us"] / a["table_predicted_us"] for a in archs])

    def table_us_with(self, model: fitting.LatencyModel, everywhere: bool) -> np.ndarray:
        """Per whole model, the table's prediction with ``model`` for the unmeasured ops (for every op
        with ``everywhere``), before the drift scale."""
        out = []
        for ops in self.ops:
            fitted = model.predict(fitting.shape_array(ops))
            priced = [f if everywhere or op.key not in self.measured else self.measured[op.key]
                      for op, f in zip(ops, fitted, strict=True)]
            context = [op_context_us(self.context, op) for op in ops]
            out.append(math.fsum(priced) + math.fsum(context) + self.overhead)
        return np.array(out)


def replay(run: Run, kinds: list[str], everywhere: bool) -> list[dict]:
    recorded = scores(run.table_us * run.scale, run.measured_us)
    rows = [{"kind": "recorded", **recorded}]
    for kind in kinds:
        model = fitting.fit_model(run.s, run.y, kind)
        h = fitting.heldout(run.s, run.y, kind)
        ok = np.abs(h.predicted / run.y - 1) <= 0.10
        split = {"heldout_design_within_10pct": float(np.mean(ok[run.design])) if run.design.any() else None,
                 "heldout_adaptive_within_10pct": float(np.mean(ok[~run.design])) if (~run.design).any() else None}
        for ev in (False, True) if everywhere else (False,):
            pred = run.table_us_with(model, ev) * run.scale
            rows.append({"kind": kind + (" (fit everywhere)" if ev else ""), **scores(pred, run.measured_us),
                         "heldout_within_10pct": h.within_10pct, "heldout_mape": h.mape, **split,
                         "reproduced": float(np.max(np.abs(pred / (run.table_us * run.scale) - 1)))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="bench/lut_fidelity.py --space fbnetv2-cifar JSON files")
    ap.add_argument("--kinds", default=",".join(fitting.KINDS), help="model kinds, comma-separated")
    ap.add_argument("--fit-everywhere", action="store_true", help="also price the measured ops by the model")
    ap.add_argument("--out", type=Path, default=OUT / "v2_whole_replay.json")
    a = ap.parse_args()
    kinds = [k for k in a.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in fitting.KINDS]
    if unknown:
        raise SystemExit(f"unknown model kind(s) {', '.join(unknown)}; kinds are {', '.join(fitting.KINDS)}")
    result = {"date": time.strftime("%Y-%m-%d"), "runs": []}
    for path in a.runs:
        run = Run(path)
        rows = replay(run, kinds, a.fit_everywhere)
        print(f"\n{path} ({len(run.y)} measured ops, {len(run.ops)} whole models)")
        print(f"{'kind':32s} {'within10':>8s} {'tau':>6s} {'MAPE':>6s} {'median':>7s} {'held-out':>8s} {'design':>7s} "
              f"{'adapt':>7s} {'reprod':>7s}")
        for r in rows:
            h, rep = r.get("heldout_within_10pct"), r.get("reproduced")
            held = "" if h is None else f"{100 * h:7.1f}%"
            parts = [r.get(f"heldout_{p}_within_10pct") for p in ("design", "adaptive")]
            split = " ".join("" if x is None else f"{100 * x:6.1f}%" for x in parts) if h is not None else ""
            same = "" if rep is None else f"{100 * rep:6.2f}%"
            print(f"{r['kind']:32s} {100 * r['within_10pct']:7.0f}% {r['kendall_tau']:6.3f} {r['mape']:5.1f}% "
                  f"{r['median_err_pct']:+6.1f}% {held:>8s} {split:>15s} {same:>7s}")
        result["runs"].append({"run": str(path), "measured_ops": len(run.y), "models": len(run.ops), "rows": rows})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
