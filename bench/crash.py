"""Crash bench: SIGKILL the service (or the agent) at random moments while ``fbnet-agent profile``
measures and uploads over the host transport, recover (restart the service on the same database,
then ``fbnet-agent upload``; or ``fbnet-agent profile --resume``), and check that every op is
stored exactly once in exactly one finished run, and that the database is consistent
(``fbnet-server check``: SQLite integrity_check, orphans and duplicates on every engine).

    .venv/bin/python bench/crash.py [--iterations 6] [--mode both] [--limit 24] [--db URL] [--json FILE]

Writes ``bench/out/crash.json`` unless ``--json`` says otherwise.

The short version of this runs in the test suite (tests/test_server_crash.py). Op exports are
cached (``--cache-dir``, the agent's default), so re-runs only measure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"  # git-ignored: the benchmarks' outputs by default
sys.path.insert(0, str(REPO))
from db.check import check_database  # noqa: E402
from fbnet.client import NO_RETRY, ServiceClient  # noqa: E402
from fbnet.space import get_space  # noqa: E402
from profiler_server.launcher import LocalServer, free_port  # noqa: E402

SPACE = "fbnet-cifar"


def agent(*argv: str, wait: bool = False):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "device_agents.cli", *argv]
    if wait:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        return p.returncode, p.stdout + p.stderr
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_spool(spool: Path, p: subprocess.Popen) -> float:
    """When the agent's run state appeared in its spool (the run is being opened), or it exited."""
    while not list(spool.rglob("*.json")) and p.poll() is None:
        time.sleep(0.02)
    return time.monotonic()


def wait_for_finish(url: str, device: str, p: subprocess.Popen) -> float:
    """When the agent's run was finished on the service (its last upload), or it exited."""
    while p.poll() is None:
        try:
            runs = httpx.get(f"{url}/runs", params={"device": device, "limit": 1000}, timeout=10).json()["runs"]
        except httpx.HTTPError:
            runs = []
        if any(r["status"] == "finished" for r in runs):
            break
        time.sleep(0.02)
    return time.monotonic()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=6, help="kills per mode")
    ap.add_argument("--mode", choices=["service", "agent", "both"], default="both", help="what gets SIGKILLed")
    ap.add_argument("--limit", type=int, default=24, help="ops of the space to profile per iteration")
    ap.add_argument("--db", help="SQLAlchemy URL (default: a fresh SQLite file)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="export cache (default: the agent's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=OUT / "crash.json",
                    help="write the results here (default: bench/out/crash.json)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="fbnet-crash-"))
    db_url = args.db or f"sqlite:///{tmp / 'crash.db'}"
    ops = [op.key for op in get_space(SPACE).ops if not op.is_identity][: args.limit]
    cache = ["--cache-dir", str(args.cache_dir)] if args.cache_dir else []
    port = free_port()
    server = LocalServer(db_url, tmp / "server", port=port, extra_env={"PYTHONPATH": str(REPO)}).start()
    common = ["--space", SPACE, "--transport", "host", "--ops", ",".join(ops), "--warmup", "2", "--repeats", "10",
              "--rounds", "2", "--retries", "1", *cache]
    # two uncut runs: the first exports the ops (once; cached), the second tells how long a run
    # takes with a warm cache: the window the kills land in
    for k in range(2):
        token0 = server.create_device(f"crash-calibrate-{k}")
        t0 = time.monotonic()
        p = agent("profile", "--server", server.url, "--device", f"crash-calibrate-{k}", "--token", token0,
                  "--spool-dir", str(tmp / f"spool-cal-{k}"), *common)
        t_open = wait_for_spool(tmp / f"spool-cal-{k}", p) - t0
        t_finish = wait_for_finish(server.url, f"crash-calibrate-{k}", p) - t0
        out, _ = p.communicate(timeout=1200)
        span = time.monotonic() - t0
        if p.returncode != 0:
            raise SystemExit(f"calibration run failed ({p.returncode}):\n{out[-3000:]}")
    # the kills land between the run's opening and its finish on the service (the uploads): a kill
    # after the finish, while the agent process winds down, tests nothing
    window = max(0.2, t_finish - t_open)
    print(f"a run takes {span:.1f} s with a warm export cache; its run is open (spooled) {window:.1f} s "
          f"before the service has it finished: the kills land there", flush=True)
    modes = ["service", "agent"] if args.mode == "both" else [args.mode]
    rows = []
    for mode in modes:
        for i in range(args.iterations):
            dev = f"crash-{mode}-{i}"
            token = server.create_device(dev)
            spool = tmp / f"spool-{dev}"
            base = ["--server", server.url, "--device", dev, "--token", token, "--spool-dir", str(spool)]
            p = agent("profile", *base, *common)
            t_open = wait_for_spool(spool, p)
            kill_at = rng.uniform(0.0, 1.0) * window
            time.sleep(max(0.0, t_open + kill_at - time.monotonic()))
            victim = server.process if mode == "service" else p
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            if mode == "service":
                out, _ = p.communicate(timeout=600)
                agent_rc = p.returncode
                server = LocalServer(db_url, tmp / "server", port=port, extra_env={"PYTHONPATH": str(REPO)}).start()
                code, rec = agent("upload", *base, wait=True)
                how = "upload"
            else:
                agent_rc = -9
                # what is spooled goes first (a finish whose answer the agent never saw included), then
                # an open run is resumed; a run never spooled is profiled afresh
                code, rec = agent("upload", *base, wait=True)
                how = "upload"
                states = httpx.get(f"{server.url}/runs", params={"device": dev, "limit": 1000}, timeout=30).json()["runs"]
                if code == 0 and any(r["status"] == "open" for r in states):
                    code, rec = agent("profile", *base, *common, "--resume", wait=True)
                    how = "upload, --resume"
                elif code == 0 and not states and not list(spool.rglob("*.json")):
                    code, rec = agent("profile", *base, *common, wait=True)
                    how = "fresh"
            with ServiceClient(server.url, retry=NO_RETRY, timeout_s=30) as sc:  # every page
                runs = [r.model_dump(mode="json") for r in sc.runs(dev)]
                keys = [k for r in runs for k in sc.run_measurements(r["id"]).keys]
            ok = (code == 0 and len(runs) == 1 and runs[0]["status"] == "finished" and sorted(keys) == sorted(ops))
            rows.append({"mode": mode, "i": i, "kill_at_s": round(kill_at, 2), "agent_rc": agent_rc,
                         "recovery": how, "recovery_rc": code, "runs": len(runs), "stored": len(keys),
                         "unique": len(set(keys)), "expected": len(ops), "ok": ok,
                         "log": "" if ok else rec[-2000:]})
            print(f"{mode:>7} #{i}: killed {kill_at:5.1f} s after the run opened, agent rc {agent_rc}, {how} rc {code}, "
                  f"{len(runs)} run(s), {len(keys)} stored / {len(set(keys))} unique / {len(ops)} expected: "
                  f"{'ok' if ok else 'FAILED'}", flush=True)
    server.stop()
    problems = check_database(db_url)
    print(f"\nengine {db_url.split(':')[0]}, {len(ops)} ops per run, calibration run {span:.1f} s")
    print(f"{'mode':>7} | kills | all ops once, one finished run")
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode]
        print(f"{mode:>7} | {len(mine):>5} | {sum(r['ok'] for r in mine)}/{len(mine)}")
    print(f"database check: {'ok' if not problems else '; '.join(problems)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"db": db_url.split(":")[0], "ops": len(ops), "calibration_s": span,
                                         "rows": rows, "db_problems": problems}, indent=1))
    if problems or not all(r["ok"] for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
