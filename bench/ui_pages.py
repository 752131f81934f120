"""Server-side time of every web page (``/ui``) with 20 devices x 16 runs x 112 ops.

Seeds a fresh SQLite database through the service's HTTP API (register, open a run, one batch of
every op of fbnet-cifar, finish with the protocol's per-round factors; a few validations per
device), restarts the service so that every cache is cold, then requests each page: once cold,
then ``--repeats`` times warm. The server-side time is the page's ``Server-Timing``: the wall time of
the domain calls and the rendering in the handler, and that thread's CPU time (what it costs on a
quiet core: on a loaded machine the wall time also counts the waits for a CPU); the round trip
(client, loopback, middleware) is shown beside them. Target: every page under 200 ms server-side.

    .venv/bin/python bench/ui_pages.py [--devices 20] [--runs 16] [--repeats 20] [--json bench/out/ui_pages.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from fbnet.space import get_space  # noqa: E402
from profiler_server.launcher import LocalServer  # noqa: E402

SPACE = "fbnet-cifar"
TARGET_MS = 200.0
ARCH = ["k3_e1", "k3_e6", "k5_e6", "skip", "k3_e3", "k5_e1_g2", "k3_e1_g2", "k5_e3", "k3_e6"] * 3


def seed(url: str, admin: str, n_devices: int, n_runs: int, rng: random.Random) -> dict:
    """Devices, finished runs (every op of the space, one batch each) and validations, over HTTP."""
    ops = get_space(SPACE).ops
    keys = [op.key for op in ops if not op.is_identity]
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {admin}"}) as c:
        for d in range(n_devices):
            name = f"phone-{d:02d}"
            r = c.post("/devices", json={"name": name, "platform": "android", "runtime": "executorch-xnnpack",
                                         "model": f"Phone {d}", "soc": f"SoC {d % 5}", "os": "Android 15",
                                         "metadata": {"serial": f"SERIAL-{d:04d}"}})
            r.raise_for_status()
            speed = rng.uniform(0.5, 2.0)
            for _ in range(n_runs):
                _one_run(c, name, keys, speed, rng)
            for v in range(4):
                measured = rng.uniform(2000, 9000)
                c.post("/validations", json={"space": SPACE, "device": name, "arch": ARCH[:22],
                                             "predicted_us": measured * rng.uniform(0.85, 1.15),
                                             "measured_us": measured, "n": 20, "label": f"arch-{v}"}
                       ).raise_for_status()
    return {"seed_s": round(time.perf_counter() - t0, 1), "ops_measured_per_run": len(keys)}


def _one_run(c: httpx.Client, name: str, keys: list[str], speed: float, rng: random.Random) -> None:
    r = c.post("/runs", json={"space": SPACE, "device": name, "transport": "adb", "agent_version": "bench",
                              "runtime": "executorch-xnnpack", "runtime_version": "1.5.1 sha256:0123456789ab",
                              "threads": 1, "build": "fbnet-runner bench sha256:0123456789ab",
                              "host": "lab-host", "warmup": 10, "repeats": 50, "rounds": 3,
                              "extra": {"serial": f"SERIAL-{name}"}})
    r.raise_for_status()
    run_id = r.json()["id"]
    batch = []
    for k in keys:
        med = speed * rng.uniform(20, 2000)
        batch.append({"key": k, "n": 150, "median_us": med, "mean_us": med * 1.01, "std_us": med * 0.03,
                      "min_us": med * 0.95, "p10_us": med * 0.97, "p90_us": med * 1.04, "overhead_us": 5.0})
    c.post(f"/runs/{run_id}/measurements", json={"measurements": batch}).raise_for_status()
    factors = [round(rng.uniform(0.98, 1.02), 4) for _ in range(3)]
    c.post(f"/runs/{run_id}/finish", json={"extra": {"protocol": {
        "round_factors": factors, "spread": max(factors) / min(factors) - 1, "unstable": False,
        "settle": [{"rounds": 3, "tau": 0.97}]}}}).raise_for_status()


def pages(n_devices: int) -> list[tuple[str, str]]:
    last = f"phone-{n_devices - 1:02d}"
    return [
        ("devices", "/ui"),
        ("device", f"/ui/devices/{last}"),
        ("table", f"/ui/tables/{last}?space={SPACE}"),
        ("table sorted+filtered", f"/ui/tables/{last}?space={SPACE}&sort=latency_us&order=desc&q=k5"),
        ("compare form", "/ui/compare"),
        ("compare", f"/ui/compare?space={SPACE}&a=phone-00&b={last}"),
    ]


def _server_ms(r: httpx.Response) -> tuple[float, float]:
    """The page's (wall, CPU) milliseconds in the handler, from its Server-Timing header."""
    m = re.search(r"page;dur=([\d.]+), cpu;dur=([\d.]+)", r.headers.get("server-timing", ""))
    if r.status_code != 200 or m is None:
        raise SystemExit(f"{r.request.url}: HTTP {r.status_code} without Server-Timing: {r.text[:300]}")
    return float(m[1]), float(m[2])


def time_pages(url: str, n_devices: int, repeats: int) -> list[dict]:
    out = []
    with httpx.Client(base_url=url, timeout=60) as c:
        cold = {}
        for name, path in pages(n_devices):  # the first request of each page: every cache cold
            cold[name] = _server_ms(c.get(path))
        for name, path in pages(n_devices):
            wall, cpu, trip = [], [], []
            for _ in range(repeats):
                t = time.perf_counter()
                r = c.get(path)
                trip.append(1000 * (time.perf_counter() - t))
                w, u = _server_ms(r)
                wall.append(w)
                cpu.append(u)
            out.append({"page": name, "path": path, "bytes": len(r.content), "cold_ms": cold[name][0],
                        "cold_cpu_ms": cold[name][1], "warm_ms_median": statistics.median(wall),
                        "warm_ms_max": max(wall), "warm_cpu_ms_median": statistics.median(cpu),
                        "warm_roundtrip_ms_median": statistics.median(trip)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "out" / "ui_pages.json")
    a = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="ui-bench-") as tmp:
        db = f"sqlite:///{tmp}/fbnet.db"
        with LocalServer(db, Path(tmp) / "seed", extra_env={"PYTHONPATH": str(REPO)}) as s:
            info = seed(s.url, s.admin_token, a.devices, a.runs, rng)
        print(f"seeded {a.devices} devices x {a.runs} runs x {info['ops_measured_per_run']} ops in {info['seed_s']} s")
        with LocalServer(db, Path(tmp) / "serve", extra_env={"PYTHONPATH": str(REPO)}) as s:  # cold caches
            rows = time_pages(s.url, a.devices, a.repeats)
    print(f"{'page':22} {'cold wall':>10} {'cold cpu':>9} {'warm wall':>10} {'warm max':>9} {'warm cpu':>9} "
          f"{'round trip':>10} {'bytes':>7}")
    for r in rows:
        print(f"{r['page']:22} {r['cold_ms']:7.1f} ms {r['cold_cpu_ms']:6.1f} ms {r['warm_ms_median']:7.1f} ms "
              f"{r['warm_ms_max']:6.1f} ms {r['warm_cpu_ms_median']:6.1f} ms {r['warm_roundtrip_ms_median']:7.1f} ms "
              f"{r['bytes']:7d}")
    worst = max(max(r["cold_ms"], r["warm_ms_max"]) for r in rows)
    worst_cpu = max(max(r["cold_cpu_ms"], r["warm_cpu_ms_median"]) for r in rows)
    load = os.getloadavg()[0]
    print(f"slowest page server-side: {worst:.1f} ms wall, {worst_cpu:.1f} ms CPU (target < {TARGET_MS:.0f} ms): "
          f"{'ok' if worst < TARGET_MS else 'OVER'}; load average {load:.1f} on {os.cpu_count()} CPUs")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"date": datetime.now(UTC).date().isoformat(), "commit": commit,
                                  "command": "bench/ui_pages.py " + " ".join(sys.argv[1:]), "devices": a.devices,
                                  "runs_per_device": a.runs, "ops": info["ops_measured_per_run"],
                                  "seed_s": info["seed_s"], "target_ms": TARGET_MS, "cpus": os.cpu_count(),
                                  "load_average": round(load, 2), "pages": rows}, indent=2))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
