"""How long does fetching the fbnetv2-cifar grid take? A real server (SQLite), a device profiled through
the plan API with the staircase double (tests/doubles/staircase.py), then timed GETs of the table:

- ``cold``: the first GET after a run lands (the device's generation changed: measured entries
  assembled, the model fitted with its 5-fold held-out error, all grid ops predicted and encoded);
  repeated ``--repeats`` times, each after one more small run;
- ``cold_restart``: the first GET after the server restarts (nothing cached in the process; the fit is
  read from the database, ``grid_fits``);
- ``cold_restart_refit``: the same with the stored fits deleted first (the server refits, as before
  fits were stored);
- ``warm``: a client without a cached copy, the server's cache warm;
- ``not_modified``: with If-None-Match (304).

Every time includes the client's JSON decoding. Writes ``bench/out/v2_table_fetch.json``.

    python bench/v2_table_fetch.py [--ops 600] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from doubles.staircase import measure, measurement  # noqa: E402

from fbnet.ops_v2 import parse_key_v2  # noqa: E402
from profiler_server.launcher import LocalServer  # noqa: E402

SPACE = "fbnetv2-cifar"
CFG = {"runtime": "executorch", "runtime_version": "1.0"}


def land_run(c: httpx.Client, keys: list[str], rng: random.Random) -> None:
    """Open a run, upload the double's measurements of ``keys``, finish it."""
    run_id = c.post("/runs", json={"space": SPACE, "agent_version": "bench", **CFG}).raise_for_status().json()["id"]
    rows = [measurement(k, measure(parse_key_v2(k), rng)) for k in keys]
    for i in range(0, len(rows), 1000):
        c.post(f"/runs/{run_id}/measurements", json={"measurements": rows[i:i + 1000]}).raise_for_status()
    c.post(f"/runs/{run_id}/finish", json={}).raise_for_status()


def profile(c: httpx.Client, device: str, n_ops: int, rng: random.Random) -> dict:
    """Plan and land runs until ``n_ops`` are measured; the last plan."""
    while True:
        p = c.post(f"/plans/{device}", json={"space": SPACE, **CFG, "batch": 200, "design": 400,
                                             "budget": n_ops}).raise_for_status().json()
        if p["done"]:
            return p
        land_run(c, p["keys"], rng)


def timed_get(url: str, device: str, headers: dict | None = None) -> tuple[float, int, dict | None]:
    t0 = time.perf_counter()
    r = httpx.get(f"{url}/tables/{device}", params={"space": SPACE}, headers=headers or {}, timeout=120)
    body = r.json() if r.status_code == 200 else None
    return time.perf_counter() - t0, len(r.content), body


def restarted_get(server: LocalServer, db: str, tmp: str) -> float:
    """Restart the server on ``db``; the time of its first GET of the table."""
    server = LocalServer(db, tmp, admin_token=server.admin_token, port=server.port).start()
    try:
        return timed_get(server.url, "bench-v2")[0]
    finally:
        server.stop()


def summary(xs: list[float]) -> dict:
    return {"median_s": statistics.median(xs), "max_s": max(xs), "n": len(xs), "all_s": xs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT / "v2_table_fetch.json")
    a = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/fbnet.db"
        server = LocalServer(db, tmp).start()
        token = server.create_device("bench-v2")
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as c:
            last = profile(c, "bench-v2", a.ops, rng)
            cold, warm, sizes = [], [], []
            for i in range(a.repeats):
                if i:  # one more small run: a new generation, a new fit
                    p = c.post("/plans/bench-v2", json={"space": SPACE, **CFG, "batch": 5}).raise_for_status().json()
                    land_run(c, p["keys"], rng)
                t, size, body = timed_get(server.url, "bench-v2")
                cold.append(t)
                sizes.append(size)
                warm.append(timed_get(server.url, "bench-v2")[0])
            etag = httpx.get(f"{server.url}/tables/bench-v2", params={"space": SPACE}).headers["ETag"]
            nm = [timed_get(server.url, "bench-v2", {"If-None-Match": etag})[0] for _ in range(a.repeats)]
        server.stop()
        restart = restarted_get(server, db, tmp)
        engine = create_engine(db)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM grid_fits"))
        engine.dispose()
        restart_refit = restarted_get(server, db, tmp)
    out = {
        "date": time.strftime("%Y-%m-%d"), "space": SPACE, "measured": body["counts"]["measured"],
        "counts": body["counts"], "heldout": body["model"]["heldout"], "bytes": statistics.median(sizes),
        "plan_measured": last["measured"], "cold": summary(cold), "cold_restart_s": restart,
        "cold_restart_refit_s": restart_refit, "warm": summary(warm),
        "not_modified": summary(nm),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k not in ("counts",)}, indent=1, default=str))


if __name__ == "__main__":
    main()
