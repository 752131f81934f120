"""Load benchmark of the profiler service, driven by ``wrk`` (a C load generator: no GIL shared with a
Python client), pinned to other cores than the server where the machine has them.

GET /tables (cached JSON), its 304 path (If-None-Match) and /healthz at each concurrency, then the
ingestion rate of 8 concurrent writers (Python threads; measured separately). Starts its own server
(uvicorn subprocess; a fresh SQLite file unless --db).

    .venv/bin/python bench/server_load.py [--seconds 10] [--concurrency 1,8,32] [--db URL --workers 4]
                                          [--server-cpus 0 --client-cpus 1] [--json FILE]

Needs ``wrk`` (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"  # git-ignored: the benchmarks' outputs by default
sys.path.insert(0, str(REPO))
from fbnet.space import get_space  # noqa: E402
from profiler_server.launcher import free_port  # noqa: E402

ADMIN = "bench-admin"
SPACE = "fbnet-cifar"
PIXEL3 = REPO.parent / "shared" / "data" / "hwnasbench" / "pixel3_latency.json"
if not PIXEL3.exists():
    PIXEL3 = REPO / "tests" / "data" / "hwnasbench" / "pixel3_latency.json"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def pinned(cpus: str | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus and shutil.which("taskset") else cmd


def start(db_url: str, workers: int, cwd: Path, cpus: str | None):
    port = free_port()
    env = {**os.environ, "FBNET_ADMIN_TOKEN": ADMIN, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "profiler_server.cli", "serve", "--db", db_url, "--port", str(port),
           "--workers", str(workers)]
    proc = subprocess.Popen(pinned(cpus, cmd), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("server did not start")


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def wrk(url: str, path: str, conc: int, seconds: float, cpus: str | None, headers: dict | None = None) -> dict:
    """One wrk run: one thread, ``conc`` connections (each one request at a time)."""
    cmd = ["wrk", "-t1", f"-c{conc}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
    for k, v in (headers or {}).items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(pinned(cpus, [*cmd, url + path]), capture_output=True, text=True, check=True).stdout
    pct = {int(float(p)): _ms(v) for p, v in re.findall(r"^\s+([\d.]+)%\s+([\d.]+(?:us|ms|s))\s*$", out, re.M)}
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": pct.get(50), "p99_ms": pct.get(99), "errors": errors + (int(non2xx.group(1)) if non2xx else 0)}


AREAS = [("sqlalchemy / sqlite3", ("sqlalchemy/", "sqlite3/")), ("psycopg", ("psycopg",)),
         ("fastapi / starlette routing, deps, responses", ("fastapi/", "starlette/")),
         ("uvicorn / HTTP parsing", ("uvicorn/", "h11/", "httptools/")),
         ("event loop, threads (asyncio, anyio, threading)", ("asyncio/", "anyio/", "threading.py", "selectors.py",
                                                             "concurrent/")),
         ("pydantic", ("pydantic",)), ("our code (profiler_server, fbnet, db)", ("profiler_server/", "fbnet/", "db/"))]


def profile_summary(raw: Path) -> list[tuple[str, float]]:
    """Share of the server's samples by where the innermost Python frame is (py-spy collapsed stacks)."""
    total, by_area = 0, {}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        area = next((a for a, keys in AREAS if any(k in leaf for k in keys)), "other")
        by_area[area] = by_area.get(area, 0) + int(n)
        total += int(n)
    return sorted(((a, c / total) for a, c in by_area.items()), key=lambda x: -x[1])


def ingest(url: str, writers: int = 8, runs: int = 3) -> dict:
    keys = [op.key for op in get_space(SPACE).ops if not op.is_identity][:100]
    tokens = []
    for i in range(writers):
        r = httpx.post(f"{url}/devices", json={"name": f"ingest-{i}", "platform": "linux", "runtime": "x"},
                       headers={"Authorization": f"Bearer {ADMIN}"})
        tokens.append(r.json()["token"])
    stored, errors = [0] * writers, [0]

    def writer(i):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[i]}"}, timeout=60) as c:
            for _ in range(runs):
                rid = c.post("/runs", json={"space": SPACE, "agent_version": "b", "runtime": "x",
                                            "runtime_version": "1"}).json()["id"]
                for s in range(0, len(keys), 25):
                    ms = [{"key": k, "n": 50, "median_us": 100.0, "mean_us": 101.0, "std_us": 2.0, "min_us": 95.0,
                           "p10_us": 97.0, "p90_us": 104.0} for k in keys[s:s + 25]]
                    r = c.post(f"/runs/{rid}/measurements", json={"measurements": ms})
                    if r.status_code != 200:
                        errors[0] += 1
                        continue
                    stored[i] += r.json()["stored"]

    t0 = time.perf_counter()
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    total = sum(stored)
    return {"writers": writers, "batch": 25, "measurements": total, "seconds": wall, "per_s": total / wall,
            "expected": writers * runs * len(keys), "errors": errors[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each load step")
    ap.add_argument("--db", help="SQLAlchemy URL (default: a fresh SQLite file)")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--server-cpus", default=None, help="taskset CPU list for the server (default: CPU 0 when "
                                                        "the machine has 2+ CPUs)")
    ap.add_argument("--client-cpus", default=None, help="taskset CPU list for wrk (default: the other CPUs)")
    ap.add_argument("--profile", type=Path, help="py-spy the server (collapsed stacks to this file) during the "
                                                 "table step at concurrency 8")
    ap.add_argument("--json", type=Path, default=OUT / "server_load.json",
                    help="write the results here (default: bench/out/server_load.json)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    n = os.cpu_count() or 1
    server_cpus = args.server_cpus or ("0" if n >= 2 else None)
    client_cpus = args.client_cpus or (f"1-{n - 1}" if n >= 2 else None)

    tmp = Path(tempfile.mkdtemp(prefix="fbnet-bench-"))
    db_url = args.db or f"sqlite:///{tmp / 'bench.db'}"
    proc, url = start(db_url, args.workers, tmp, server_cpus)
    try:
        hdr = {"Authorization": f"Bearer {ADMIN}"}
        httpx.post(f"{url}/devices", json={"name": "pixel3", "platform": "android", "runtime": "tflite"}, headers=hdr)
        r = httpx.post(f"{url}/tables/pixel3/import", params={"format": "hwnasbench", "space": SPACE},
                       content=PIXEL3.read_bytes(), headers={**hdr, "content-type": "application/json"})
        r.raise_for_status()
        table_path = f"/tables/pixel3?space={SPACE}"
        etag = httpx.get(url + table_path).headers["etag"]
        for _ in range(2 * args.workers):  # every worker has the table cached before timing starts
            httpx.get(url + table_path)
        # warm-up, discarded: every worker has started, imported and cached the table before timing
        wrk(url, "/healthz", 8, 5, client_cpus)
        wrk(url, table_path, 8, 5, client_cpus)
        rows = []
        for conc in [int(c) for c in args.concurrency.split(",")]:
            h = wrk(url, "/healthz", conc, args.seconds, client_cpus)
            spy = None
            if args.profile and conc == 8:
                spy = subprocess.Popen([PY_SPY, "record", "--pid", str(proc.pid), "--subprocesses", "--rate", "200",
                                        "--duration", f"{max(1, int(args.seconds) - 1)}", "--format", "raw",
                                        "--output", str(args.profile), "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t = wrk(url, table_path, conc, args.seconds, client_cpus)
            if spy is not None:
                spy.wait(60)
            nm = wrk(url, table_path, conc, args.seconds, client_cpus, {"If-None-Match": etag})
            rows.append({"concurrency": conc, "healthz": h, "table": t, "table_304": nm,
                         "table_vs_healthz": t["rps"] / h["rps"]})
        ing = ingest(url)
    finally:
        proc.terminate()
        proc.wait(10)

    print(f"server: {db_url.split(':')[0]}, {args.workers} worker(s) on CPU(s) {server_cpus or 'any'}; load: wrk "
          f"(1 thread, N connections) on CPU(s) {client_cpus or 'any'}; {n} CPUs; {args.seconds:g} s per step")
    print(f"{'conc':>4} | {'endpoint':<14} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'errors':>6}")
    print("-" * 62)
    for row in rows:
        for name in ("healthz", "table", "table_304"):
            m = row[name]
            print(f"{row['concurrency']:>4} | {name:<14} | {m['rps']:>8.0f} | {m['p50_ms']:>7.2f} | "
                  f"{m['p99_ms']:>7.2f} | {m['errors']:>6}")
        print(f"{'':>4} | table/healthz throughput ratio: {row['table_vs_healthz']:.2f}")
    print(f"ingestion: {ing['measurements']} measurements ({ing['expected']} expected, {ing['errors']} errors) by "
          f"{ing['writers']} writers (Python threads) in batches of {ing['batch']}: {ing['per_s']:.0f} measurements/s")
    profile = profile_summary(args.profile) if args.profile and args.profile.exists() else []
    if profile:
        print("py-spy, table route at concurrency 8: share of the server's samples by innermost frame")
        for area, share in profile:
            print(f"  {share:6.1%}  {area}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"profile": profile, "db": db_url.split(":")[0], "workers": args.workers,
                                         "generator": "wrk",
                                         "server_cpus": server_cpus, "client_cpus": client_cpus, "load": rows,
                                         "ingestion": ing}, indent=1))


if __name__ == "__main__":
    main()
