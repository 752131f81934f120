"""Does the table predict whole networks? Profile fbnet-cifar on the host, then time N random
architectures whole and compare with the table's prediction (one run, its own server).

    python bench/lut_fidelity.py --archs 50 --seed 0 [--precision int8] [--json FILE]

Prints predicted vs measured per architecture and the summary (MAPE, share within ±10%, Kendall
tau) of what `validate` uploaded (the default pricing: corrected entries + the overhead once, scaled
by the drift of the reference ops timed with the models), and, from the same measurements, every
variant: corrected vs raw pricing, with and without the drift scaling, and a low-percentile (p10)
statistic used for ops and models alike (``--statistic``). ``--json`` writes ``{"within_10pct", "kendall_tau",
"mape", "variants", "archs": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"  # git-ignored: the benchmarks' outputs by default
sys.path.insert(0, str(REPO))

from fbnet.client import ServiceClient  # noqa: E402
from profiler_server.launcher import LocalServer  # noqa: E402

BIN = Path(sys.executable).parent
console = Console()


def run(*args) -> None:
    r = subprocess.run([str(a) for a in args], env=os.environ.copy())
    if r.returncode:
        raise SystemExit(f"{Path(str(args[0])).name} {args[1]} exited with {r.returncode}")


def score(pred: list[float], meas: list[float]) -> dict:
    from scipy.stats import kendalltau

    errs = [100 * (p - m) / m for p, m in zip(pred, meas, strict=True)]
    return {"within_10pct": sum(abs(e) <= 10 for e in errs) / len(errs), "mape": sum(map(abs, errs)) / len(errs),
            "kendall_tau": float(kendalltau(pred, meas).statistic)}


def score_variants(rows: list[dict], table: dict, space_name: str, statistic: str) -> dict:
    """Pricing (corrected / raw) x drift scaling (on / off) for the statistic validate compared, and
    the other statistic (median or p10, ops and models alike) as served, all through fbnet.lut."""
    from fbnet.lut import parse_table, predict
    from fbnet.space import Arch, get_space

    if not rows:
        return {}
    sp = get_space(space_name)
    tab = parse_table(table, "the served table")
    meas = [v["measured_us"] for v in rows]
    drift = [v["extra"].get("drift") or 1.0 for v in rows]  # the reference ops'
    model_drift = [v["extra"].get("model_drift") for v in rows]  # the table's calibration models'
    if any(x is None for x in model_drift):
        model_drift = None
    out = {}
    pricings = [("corrected", "table_predicted_us"), ("raw", "raw_sum_us")]
    cost = tab.context_us_per_mb
    if cost is not None or any((v["extra"].get("context_factor") or 1.0) != 1.0 for v in rows):  # a context
        pricings.insert(1, ("corrected without the in-model context", "alone_predicted_us"))
    if cost is not None and tab.context_factor:  # the scalar rule of the runs before the context cost
        ovh = tab.overhead_us or 0.0
        for v in rows:
            v["extra"]["factor_predicted_us"] = (v["extra"]["alone_predicted_us"] - ovh) * tab.context_factor + ovh
        pricings.insert(2, ("corrected x the scalar context factor", "factor_predicted_us"))
    for name, key in pricings:
        base = [v["extra"][key] for v in rows]
        out[f"{statistic}, {name}, as served"] = score(base, meas)
        out[f"{statistic}, {name}, drift-scaled"] = score([b * d for b, d in zip(base, drift, strict=True)], meas)
        if model_drift:
            out[f"{statistic}, {name}, whole-model drift-scaled"] = score(
                [b * d for b, d in zip(base, model_drift, strict=True)], meas)
    inround = [v["extra"].get("inround_predicted_us") for v in rows]
    if all(x is not None for x in inround):  # every op timed in the same rounds as the models
        out[f"{statistic}, corrected, ops re-timed in the same rounds"] = score(inround, meas)
    other = "median" if statistic == "p10" else "p10"
    pred = [predict(tab, Arch(tuple(v["arch"])), sp, statistic=other)["latency_us"] for v in rows]
    other_meas = [v["extra"]["median_us" if other == "median" else "p10_us"] for v in rows]
    out[f"{other}, corrected, as served (no drift scaling)"] = score(pred, other_meas)
    return out


def main() -> None:
    if any(x.startswith("fbnetv2") for x in sys.argv[1:]):  # a v2 space: profile by sample (lut_fidelity_v2)
        from lut_fidelity_v2 import main as main_v2

        return main_v2()
    p = argparse.ArgumentParser(description="LUT fidelity on the host: table-predicted vs measured whole models")
    p.add_argument("--archs", type=int, default=50, help="random architectures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--space", default="fbnet-cifar")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpu-mask", default=None, help="hex CPU mask for profile and validate (e.g. 1 = CPU 0 only)")
    p.add_argument("--transport", choices=["host", "native"], default="host",
                   help="host: the Python pybindings transport; native: our C++ fbnet-runner (`make runner`)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    p.add_argument("--statistic", default="median", choices=["median", "p10"],
                   help="what validate compares, for the table's ops and the whole models alike")
    p.add_argument("--reference-ops", type=int, default=None, help="profile: reference ops per round")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="per-round normalisation by the reference ops (profile and validate)")
    p.add_argument("--warmup-stable", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--calibration-models", type=int, default=None,
                   help="profile: whole random models timed with the ops for the context factor (agent default 8; 0 = none)")
    p.add_argument("--settle-tau", type=float, default=None,
                   help="validate: rounds of the models until their split-half tau reaches this (agent default)")
    p.add_argument("--max-rounds", type=int, default=None, help="validate: at most this many rounds when settling")
    p.add_argument("--validate-reference-ops", type=int, default=8,
                   help="validate: table ops timed in the same rounds as the models (the drift); at least the "
                   "number of ops the architectures use (e.g. 1000) re-times them all, which adds the "
                   "'ops re-timed in the same rounds' pricing")
    p.add_argument("--cache-dir", type=Path, default=REPO / ".fbnet-cache" / "exports")
    p.add_argument("--json", type=Path, default=OUT / "lut_fidelity.json",
                   help="write the results here (default: bench/out/lut_fidelity.json)")
    a = p.parse_args()

    device = "host-cpu"
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fbnet-fidelity-") as tmp, \
            LocalServer(f"sqlite:///{tmp}/fbnet.db", tmp) as server:
        token = server.create_device(device, platform="linux", runtime="executorch-xnnpack")
        common = ["--server", server.url, "--device", device, "--token", token, "--space", a.space,
                  "--transport", a.transport, "--warmup", a.warmup, "--repeats", a.repeats, "--rounds", a.rounds,
                  "--threads", a.threads, "--cache-dir", a.cache_dir, "--seed", a.seed,
                  *(["--cpu-mask", a.cpu_mask] if a.cpu_mask else [])]
        proto = [] if a.normalize is None else ["--normalize" if a.normalize else "--no-normalize"]
        proto += [] if a.warmup_stable is None else ["--warmup-stable" if a.warmup_stable else "--no-warmup-stable"]
        t_prof = time.monotonic()
        run(BIN / "fbnet-agent", "profile", *common, "--precision", a.precision, *proto,
            *([] if a.reference_ops is None else ["--reference-ops", a.reference_ops]),
            *([] if a.calibration_models is None else ["--calibration-models", a.calibration_models]))
        t_val = time.monotonic()
        # an unstable profile run is still validated (and reported as such): the bench measures what it gives
        run(BIN / "fbnet-agent", "validate", *common, "--archs", a.archs, "--no-predefined", "--precision",
            a.precision, "--include-unstable", "--statistic", a.statistic,
            "--reference-ops", a.validate_reference_ops, *proto,
            *([] if a.settle_tau is None else ["--settle-tau", a.settle_tau]),
            *([] if a.max_rounds is None else ["--max-rounds", a.max_rounds]))
        t_end = time.monotonic()
        with ServiceClient(server.url, timeout_s=60) as sc:  # every page
            summary = sc.validations(device, a.space).model_dump(mode="json")
            run_info = sc.runs(device)[-1].model_dump(mode="json")
        table = httpx.get(f"{server.url}/tables/{device}", params={"space": a.space, "precision": a.precision,
                                                                   "include_unstable": "true"}, timeout=60).json()

    rows = sorted(summary["validations"], key=lambda v: v["measured_us"])
    t = Table(title=f"LUT fidelity: {a.space} on the host ({a.transport} transport, {a.threads} thread), "
                    f"{len(rows)} random architectures")
    for col in ("arch", "predicted us", "measured us", "error %"):
        t.add_column(col, justify="left" if col == "arch" else "right")
    for v in rows:
        t.add_row(v["label"] or "", f"{v['predicted_us']:.0f}", f"{v['measured_us']:.0f}", f"{v['error_pct']:+.1f}")
    console.print(t)
    s = Table(title="summary", show_header=False)
    s.add_row("architectures", str(summary["count"]))
    s.add_row("MAPE", f"{summary['mape']:.2f}%")
    s.add_row("within ±10%", f"{100 * summary['within_10pct']:.1f}%  (target ≥ 95%)")
    s.add_row("Kendall tau", f"{summary['kendall_tau']:.3f}  (target ≥ 0.9)")
    settle = (rows[0]["extra"].get("protocol") or {}).get("settle") if rows else None
    if settle:
        s.add_row("split-half tau of the models", f"{settle[-1]['tau']}  after {settle[-1]['rounds']} rounds (the "
                  f"measurement against itself: what bounds the tau above; checks {settle})")
    s.add_row("table overhead_us", str(table.get("overhead_us")))
    s.add_row("table context", f"{table.get('context_us_per_mb')} us per MB of weights (prices); "
              f"factor {table.get('context_factor')} (descriptive)")
    if rows and rows[0]["extra"].get("model_drift") is not None:
        s.add_row("whole-model drift", f"{100 * (rows[0]['extra']['model_drift'] - 1):+.1f}%  (the table's "
                  "calibration models re-timed with the models; what the default prediction is scaled by)")
    s.add_row("table configuration", str(table.get("configuration")))
    prot = run_info.get("extra", {}).get("protocol", {})
    s.add_row("profile run", f"unstable {run_info.get('unstable')}, round-factor spread {prot.get('spread')}")
    drift = rows[0]["extra"].get("drift") if rows else None
    if drift is not None:
        s.add_row("drift since profiling", f"{100 * (drift - 1):+.1f}%  (reference ops re-timed with the models)")
    s.add_row("wall time", f"profile {t_val - t_prof:.0f} s, validate {t_end - t_val:.0f} s, total {time.monotonic() - t0:.0f} s")
    console.print(s)
    variants = score_variants(rows, table, a.space, a.statistic)
    vt = Table(title="the same measurements, priced every way")
    for col in ("variant", "within ±10%", "Kendall tau", "MAPE %"):
        vt.add_column(col, justify="left" if col == "variant" else "right")
    for name, v in variants.items():
        vt.add_row(name, f"{100 * v['within_10pct']:.1f}%", f"{v['kendall_tau']:.3f}", f"{v['mape']:.2f}")
    console.print(vt)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "space": a.space, "threads": a.threads, "seed": a.seed, "transport": a.transport,
            "within_10pct": summary["within_10pct"], "kendall_tau": summary["kendall_tau"], "mape": summary["mape"],
            "split_half_tau": settle[-1]["tau"] if settle else None, "settle": settle,
            "drift": drift, "model_drift": rows[0]["extra"].get("model_drift") if rows else None,
            "precision": a.precision, "statistic": a.statistic, "variants": variants,
            "context_factor": table.get("context_factor"), "context_us_per_mb": table.get("context_us_per_mb"),
            "calibration": run_info.get("extra", {}).get("calibration"),
            "profile_unstable": run_info.get("unstable"), "profile_protocol": prot,
            "archs": [{"label": v["label"], "arch": v["arch"], "predicted_us": v["predicted_us"],
                       "measured_us": v["measured_us"], "error_pct": v["error_pct"], "extra": v.get("extra", {})}
                      for v in rows],
        }, indent=1))
        console.print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
