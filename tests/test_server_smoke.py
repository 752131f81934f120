"""The live_server fixture itself: a real server, a fresh database, the admin token works."""

import json

import httpx
import pytest

pytestmark = pytest.mark.pg  # the fixture itself, on each engine


def test_live_server_health_and_import(live_server, hwnasbench_dir):
    assert httpx.get(f"{live_server.url}/healthz").json()["db"] is True
    live_server.create_device("pixel3", platform="android", runtime="tflite")
    body = (hwnasbench_dir / "pixel3_latency.json").read_bytes()
    with live_server.admin as c:
        r = c.post("/tables/pixel3/import", params={"format": "hwnasbench", "space": "fbnet-cifar"}, content=body,
                   headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.json()["missing"] == []
        t = c.get("/tables/pixel3", params={"space": "fbnet-cifar"}).json()
    assert t["complete"] and len(t["entries"]) == 112
    raw = json.loads(body)
    assert t["entries"][0]["latency_us"] > 0 and raw
