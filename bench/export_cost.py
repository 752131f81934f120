"""What a cold export costs per op, and what folding BatchNorm into the convolutions first saves
(``fbnet.export.fold_batchnorm``, on by default since EXPORTER_VERSION 2) -- without changing the
program that runs.

For ``--ops`` ops drawn from the space (a v2 grid or a v1 op list), each op is exported twice, cold,
into fresh files: unfolded (``fold_bn=False``: torch.export of conv + BN, XNNPACK folding BN while it
lowers) and folded (the default), alternating which goes first so that the machine's drift hits
both. Then both programs of every op are timed in this process with the agent's host transport
(ExecuTorch pybindings, XNNPACK, one thread) in ``--rounds`` interleaved rounds, and their outputs
are compared. If the folded program ran differently, the latency ratio would leave 1 by more than
the rounds' spread; if the fold were wrong, the outputs would differ.

Prints a table per op and the totals; writes ``bench/out/export_cost.json``.

    python bench/export_cost.py [--space fbnetv2-cifar] [--ops 12] [--precision fp32|int8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from device_agents.protocol import ProtocolConfig, run_protocol  # noqa: E402
from device_agents.transports.host import HostTransport  # noqa: E402
from fbnet import blocks  # noqa: E402
from fbnet.export import export_module, op_module  # noqa: E402
from fbnet.space import get_space  # noqa: E402
from fbnet.space_v2 import enumerate_ops, is_v2_space  # noqa: E402


def sample_ops(space: str, n: int, seed: int) -> list:
    ops = enumerate_ops(space) if is_v2_space(space) else get_space(space).ops
    ops = [op for op in ops if not op.is_identity]
    return random.Random(seed).sample(ops, min(n, len(ops)))


def timed_export(op, fmt: str, path: Path, fold: bool) -> float:
    t0 = time.perf_counter()
    export_module(op_module(op), blocks.example_input(op.input_shape), fmt, path, fold_bn=fold)
    return time.perf_counter() - t0


def latencies(host: HostTransport, keys: list[str], rounds: int, repeats: int) -> dict[str, float]:
    """Median µs per program under the agent's protocol (``rounds`` interleaved, shuffled rounds of
    ``repeats`` runs, noisy ops re-measured), as a profile would record it."""
    results = run_protocol(host, keys, ProtocolConfig(warmup=10, repeats=repeats, rounds=rounds))
    return {k: r.stats.median_us for k, r in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="fbnetv2-cifar")
    ap.add_argument("--ops", type=int, default=12)
    ap.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT / "export_cost.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    fmt = "pte" if a.precision == "fp32" else "pte-int8"
    ops = sample_ops(a.space, a.ops, a.seed)
    # the first exports in a process pay the lowering's imports and warm-up: not an op's cost
    with tempfile.TemporaryDirectory() as tmp:
        for fold in (False, True):
            timed_export(ops[0], fmt, Path(tmp) / "warm.pte", fold)
    rows, host = [], HostTransport(threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        programs = {}
        for i, op in enumerate(ops):
            order = (False, True) if i % 2 == 0 else (True, False)
            secs = {fold: timed_export(op, fmt, Path(tmp) / f"{i}-{fold}.pte", fold) for fold in order}
            for fold in (False, True):
                key = f"{op.key}|{'folded' if fold else 'unfolded'}"
                programs[key] = Path(tmp) / f"{i}-{fold}.pte"
                host.input_shapes[key] = tuple(op.input_shape)
            rows.append({"key": op.key, "export_unfolded_s": secs[False], "export_folded_s": secs[True]})
            print(f"[{i + 1}/{len(ops)}] {op.key}: {secs[False]:.2f} s unfolded, {secs[True]:.2f} s folded",
                  file=sys.stderr)
        host.prepare(programs)
        lat = latencies(host, list(programs), a.rounds, a.repeats)
        for row in rows:
            un, fo = f"{row['key']}|unfolded", f"{row['key']}|folded"
            row["latency_unfolded_us"], row["latency_folded_us"] = lat[un], lat[fo]
            with torch.no_grad():
                row["max_abs_diff"] = float((host.run_once(un) - host.run_once(fo)).abs().max())
    host.close()
    report(a, fmt, rows)


def report(a: argparse.Namespace, fmt: str, rows: list[dict]) -> None:
    print(f"\n{a.space}, {fmt}, {len(rows)} ops, cold exports one at a time, load {os.getloadavg()[0]:.1f}")
    print(f"{'op':44s} {'export s':>17s} {'ratio':>6s} {'latency µs':>17s} {'ratio':>6s} {'max |diff|':>10s}")
    for r in rows:
        print(f"{r['key']:44s} {r['export_unfolded_s']:7.2f} -> {r['export_folded_s']:6.2f} "
              f"{r['export_folded_s'] / r['export_unfolded_s']:6.2f} {r['latency_unfolded_us']:7.1f} -> "
              f"{r['latency_folded_us']:6.1f} {r['latency_folded_us'] / r['latency_unfolded_us']:6.3f} "
              f"{r['max_abs_diff']:10.1e}")
    total_u = sum(r["export_unfolded_s"] for r in rows)
    total_f = sum(r["export_folded_s"] for r in rows)
    lat = sorted(r["latency_folded_us"] / r["latency_unfolded_us"] for r in rows)
    summary = {"export_unfolded_s_per_op": total_u / len(rows), "export_folded_s_per_op": total_f / len(rows),
               "export_ratio": total_f / total_u, "latency_ratio_median": statistics.median(lat),
               "latency_ratio_min": lat[0], "latency_ratio_max": lat[-1],
               "max_abs_diff": max(r["max_abs_diff"] for r in rows)}
    print(f"\nexport per op: {summary['export_unfolded_s_per_op']:.2f} s unfolded, "
          f"{summary['export_folded_s_per_op']:.2f} s folded (x{summary['export_ratio']:.2f}); latency folded / "
          f"unfolded: median {summary['latency_ratio_median']:.3f} (min {lat[0]:.3f}, max {lat[-1]:.3f}); "
          f"largest output difference {summary['max_abs_diff']:.1e}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit, "space": a.space,
                                 "format": fmt, "loadavg": os.getloadavg(), "rounds": a.rounds,
                                 "summary": summary, "ops": rows}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
