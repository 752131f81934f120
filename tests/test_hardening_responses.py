"""Bounded responses against real servers: every list paged (limit, cursor, ``next``, a byte cap), a run's raw
samples only on request, plots only of data a device has and a bounded wait for a render slot (503 +
Retry-After), and validations stored once however often a client retries them (``Idempotency-Key``)."""

from __future__ import annotations

import random
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import start_server

from fbnet.client import RetryPolicy, ServiceClient
from fbnet.space import get_space
from fbnet.wire import MAX_PAGE_LIMIT, PAGE_LIMIT, ValidationCreate

SPACE = "fbnet-cifar"
KEYS = [op.key for op in get_space(SPACE).ops if not op.is_identity]  # 106 ops
ARCH = ["k3_e1"] * 22
SAMPLES = 1000  # per op: ~19 KB of JSON each, ~2 MB for the run


def _m(key: str, v: float, samples: list[float] | None = None) -> dict:
    return {"key": key, "n": 5, "median_us": v, "mean_us": v, "std_us": 0.1, "min_us": v, "p10_us": v, "p90_us": v,
            "samples_us": samples}


def _run(c: httpx.Client, **kw) -> int:
    r = c.post("/runs", json={"space": SPACE, "agent_version": "1", "runtime": "x", "runtime_version": "1", **kw})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _validation(**kw) -> dict:
    return {"space": SPACE, "arch": ARCH, "predicted_us": 100.0, "measured_us": 110.0, "n": 3, **kw}


def _walk(c: httpx.Client, url: str, field: str, **params) -> tuple[list, int]:
    """Every item of a paged list and the number of pages it took."""
    items, pages, cursor = [], 0, None
    while True:
        r = c.get(url, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        items += r.json()[field]
        pages += 1
        if (cursor := r.json()["next"]) is None:
            return items, pages


@pytest.fixture(scope="module")
def big_run(module_server):
    """A run of 106 ops with 1,000 raw samples each (~2 MB as one answer before paging)."""
    name = module_server.unique("big")
    token = module_server.create_device(name)
    rng = random.Random(0)
    sent = {k: [rng.uniform(50, 150) for _ in range(SAMPLES)] for k in KEYS}
    with module_server.client(token, timeout=120) as c:
        rid = _run(c)
        for s in range(0, len(KEYS), 30):
            r = c.post(f"/runs/{rid}/measurements", json={"measurements": [_m(k, 100.0, sent[k]) for k in KEYS[s:s + 30]]})
            assert r.status_code == 200, r.text
    return module_server, rid, sent


# ---- item 4: pagination, samples on request, a byte cap ------------------------------------------
@pytest.mark.pg  # the keyset order of a run's rows on each engine
def test_measurements_page_through_to_the_whole_run_and_samples_come_only_on_request(big_run):
    server, rid, sent = big_run
    with server.client() as c:
        first = c.get(f"/runs/{rid}/measurements")
        assert first.status_code == 200
        body = first.json()
        # the default answer: no samples, PAGE_LIMIT ops, and it says more follow (an old client is told)
        assert len(first.content) < 64 * 1024, len(first.content)
        assert len(body["measurements"]) == PAGE_LIMIT and body["next"] is not None
        assert all(m["samples_us"] is None for m in body["measurements"])
        small, n_small = _walk(c, f"/runs/{rid}/measurements", "measurements", limit=7)
        assert [m["key"] for m in small] == KEYS and n_small == -(-len(KEYS) // 7)
        full, n_full = _walk(c, f"/runs/{rid}/measurements", "measurements", samples="true", limit=MAX_PAGE_LIMIT)
        assert {m["key"]: m["samples_us"] for m in full} == sent
        assert n_full >= 2  # ~2 MB of samples: the 1 MiB byte cap ended pages before the limit did
        r = c.get(f"/runs/{rid}/measurements", params={"samples": "true", "limit": MAX_PAGE_LIMIT})
        assert len(r.content) < 1024 * 1024 + 64 * 1024 and r.json()["next"] is not None
        for bad in ({"limit": MAX_PAGE_LIMIT + 1}, {"limit": 0}, {"cursor": "abc"}, {"cursor": "-1"}):
            r = c.get(f"/runs/{rid}/measurements", params=bad)
            assert r.status_code == 422, (bad, r.text)
    with ServiceClient(server.url) as sc:  # the client follows `next` to the end
        got = sc.run_measurements(rid, samples=True)
        assert got.keys == KEYS and {m.key: m.samples_us for m in got.measurements} == sent and got.next is None
        assert [m.samples_us for m in sc.run_measurements(rid).measurements] == [None] * len(KEYS)


@pytest.mark.pg
def test_runs_devices_and_validations_are_paged_by_limit_and_cursor(module_server):
    names = sorted(module_server.unique("pg") for _ in range(3))
    tokens = [module_server.create_device(n) for n in names]
    with module_server.client(tokens[0]) as c:
        rids = [_run(c) for _ in range(5)]
        pairs = [(100.0 + 10 * i, 100.0 + 7 * i * i) for i in range(1, 6)]
        vids = [c.post("/validations", json=_validation(predicted_us=p, measured_us=m)).json()["id"] for p, m in pairs]
    with module_server.client() as c:
        runs, n = _walk(c, "/runs", "runs", device=names[0], limit=2)
        assert [r["id"] for r in runs] == rids and n == 3
        assert c.get("/runs", params={"device": names[0]}).json()["next"] is None
        devices, _ = _walk(c, "/devices", "devices", limit=1)
        assert [d["name"] for d in devices if d["name"] in names] == names
        assert [d["name"] for d in devices] == sorted(d["name"] for d in devices)
        vals, n = _walk(c, f"/validations/{names[0]}", "validations", space=SPACE, limit=2)
        assert [v["id"] for v in vals] == vids and n == 3
        page = c.get(f"/validations/{names[0]}", params={"space": SPACE, "limit": 1}).json()
        whole = c.get(f"/validations/{names[0]}", params={"space": SPACE}).json()
        # the statistics are of every validation, whatever the page
        assert page["count"] == whole["count"] == 5 and page["mape"] == pytest.approx(whole["mape"])
        assert page["kendall_tau"] == pytest.approx(whole["kendall_tau"]) and page["worst"] == whole["worst"]
        for url, params in (("/runs", {}), ("/devices", {}), (f"/validations/{names[0]}", {"space": SPACE}),
                            (f"/runs/{rids[0]}/measurements", {})):
            r = c.get(url, params={**params, "limit": MAX_PAGE_LIMIT + 1})
            assert r.status_code == 422, (url, r.text)
    with ServiceClient(module_server.url) as sc:
        assert [r.id for r in sc.runs(device=names[0])] == rids
        assert [v.id for v in sc.validations(names[0], SPACE).validations] == vids
        assert set(names) <= {d.name for d in sc.devices()}


# ---- item 5: plots of data only; a bounded wait for a render slot ---------------------------------
def _finished_run(server, token: str, **kw) -> int:
    with server.client(token) as c:
        rid = _run(c, **kw)
        r = c.post(f"/runs/{rid}/measurements", json={"measurements": [_m(k, 50.0) for k in KEYS[:20]]})
        assert r.status_code == 200, r.text
        assert c.post(f"/runs/{rid}/finish", json={}).status_code == 200
    return rid


def test_plots_of_a_space_or_configuration_without_data_are_404_before_any_render(module_server):
    name, other = module_server.unique("plot"), module_server.unique("plot")
    token = module_server.create_device(name)
    module_server.create_device(other)
    _finished_run(module_server, token, threads=2)
    with module_server.client() as c:
        assert c.get(f"/plots/table/{name}.png", params={"space": SPACE}).status_code == 200
        cases = [
            (f"/plots/table/{name}.png", {"space": "fbnet-96-w0.5"}, "no finished run of fbnet-96-w0.5"),
            (f"/plots/table/{name}.png", {"space": "fbnet-320-w1.5"}, "no finished run of fbnet-320-w1.5"),
            (f"/plots/table/{name}.png", {"space": SPACE, "threads": 3}, "no configuration"),
            (f"/plots/table/{other}.png", {"space": SPACE}, "no finished run"),
            ("/plots/compare.png", {"space": SPACE, "a": name, "b": other}, f"{other!r} has no finished run"),
            (f"/plots/validations/{name}.png", {"space": SPACE}, "no validation"),
        ]
        for url, params, message in cases:
            r = c.get(url, params=params)
            assert r.status_code == 404 and message in r.json()["detail"], (url, params, r.status_code, r.text[:200])


def test_a_plot_waits_a_bounded_time_for_a_render_slot_then_503_with_retry_after(tmp_path):
    server, cleanup = start_server("sqlite", tmp_path / "server",
                                   extra_env={"FBNET_PLOT_CONCURRENCY": "1", "FBNET_PLOT_WAIT_S": "0.01"})
    try:
        name = "slots"
        _finished_run(server, server.create_device(name))

        def get(i: int) -> httpx.Response:
            with server.client() as c:
                return c.get(f"/plots/table/{name}.png", params={"space": SPACE})

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(get, range(6)))  # one figure, not drawn yet: one draws, the rest wait
        codes = sorted(r.status_code for r in answers)
        assert set(codes) == {200, 503} and codes.count(200) >= 1, codes
        busy = next(r for r in answers if r.status_code == 503)
        assert int(busy.headers["Retry-After"]) >= 1 and "slot" in busy.json()["detail"]
        assert get(0).status_code == 200  # drawn once, then served from the cache without a slot
    finally:
        cleanup()


# ---- item 8: idempotent validations --------------------------------------------------------------
@pytest.mark.pg  # the repeat and the race meet the engine's unique constraint
def test_a_validation_retried_with_its_idempotency_key_is_stored_once(module_server):
    name, other = module_server.unique("idem"), module_server.unique("idem")
    token, other_token = module_server.create_device(name), module_server.create_device(other)
    key = uuid.uuid4().hex
    with module_server.client(token) as c:
        first = c.post("/validations", json=_validation(), headers={"Idempotency-Key": key})
        again = c.post("/validations", json=_validation(), headers={"Idempotency-Key": key})
        assert (first.status_code, again.status_code) == (201, 200) and again.json() == first.json()
        changed = c.post("/validations", json=_validation(n=4), headers={"Idempotency-Key": key})
        assert changed.status_code == 409 and key in changed.json()["detail"]
        assert c.post("/validations", json=_validation(), headers={"Idempotency-Key": "short"}).status_code == 422
        assert c.post("/validations", json=_validation()).status_code == 201  # no key: a new validation each time
    with module_server.client(other_token) as c:  # keys are per device
        assert c.post("/validations", json=_validation(), headers={"Idempotency-Key": key}).status_code == 201

    race = uuid.uuid4().hex

    def post(_):
        with module_server.client(token) as c:
            return c.post("/validations", json=_validation(label="race"), headers={"Idempotency-Key": race})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert sorted(r.status_code for r in answers) == [200] * 7 + [201], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    with module_server.client() as c:
        assert c.get(f"/validations/{name}", params={"space": SPACE}).json()["count"] == 3


class LoseFirstAnswer(httpx.BaseTransport):
    """Real HTTP to the server; the first POST's answer is dropped after the server handled it (a client
    timeout after the server stored the validation)."""

    def __init__(self):
        self.inner = httpx.HTTPTransport()
        self.posts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST":
            self.posts += 1
            if self.posts == 1:
                response.read()
                response.close()
                raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


def test_the_client_retries_a_lost_validation_answer_under_the_same_key(module_server, tmp_path):
    from device_agents.uploader import Uploader

    name = module_server.unique("retry")
    token = module_server.create_device(name)
    lossy = LoseFirstAnswer()
    with ServiceClient(module_server.url, token, role="agent", transport=lossy,
                       retry=RetryPolicy(retries=2, backoff_s=0.01)) as sc:
        out = sc.post_validation(ValidationCreate.model_validate(_validation()))
    assert lossy.posts == 2
    with module_server.client() as c:  # two POSTs reached the server; one validation is stored
        got = c.get(f"/validations/{name}", params={"space": SPACE}).json()
    assert got["count"] == 1 and got["validations"][0]["id"] == out.id
    up = Uploader(module_server.url, token, name, spool_dir=tmp_path)
    try:  # the agent's upload: one key per validation, the same key when it is sent again
        v = ValidationCreate.model_validate(_validation(label="agent"))
        a, b = up.post_validation(v, "agent-key-1"), up.post_validation(v, "agent-key-1")
    finally:
        up.close()
    assert a.id == b.id
    with module_server.client() as c:
        got = c.get(f"/validations/{name}", params={"space": SPACE}).json()
    assert got["count"] == 2 and [v["id"] for v in got["validations"]] == [out.id, a.id]


def test_post_runs_takes_the_idempotency_key_header_too(module_server):
    token = module_server.create_device(module_server.unique("runkey"))
    body = {"space": SPACE, "agent_version": "1", "runtime": "x", "runtime_version": "1"}
    with module_server.client(token) as c:
        a = c.post("/runs", json=body, headers={"Idempotency-Key": "run-key-123"})
        b = c.post("/runs", json=body, headers={"Idempotency-Key": "run-key-123"})
        assert (a.status_code, b.status_code) == (201, 200) and a.json()["id"] == b.json()["id"]
        r = c.post("/runs", json={**body, "idempotency_key": "other-key-1"}, headers={"Idempotency-Key": "run-key-123"})
        assert r.status_code == 422 and "differ" in r.json()["detail"]


@pytest.mark.pg
def test_0009_adds_the_validation_key_to_a_database_at_0008(fresh_url):
    """Validations stored before 0009 keep no key (any number of them); a key is unique per device."""
    from alembic import command
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import IntegrityError

    from db.migrate import alembic_config, upgrade_to_head

    command.upgrade(alembic_config(fresh_url), "0008_plan_batches")
    engine = create_engine(fresh_url)
    row = ("INSERT INTO validations (device_id, space_id, arch, predicted_us, measured_us, n, extra, created_at{k}) "
           "VALUES (1, 1, '[]', 1.0, 1.0, 1, '{{}}', :t{v})")
    now = {"t": "2026-01-01 00:00:00+00:00"}
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO devices (id, name, platform, runtime, precision, metadata, table_gen, "
                          "created_at) VALUES (1, 'old-phone', 'android', 'x', 'fp32', '{}', 0, :t)"), now)
        conn.execute(text("INSERT INTO spaces (id, name, version, n_ops, registered_at) "
                          "VALUES (1, 'fbnet-cifar', 'v', 1, :t)"), now)
        conn.execute(text(row.format(k="", v="")), now)
        conn.execute(text(row.format(k="", v="")), now)
    upgrade_to_head(fresh_url)
    try:
        with engine.begin() as conn:
            assert conn.execute(text("SELECT idempotency_key FROM validations")).scalars().all() == [None, None]
            conn.execute(text(row.format(k=", idempotency_key", v=", 'key-00001'")), now)
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text(row.format(k=", idempotency_key", v=", 'key-00001'")), now)
    finally:
        engine.dispose()

