"""Soak: the service under a bounded, steady mixed load (default 10 minutes).

8 writing agents' worth of uploads (each: open a run with an idempotency key, a batch of 16
measurements every --batch-interval seconds, finish, repeat), readers pulling tables with and
without ETag, and an admin import every --import-every seconds. Reports p50/p99 per route per
time window, errors, the server's resident memory at start and end, the database size, and checks
at the end that every uploaded measurement is stored (exactly the keys sent, in the runs they were
sent to). Starts its own server (fresh SQLite file unless --db).

    .venv/bin/python bench/soak.py [--minutes 10] [--db URL] [--workers 1] [--json FILE]

Finding memory growth: ``--tracemalloc DIR`` makes the server take a tracemalloc snapshot every
--window seconds into DIR (a ``sitecustomize`` hook; it slows the server) and prints the largest
growth between the first and the last snapshot.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"  # git-ignored: the benchmarks' outputs by default
sys.path.insert(0, str(REPO))
from fbnet.space import get_space  # noqa: E402
from profiler_server.launcher import LocalServer  # noqa: E402

SPACE = "fbnet-cifar"
DATA = REPO.parent / "shared" / "data" / "hwnasbench"
if not DATA.exists():
    DATA = REPO / "tests" / "data" / "hwnasbench"


# imported by the server process (PYTHONPATH) when --tracemalloc or --native-stats is given
_SITECUSTOMIZE = """
import ctypes, gc, json, os, threading, time, tracemalloc
_n = os.environ.get("FBNET_SOAK_NATIVE")
if _n:
    class _Mallinfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    def _smaps():  # resident anonymous memory by kind of mapping (kib)
        out = {"anon_heap_kib": 0, "anon_arena64m_kib": 0, "anon_1m_kib": 0, "anon_stack8m_kib": 0,
               "anon_other_kib": 0, "anon_maps": 0}
        cur = None
        for line in open("/proc/self/smaps"):
            f = line.split()
            if "-" in f[0] and not f[0].endswith(":"):
                lo, hi = (int(x, 16) for x in f[0].split("-"))
                name = f[5] if len(f) > 5 else ""
                cur = None
                if name == "[heap]":
                    cur = "anon_heap_kib"
                elif not name and f[1].startswith("rw"):
                    size = hi - lo
                    out["anon_maps"] += 1
                    cur = ("anon_arena64m_kib" if lo % (64 << 20) == 0 and size <= 64 << 20 else
                           "anon_1m_kib" if size == 1 << 20 else
                           "anon_stack8m_kib" if size == 8 << 20 else "anon_other_kib")
            elif cur and f[0] == "Rss:":
                out[cur] += int(f[1])
        out["db_fds"] = 0  # open SQLite database files: pooled connections (+ the generation probe)
        for fd in os.listdir("/proc/self/fd"):
            try:
                out["db_fds"] += os.readlink(f"/proc/self/fd/{fd}").endswith(".db")
            except OSError:
                pass
        return out

    _TOP = int(os.environ.get("FBNET_SOAK_NATIVE_TYPES", "0"))

    def _types():  # the most numerous Python object types (FBNET_SOAK_NATIVE_TYPES=N)
        if not _TOP:
            return {}
        import collections
        c = collections.Counter(type(o).__name__ for o in gc.get_objects())
        return {"types": dict(c.most_common(_TOP))}

    def _native():  # what the C allocators say they hold, next to what the kernel says is resident
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        sq = ctypes.CDLL("libsqlite3.so.0")  # the library Python's sqlite3 module is linked against
        sq.sqlite3_memory_used.restype = sq.sqlite3_memory_highwater.restype = ctypes.c_int64
        every = float(os.environ["FBNET_SOAK_NATIVE_EVERY"])
        with open(f"{_n}/native-{os.getpid()}.jsonl", "a") as f:
            t0 = time.monotonic()
            while True:
                m = libc.mallinfo2()
                status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
                f.write(json.dumps({
                    "t": round(time.monotonic() - t0, 1),
                    "rss_anon_kib": int(status["RssAnon"].split()[0]), "threads": int(status["Threads"]),
                    "malloc_in_use_kib": m.uordblks // 1024, "malloc_free_kib": m.fordblks // 1024,
                    "malloc_arena_kib": m.arena // 1024, "malloc_mmap_kib": m.hblkhd // 1024,
                    "sqlite_used_kib": sq.sqlite3_memory_used() // 1024,
                    "sqlite_highwater_kib": sq.sqlite3_memory_highwater(0) // 1024,
                    "python_objects": len(gc.get_objects()), **_smaps(), **_types()}) + "\\n")
                f.flush()
                time.sleep(every)
    threading.Thread(target=_native, daemon=True).start()
_d = os.environ.get("FBNET_SOAK_TRACEMALLOC")
if _d:
    def _loop():  # tracing starts after one period (startup under tracemalloc is very slow)
        every = float(os.environ["FBNET_SOAK_TRACEMALLOC_EVERY"])
        time.sleep(every)
        tracemalloc.start(5)
        i = 0
        while True:
            time.sleep(every)
            tracemalloc.take_snapshot().dump(f"{_d}/snap-{os.getpid()}-{i:04d}.pickle")
            i += 1
    threading.Thread(target=_loop, daemon=True).start()
"""


def tracemalloc_growth(snap_dir: Path, top: int = 15) -> list[str]:
    """The largest allocation growth (by traceback) from the second snapshot (after warm-up) to the last."""
    import tracemalloc

    snaps = sorted(snap_dir.glob("snap-*.pickle"))
    if len(snaps) < 2:
        return [f"tracemalloc: {len(snaps)} snapshot(s) in {snap_dir}, need 2"]
    snaps = snaps[1:] if len(snaps) > 2 else snaps
    first, last = (tracemalloc.Snapshot.load(str(p)) for p in (snaps[0], snaps[-1]))
    out = [f"tracemalloc: {snaps[0].name} -> {snaps[-1].name}; traced "
           f"{sum(s.size for s in first.statistics('filename')) / 2**20:.1f} -> "
           f"{sum(s.size for s in last.statistics('filename')) / 2**20:.1f} MiB"]
    for st in last.compare_to(first, "traceback")[:top]:
        out.append(f"{st.size_diff / 1024:+9.0f} KiB {st.count_diff:+7d} blocks  "
                   + " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in st.traceback[:4]))
    return out


def native_growth(stats_dir: Path) -> list[str]:
    """First, after-warm-up (60 s) and last line of each server process's native statistics."""
    out = []
    for p in sorted(stats_dir.glob("native-*.jsonl")):
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        if not rows:
            continue
        warm = next((r for r in rows if r["t"] >= 60), rows[0])
        for k in rows[0]:
            if k != "t" and not isinstance(rows[0][k], dict):
                out.append(f"{p.stem} {k:<22} {rows[0][k]:>10} -> {warm[k]:>10} (t={warm['t']:.0f}s) -> "
                           f"{rows[-1][k]:>10} (t={rows[-1]['t']:.0f}s)")
    return out or [f"native stats: nothing in {stats_dir}"]


class Recorder:
    def __init__(self, t0: float, window_s: float):
        self.t0, self.window_s = t0, window_s
        self.lock = threading.Lock()
        self.lat: dict[tuple[str, int], list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.busy: dict[str, int] = defaultdict(int)

    def call(self, route: str, fn, *args, expect=(200,), **kw) -> httpx.Response | None:
        """``fn(*args, **kw)``, one request with 503 + Retry-After honoured (counted as 'busy', not an error)."""
        for _ in range(10):
            t = time.perf_counter()
            try:
                r = fn(*args, **kw)
            except httpx.HTTPError as e:
                with self.lock:
                    self.errors[route].append(f"{type(e).__name__}: {e}")
                return None
            dt = time.perf_counter() - t
            if r.status_code == 503 and "retry-after" in r.headers:
                with self.lock:
                    self.busy[route] += 1
                time.sleep(float(r.headers["retry-after"]))
                continue
            with self.lock:
                self.lat[(route, int((t - self.t0) // self.window_s))].append(dt)
                if r.status_code not in expect:
                    self.errors[route].append(f"HTTP {r.status_code}: {r.text[:200]}")
            return r
        with self.lock:
            self.errors[route].append("still 503 after 10 tries")
        return None


def rss_parts_kib(pid: int) -> dict[str, int]:
    """RSS split as the kernel counts it: anonymous (heaps), file-backed (mapped code, data), shared memory."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def db_bytes(url: str) -> int | None:
    if not url.startswith("sqlite"):
        return None
    p = Path(url.removeprefix("sqlite:///"))
    return sum(f.stat().st_size for f in (p, Path(f"{p}-wal"), Path(f"{p}-shm")) if f.exists())


def measurement(key: str, rng: random.Random) -> dict:
    xs = sorted(rng.uniform(80, 120) for _ in range(10))
    return {"key": key, "n": 10, "median_us": statistics.median(xs), "mean_us": statistics.fmean(xs),
            "std_us": statistics.pstdev(xs), "min_us": xs[0], "p10_us": xs[1], "p90_us": xs[8], "samples_us": xs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the load runs (bounded)")
    ap.add_argument("--writers", type=int, default=8, help="uploading agents")
    ap.add_argument("--readers", type=int, default=4, help="table readers (half of them send If-None-Match)")
    ap.add_argument("--batch-interval", type=float, default=1.0, help="seconds between a writer's batches")
    ap.add_argument("--read-interval", type=float, default=0.05, help="seconds between a reader's requests")
    ap.add_argument("--import-every", type=float, default=60.0, help="seconds between admin imports")
    ap.add_argument("--window", type=float, default=60.0, help="seconds per reporting window")
    ap.add_argument("--db", help="SQLAlchemy URL (default: a fresh SQLite file)")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    ap.add_argument("--json", type=Path, default=OUT / "soak.json",
                    help="write the results here (default: bench/out/soak.json)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment of the server (repeatable), e.g. FBNET_SQLITE_CACHE_KIB=2000")
    ap.add_argument("--tracemalloc", type=Path, metavar="DIR",
                    help="server takes tracemalloc snapshots into DIR every --window s (slow; finds memory growth)")
    ap.add_argument("--native-stats", type=Path, metavar="DIR",
                    help="server writes, every 10 s, glibc's malloc totals (mallinfo2), SQLite's own memory "
                         "(sqlite3_memory_used), RssAnon, its thread and object counts into DIR/native-PID.jsonl")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fbnet-soak-"))
    db_url = args.db or f"sqlite:///{tmp / 'soak.db'}"
    env = {"PYTHONPATH": str(REPO)}
    if args.tracemalloc or args.native_stats:
        hook = tmp / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        env = {"PYTHONPATH": f"{hook}:{REPO}"}
        if args.tracemalloc:
            args.tracemalloc.mkdir(parents=True, exist_ok=True)
            env |= {"FBNET_SOAK_TRACEMALLOC": str(args.tracemalloc.resolve()),
                    "FBNET_SOAK_TRACEMALLOC_EVERY": str(args.window)}
        if args.native_stats:
            args.native_stats.mkdir(parents=True, exist_ok=True)
            env |= {"FBNET_SOAK_NATIVE": str(args.native_stats.resolve()), "FBNET_SOAK_NATIVE_EVERY": "10"}
    env.update(kv.split("=", 1) for kv in args.env)
    server = LocalServer(db_url, tmp, workers=args.workers, extra_env=env).start()
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    keys = [op.key for op in get_space(SPACE).ops if not op.is_identity]
    tokens = [server.create_device(f"soak-{i}") for i in range(args.writers)]
    server.create_device("imported")
    files = sorted(DATA.glob("*_latency.json"))
    pid = server.process.pid
    rss0, parts0, t0 = rss_kib(pid), rss_parts_kib(pid), time.perf_counter()
    stop_at = t0 + args.minutes * 60
    rec = Recorder(t0, args.window)
    sent: dict[int, set[str]] = defaultdict(set)  # run id -> keys the service acknowledged
    sent_lock = threading.Lock()
    rss_trace = [(0.0, rss0)]

    def writer(i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {tokens[i]}"}, timeout=60) as c:
            while time.perf_counter() < stop_at:
                body = {"space": SPACE, "agent_version": "soak", "runtime": "x", "runtime_version": "1",
                        "idempotency_key": uuid.uuid4().hex}
                r = rec.call("POST /runs", c.post, "/runs", json=body, expect=(201,))
                if r is None or r.status_code != 201:
                    time.sleep(1)
                    continue
                rid = r.json()["id"]
                for s in range(0, len(keys), 16):
                    if time.perf_counter() >= stop_at:
                        break
                    chunk = keys[s:s + 16]
                    ms = {"measurements": [measurement(k, rng) for k in chunk]}
                    r = rec.call("POST measurements", c.post, f"/runs/{rid}/measurements", json=ms)
                    if r is not None and r.status_code == 200:
                        with sent_lock:
                            sent[rid].update(chunk)
                    time.sleep(args.batch_interval)
                rec.call("POST finish", c.post, f"/runs/{rid}/finish", json={})

    def reader(i: int) -> None:
        rng = random.Random(100 + i)
        etags: dict[str, str] = {}
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while time.perf_counter() < stop_at:
                dev = f"soak-{rng.randrange(args.writers)}"
                if i % 2 and dev in etags:
                    h = {"If-None-Match": etags[dev]}
                    r = rec.call("GET table (ETag)", c.get, f"/tables/{dev}", params={"space": SPACE}, headers=h,
                                 expect=(200, 304))
                else:
                    r = rec.call("GET table", c.get, f"/tables/{dev}", params={"space": SPACE})
                if r is not None and r.status_code == 200:
                    etags[dev] = r.headers["etag"]
                time.sleep(args.read_interval)

    def importer() -> None:
        k = 0
        with httpx.Client(base_url=server.url, headers=admin, timeout=120) as c:
            while time.perf_counter() < stop_at:
                data = files[k % len(files)].read_bytes()
                rec.call("POST import", c.post, "/tables/imported/import", params={"space": SPACE}, content=data,
                         headers={"content-type": "application/json"})
                rec.call("GET healthz", c.get, "/healthz")
                k += 1
                time.sleep(min(args.import_every, max(0.0, stop_at - time.perf_counter())))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(args.writers)]
    threads += [threading.Thread(target=reader, args=(i,)) for i in range(args.readers)]
    threads += [threading.Thread(target=importer)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(min(10.0, max(0.1, stop_at - time.perf_counter())))
        rss_trace.append((round(time.perf_counter() - t0, 1), rss_kib(pid)))
    for t in threads:
        t.join()
    rss1, parts1 = rss_kib(pid), rss_parts_kib(pid)

    # every acknowledged measurement is stored, in the run it was sent to, exactly once
    lost, extra = 0, 0
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for rid, ks in sent.items():
            page = c.get(f"/runs/{rid}/measurements", params={"limit": 1000}).json()  # one page: <= 112 ops
            assert page["next"] is None, f"run {rid}: more than one page of measurements"
            got = page["keys"]
            lost += len(ks - set(got))
            extra += len(got) - len(set(got)) + len(set(got) - ks)
    size = db_bytes(db_url)
    server.stop()

    routes = sorted({r for r, _ in rec.lat})
    windows = sorted({w for _, w in rec.lat})
    table = []
    print(f"soak: {args.minutes:g} min, {args.writers} writers (a batch of 16 every {args.batch_interval:g} s), "
          f"{args.readers} readers, an import every {args.import_every:g} s; {db_url.split(':')[0]}, "
          f"{args.workers} worker(s)")
    print(f"{'route':<18} | {'window':>8} | {'requests':>8} | {'p50 ms':>7} | {'p99 ms':>8}")
    for route in routes:
        for w in windows:
            lat = sorted(rec.lat.get((route, w), []))
            if not lat:
                continue
            p50, p99 = lat[len(lat) // 2] * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
            table.append({"route": route, "window": w, "requests": len(lat), "p50_ms": p50, "p99_ms": p99})
            span = f"{w * args.window:.0f}-{(w + 1) * args.window:.0f}s"
            print(f"{route:<18} | {span:>8} | {len(lat):>8} | {p50:>7.1f} | {p99:>8.1f}")
    n_err = sum(len(v) for v in rec.errors.values())
    stored = sum(len(v) for v in sent.values())
    print(f"errors: {n_err} {dict((k, v[:3]) for k, v in rec.errors.items()) if n_err else ''}")
    print(f"503 + Retry-After (retried): {dict(rec.busy) or 0}")
    print(f"measurements acknowledged: {stored} in {len(sent)} runs; lost: {lost}; unexpected: {extra}")
    if args.tracemalloc:
        print("\n".join(tracemalloc_growth(args.tracemalloc)))
    if args.native_stats:
        print("\n".join(native_growth(args.native_stats)))
    by_window = {}
    for t, kib in rss_trace:
        by_window.setdefault(int(t // args.window), kib)
    print("server RSS by window (MiB): " + ", ".join(f"{k / 1024:.0f}" for k in by_window.values()))
    print(f"server RSS: start {rss0 / 1024:.1f} MiB, end {rss1 / 1024:.1f} MiB; "
          f"database: {'n/a' if size is None else f'{size / 2**20:.1f} MiB'}")
    print("server RSS parts, start -> end (MiB): " + ", ".join(
        f"{k} {parts0.get(k, 0) / 1024:.1f} -> {parts1.get(k, 0) / 1024:.1f}" for k in parts1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "minutes": args.minutes, "writers": args.writers, "readers": args.readers, "db": db_url.split(":")[0],
            "workers": args.workers, "latency": table, "errors": rec.errors, "busy_503": rec.busy,
            "acknowledged": stored, "runs": len(sent), "lost": lost, "unexpected": extra,
            "rss_kib_start": rss0, "rss_kib_end": rss1, "rss_parts_kib_start": parts0, "rss_parts_kib_end": parts1, "rss_trace": rss_trace, "db_bytes": size}, indent=1))
    if n_err or lost or extra:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
