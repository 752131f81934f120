"""Tokens and data: rotation and revocation, idempotent run creation, admin-only imports, private
provenance, online backup, and plots drawn without pyplot, cached and behind the reader check."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import REPO, start_server

RUN = {"space": "fbnet-cifar", "agent_version": "1", "runtime": "x", "runtime_version": "1"}


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "profiler_server.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})


def test_rotate_and_revoke_over_http(module_server):
    name, other = module_server.unique("rot"), module_server.unique("rot")
    old = module_server.create_device(name)
    other_token = module_server.create_device(other)
    with module_server.client(other_token) as c:
        assert c.post(f"/devices/{name}/token").status_code == 403  # only the admin rotates
    with module_server.client(old) as c:
        assert c.post(f"/devices/{name}/token").status_code == 403
    with module_server.admin as c:
        r = c.post(f"/devices/{name}/token")
        assert r.status_code == 200 and r.json()["name"] == name
        new = r.json()["token"]
        assert new != old
        assert c.post("/devices/nobody/token").status_code == 404
    with module_server.client(old) as c:
        assert c.post("/runs", json=RUN).status_code == 401
    with module_server.client(new) as c:
        assert c.post("/runs", json=RUN).status_code == 201
    with module_server.admin as c:
        assert c.delete(f"/devices/{name}/token").status_code == 200
    with module_server.client(new) as c:
        assert c.post("/runs", json=RUN).status_code == 401
    with module_server.client(other_token) as c:  # the other device is untouched
        assert c.post("/runs", json=RUN).status_code == 201


@pytest.mark.pg  # racing retries meet the engine's unique constraint
def test_retried_run_creation_returns_the_same_run(module_server):
    name = module_server.unique("idem")
    token = module_server.create_device(name)
    body = {**RUN, "idempotency_key": "agent-run-0123456789"}
    with module_server.client(token) as c:
        first = c.post("/runs", json=body)
        assert first.status_code == 201
        with ThreadPoolExecutor(4) as pool:  # racing retries, as after a timeout
            again = list(pool.map(lambda _: c.post("/runs", json=body), range(4)))
        assert {r.status_code for r in again} == {200}
        assert {r.json()["id"] for r in again} == {first.json()["id"]}
        r = c.post("/runs", json={**body, "space": "fbnet-224"})
        assert r.status_code == 409 and "agent-run-0123456789" in r.json()["detail"]
        assert c.post("/runs", json={**body, "idempotency_key": "bad key!"}).status_code == 422
        assert c.post("/runs", json=RUN).json()["id"] != first.json()["id"]  # no key: a new run
        assert len(c.get("/runs", params={"device": name}).json()["runs"]) == 2
    other = module_server.create_device(module_server.unique("idem"))
    with module_server.client(other) as c:  # keys are per device
        assert c.post("/runs", json=body).status_code == 201


def test_only_the_admin_opens_import_runs(module_server):
    name = module_server.unique("imp")
    token = module_server.create_device(name)
    with module_server.client(token) as c:
        r = c.post("/runs", json={**RUN, "transport": "import"})
        assert r.status_code == 403 and "admin" in r.json()["detail"]
        assert c.get("/runs", params={"device": name}).json()["runs"] == []
    with module_server.admin as c:
        assert c.post("/runs", json={**RUN, "transport": "import", "device": name}).status_code == 201


def test_serials_and_host_names_only_for_admin_and_own_device(module_server):
    name = module_server.unique("priv")
    token = module_server.create_device(name)
    other = module_server.create_device(module_server.unique("priv"))
    with module_server.client(token) as c:
        rid = c.post("/runs", json={**RUN, "host": "SERIAL-R58M123", "extra": {"device_name": "Ann's phone",
                                                                                 "abi": "arm64-v8a"}}).json()["id"]
    for who, private in ((None, False), (other, False), (token, True), (module_server.admin_token, True)):
        with module_server.client(who) as c:
            for run in (c.get(f"/runs/{rid}").json(), c.get("/runs", params={"device": name}).json()["runs"][0]):
                assert (run["host"] == "SERIAL-R58M123") is private and (run["host"] is None) is not private
                assert ("device_name" in run["extra"]) is private and run["extra"]["abi"] == "arm64-v8a"


def test_token_cli_and_online_backup_of_a_live_database(live_server_sqlite, tmp_path):
    server = live_server_sqlite
    old = server.create_device("phone")
    with server.client(old) as c:
        rid = c.post("/runs", json=RUN).json()["id"]
        ms = [{"key": "fc-1504-10", "n": 1, "median_us": 5.0, "mean_us": 5.0, "std_us": 0.0, "min_us": 5.0,
               "p10_us": 5.0, "p90_us": 5.0}]
        assert c.post(f"/runs/{rid}/measurements", json={"measurements": ms}).status_code == 200
    r = _cli("token", "rotate", "phone", "--db", server.db_url, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    new = r.stdout.strip()
    with server.client(old) as c:
        assert c.post("/runs", json=RUN).status_code == 401
    with server.client(new) as c:
        assert c.post("/runs", json=RUN).status_code == 201
    assert _cli("token", "revoke", "ghost", "--db", server.db_url, cwd=tmp_path).returncode == 2
    # a backup while the service runs (and holds the file open in WAL mode)
    copy = tmp_path / "backup.db"
    r = _cli("backup", str(copy), "--db", server.db_url, cwd=tmp_path)
    assert r.returncode == 0 and "wrote" in r.stdout, r.stderr
    con = sqlite3.connect(copy)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
    assert con.execute("SELECT key FROM measurements").fetchall() == [("fc-1504-10",)]
    con.close()
    r = _cli("backup", str(tmp_path / "x.db"), "--db", "postgresql+psycopg://u@localhost/db", cwd=tmp_path)
    assert r.returncode == 2 and "pg_dump" in r.stderr and "Traceback" not in r.stderr
    r = _cli("backup", str(tmp_path / "nofolder" / "x.db"), "--db", server.db_url, cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_plots_are_cached_concurrent_and_behind_the_reader_check(tmp_path, hwnasbench_dir):
    server, cleanup = start_server("sqlite", tmp_path / "s", extra_env={"FBNET_READ_TOKEN": "reader"})
    try:
        for dev in ("pixel3", "raspi4"):
            server.create_device(dev)
            with server.admin as c:
                r = c.post(f"/tables/{dev}/import", params={"space": "fbnet-cifar"},
                           content=(hwnasbench_dir / f"{dev}_latency.json").read_bytes(),
                           headers={"content-type": "application/json"})
                assert r.status_code == 200, r.text
        with server.admin as c:  # a validation plot is of a device's validations (404 without any)
            r = c.post("/validations", json={"space": "fbnet-cifar", "device": "pixel3", "arch": ["k3_e1"] * 22,
                                             "predicted_us": 100.0, "measured_us": 110.0, "n": 1})
            assert r.status_code == 201, r.text
        paths = ["/plots/table/pixel3.png?space=fbnet-cifar", "/plots/compare.png?space=fbnet-cifar&a=pixel3&b=raspi4",
                 "/plots/validations/pixel3.png?space=fbnet-cifar"]
        for p in paths:
            assert httpx.get(server.url + p).status_code == 401
        def get(c, p):  # as a client does: a busy renderer answers 503 with Retry-After (bounded wait), then retry
            for _ in range(20):
                r = c.get(p)
                if r.status_code != 503:
                    return r
                time.sleep(float(r.headers["retry-after"]))
            return r

        with server.client("reader") as c, ThreadPoolExecutor(6) as pool:
            got = list(pool.map(lambda p: get(c, p), paths * 2))
        assert all(r.status_code == 200 and r.content[:4] == b"\x89PNG" for r in got), [(r.status_code, r.text[:80]) for r in got if r.status_code != 200]
        assert [r.content for r in got[:3]] == [r.content for r in got[3:]]  # same content, same bytes
    finally:
        cleanup()


def test_serials_nested_in_device_metadata_or_run_extra_are_hidden_from_readers(module_server):
    name = module_server.unique("nest")
    with module_server.admin as c:
        r = c.post("/devices", json={"name": name, "platform": "android", "runtime": "executorch-xnnpack",
                                     "metadata": {"lab": "rack 3", "adb": {"serial": "R58M123", "port": 5555},
                                                  "units": [{"udid": "00008030-XYZ", "slot": 1}]}})
        assert r.status_code == 201
        token = r.json()["token"]
    with module_server.client(token) as c:
        rid = c.post("/runs", json={**RUN, "extra": {"adb": {"serial": "R58M123", "abi": "arm64-v8a"}}}).json()["id"]
    for who, private in ((None, False), (token, True), (module_server.admin_token, True)):
        with module_server.client(who) as c:
            for text in (c.get(f"/devices/{name}").text, c.get("/devices").text):
                assert ("R58M123" in text) is private and ("00008030-XYZ" in text) is private, text[:300]
            assert ("R58M123" in c.get(f"/runs/{rid}").text) is private
            meta = c.get(f"/devices/{name}").json()["metadata"]
            extra = c.get(f"/runs/{rid}").json()["extra"]
            if private:
                assert meta["adb"]["port"] == 5555 and meta["units"][0]["slot"] == 1 and extra["adb"]["abi"] == "arm64-v8a"
            else:  # an allow-list (profiler_server.privacy): keys it does not name are hidden with all they hold
                assert meta == {"lab": "rack 3"} and "adb" not in extra
