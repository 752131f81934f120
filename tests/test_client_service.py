"""fbnet.client.ServiceClient against a real server: the typed calls, the token of each role, a 4xx as
ServiceRefused with the service's detail, an unreachable port as ServiceDown after every retry, and a
503 with Retry-After waited out."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time

import pytest
from conftest import start_server

from device_agents.uploader import ServiceDown as UploaderServiceDown
from device_agents.uploader import UploadError
from fbnet.client import RetryPolicy, ServiceClient, ServiceDown, ServiceRefused
from fbnet.configuration import Selector
from fbnet.space import Arch, get_space
from fbnet.wire import Measurement, MeasurementBatch, RunCreate, RunFinish, ValidationCreate

SPACE = get_space("fbnet-cifar")
RUN = RunCreate(space=SPACE.name, agent_version="t", runtime="executorch", runtime_version="1.5.1", overhead_us=3.0,
                threads=2)


def _measurements(us: float) -> list[Measurement]:
    return [Measurement(key=op.key, n=3, median_us=us, mean_us=us, std_us=0.0, min_us=us, p10_us=us, p90_us=us)
            for op in SPACE.ops if not op.is_identity]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_typed_calls_round_trip(module_server):
    device = module_server.unique("svc")
    token = module_server.create_device(device)
    with ServiceClient(module_server.url, token, role="agent") as c:
        assert c.health().status == "ok"
        run = c.create_run(RUN.model_copy(update={"idempotency_key": "svc-key-0001", "extra": {"calibration": {}}}))
        assert run.device == device and run.status == "open" and run.threads == 2
        assert c.create_run(RUN.model_copy(update={"idempotency_key": "svc-key-0001"})).id == run.id
        ms = _measurements(100.0)
        got = [c.post_measurements(run.id, MeasurementBatch(measurements=ms[i:i + 64])) for i in range(0, len(ms), 64)]
        assert sum(b.stored for b in got) == len(ms) and all(b.run_id == run.id for b in got)
        assert set(c.run_measurements(run.id).keys) == {m.key for m in ms}
        done = c.finish_run(run.id, RunFinish())
        assert done.status == "finished" and done.n_measurements == len(ms)
        assert c.get_run(run.id) == done
        assert [r.id for r in c.runs(device=device)] == [run.id]
        (cfg,) = c.configurations(device, SPACE.name)
        assert cfg.threads == 2 and cfg.runs == [run.id]
        first = c.table(device, SPACE.name, Selector(threads=2))
        assert first.table is not None and first.etag and first.table.configuration.threads == 2
        again = c.table(device, SPACE.name, Selector(threads=2), etag=first.etag)
        assert again.table is None and again.etag == first.etag  # 304: not modified
        v = c.post_validation(ValidationCreate(space=SPACE.name, arch=list(Arch.parse("FBNet-B").blocks),
                                               predicted_us=110.0, measured_us=100.0, n=5))
        assert v.device == device and v.error_pct == pytest.approx(10.0)


def test_the_token_comes_from_the_role_variable(module_server, monkeypatch):
    device = module_server.unique("env")
    monkeypatch.setenv("FBNET_AGENT_TOKEN", module_server.create_device(device))
    monkeypatch.delenv("FBNET_TOKEN", raising=False)
    with ServiceClient(module_server.url, role="agent") as c:
        assert c.create_run(RUN).device == device
    with ServiceClient(module_server.url, retry=RetryPolicy(retries=0)) as c:  # a reader: no agent token
        with pytest.raises(ServiceRefused, match=r"POST /runs refused \(HTTP 401\)") as e:
            c.create_run(RUN)
    assert e.value.status_code == 401 and e.value.reason
    with pytest.raises(ValueError, match="role"):
        ServiceClient(module_server.url, role="admin")


def test_a_4xx_is_refused_at_once_with_the_detail(module_server):
    with ServiceClient(module_server.url, retry=RetryPolicy(retries=3, backoff_s=5.0)) as c:
        t0 = time.monotonic()
        with pytest.raises(ServiceRefused, match=r"GET /runs/999999 refused \(HTTP 404\): unknown run 999999") as e:
            c.get_run(999999)
    assert time.monotonic() - t0 < 5.0  # no retry: a 4xx will not change
    assert e.value.status_code == 404 and e.value.reason == "unknown run 999999"
    assert UploadError is ServiceRefused and UploaderServiceDown is ServiceDown  # the agent's names


def test_an_unreachable_port_is_service_down_after_every_retry():
    url = f"http://127.0.0.1:{_free_port()}"
    with ServiceClient(url, retry=RetryPolicy(retries=2, backoff_s=0.05), timeout_s=2) as c:
        t0 = time.monotonic()
        with pytest.raises(ServiceDown, match=r"unreachable after 3 tries: ConnectError"):
            c.get_run(1)
    assert time.monotonic() - t0 >= 0.05 + 0.1  # backoff 0.05 s, then 0.1 s


def test_retry_policy_waits():
    p = RetryPolicy(retries=3, backoff_s=0.5, max_retry_after_s=10.0)
    assert [p.delay_s(n, None) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert p.delay_s(1, 4.0) == 4.0 and p.delay_s(3, 0.1) == 2.0  # the longer of the two
    assert p.tries == 4 and p.retryable(503) and p.retryable(429) and not p.retryable(404)


def test_a_503_with_retry_after_is_waited_out(tmp_path):
    server, cleanup = start_server("sqlite", tmp_path / "busy",
                                   extra_env={"FBNET_DB_WAIT_S": "0.5", "FBNET_RETRY_AFTER_S": "1"})
    try:
        token = server.create_device("busy")
        con = sqlite3.connect(server.db_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False)
        con.execute("BEGIN IMMEDIATE")  # the service's writes wait 0.5 s, then answer 503, Retry-After: 1
        timer = threading.Timer(1.2, lambda: (con.execute("ROLLBACK"), con.close()))
        timer.start()
        # one retry after 0.01 s of backoff would hit the lock again: only Retry-After's 1 s gets past 1.2 s
        with ServiceClient(server.url, token, role="agent", retry=RetryPolicy(retries=1, backoff_s=0.01)) as c:
            run = c.create_run(RUN)
        timer.join()
        assert run.device == "busy"
    finally:
        cleanup()
