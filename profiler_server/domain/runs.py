"""Profiling runs and their measurements."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Device, Measurement, Run
from db.models import Space as SpaceRow
from db.summaries import summarize_run
from fbnet import wire
from fbnet.ops_v2 import OpV2KeyError, parse_key_v2
from fbnet.space import Space
from fbnet.space_v2 import SpaceV2
from profiler_server.auth import PRIVATE_EXTRA, Caller, redact, require_writer, sees_private  # noqa: F401 (PRIVATE_EXTRA: the pages read it here)
from profiler_server.domain.devices import get_device, touch
from profiler_server.domain.paging import Page, id_cursor, paginate
from profiler_server.domain.spaces import ensure_space, resolve_any_space
from profiler_server.errors import Conflict, Forbidden, Invalid, NotFound

OPEN, FINISHED = "open", "finished"
COUNTED_STATUSES = (FINISHED,)  # open, failed and aborted runs never reach a table
def target_device(session: Session, caller: Caller, named: str | None) -> Device:
    """The device a write is for: ``named`` or the token's own; checks the caller may write it."""
    if named is None:
        if caller.kind != "device":
            raise Invalid("'device' is required unless the request uses a device token")
        named = caller.device_name
    require_writer(caller, named)
    return get_device(session, named)


def _by_key(session: Session, device_id: int, key: str) -> Run | None:
    return session.scalars(select(Run).where(Run.device_id == device_id, Run.idempotency_key == key)).first()


def create_run(session: Session, caller: Caller, body: wire.RunCreate) -> tuple[Run, bool]:
    """Open a run; returns (run, created). A body with the ``idempotency_key`` of a run this device
    already opened returns that run (a retried POST never leaves an orphan run behind)."""
    device = target_device(session, caller, body.device)
    if body.transport == "import" and not caller.is_admin:
        raise Forbidden("only the admin token may open 'import' runs (use POST /tables/{device}/import)")
    space = resolve_any_space(body.space)
    key = body.idempotency_key
    if key is not None and (found := _by_key(session, device.id, key)) is not None:
        return _same_run(found, space.name, key), False
    row = ensure_space(session, space)
    fields = body.model_dump(exclude={"device", "space"})
    fields["precision"] = body.precision or device.precision  # a run says its precision, else its device's
    run = Run(device_id=device.id, space_id=row.id, space_version=space.version, status=OPEN, **fields)
    run.started_at = run.started_at or datetime.now(UTC)
    try:
        with session.begin_nested():  # a racing retry with the same key: the loser finds the winner's run
            session.add(run)
    except IntegrityError:
        if key is None or (found := _by_key(session, device.id, key)) is None:
            raise
        return _same_run(found, space.name, key), False
    return run, True


def _same_run(run: Run, space: str, key: str) -> Run:
    if run.space.name != space:
        raise Conflict(f"idempotency key {key!r} already opened run {run.id} of space {run.space.name!r}")
    return run


def get_run(session: Session, run_id: int, *, lock: bool = False) -> Run:
    """The run; ``lock``: hold its row until the transaction ends (PostgreSQL ``FOR UPDATE``; SQLite's
    write transactions are serialized anyway), so that storing a batch and finishing exclude each other."""
    run = session.get(Run, run_id, with_for_update=lock or None)
    if run is None:
        raise NotFound(f"unknown run {run_id}")
    return run


def _runs_query(session: Session, device: str | None, space: str | None):
    q = select(Run).join(Device, Device.id == Run.device_id).join(SpaceRow, SpaceRow.id == Run.space_id)
    if device is not None:
        get_device(session, device)
        q = q.where(Device.name == device)
    if space is not None:
        resolve_any_space(space)
        q = q.where(SpaceRow.name == space)
    return q.order_by(Run.id)


def list_runs(session: Session, device: str | None = None, space: str | None = None) -> list[Run]:
    return list(session.scalars(_runs_query(session, device, space)))


def runs_page(session: Session, caller: Caller | None, filters: tuple[str | None, str | None], limit: int,
              cursor: str | None, budget: int) -> Page:
    """One page of the runs (``filters``: device, space), oldest first (:mod:`.paging`)."""
    q = _runs_query(session, *filters)

    def fetch(after: int | None, n: int):
        runs = list(session.scalars((q if after is None else q.where(Run.id > after)).limit(n)))
        return [(r.id, out) for r, out in zip(runs, runs_out(session, runs, caller), strict=True)]

    return paginate(fetch, limit, budget, id_cursor(cursor))


def n_measurements(session: Session, run_ids: list[int]) -> dict[int, int]:
    if not run_ids:
        return {}
    q = select(Measurement.run_id, func.count()).where(Measurement.run_id.in_(run_ids)).group_by(Measurement.run_id)
    return dict(session.execute(q).tuples().all())


def may_see_private(caller: Caller | None, run: Run) -> bool:
    return sees_private(caller, run.device_id)


def run_out(run: Run, n: int = 0, caller: Caller | None = None) -> wire.RunOut:
    """The run as the API shows it; serials and host names only to the admin and the device itself."""
    private = may_see_private(caller, run)
    extra = run.extra or {}
    return wire.RunOut(
        id=run.id, device=run.device.name, space=run.space.name, space_version=run.space_version,
        transport=run.transport, agent_version=run.agent_version, runtime=run.runtime,
        runtime_version=run.runtime_version, precision=run.precision, unstable=bool(run.unstable), build=run.build,
        threads=run.threads, cpu_mask=run.cpu_mask, compute_units=run.compute_units,
        host=run.host if private else None, device_model=run.device_model, soc=run.soc, os=run.os,
        warmup=run.warmup, repeats=run.repeats, rounds=run.rounds, overhead_us=run.overhead_us,
        context_factor=run.context_factor, context_us_per_mb=run.context_us_per_mb,
        temps_before=run.temps_before or {}, temps_after=run.temps_after or {},
        cpu_freqs_before=run.cpu_freqs_before or {}, cpu_freqs_after=run.cpu_freqs_after or {},
        status=run.status, started_at=run.started_at, finished_at=run.finished_at, n_measurements=n,
        extra=extra if private else redact(extra),
    )


def runs_out(session: Session, runs: list[Run], caller: Caller | None = None) -> list[wire.RunOut]:
    counts = n_measurements(session, [r.id for r in runs])
    return [run_out(r, counts.get(r.id, 0), caller) for r in runs]


def _insert(session: Session):
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def store_rows(session: Session, run_id: int, rows: list[dict]) -> int:
    """Insert measurement rows, skipping (run, key) pairs already stored; returns how many are new."""
    if not rows:
        return 0
    stmt = _insert(session)(Measurement).on_conflict_do_nothing(index_elements=["run_id", "key"])
    now = datetime.now(UTC)
    params = [{**r, "run_id": run_id, "created_at": now} for r in rows]
    return len(session.execute(stmt.returning(Measurement.id), params).all())


def add_measurements(session: Session, caller: Caller, run_id: int, batch: wire.MeasurementBatch) -> wire.BatchResult:
    """Store one batch, all or nothing: every key must belong to the run's space. An open run never
    feeds a table, so a batch does not change the device's tables (no new cache generation); the
    run's row is locked so that a finish cannot slip in between the status check and the insert."""
    run = get_run(session, run_id, lock=True)
    require_writer(caller, run.device.name)
    if run.status != OPEN:
        raise Conflict(f"run {run_id} is {run.status}; open a new run to add measurements")
    check_keys(resolve_any_space(run.space.name), [m.key for m in batch.measurements])
    unique: dict[str, dict] = {}
    for m in batch.measurements:
        unique.setdefault(m.key, m.model_dump())
    stored = store_rows(session, run.id, list(unique.values()))
    received = len(batch.measurements)
    return wire.BatchResult(run_id=run.id, received=received, stored=stored, duplicates=received - stored)


def check_keys(space: Space | SpaceV2, keys: list[str]) -> None:
    """Every key must be an op of ``space`` (a v2 space: of its grid, each key first parsed by
    :func:`fbnet.ops_v2.parse_key_v2` so that a malformed one is named as such); else 422, naming them."""
    if isinstance(space, SpaceV2):
        bad = []
        for k in keys:
            if k not in space.grid:
                try:
                    parse_key_v2(k)
                    bad.append(f"{k!r} (not in the grid)")
                except OpV2KeyError as e:
                    bad.append(str(e))
    else:
        bad = [repr(k) for k in keys if k not in space.op_by_key]
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise Invalid(f"op keys not in space {space.name!r}: {shown}; nothing was stored")


_STATS = (Measurement.key, Measurement.n, Measurement.median_us, Measurement.mean_us, Measurement.std_us,
          Measurement.min_us, Measurement.p10_us, Measurement.p90_us, Measurement.overhead_us)


def run_measurements(session: Session, run_id: int, page: tuple[int, str | None, int],
                     samples: bool = False) -> wire.RunMeasurements:
    """One page (``page``: limit, cursor, byte budget) of the run's measurements in the order they were
    stored; the raw samples only when asked for (read a few rows at a time, the page capped in bytes)."""
    run = get_run(session, run_id)
    cols = (Measurement.id, *_STATS, *((Measurement.samples_us,) if samples else ()))

    def fetch(after: int | None, n: int):
        q = select(*cols).where(Measurement.run_id == run_id)
        q = q if after is None else q.where(Measurement.id > after)
        rows = session.execute(q.order_by(Measurement.id).limit(n)).all()
        return [(r.id, wire.StoredMeasurement.model_construct(**{k: v for k, v in r._asdict().items() if k != "id"}))
                for r in rows]

    limit, cursor, budget = page
    got = paginate(fetch, limit, budget, id_cursor(cursor), chunk=8 if samples else 256)
    return wire.RunMeasurements(
        run_id=run.id, device=run.device.name, space=run.space.name, status=run.status,
        keys=[m.key for m in got.items], measurements=got.items, next=got.next,
    )


def finish_run(session: Session, caller: Caller, run_id: int, body: wire.RunFinish) -> Run:
    """Close an open run; a finished run's ops are summarized for table assembly in the same transaction."""
    run = get_run(session, run_id, lock=True)
    require_writer(caller, run.device.name)
    if run.status == body.status:  # a retried finish whose answer was lost (timeout, crash): same result
        return run
    if run.status != OPEN:
        raise Conflict(f"run {run_id} is already {run.status}")
    run.status = body.status
    run.finished_at = datetime.now(UTC)
    run.temps_after = body.temps_after
    run.cpu_freqs_after = body.cpu_freqs_after
    run.unstable = body.unstable
    run.context_factor = body.context_factor
    run.context_us_per_mb = body.context_us_per_mb
    if body.overhead_us is not None:
        run.overhead_us = body.overhead_us
    # The run's overhead from ALL its stored ops (a resumed run's finish only saw the resumed subset).
    ovh = session.scalars(select(Measurement.overhead_us).where(Measurement.run_id == run.id,
                                                                Measurement.overhead_us.is_not(None))).all()
    if ovh:
        run.overhead_us = float(statistics.median(ovh))
    if body.extra:
        run.extra = {**(run.extra or {}), **body.extra}
    touch(session, run.device_id)
    session.flush()
    if run.status == FINISHED:
        summarize_run(session, run.id)
    return run
