"""Which layers make the table's error? Profile a space on the host, then time FBNet-A/B/C whole and
every prefix of them (stem + first k layers) in the same rounds: each layer's in-context cost next to
its table entry (``fbnet-agent validate --per-layer``; one run, its own server).

    python bench/per_layer.py --transport native [--plot PNG] [--json FILE]

Writes ``bench/out/per_layer.png`` and ``bench/out/per_layer.json`` unless told otherwise.

Prints each architecture's per-layer table and a summary (table vs in-context sum, the largest
per-layer errors, the error split by kind of op).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"  # git-ignored: the benchmarks' outputs by default
sys.path.insert(0, str(REPO))

from fbnet.client import ServiceClient  # noqa: E402
from profiler_server.launcher import LocalServer  # noqa: E402


def agent(*args) -> None:
    cmd = [sys.executable, "-m", "device_agents.cli", *map(str, args)]
    r = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO)})
    if r.returncode:
        raise SystemExit(f"fbnet-agent {args[0]} exited with {r.returncode}")


def kind(part: str, ops: list[str]) -> str:
    if part in ("stem", "tail"):
        return part
    return ops[0].split("-")[0]  # the candidate: k3_e6, skip, ...


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="fbnet-cifar")
    p.add_argument("--transport", choices=["host", "native"], default="native")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", type=Path, default=REPO / ".fbnet-cache" / "exports")
    p.add_argument("--archs", default="FBNet-A,FBNet-B,FBNet-C", help="predefined architectures by name, comma-separated")
    p.add_argument("--plot", type=Path, default=OUT / "per_layer.png",
                   help="write the per-layer plot (PNG) here (default: bench/out/per_layer.png)")
    p.add_argument("--json", type=Path, default=OUT / "per_layer.json",
                   help="write the per-layer rows and summary here (default: bench/out/per_layer.json)")
    a = p.parse_args()

    device = "host-cpu"
    with tempfile.TemporaryDirectory(prefix="fbnet-per-layer-") as tmp, \
            LocalServer(f"sqlite:///{tmp}/fbnet.db", tmp) as server:
        token = server.create_device(device, platform="linux", runtime="executorch-xnnpack")
        common = ["--server", server.url, "--device", device, "--token", token, "--space", a.space,
                  "--transport", a.transport, "--warmup", a.warmup, "--repeats", a.repeats, "--rounds", a.rounds,
                  "--threads", a.threads, "--cache-dir", a.cache_dir]
        agent("profile", *common)
        rows_path = Path(tmp) / "rows.json"
        if a.plot:
            a.plot.parent.mkdir(parents=True, exist_ok=True)
        extra = ["--plot", a.plot] if a.plot else []
        archs = [x for n in a.archs.split(",") if n.strip() for x in ("--arch", n.strip())]
        # a profile run marked unstable (its reference ops moved) is still measured, and reported as such
        agent("validate", *common, "--archs", 0, "--no-predefined", *archs, "--per-layer", "--per-layer-json",
              rows_path, "--include-unstable", *extra)
        got = json.loads(rows_path.read_text())
        with ServiceClient(server.url, timeout_s=60) as sc:  # every page: the newest run is on the last
            run_info = sc.runs(device)[-1].model_dump(mode="json")

    by_kind: dict[str, list[float]] = defaultdict(list)
    print("| arch | table sum us | in context us | table - in context us | largest per-layer errors |")
    print("|---|---|---|---|---|")
    for label, g in got.items():
        s = g["summary"]
        worst = ", ".join(f"{w['part']} {w['ops'][0] if len(w['ops']) == 1 else 'head+pool+fc'} {w['error_us']:+.0f}"
                          for w in s["worst"])
        print(f"| {label} | {s['table_us']:.0f} | {s['in_context_us']:.0f} | {s['error_us']:+.0f} | {worst} |")
        for r in g["rows"]:
            by_kind[kind(r["part"], r["ops"])].append(r["error_us"])
    print("\nerror by kind of op, over the models (table - in context, us):")
    print("| kind | parts | sum | mean |")
    print("|---|---|---|---|")
    split = {k: {"n": len(v), "sum_us": round(sum(v), 1), "mean_us": round(sum(v) / len(v), 1)}
             for k, v in sorted(by_kind.items(), key=lambda kv: -abs(sum(kv[1])))}
    for k, v in split.items():
        print(f"| {k} | {v['n']} | {v['sum_us']:+.1f} | {v['mean_us']:+.1f} |")
    meta = {"transport": a.transport, "threads": a.threads, "loadavg_end": os.getloadavg(),
            "profile_unstable": run_info.get("unstable"),
            "profile_round_spread": (run_info.get("extra") or {}).get("protocol", {}).get("spread"),
            "protocol": {"warmup": a.warmup, "repeats": a.repeats, "rounds": a.rounds}}
    print(json.dumps(meta))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"meta": meta, "by_kind": split, "archs": got}, indent=1))


if __name__ == "__main__":
    main()
