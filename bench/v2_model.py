"""Which latency model follows the SIMD staircase? The v2 model kinds of
``profiler_server/domain/fitting.py`` on the staircase double (tests/doubles/staircase.py, steps every
8 and every 16 channels, 2 % noise), fitted on the planner's space-filling design of ``--ops`` ops of
fbnetv2-cifar (the first batches an agent gets), scored three ways:

- held-out: 5-fold over the measured ops (what the table reports);
- grid: every unmeasured grid op against the double's noiseless latency;
- staircase: at every width 8..72 of layer 6 (ir_k5_hs, 32 px, cin 64, expansion 6), off the grid
  too: within-step spread of the fitted curve (0 = flat steps) and error against the double.

Writes ``bench/out/v2_model.json``.

    python bench/v2_model.py [--ops 600]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from doubles.staircase import latency_us, measure  # noqa: E402

from fbnet.arch_v2 import LayerChoice  # noqa: E402
from fbnet.space_v2 import get_v2_space  # noqa: E402
from profiler_server.domain import fitting  # noqa: E402
from profiler_server.domain.grid import grid_of  # noqa: E402
from profiler_server.domain.planning import design_order  # noqa: E402

SPACE = "fbnetv2-cifar"


def staircase(model, sp, step: int) -> dict:
    cin, widths = 64, list(range(8, 73))
    ops = [sp.layer_op(6, 32, cin, LayerChoice("ir_k5_hs", w, 6.0)) for w in widths]
    pred, truth = model.predict(fitting.shape_array(ops)), np.array([latency_us(o, step) for o in ops])
    blocks: dict[int, list[float]] = {}
    for w, p in zip(widths, pred, strict=True):
        if w != cin:
            blocks.setdefault(-(-w // step), []).append(float(p))
    spread = max(max(b) / min(b) - 1 for b in blocks.values() if len(b) >= step - 1)
    err = np.abs(pred / truth - 1)
    return {"within_step_spread": spread, "within_10pct": float(np.mean(err <= 0.1)), "mape": float(100 * err.mean())}


def score(kind: str, s, y, rest_s, rest_truth, sp, step: int) -> dict:
    t0 = time.perf_counter()
    model = fitting.fit_model(s, y, kind)
    fit_s = time.perf_counter() - t0
    h = fitting.heldout(s, y, kind)
    p = model.predict(rest_s)
    err = np.abs(p / rest_truth - 1)
    return {"kind": kind, "step": step, "vector_width": model.widths, "fit_s": fit_s,
            "heldout": {"n": h.n, "within_10pct": h.within_10pct, "mape": h.mape},
            "grid": {"n": int(len(err)), "within_10pct": float(np.mean(err <= 0.1)), "mape": float(100 * err.mean())},
            "staircase": staircase(model, sp, step)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=600)
    ap.add_argument("--out", type=Path, default=OUT / "v2_model.json")
    a = ap.parse_args()
    sp = get_v2_space(SPACE)
    grid = grid_of(sp)
    order = list(design_order(sp.name, sp.version, 0, a.ops))[:a.ops]
    rest = np.setdiff1d(np.flatnonzero(~grid.identity), order)
    rows = []
    for step in (8, 16):
        rng = random.Random(0)
        y = np.array([measure(grid.ops[i], rng, step) for i in order])
        truth = np.array([latency_us(grid.ops[i], step) for i in rest])
        for kind in fitting.KINDS:
            r = score(kind, grid.shapes[order], y, grid.shapes[rest], truth, sp, step)
            rows.append(r)
            print(f"step {step:2d} {kind:11s} v={r['vector_width']} held-out {r['heldout']['within_10pct']:.3f} "
                  f"/ {r['heldout']['mape']:.2f} %  grid {r['grid']['within_10pct']:.3f} / {r['grid']['mape']:.2f} %  "
                  f"staircase spread {r['staircase']['within_step_spread']:.3f} within10 {r['staircase']['within_10pct']:.2f}"
                  f"  fit {r['fit_s']:.2f} s")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "space": SPACE, "ops": a.ops, "rows": rows},
                                indent=2))


if __name__ == "__main__":
    main()
