"""LUT fidelity on a v2 space (``bench/lut_fidelity.py --space fbnetv2-cifar`` runs this): profile by
sample, fit, validate whole random architectures, and the learning curve (held-out error vs measured
ops), on the host, against its own server.

    python bench/lut_fidelity.py --space fbnetv2-cifar --budget 300 --archs 50 [--transport native]

Steps: a fresh server and a cold export cache; ``fbnet-agent profile --space fbnetv2-cifar --budget B``
(the service plans every batch; the wall time is the cold profile time, split into export and timing
from the agent's round lines); ``fbnet-agent validate --space fbnetv2-cifar --archs N`` (each model whole at
its resolution against the served grid); then the learning curve: the service's own model
(``profiler_server.domain.fitting.heldout``) on the first n measured ops in the order they were
measured. Writes ``bench/out/lut_fidelity_v2.json`` and ``bench/out/lut_fidelity_v2_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))

from fbnet.client import ServiceClient  # noqa: E402
from profiler_server.launcher import LocalServer  # noqa: E402

BIN = Path(sys.executable).parent
ROUND = re.compile(r"round (\d+) \((\w+)\): (\d+)/(\d+) ops measured.*?\(export ([\d.]+) s, timing ([\d.]+) s\)")


def agent(*args, log: Path) -> str:
    """``fbnet-agent ARGS``, its output teed to ``log``; returns it."""
    cmd = [str(BIN / "fbnet-agent"), *map(str, args)]
    with open(log, "a") as f:
        r = subprocess.run(cmd, env={**os.environ, "COLUMNS": "200"}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        f.write(r.stdout)
    print(r.stdout[-3000:], flush=True)
    if r.returncode:
        raise SystemExit(f"fbnet-agent {args[0]} exited with {r.returncode}")
    return r.stdout


def learning_curve(server: str, device: str, space: str, steps: int = 8) -> list[dict]:
    """Held-out error of the service's model fitted on the first n measured ops (run order)."""
    import numpy as np

    from fbnet.space_v2 import get_v2_space
    from profiler_server.domain import fitting

    sp = get_v2_space(space)
    table = httpx.get(f"{server}/tables/{device}", params={"space": space}, timeout=60).json()
    c = table["columns"]
    corrected = {k: v for k, v, s in zip(c["key"], c["corrected_us"], c["source"], strict=True) if s == "measured"}
    order: list[str] = []
    with ServiceClient(server, timeout_s=60) as sc:  # every page of the runs and of their measurements
        for run in sc.runs(device):
            order += [k for k in sc.run_measurements(run.id).keys if k in corrected and k not in order]
    curve = []
    for n in sorted({int(x) for x in np.linspace(min(40, len(order)), len(order), steps)}):
        keys = [k for k in order[:n] if corrected[k] and corrected[k] > 0]
        s = fitting.shape_array([sp.grid[k] for k in keys])
        h = fitting.heldout(s, np.array([corrected[k] for k in keys]))
        curve.append({"measured": n, "heldout_n": h.n, "within_10pct": h.within_10pct, "mape": h.mape})
    return curve


BANDS = ((0, 10), (10, 50), (50, float("inf")))  # corrected us: where the held-out misses fall


def per_op(server: str, device: str, space: str) -> tuple[list[dict], list[dict]]:
    """Every measured op with its corrected latency and its 5-fold held-out prediction (the service's
    model, a fit that did not see it), and the held-out share within ±10 % per size band: whether the
    misses are small ops (timing noise of a few us) or the model."""
    import numpy as np

    from fbnet.space_v2 import get_v2_space
    from profiler_server.domain import fitting

    sp = get_v2_space(space)
    c = httpx.get(f"{server}/tables/{device}", params={"space": space}, timeout=60).json()["columns"]
    meas = {k: v for k, v, s in zip(c["key"], c["corrected_us"], c["source"], strict=True)
            if s == "measured" and v and v > 0}
    keys = sorted(meas)
    y = np.array([meas[k] for k in keys])
    pred = fitting.heldout(fitting.shape_array([sp.grid[k] for k in keys]), y).predicted
    stats = {}  # key -> the run's statistics: which of them reproduces best (--against)
    with ServiceClient(server, timeout_s=60) as sc:
        for run in sc.runs(device):
            for m in sc.run_measurements(run.id).measurements:
                stats[m.key] = {"median_us": m.median_us, "p10_us": m.p10_us, "min_us": m.min_us,
                                "overhead_us": m.overhead_us}
    ops = [{"key": k, "corrected_us": float(v), "heldout_us": None if not np.isfinite(p) else float(p),
            **stats.get(k, {})} for k, v, p in zip(keys, y, pred, strict=True)]
    return ops, [band_row(lo, hi, [(o["corrected_us"], o["heldout_us"]) for o in ops]) for lo, hi in BANDS]


def band_row(lo: float, hi: float, pairs: list[tuple[float, float | None]]) -> dict:
    """Share within ±10 % of the pairs (reference, other) whose reference lies in [lo, hi) us."""
    errs = [abs(b / a - 1) for a, b in pairs if lo <= a < hi and b is not None]
    return {"band_us": [lo, hi if hi != float("inf") else None], "n": len(errs),
            "within_10pct": sum(e <= 0.10 for e in errs) / len(errs) if errs else None,
            "median_err_pct": 100 * sorted(errs)[len(errs) // 2] if errs else None}


def repeatability(ops: list[dict], earlier: Path) -> dict:
    """The same ops measured in an earlier run (``--against``): how often two measurements of one op
    agree within ±10 %, per size band. No model fitted to these measurements can do better on held-out
    ops than the measurements agree with themselves."""
    before = {o["key"]: o for o in json.loads(earlier.read_text()).get("ops", [])}
    pairs = [(before[o["key"]]["corrected_us"], o["corrected_us"]) for o in ops if o["key"] in before]
    out = {"against": str(earlier), "common_ops": len(pairs),
           "all": band_row(0, float("inf"), pairs), "bands": [band_row(lo, hi, pairs) for lo, hi in BANDS]}
    for stat in ("median_us", "p10_us", "min_us"):  # each statistic less the overhead: which repeats best
        both = [(_net(before[o["key"]], stat), _net(o, stat)) for o in ops if o["key"] in before]
        both = [(x, y) for x, y in both if x is not None and y is not None and x > 0]
        out[f"by_statistic_{stat}"] = [band_row(lo, hi, both) for lo, hi in ((0, float("inf")), *BANDS)]
    return out


def _net(o: dict, stat: str) -> float | None:
    """An op's statistic less its per-call overhead (None: not recorded)."""
    return o[stat] - (o.get("overhead_us") or 0.0) if o.get(stat) is not None else None


def plot(curve: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p["measured"] for p in curve]
    ax.plot(xs, [100 * (p["within_10pct"] or 0) for p in curve], "o-", label="held-out within ±10 % (%)")
    ax.plot(xs, [p["mape"] or 0 for p in curve], "s--", label="held-out MAPE (%)")
    ax.axhline(95, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("measured ops")
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="v2 LUT fidelity: sampled profile, fit, whole-model validation")
    p.add_argument("--space", default="fbnetv2-cifar")
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--design", type=int, default=300)
    p.add_argument("--archs", type=int, default=50, help="random whole models to validate (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--transport", choices=["host", "native"], default="host")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=None, help="export cache (default: a fresh one: cold)")
    p.add_argument("--json", type=Path, default=OUT / "lut_fidelity_v2.json")
    p.add_argument("--against", type=Path, default=None,
                   help="an earlier run's JSON: how well the ops both measured agree (the noise floor)")
    a = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    device, log = "host-cpu", a.json.with_suffix(".log")
    log.write_text("")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fbnet-fidelity-v2-") as tmp, \
            LocalServer(f"sqlite:///{tmp}/fbnet.db", tmp) as server:
        token = server.create_device(device, platform="linux", runtime="executorch-xnnpack")
        cache = a.cache_dir or Path(tmp) / "exports"
        common = ["--server", server.url, "--device", device, "--token", token, "--space", a.space,
                  "--transport", a.transport, "--warmup", a.warmup, "--repeats", a.repeats, "--rounds", a.rounds,
                  "--cache-dir", cache, "--jobs", a.jobs]
        t_prof = time.monotonic()
        out = agent("profile", *common, "--budget", a.budget, "--batch", a.batch, "--design", a.design,
                    "--spool-dir", Path(tmp) / "spool", log=log)
        t_val = time.monotonic()
        summary = {"count": 0, "within_10pct": None, "kendall_tau": None, "mape": None, "validations": []}
        if a.archs:  # --archs 0: the profile and the fit only
            agent("validate", *common, "--archs", a.archs, "--seed", a.seed, log=log)
            with ServiceClient(server.url, timeout_s=60) as sc:
                summary = sc.validations(device, a.space).model_dump(mode="json")
        t_end = time.monotonic()
        table = httpx.get(f"{server.url}/tables/{device}", params={"space": a.space}, timeout=60).json()
        curve = learning_curve(server.url, device, a.space)
        ops, bands = per_op(server.url, device, a.space)
    rounds = [dict(zip(("round", "phase", "measured", "asked", "export_s", "timing_s"), m.groups(), strict=True))
              for m in ROUND.finditer(out)]
    export_s = sum(float(r["export_s"]) for r in rounds)
    timing_s = sum(float(r["timing_s"]) for r in rounds)
    result = {
        "date": time.strftime("%Y-%m-%d"), "space": a.space, "transport": a.transport, "budget": a.budget,
        "batch": a.batch, "design": a.design, "protocol": {"warmup": a.warmup, "repeats": a.repeats, "rounds": a.rounds}, "jobs": a.jobs,
        "measured_ops": table["counts"].get("measured"), "counts": table["counts"],
        "heldout": table["model"]["heldout"] if table.get("model") else None,
        "table": {k: table.get(k) for k in ("version", "overhead_us", "context_us_per_mb")},
        "whole_models": {"n": summary["count"], "within_10pct": summary["within_10pct"],
                         "kendall_tau": summary["kendall_tau"], "mape": summary["mape"]},
        "cold_profile_s": round(t_val - t_prof, 1), "export_s": round(export_s, 1), "timing_s": round(timing_s, 1),
        "validate_s": round(t_end - t_val, 1), "total_s": round(time.monotonic() - t0, 1), "rounds": rounds,
        "learning_curve": curve, "heldout_by_size": bands,
        "repeatability": repeatability(ops, a.against) if a.against else None, "ops": ops,
        "archs": [{"label": v["label"], "arch": ",".join(v["arch"]), "predicted_us": v["predicted_us"],
                   "measured_us": v["measured_us"], "error_pct": v["error_pct"], "sources": v["extra"].get("sources"),
                   "drift": v["extra"].get("drift"), "model_drift": v["extra"].get("model_drift"),
                   "table_predicted_us": v["extra"].get("table_predicted_us")} for v in summary["validations"]],
    }
    a.json.write_text(json.dumps(result, indent=1))
    png = a.json.with_name(a.json.stem + "_curve.png")
    plot(curve, png, f"{a.space} on the host ({a.transport}): held-out error vs measured ops")
    print(json.dumps({k: v for k, v in result.items() if k not in ("archs", "rounds", "ops")}, indent=1))
    print(f"wrote {a.json} and {png}")


if __name__ == "__main__":
    main()
