"""Load benchmark of the profiler service, driven by ``wrk`` (a C load generator: no GIL shared with a
Python client), pinned to other cores than the server where the machine has them.

GET /tables (cached JSON), its 304 path (If-None-Match) and /healthz at each concurrency, then the
ingestion rate of 8 concurrent writers (Python threads; measured separately). Starts its own server
(uvicorn subprocess; a fresh SQLite file unless --db).

Overload (``--parts overload``): the sustainable rate of a route that works in the worker threads
(``--overload-path``, by default a device's configurations: a database read per request) is what
``--overload-conns`` closed-loop clients get through it; then an open-loop load (requests sent on a
fixed schedule whatever the answers, as independent clients would; latency counted from the scheduled
time) at 0.5, 1, 2 and 4 times that rate. Admission control should answer what is beyond capacity with
503 + Retry-After at once, so the answered (2xx) requests keep a p99 under 1 s at 4x, and nothing
else fails. ``--max-inflight 1000000`` shows the service without admission (every request queues).

    .venv/bin/python bench/server_load.py [--seconds 10] [--concurrency 1,8,32] [--db URL --workers 4]
                                          [--server-cpus 0 --client-cpus 1] [--json FILE]
                                          [--parts throughput,ingestion,overload] [--max-inflight N]

Needs ``wrk`` for the throughput part (Debian: ``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
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
from profiler_server.config import Settings  # noqa: E402
from profiler_server.launcher import free_port  # noqa: E402

ADMIN = "bench-admin-token-of-at-least-32-characters"
SPACE = "fbnet-cifar"
PIXEL3 = REPO.parent / "shared" / "data" / "hwnasbench" / "pixel3_latency.json"
if not PIXEL3.exists():
    PIXEL3 = REPO / "tests" / "data" / "hwnasbench" / "pixel3_latency.json"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def pinned(cpus: str | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus and shutil.which("taskset") else cmd


def start(db_url: str, workers: int, cwd: Path, cpus: str | None, extra_env: dict | None = None):
    port = free_port()
    env = {**os.environ, "FBNET_ADMIN_TOKEN": ADMIN, "PYTHONPATH": str(REPO), **(extra_env or {})}
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


class _Conns:
    """Keep-alive HTTP/1.1 connections to one server, opened on demand (asyncio streams: a Python client
    light enough to offer several thousand requests a second from one core). As any HTTP client does, a
    connection idle longer than the server keeps it (FBNET_KEEP_ALIVE_S, 5 s) is not reused, and a
    request on a reused connection that the server closed before answering is sent again on a new one."""

    IDLE_S = 4.0

    def __init__(self, host: str, port: int, limit: int):
        self.host, self.port, self.idle, self.slots = host, port, [], asyncio.Semaphore(limit)

    async def _conn(self):
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.perf_counter() - since < self.IDLE_S:
                return reader, writer, True
            writer.close()
        return (*await asyncio.open_connection(self.host, self.port), False)

    async def get(self, path: str) -> int:
        """One GET; its status. A connection the server closes (or one that failed) is not reused."""
        async with self.slots:
            reader, writer, reused = await self._conn()
            try:
                return await self._request(reader, writer, path)
            except asyncio.IncompleteReadError as e:
                if not reused or e.partial:
                    raise
            reader, writer = await asyncio.open_connection(self.host, self.port)  # closed while idle: again
            return await self._request(reader, writer, path)

    async def _request(self, reader, writer, path: str) -> int:
        keep = False
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            length = re.search(r"content-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            keep = "connection: close" not in head
            return int(head.split(" ", 2)[1])
        finally:
            if keep:
                self.idle.append((reader, writer, time.perf_counter()))
            else:
                writer.close()


async def _timed(conns: _Conns, path: str, t_sched: float, out: list, timeout: float) -> None:
    """One request, its latency counted from when it was scheduled (so a late client is not flattering),
    and how late the client itself was in sending it."""
    lag = time.perf_counter() - t_sched
    try:
        status = await asyncio.wait_for(conns.get(path), timeout)
    except TimeoutError:
        status = "timeout"
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        status = type(e).__name__
    out.append((status, time.perf_counter() - t_sched, lag))


async def _closed_loop(url: str, path: str, conns: int, seconds: float) -> float:
    """Requests per second that ``conns`` clients, each one request at a time, get answered 2xx."""
    host, port = url.removeprefix("http://").split(":")
    pool, done, end = _Conns(host, int(port), conns), [], time.perf_counter() + seconds

    async def client():
        while time.perf_counter() < end:
            await _timed(pool, path, time.perf_counter(), done, 30)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(conns)))
    return sum(1 for st, *_ in done if isinstance(st, int) and st < 300) / (time.perf_counter() - t0)


async def _open_loop(url: str, path: str, rate: float, seconds: float, max_conns: int) -> list:
    """Send ``rate`` requests a second on a fixed schedule for ``seconds``, whatever the answers."""
    host, port = url.removeprefix("http://").split(":")
    pool, out, tasks = _Conns(host, int(port), max_conns), [], []
    t0, n = time.perf_counter(), int(rate * seconds)
    for i in range(n):
        t_sched = t0 + i / rate
        delay = t_sched - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_timed(pool, path, t_sched, out, 30)))
    await asyncio.gather(*tasks)
    for _, w, _ in pool.idle:
        w.close()
    return out


def _pct(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3 if xs else None


def _summary(rate: float, factor: float, seconds: float, out: list) -> dict:
    ok = [dt for st, dt, _ in out if isinstance(st, int) and st < 300]
    busy = [dt for st, dt, _ in out if st == 503]
    other = [st for st, *_ in out if not (isinstance(st, int) and (st < 300 or st == 503))]
    return {"factor": factor, "offered_rps": rate, "sent": len(out), "ok": len(ok), "ok_rps": len(ok) / seconds,
            "ok_p50_ms": _pct(ok, 0.5), "ok_p99_ms": _pct(ok, 0.99), "n503": len(busy),
            "p99_503_ms": _pct(busy, 0.99), "other": len(other),
            "client_lag_p99_ms": _pct([lag for *_, lag in out], 0.99),
            "other_kinds": sorted({str(st) for st in other}), "other_5xx": sum(1 for st in other
                                                                               if isinstance(st, int) and st >= 500)}


def overload(url: str, path: str, seconds: float, conns: int, factors: list[float], cpus: str | None) -> dict:
    """The sustainable rate (closed loop), then open-loop steps at ``factors`` times it."""
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for part in cpus.split(",") for c in
                                 (range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1))})
    asyncio.run(_closed_loop(url, path, conns, min(3.0, seconds)))  # warm-up, discarded
    sustainable = asyncio.run(_closed_loop(url, path, conns, seconds))
    steps = []
    for f in factors:
        rate = f * sustainable
        steps.append(_summary(rate, f, seconds, asyncio.run(_open_loop(url, path, rate, seconds, 1000 - 50))))
        time.sleep(2)  # let the server drain before the next step
    return {"path": path, "closed_loop_conns": conns, "sustainable_rps": sustainable, "steps": steps}


def print_overload(ov: dict, max_inflight: str) -> None:
    print(f"overload: GET {ov['path']}; sustainable rate {ov['sustainable_rps']:.0f} req/s ({ov['closed_loop_conns']} "
          f"closed-loop clients); open loop at multiples of it; FBNET_MAX_INFLIGHT={max_inflight}")
    print(f"{'x':>4} | {'offered/s':>9} | {'2xx':>6} | {'2xx/s':>6} | {'2xx p50':>8} | {'2xx p99':>8} | {'503':>6} | "
          f"{'503 p99':>8} | {'lag p99':>8} | {'other':>5}")
    print("-" * 97)
    for st in ov["steps"]:
        def ms(v):
            return f"{v:>8.0f}" if v is not None else f"{'-':>8}"
        print(f"{st['factor']:>4g} | {st['offered_rps']:>9.0f} | {st['ok']:>6} | {st['ok_rps']:>6.0f} | "
              f"{ms(st['ok_p50_ms'])} | {ms(st['ok_p99_ms'])} | {st['n503']:>6} | {ms(st['p99_503_ms'])} | "
              f"{ms(st['client_lag_p99_ms'])} | "
              f"{st['other']:>5}{' ' + ','.join(st['other_kinds']) if st['other'] else ''}")
    top = max(ov["steps"], key=lambda st: st["factor"])
    good = top["ok_p99_ms"] is not None and top["ok_p99_ms"] < 1000 and top["other"] == 0
    print(f"at {top['factor']:g}x: 2xx p99 {top['ok_p99_ms'] or float('nan'):.0f} ms (goal < 1000), {top['n503']} "
          f"answered 503, {top['other']} other failures (goal 0): {'met' if good else 'NOT met'}")


def throughput(url: str, proc, args, client_cpus: str | None) -> list[dict]:
    """wrk at each concurrency: /healthz, the cached table, and its 304 path."""
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
    return rows


def print_throughput(rows: list[dict]) -> None:
    print(f"{'conc':>4} | {'endpoint':<14} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'errors':>6}")
    print("-" * 62)
    for row in rows:
        for name in ("healthz", "table", "table_304"):
            m = row[name]
            print(f"{row['concurrency']:>4} | {name:<14} | {m['rps']:>8.0f} | {m['p50_ms']:>7.2f} | "
                  f"{m['p99_ms']:>7.2f} | {m['errors']:>6}")
        print(f"{'':>4} | table/healthz throughput ratio: {row['table_vs_healthz']:.2f}")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each load step")
    ap.add_argument("--db", help="SQLAlchemy URL (default: a fresh SQLite file)")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--server-cpus", default=None, help="taskset CPU list for the server (default: CPU 0 when "
                                                        "the machine has 2+ CPUs)")
    ap.add_argument("--client-cpus", default=None, help="taskset CPU list for the load (default: the other CPUs)")
    ap.add_argument("--profile", type=Path, help="py-spy the server (collapsed stacks to this file) during the "
                                                 "table step at concurrency 8")
    ap.add_argument("--parts", default="throughput,ingestion,overload",
                    help="which parts to run (comma-separated: throughput, ingestion, overload)")
    ap.add_argument("--overload-path", default=f"/tables/pixel3/configurations?space={SPACE}",
                    help="the route the overload part drives (default: one that reads the database per request)")
    ap.add_argument("--overload-conns", type=int, default=None,
                    help="closed-loop clients that find the sustainable rate (default: 2 x FBNET_MAX_INFLIGHT, which "
                         "fills its slots and its wait queue and no more; 16 without admission control)")
    ap.add_argument("--overload-factors", default="0.5,1,2,4", help="open-loop rates, as multiples of the "
                                                                   "sustainable rate")
    ap.add_argument("--max-inflight", default=None, help="FBNET_MAX_INFLIGHT for the server (default: its own "
                                                         "default; 1000000 = no admission control)")
    ap.add_argument("--json", type=Path, default=OUT / "server_load.json",
                    help="write the results here (default: bench/out/server_load.json)")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    parts = set(args.parts.split(","))
    if "throughput" in parts and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    n = os.cpu_count() or 1
    server_cpus = args.server_cpus or ("0" if n >= 2 else None)
    client_cpus = args.client_cpus or (f"1-{n - 1}" if n >= 2 else None)

    tmp = Path(tempfile.mkdtemp(prefix="fbnet-bench-"))
    db_url = args.db or f"sqlite:///{tmp / 'bench.db'}"
    proc, url = start(db_url, args.workers, tmp, server_cpus,
                      {"FBNET_MAX_INFLIGHT": args.max_inflight} if args.max_inflight else None)
    rows, ing, ov = [], None, None
    max_inflight = int(args.max_inflight or Settings().max_inflight)
    conns = args.overload_conns or (2 * max_inflight if max_inflight <= 32 else 16)
    try:
        hdr = {"Authorization": f"Bearer {ADMIN}"}
        httpx.post(f"{url}/devices", json={"name": "pixel3", "platform": "android", "runtime": "tflite"}, headers=hdr)
        r = httpx.post(f"{url}/tables/pixel3/import", params={"format": "hwnasbench", "space": SPACE},
                       content=PIXEL3.read_bytes(), headers={**hdr, "content-type": "application/json"})
        r.raise_for_status()
        if "throughput" in parts:
            rows = throughput(url, proc, args, client_cpus)
        if "ingestion" in parts:
            ing = ingest(url)
        if "overload" in parts:
            ov = overload(url, args.overload_path, args.seconds, conns,
                          [float(f) for f in args.overload_factors.split(",")], client_cpus)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # still working through a queue it accepted (no admission control)
            proc.kill()
            proc.wait()

    print(f"server: {db_url.split(':')[0]}, {args.workers} worker(s) on CPU(s) {server_cpus or 'any'}; load "
          f"on CPU(s) {client_cpus or 'any'}; {n} CPUs; {args.seconds:g} s per step")
    if rows:
        print("throughput: wrk (1 thread, N keep-alive connections)")
        print_throughput(rows)
    if ing:
        print(f"ingestion: {ing['measurements']} measurements ({ing['expected']} expected, {ing['errors']} errors) "
              f"by {ing['writers']} writers (Python threads) in batches of {ing['batch']}: {ing['per_s']:.0f} "
              "measurements/s")
    if ov:
        print_overload(ov, f"{max_inflight}{'' if args.max_inflight else ' (default)'}")
    profile = profile_summary(args.profile) if args.profile and args.profile.exists() else []
    if profile:
        print("py-spy, table route at concurrency 8: share of the server's samples by innermost frame")
        for area, share in profile:
            print(f"  {share:6.1%}  {area}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"profile": profile, "db": db_url.split(":")[0], "workers": args.workers,
                                         "generator": "wrk", "server_cpus": server_cpus, "client_cpus": client_cpus,
                                         "load": rows, "ingestion": ing, "overload": ov,
                                         "max_inflight": args.max_inflight}, indent=1))

if __name__ == "__main__":
    main()
