"""Load benchmark of the profiler service: GET /tables vs /healthz at concurrency 1/8/32, the 304 path,
and ingestion rate. Starts its own server (uvicorn subprocess, fresh SQLite file unless --db).

    .venv/bin/python bench/server_load.py [--seconds 3] [--db URL] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from fbnet.space import get_space  # noqa: E402

ADMIN = "bench-admin"
SPACE = "fbnet-cifar"
PIXEL3 = Path("/work/shared/data/hwnasbench/pixel3_latency.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(db_url: str, workers: int, cwd: Path):
    port = free_port()
    env = {**os.environ, "FBNET_ADMIN_TOKEN": ADMIN, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "profiler_server.cli", "serve", "--db", db_url, "--port", str(port),
                             "--workers", str(workers)], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("server did not start")


def load(url: str, path: str, conc: int, seconds: float, headers: dict | None = None, expect: int = 200) -> dict:
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker():
        mine = []
        with httpx.Client(base_url=url, headers=headers or {}, timeout=30) as c:
            c.get(path)  # warm the connection
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = c.get(path)
                mine.append(time.perf_counter() - t0)
                if r.status_code != expect:
                    errors[0] += 1
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0]] * 99
    return {"requests": len(lat), "rps": len(lat) / wall, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000,
            "errors": errors[0]}


def ingest(url: str, writers: int = 8, runs: int = 3) -> dict:
    keys = [op.key for op in get_space(SPACE).ops if not op.is_identity][:100]
    tokens = []
    for i in range(writers):
        r = httpx.post(f"{url}/devices", json={"name": f"ingest-{i}", "platform": "linux", "runtime": "x"},
                       headers={"Authorization": f"Bearer {ADMIN}"})
        tokens.append(r.json()["token"])
    stored = [0] * writers

    def writer(i):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[i]}"}, timeout=60) as c:
            for _ in range(runs):
                rid = c.post("/runs", json={"space": SPACE, "agent_version": "b", "runtime": "x",
                                            "runtime_version": "1"}).json()["id"]
                for s in range(0, len(keys), 25):
                    ms = [{"key": k, "n": 50, "median_us": 100.0, "mean_us": 101.0, "std_us": 2.0, "min_us": 95.0,
                           "p10_us": 97.0, "p90_us": 104.0} for k in keys[s:s + 25]]
                    stored[i] += c.post(f"/runs/{rid}/measurements", json={"measurements": ms}).json()["stored"]

    t0 = time.perf_counter()
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    total = sum(stored)
    return {"writers": writers, "batch": 25, "measurements": total, "seconds": wall, "per_s": total / wall,
            "expected": writers * runs * len(keys)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each load step")
    ap.add_argument("--db", help="SQLAlchemy URL (default: a fresh SQLite file)")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fbnet-bench-"))
    db_url = args.db or f"sqlite:///{tmp / 'bench.db'}"
    proc, url = start(db_url, args.workers, tmp)
    try:
        hdr = {"Authorization": f"Bearer {ADMIN}"}
        httpx.post(f"{url}/devices", json={"name": "pixel3", "platform": "android", "runtime": "tflite"}, headers=hdr)
        r = httpx.post(f"{url}/tables/pixel3/import", params={"format": "hwnasbench", "space": SPACE},
                       content=PIXEL3.read_bytes(), headers={**hdr, "content-type": "application/json"})
        r.raise_for_status()
        table_path = f"/tables/pixel3?space={SPACE}"
        etag = httpx.get(url + table_path).headers["etag"]
        rows = []
        for conc in [int(c) for c in args.concurrency.split(",")]:
            h = load(url, "/healthz", conc, args.seconds)
            t = load(url, table_path, conc, args.seconds)
            n = load(url, table_path, conc, args.seconds, {"If-None-Match": etag}, expect=304)
            rows.append({"concurrency": conc, "healthz": h, "table": t, "table_304": n,
                         "table_vs_healthz": t["rps"] / h["rps"]})
        ing = ingest(url)
    finally:
        proc.terminate()
        proc.wait(10)

    print(f"server: {db_url.split(':')[0]}, {args.workers} worker(s), {os.cpu_count()} CPUs, "
          f"{args.seconds:.0f} s per step, client threads on the same machine")
    print(f"{'conc':>4} | {'endpoint':<14} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'errors':>6}")
    print("-" * 62)
    for row in rows:
        for name in ("healthz", "table", "table_304"):
            m = row[name]
            print(f"{row['concurrency']:>4} | {name:<14} | {m['rps']:>8.0f} | {m['p50_ms']:>7.2f} | "
                  f"{m['p99_ms']:>7.2f} | {m['errors']:>6}")
        print(f"{'':>4} | table/healthz throughput ratio: {row['table_vs_healthz']:.2f}")
    print(f"ingestion: {ing['measurements']} measurements ({ing['expected']} expected) by {ing['writers']} writers "
          f"in batches of {ing['batch']}: {ing['per_s']:.0f} measurements/s")
    if args.json:
        args.json.write_text(json.dumps({"db": db_url.split(":")[0], "workers": args.workers, "load": rows,
                                         "ingestion": ing}, indent=1))


if __name__ == "__main__":
    main()
