"""Tables from the per-run summaries (op_stats, config_ops) serve exactly what the rule defines over
the measurements themselves (``table_reference``: the assembly as it was before summaries), on a
database with several devices, configurations, overheads, unstable, failed, open and imported runs.
Real SQLite files, and PostgreSQL when FBNET_TEST_PG_URL is set; the domain is called directly."""

from __future__ import annotations

import json
import random
import uuid

import pytest
from conftest import HWNASBENCH, _pg_exec, _pg_schema_url
from sqlalchemy import delete, func, select
from table_reference import reference_assemble, reference_configurations

from db.check import check_database
from db.engine import open_database
from db.migrate import upgrade_to_head
from db.models import ConfigOp, OpStat
from fbnet import wire
from fbnet.configuration import Selector
from profiler_server.auth import Caller
from profiler_server.domain import importers
from profiler_server.domain.devices import create_device, get_device
from profiler_server.domain.runs import add_measurements, create_run, finish_run
from profiler_server.domain.spaces import resolve_space
from profiler_server.domain.tables import assemble, configurations
from profiler_server.errors import NotFound

SPACE = "fbnet-cifar"
ADMIN = Caller("admin")
SELECTORS = [Selector(), Selector(threads=1), Selector(threads=2), Selector(precision="fp16"),
             Selector(runtime_version="import-hwnasbench"), Selector(include_unstable=True),
             Selector(threads=1, include_unstable=True), Selector(threads=3), Selector(threads=7)]


pytestmark = pytest.mark.pg  # the table rule over the engine's summaries: ``engine`` is SQLite, and PostgreSQL when configured


@pytest.fixture
def url(engine, tmp_path):
    if engine == "sqlite":
        yield f"sqlite:///{tmp_path / 'summaries.db'}"
        return
    schema = f"s_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE SCHEMA "{schema}"')
    yield _pg_schema_url(schema)
    _pg_exec(f'DROP SCHEMA "{schema}" CASCADE')


def _measurement(rng: random.Random, key: str, op_overhead: bool) -> wire.Measurement:
    med = rng.uniform(50, 500)
    return wire.Measurement(key=key, n=rng.randint(3, 40), median_us=med, mean_us=med * 1.01, std_us=rng.uniform(0, 9),
                            min_us=med * 0.9, p10_us=med * 0.95, p90_us=med * 1.1,
                            overhead_us=rng.uniform(1, 20) if op_overhead and rng.random() < 0.5 else None)


def _populate(db) -> None:
    """Two devices; on the first: three measured configurations, an import and runs that never count."""
    space = resolve_space(SPACE)
    keys = [op.key for op in space.ops if not op.is_identity]
    rng = random.Random(12)
    with db.write_sessions() as s:
        for name in ("ref-phone", "ref-other"):
            create_device(s, wire.DeviceCreate(name=name, platform="android", runtime="executorch-xnnpack"))

        def run(device, n_keys=len(keys), finish="finished", unstable=False, overhead=None, by_key=False,
                op_overhead=False, **cfg):
            r, _ = create_run(s, ADMIN, wire.RunCreate(space=SPACE, device=device, agent_version="t",
                                                       runtime="executorch-xnnpack", runtime_version="1",
                                                       overhead_us=overhead, **cfg))
            ks = rng.sample(keys, n_keys)
            add_measurements(s, ADMIN, r.id, wire.MeasurementBatch(
                measurements=[_measurement(rng, k, op_overhead) for k in ks]))
            extra = {"overhead_us_by_key": {k: rng.uniform(0, 30) for k in ks[:20]}} if by_key else {}
            if finish:
                finish_run(s, ADMIN, r.id, wire.RunFinish(status=finish, unstable=unstable, extra=extra))

        run("ref-phone", threads=1, overhead=12.0)
        run("ref-phone", threads=1, overhead=8.0, by_key=True)
        run("ref-phone", threads=1, op_overhead=True)
        run("ref-phone", n_keys=30, threads=1, overhead=5.0, by_key=True, op_overhead=True)
        run("ref-phone", threads=1, unstable=True, overhead=3.0)
        run("ref-phone", threads=1, finish="failed")
        run("ref-phone", threads=1, finish=None)  # still open
        run("ref-phone", n_keys=40, threads=2, overhead=9.0)
        run("ref-phone", n_keys=50, threads=2, op_overhead=True)
        run("ref-phone", threads=3, unstable=True)  # only unstable runs: served with include_unstable only
        run("ref-phone", precision="fp16")
        run("ref-other", threads=1, overhead=4.0)
        doc = json.loads((HWNASBENCH / "pixel3_latency.json").read_text())
        importers.import_table(s, get_device(s, "ref-phone"), space, "hwnasbench", doc, "pixel3_latency.json")
        s.commit()


def _outcome(fn, *args):
    """The served bytes (the reference builds its table with full validation, as the service did), or the error."""
    try:
        return fn(*args).model_dump_json()
    except NotFound as e:
        return f"NotFound: {e.detail}"


def _assert_same_as_reference(db) -> None:
    space = resolve_space(SPACE)
    with db.read_sessions() as s:
        for name in ("ref-phone", "ref-other"):
            dev = get_device(s, name)
            for unstable in (False, True):
                assert ([c.model_dump() for c in configurations(s, dev, space, include_unstable=unstable)]
                        == [c.model_dump() for c in reference_configurations(s, dev, space, include_unstable=unstable)])
            for sel in SELECTORS:
                got, want = _outcome(assemble, s, dev, space, sel), _outcome(reference_assemble, s, dev, space, sel)
                assert got == want, f"{name} {sel}"
        tables = [_outcome(assemble, s, get_device(s, "ref-phone"), space, sel) for sel in SELECTORS]
    # the comparison is not vacuous: distinct configurations, corrected values, errors and complete tables
    served = [json.loads(t) for t in tables if not t.startswith("NotFound")]
    assert len({t["version"] for t in served}) >= 5 and len(served) == len(tables) - 2
    assert any(t["complete"] for t in served) and any(not t["complete"] for t in served)
    assert any(e["corrected_us"] != e["latency_us"] for t in served for e in t["entries"] if e["source"] == "measured")
    assert any(e["runs"] >= 3 for t in served for e in t["entries"])


def test_summaries_serve_the_rule_over_the_measurements(url):
    upgrade_to_head(url)
    db = open_database(url, pool_size=2)
    try:
        _populate(db)
        _assert_same_as_reference(db)
        with db.read_sessions() as s:  # one summary per op of each finished run, counted once
            assert s.scalar(select(func.count()).select_from(OpStat)) > 0
            assert s.scalar(select(func.sum(ConfigOp.n_stable + ConfigOp.n_unstable))) == s.scalar(
                select(func.count()).select_from(OpStat))
    finally:
        db.dispose()
    assert check_database(url) == []


def test_migration_0005_summarizes_runs_finished_before_it(url):
    """A database whose runs finished before summaries existed (downgraded to 0004 and back) is summarized
    by the upgrade and serves the same tables; ``check`` notices missing summaries."""
    from alembic import command

    from db.migrate import alembic_config

    upgrade_to_head(url)
    db = open_database(url, pool_size=2)
    try:
        _populate(db)
        with db.write_sessions() as s:
            n = s.scalar(select(func.count()).select_from(OpStat))
            s.execute(delete(OpStat).where(OpStat.run_id == s.scalar(select(func.min(OpStat.run_id)))))
            s.commit()
        problems = check_database(url)
        assert problems and any("summar" in p for p in problems), problems
        command.downgrade(alembic_config(url), "0004_configurations")
        upgrade_to_head(url)
        with db.read_sessions() as s:
            assert s.scalar(select(func.count()).select_from(OpStat)) == n
        _assert_same_as_reference(db)
    finally:
        db.dispose()
    assert check_database(url) == []
