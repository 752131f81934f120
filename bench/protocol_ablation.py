"""What does each measurement-protocol option buy? Runs ``bench/lut_fidelity.py`` once per protocol
setting (each a fresh profile + validate against its own server, the same random architectures),
and reports, from each run's own measurements, whole-model fidelity priced every way: the median or
the p10 statistic (ops and models alike), with or without scaling by the drift of the reference ops
timed in the same rounds as the models, and with every op of the table re-timed in the same rounds
as the models (validate with ``--reference-ops 1000``: the rule, isolated ops summed, measured with
the machine's mood common to both sides).

    python bench/protocol_ablation.py --archs 20 [--json FILE]

Settings (all on the same transport, threads and seed):

- ``plain``: 3 rounds x 50, no normalisation, no stable warm-up;
- ``normalize``: + every round divided by its reference ops' factor (the profile default);
- ``warmup-stable``: + a reference op timed until its median settles before the rounds;
- ``short-rounds``: normalisation with 10 rounds x 15 (more, shorter rounds).

The settings run in the order given, so a machine that gets busier favours the first ones; repeat
with ``--order`` reversed to see how much of a difference is the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"  # git-ignored: the benchmarks' outputs by default
SETTINGS = {
    "plain": ["--no-normalize", "--no-warmup-stable"],
    "normalize": ["--normalize", "--no-warmup-stable"],
    "warmup-stable": ["--normalize", "--warmup-stable"],
    "short-rounds": ["--normalize", "--no-warmup-stable", "--rounds", "10", "--repeats", "15"],
}
# (column, statistic of the run, variant name in lut_fidelity's JSON)
COLUMNS = (
    ("median", "median, corrected, as served"),
    ("median, drift-scaled", "median, corrected, drift-scaled"),
    ("p10", "p10, corrected, as served (no drift scaling)"),
    ("median, ops re-timed in the same rounds", "median, corrected, ops re-timed in the same rounds"),
)


def main() -> None:
    p = argparse.ArgumentParser(description="fidelity of the table under each protocol option (one run each)")
    p.add_argument("--archs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--transport", choices=["host", "native"], default="host")
    p.add_argument("--order", default=",".join(SETTINGS), help=f"settings to run, in order ({', '.join(SETTINGS)})")
    p.add_argument("--cache-dir", type=Path, default=REPO / ".fbnet-cache" / "exports")
    p.add_argument("--json", type=Path, default=OUT / "protocol_ablation.json",
                   help="write every run's summary here (default: bench/out/protocol_ablation.json)")
    a = p.parse_args()
    order = [s.strip() for s in a.order.split(",") if s.strip()]
    unknown = [s for s in order if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {', '.join(unknown)}: use {', '.join(SETTINGS)}")

    results = {}
    with tempfile.TemporaryDirectory(prefix="fbnet-ablation-") as tmp:
        for name in order:
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(REPO / "bench" / "lut_fidelity.py"), "--archs", str(a.archs), "--seed",
                   str(a.seed), "--transport", a.transport, "--cache-dir", str(a.cache_dir), "--json", str(out),
                   "--validate-reference-ops", "1000",
                   *SETTINGS[name]]
            print(f"== {name}: {' '.join(SETTINGS[name])}", flush=True)
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL)
            if r.returncode:
                raise SystemExit(f"lut_fidelity.py for {name!r} exited with {r.returncode}")
            results[name] = json.loads(out.read_text())

    t = Table(title=f"protocol ablation: {a.archs} random architectures, {a.transport} transport "
                    "(within +-10% / Kendall tau / MAPE %)")
    t.add_column("setting")
    for col, _ in COLUMNS:
        t.add_column(col, justify="right")
    t.add_column("drift", justify="right")
    t.add_column("round spread", justify="right")
    summary = {}
    for name, res in results.items():
        cells, row = [], {}
        for col, variant in COLUMNS:
            v = res["variants"].get(variant)
            if v is None:
                cells.append("-")
                continue
            row[col] = v
            cells.append(f"{100 * v['within_10pct']:.0f}% / {v['kendall_tau']:.3f} / {v['mape']:.1f}")
        spread = (res.get("profile_protocol") or {}).get("spread")
        drift = res.get("drift")
        t.add_row(name, *cells, "-" if drift is None else f"{100 * (drift - 1):+.1f}%",
                  "-" if spread is None else f"{spread:.3f}")
        summary[name] = {"args": SETTINGS[name], "variants": row, "drift": drift, "round_spread": spread,
                         "profile_unstable": res.get("profile_unstable")}
    Console().print(t)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"archs": a.archs, "seed": a.seed, "transport": a.transport,
                                      "order": order, "settings": summary}, indent=1))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
