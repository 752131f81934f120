"""Cost and repeatability of profiling a whole space on the host (ExecuTorch, XNNPACK, 1 thread).

For each space: a cold export (empty cache, ``jobs`` worker processes), a warm export (everything
cached), then two full measurements back to back with the agent's protocol (defaults: 10 warm-up,
50 timed, 3 interleaved rounds, CV re-measure), each in the same process as the agent runs it.
Repeatability = per op |median_1 - median_2| / mean of the two, in percent. Upload is left out (one
HTTP batch per 16 ops; milliseconds).

    .venv/bin/python bench/profile_cost.py [--spaces fbnet-cifar,fbnet-224] [--json FILE]

``--transports host,native`` times the same programs with the Python host transport (pybindings in
this process) and our C++ fbnet-runner (``--transport native``, one process per round set), two
measurements each, alternating (host, native, host, native) so that the machine's drift hits both;
the second table gives each transport's time to measure, the per-op ratio of medians native/host
(median and p10-p90 over ops) and each one's repeatability.

    .venv/bin/python bench/profile_cost.py --spaces fbnet-cifar --transports host,native --json FILE

    .venv/bin/python bench/profile_cost.py --spaces fbnet-cifar --precisions fp32,int8 --json FILE

With several precisions (``fp32,int8``: int8 is PT2E with the XNNPACK quantizer, fbnet.export) the
rows come side by side, plus the per-op latency ratio of each precision to the first (median and
p10/p90 over the ops, from run 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
OUT = Path(__file__).resolve().parent / "out"  # git-ignored: the benchmarks' outputs by default


def measure(tr, keys, overhead_of, cfg):
    from device_agents.protocol import Programs, run_protocol

    t0 = time.perf_counter()
    res = run_protocol(tr, Programs(keys, overhead_of=overhead_of), cfg)
    return time.perf_counter() - t0, res


def _repeat(r1: dict, r2: dict, keys) -> list[float]:
    return sorted(abs(r1[k].stats.median_us - r2[k].stats.median_us)
                  / ((r1[k].stats.median_us + r2[k].stats.median_us) / 2) * 100 for k in keys)


def _pct(xs: list[float], q: float) -> float:
    return xs[int(q * (len(xs) - 1))]


def bench_transports(name: str, cache: Path, jobs: int, cfg, threads: int, transports: list[str]) -> dict:
    """The same programs, same protocol, through each transport twice (alternating)."""
    from device_agents.exporters import export_space, overhead_key
    from device_agents.transports.host import HostTransport
    from device_agents.transports.native import NativeTransport
    from fbnet.space import get_space

    sp = get_space(name)
    ops = [op for op in sp.ops if not op.is_identity]
    programs = export_space(sp, "pte", cache, ops=ops, jobs=jobs, overheads=True)
    keys = [op.key for op in ops]
    overhead_of = {op.key: overhead_key(op.input_shape) for op in ops}
    make = {"host": lambda: HostTransport(threads=threads), "native": lambda: NativeTransport(threads=threads)}
    trs, load_s, runs = {}, {}, {t: [] for t in transports}
    for t in transports:
        t0 = time.perf_counter()
        trs[t] = make[t]()
        trs[t].prepare(programs)
        load_s[t] = time.perf_counter() - t0
    for _ in range(2):
        for t in transports:
            runs[t].append(measure(trs[t], keys, overhead_of, cfg))
    for tr in trs.values():
        tr.close()
    out = {"space": name, "ops": len(keys), "transports": {}}
    for t in transports:
        (m1, r1), (m2, r2) = runs[t]
        d = _repeat(r1, r2, keys)
        out["transports"][t] = {
            "load_s": round(load_s[t], 2), "measure_s": [round(m1, 1), round(m2, 1)],
            "repeat_median_abs_diff_pct": round(statistics.median(d), 2), "repeat_p90_abs_diff_pct": round(_pct(d, 0.9), 2),
            "sum_of_medians_us": [round(sum(r1[k].stats.median_us for k in keys), 1),
                                  round(sum(r2[k].stats.median_us for k in keys), 1)],
            "overhead_us": round(statistics.median(r1[k].overhead_us for k in keys if r1[k].overhead_us), 2),
            "medians_us": {k: round(statistics.fmean([r1[k].stats.median_us, r2[k].stats.median_us]), 2) for k in keys},
        }
    if "host" in transports and "native" in transports:
        h, n = out["transports"]["host"]["medians_us"], out["transports"]["native"]["medians_us"]
        ratios = sorted(n[k] / h[k] for k in keys)
        out["native_over_host"] = {"median": round(statistics.median(ratios), 3), "p10": round(_pct(ratios, 0.1), 3),
                                   "p90": round(_pct(ratios, 0.9), 3), "min": round(ratios[0], 3),
                                   "max": round(ratios[-1], 3)}
    return out


def bench_space(name: str, cache: Path, jobs: int, cfg, threads: int, precision: str = "fp32") -> dict:
    from device_agents.exporters import export_space, overhead_key
    from device_agents.transports.host import HostTransport
    from fbnet.export import export_format
    from fbnet.space import get_space

    sp = get_space(name)
    fmt = export_format("pte", precision)
    ops = [op for op in sp.ops if not op.is_identity]
    t0 = time.perf_counter()
    programs = export_space(sp, fmt, cache, ops=ops, jobs=jobs, overheads=True)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    programs = export_space(sp, fmt, cache, ops=ops, jobs=jobs, overheads=True)
    warm = time.perf_counter() - t0
    tr = HostTransport(threads=threads)
    t0 = time.perf_counter()
    tr.prepare(programs)
    load = time.perf_counter() - t0
    keys = [op.key for op in ops]
    overhead_of = {op.key: overhead_key(op.input_shape) for op in ops}
    m1, r1 = measure(tr, keys, overhead_of, cfg)
    m2, r2 = measure(tr, keys, overhead_of, cfg)
    tr.close()
    diffs = sorted(abs(r1[k].stats.median_us - r2[k].stats.median_us) / ((r1[k].stats.median_us + r2[k].stats.median_us) / 2)
                   * 100 for k in keys)
    total1 = sum(r1[k].stats.median_us for k in keys)
    total2 = sum(r2[k].stats.median_us for k in keys)
    return {
        "space": name, "precision": precision, "medians_us": {k: r1[k].stats.median_us for k in keys}, "ops": len(keys), "programs": len(programs), "export_cold_s": round(cold, 1),
        "export_warm_s": round(warm, 3), "load_s": round(load, 2), "measure_1_s": round(m1, 1),
        "measure_2_s": round(m2, 1), "warm_profile_s": round(warm + load + m1, 1),
        "cold_profile_s": round(cold + load + m1, 1),
        "repeat_median_abs_diff_pct": round(statistics.median(diffs), 2),
        "repeat_p90_abs_diff_pct": round(diffs[int(0.9 * (len(diffs) - 1))], 2),
        "repeat_max_abs_diff_pct": round(diffs[-1], 2),
        "remeasured": [len([r for r in r1.values() if r.remeasured]), len([r for r in r2.values() if r.remeasured])],
        "sum_of_medians_us": [round(total1, 1), round(total2, 1)],
        "median_cv": round(statistics.median(r.stats.cv for r in r1.values()), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", default="fbnet-cifar,fbnet-224")
    ap.add_argument("--precisions", default="fp32", help="comma-separated: fp32,int8")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache-dir", type=Path, help="export cache (default: a fresh temporary folder = cold)")
    ap.add_argument("--json", type=Path, default=OUT / "profile_cost.json",
                    help="write the rows as JSON (default: bench/out/profile_cost.json)")
    ap.add_argument("--transports", help="compare transports on the same programs, e.g. host,native (skips the "
                    "export-cost table)")
    args = ap.parse_args()

    from device_agents.protocol import ProtocolConfig

    cfg = ProtocolConfig(warmup=args.warmup, repeats=args.repeats, rounds=args.rounds)
    tmp = None
    cache = args.cache_dir
    if cache is None:
        tmp = tempfile.mkdtemp(prefix="fbnet-profile-cost-")
        cache = Path(tmp)
    rows = []
    if args.transports:
        try:
            for name in args.spaces.split(","):
                print(f"[{name}] {args.transports}: measuring twice each ...", file=sys.stderr, flush=True)
                rows.append(bench_transports(name, cache, args.jobs, cfg, args.threads, args.transports.split(",")))
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        print("| space | transport | load s | measure s (run 1/2) | sum of medians us (1/2) | overhead us | "
              "repeat median \\|d\\| % | p90 \\|d\\| % |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            for t, x in r["transports"].items():
                print(f"| {r['space']} | {t} | {x['load_s']} | {x['measure_s'][0]} / {x['measure_s'][1]} | "
                      f"{x['sum_of_medians_us'][0]} / {x['sum_of_medians_us'][1]} | {x['overhead_us']} | "
                      f"{x['repeat_median_abs_diff_pct']} | {x['repeat_p90_abs_diff_pct']} |")
            if "native_over_host" in r:
                q = r["native_over_host"]
                print(f"per-op median ratio native/host ({r['space']}): median {q['median']}, p10 {q['p10']}, "
                      f"p90 {q['p90']}, range {q['min']}-{q['max']}")
        meta = {"cpus": os.cpu_count(), "loadavg_end": os.getloadavg(), "threads": args.threads,
                "protocol": {"warmup": args.warmup, "repeats": args.repeats, "rounds": args.rounds}}
        print(json.dumps(meta))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
        return
    try:
        for name in args.spaces.split(","):
            for prec in args.precisions.split(","):
                print(f"[{name} {prec}] exporting, loading, measuring twice ...", file=sys.stderr, flush=True)
                rows.append(bench_space(name, cache, args.jobs, cfg, args.threads, prec))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "medians_us"}), file=sys.stderr,
                      flush=True)
                first = next(r for r in rows if r["space"] == name)
                if first is not rows[-1]:
                    ratios = sorted(rows[-1]["medians_us"][k] / first["medians_us"][k] for k in first["medians_us"])
                    rows[-1]["ratio_to_" + first["precision"]] = {
                        "median": round(statistics.median(ratios), 3), "p10": round(ratios[len(ratios) // 10], 3),
                        "p90": round(ratios[int(0.9 * (len(ratios) - 1))], 3)}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    cols = [("space", "space"), ("precision", "precision"), ("ops", "ops"), ("export cold s", "export_cold_s"), ("export warm s", "export_warm_s"),
            ("load s", "load_s"), ("measure s (run 1/2)", None), ("warm profile s", "warm_profile_s"),
            ("cold profile s", "cold_profile_s"), ("repeat median |d| %", "repeat_median_abs_diff_pct"),
            ("p90 |d| %", "repeat_p90_abs_diff_pct"), ("median CV", "median_cv"), ("per-op ratio to first", "ratio")]
    print("| " + " | ".join(c for c, _ in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        ratio = next((v for k, v in r.items() if k.startswith("ratio_to_")), None)
        r = {**r, "ratio": "-" if ratio is None else f"{ratio['median']} (p10 {ratio['p10']}, p90 {ratio['p90']})"}
        cells = [f"{r['measure_1_s']} / {r['measure_2_s']}" if k is None else str(r[k]) for _, k in cols]
        print("| " + " | ".join(cells) + " |")
    meta = {"cpus": os.cpu_count(), "loadavg_end": os.getloadavg(), "threads": args.threads, "jobs": args.jobs,
            "protocol": {"warmup": args.warmup, "repeats": args.repeats, "rounds": args.rounds}}
    print(json.dumps(meta))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
