"""Replay fidelity runs under the two in-model context rules: the scalar factor vs the cost per MB.

Each ``bench/lut_fidelity.py --json`` file holds the profile run's calibration models (their medians,
the sums of their corrected ops) and, per validated architecture, the prediction as timed alone, the
drift scale and the measured median. This re-prices every architecture both ways from the profile's
own calibration models, exactly as the table would have served them, with nothing re-measured:

- factor: (alone - overhead) x median over the models of (model - overhead) / ops sum, + overhead
- cost:   alone + c x the architecture's weight MB, c = median over the models of
          (model - overhead - ops sum) / their weight MB (``fbnet.lut.context_cost``)

both times the run's drift scale. Prints within +-10 %, Kendall tau and MAPE per file and rule.

    PYTHONPATH=. .venv/bin/python bench/context_replay.py bench/out/lut_fidelity*.json ... [--json OUT]

Writes ``bench/out/context_replay.json`` unless ``--json`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"  # git-ignored: the benchmarks' outputs by default
sys.path.insert(0, str(REPO))

from fbnet.lut import context_cost, context_factor, weight_mb  # noqa: E402
from fbnet.space import Arch, get_space  # noqa: E402
from profiler_server.domain.validations import fidelity_stats  # noqa: E402


def score(pred: list[float], meas: list[float]) -> dict:
    """The service's validation figures (within +-10 %, Kendall tau, MAPE) of these predictions."""
    return fidelity_stats(list(zip(pred, meas, strict=True)))


def replay(path: Path) -> dict | None:
    d = json.loads(path.read_text())
    cal = (d.get("calibration") or {}).get("models")
    rows = d.get("archs") or []
    if not cal or not rows or "alone_predicted_us" not in rows[0]["extra"]:
        return None
    sp = get_space(d.get("space", "fbnet-cifar"))
    precision = d.get("precision", "fp32")

    def mb(arch) -> float:
        return sum(weight_mb(op.key, precision) for op in sp.arch_ops(Arch(tuple(arch))))

    ovh = rows[0]["extra"]["table_overhead_us"] or 0.0
    factor, _ = context_factor([(m["median_us"], m["ops_sum_us"]) for m in cal], ovh)
    cost, _ = context_cost([(m["median_us"], m["ops_sum_us"], mb(m["arch"].split(","))) for m in cal], ovh)
    meas = [r["measured_us"] for r in rows]
    scale = [r["extra"]["drift_scale"] for r in rows]
    alone = [r["extra"]["alone_predicted_us"] for r in rows]
    by_factor = [((a - ovh) * factor + ovh) * s for a, s in zip(alone, scale, strict=True)]
    by_cost = [(a + cost * mb(r["arch"])) * s for a, r, s in zip(alone, rows, scale, strict=True)]
    return {"file": path.name, "transport": d.get("transport"), "factor": factor, "us_per_mb": cost,
            "factor_rule": score(by_factor, meas), "cost_rule": score(by_cost, meas)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="bench/lut_fidelity.py --json outputs")
    ap.add_argument("--json", type=Path, default=OUT / "context_replay.json",
                    help="write the results here (default: bench/out/context_replay.json)")
    a = ap.parse_args()
    out = [r for f in a.files if (r := replay(f)) is not None]
    print("| run | factor | us/MB | factor rule: within ±10 % / τ / MAPE % | cost rule: within ±10 % / τ / MAPE % | Δτ |")
    print("|---|---|---|---|---|---|")
    for r in out:
        f, c = r["factor_rule"], r["cost_rule"]
        print(f"| {r['file']} | {r['factor']:.3f} | {r['us_per_mb']:.1f} | "
              f"{100 * f['within_10pct']:.0f} % / {f['kendall_tau']:.3f} / {f['mape']:.1f} | "
              f"{100 * c['within_10pct']:.0f} % / {c['kendall_tau']:.3f} / {c['mape']:.1f} | "
              f"{c['kendall_tau'] - f['kendall_tau']:+.3f} |")
    better = sum(r["cost_rule"]["kendall_tau"] > r["factor_rule"]["kendall_tau"] for r in out)
    print(f"\ncost rule has the higher Kendall tau in {better} of {len(out)} runs")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=1))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
