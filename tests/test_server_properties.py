"""Property tests (hypothesis): the wire models and the importers either accept input or reject it
with their own error naming the problem: never another exception, whatever the JSON or the file."""

from __future__ import annotations

import json

import pytest
from conftest import HWNASBENCH
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fbnet import wire
from fbnet.space import get_space
from profiler_server.domain import importers
from profiler_server.errors import Invalid

SPACE = get_space("fbnet-cifar")
KEYS = [op.key for op in SPACE.ops if not op.is_identity]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=30)


def _nested(depth: int):
    x: dict = {"leaf": 1}
    for _ in range(depth):
        x = {"x": x}
    return x


@FAST
@given(body=st.dictionaries(st.sampled_from(["space", "agent_version", "runtime", "runtime_version", "extra",
                                             "threads", "transport", "idempotency_key", "host", "temps_before"]),
                            json_values, max_size=10))
def test_run_create_accepts_or_names_the_problem(body):
    try:
        wire.RunCreate.model_validate(body)
    except ValidationError as e:
        assert e.errors() and all(err["loc"] or err["msg"] for err in e.errors())


@FAST
@given(st.integers(0, 40))
def test_free_form_depth_is_capped(depth):
    body = {"space": "s", "agent_version": "1", "runtime": "x", "runtime_version": "1", "extra": _nested(depth)}
    if depth + 1 <= wire.MAX_DEPTH:  # the leaf value sits depth + 1 levels below `extra`
        assert wire.RunCreate.model_validate(body).extra == _nested(depth)
    else:
        with pytest.raises(ValidationError, match="nested deeper"):
            wire.RunCreate.model_validate(body)


def _stats():
    return st.lists(st.floats(0.001, 1e7, allow_nan=False, allow_infinity=False), min_size=1, max_size=20).map(sorted)


@FAST
@given(xs=_stats(), key=st.sampled_from(KEYS), noise=json_values)
def test_measurements_round_trip_or_refuse(xs, key, noise):
    m = {"key": key, "n": len(xs), "median_us": xs[len(xs) // 2], "mean_us": sum(xs) / len(xs), "std_us": 0.0,
         "min_us": xs[0], "p10_us": xs[0], "p90_us": xs[-1], "samples_us": xs}
    ok = wire.MeasurementBatch.model_validate({"measurements": [m]})
    assert wire.MeasurementBatch.model_validate_json(ok.model_dump_json()) == ok
    for field in ("median_us", "n", "samples_us", "key"):
        try:
            wire.MeasurementBatch.model_validate({"measurements": [{**m, field: noise}]})
        except ValidationError:
            pass


@pytest.fixture(scope="module")
def pixel3() -> dict:
    path = HWNASBENCH / "pixel3_latency.json"
    if not path.exists():
        pytest.skip(f"HW-NAS-Bench table not found at {path}")
    return json.loads(path.read_text())


def _parse(body: bytes, fmt: str):
    try:
        return importers.parse(importers.load_document(body, fmt), fmt, SPACE)
    except Invalid as e:
        assert str(e.detail)
        return None


@FAST
@given(data=st.data())
def test_malformed_hwnasbench_files_are_refused_cleanly(pixel3, data):
    keys = sorted(pixel3)
    doc = dict(pixel3)
    for k in data.draw(st.lists(st.sampled_from(keys), max_size=5)):
        doc[k] = data.draw(json_values)
    for k in data.draw(st.lists(st.sampled_from(keys), max_size=5)):
        doc.pop(k, None)
    doc.update(data.draw(st.dictionaries(st.text(max_size=30), json_values, max_size=3)))
    body = json.dumps(doc).encode()
    cut = data.draw(st.integers(0, len(body)))
    for b in (body, body[:cut]):
        parsed = _parse(b, "hwnasbench")
        if parsed is not None:
            assert set(parsed.values) <= set(SPACE.op_by_key)
            assert all(v["median_us"] >= 0 for v in parsed.values.values())


@FAST
@given(entries=st.dictionaries(st.text(max_size=60) | st.sampled_from(
    ["expanded_conv-input:56x56x24-output:56x56x24-expand:3-kernel:3-stride:1-idskip:1",
     "Conv-input:224x224x3-output:112x112x32", "Logits-input:7x7x1280-output:1000"]),
    json_values | st.fixed_dictionaries({"count": scalars, "mean": scalars, "std": scalars}), max_size=6),
    fmt=st.sampled_from(["proxylessnas", "ofa"]), yaml_text=st.text(max_size=200))
def test_malformed_mobile_tables_are_refused_cleanly(entries, fmt, yaml_text):
    _parse(json.dumps(entries).encode(), fmt)
    _parse(yaml_text.encode(), fmt)
