"""Whole-model validations: measured vs table-predicted latency, and their summary."""

from __future__ import annotations

import hashlib
import json
import math

from scipy.stats import kendalltau
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import Space as SpaceRow
from db.models import Validation
from fbnet import wire
from fbnet.arch_v2 import ArchV2, ArchV2Error
from fbnet.space import Arch, ArchError
from fbnet.space_v2 import SpaceV2
from profiler_server.auth import Caller, redact, sees_private
from profiler_server.domain.devices import get_device
from profiler_server.domain.paging import id_cursor, paginate
from profiler_server.domain.runs import get_run, target_device
from profiler_server.domain.spaces import ensure_space, resolve_any_space
from profiler_server.errors import Conflict, Invalid

WORST = 5


def _out(v: Validation, device: str, space: str, private: bool = False) -> wire.ValidationOut:
    """The validation as the API shows it; its ``extra`` whole only when ``private`` (the admin, the device)."""
    extra = v.extra or {}
    return wire.ValidationOut(
        id=v.id, device=device, space=space, arch=v.arch, predicted_us=v.predicted_us, measured_us=v.measured_us,
        n=v.n, std_us=v.std_us, table_version=v.table_version, run_id=v.run_id, label=v.label, extra=extra if private else redact(extra),
        error_pct=100.0 * (v.predicted_us - v.measured_us) / v.measured_us, created_at=v.created_at,
    )


def request_sha256(device: str, body: wire.ValidationCreate) -> str:
    """What a repeat of the request must match: the body as stored, for the device it names."""
    blob = json.dumps({**body.model_dump(mode="json", exclude={"device"}), "device": device}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _by_key(session: Session, device_id: int, key: str) -> Validation | None:
    q = select(Validation).where(Validation.device_id == device_id, Validation.idempotency_key == key)
    return session.scalars(q).first()


def _repeat(found: Validation, digest: str, key: str) -> Validation:
    if found.request_sha256 != digest:
        raise Conflict(f"Idempotency-Key {key!r} already stored validation {found.id} with another body; "
                       f"a new validation needs a new key")
    return found


def add_validation(session: Session, caller: Caller, body: wire.ValidationCreate,
                   key: str | None = None) -> tuple[wire.ValidationOut, bool]:
    """Store a validation; returns (it, created). With an idempotency ``key`` the device already used,
    the validation stored then is returned (the same body; another body is a 409), never a second row."""
    device = target_device(session, caller, body.device)
    space = resolve_any_space(body.space)
    check_arch(space, body.arch)
    digest = request_sha256(device.name, body)
    if key is not None and (found := _by_key(session, device.id, key)) is not None:
        return _out(_repeat(found, digest, key), device.name, space.name, private=True), False
    if body.run_id is not None and get_run(session, body.run_id).device_id != device.id:
        raise Invalid(f"run {body.run_id} belongs to another device")
    row = ensure_space(session, space)
    v = Validation(device_id=device.id, space_id=row.id, run_id=body.run_id, arch=list(body.arch),
                   predicted_us=body.predicted_us, measured_us=body.measured_us, n=body.n, std_us=body.std_us,
                   table_version=body.table_version, label=body.label, extra=body.extra,
                   idempotency_key=key, request_sha256=digest if key is not None else None)
    try:
        with session.begin_nested():  # a racing retry with the same key: the loser answers the winner's row
            session.add(v)
    except IntegrityError:
        if key is None or (found := _by_key(session, device.id, key)) is None:
            raise
        return _out(_repeat(found, digest, key), device.name, space.name, private=True), False
    return _out(v, device.name, space.name, private=True), True


def check_arch(space, arch: list[str]) -> None:
    """422 unless ``arch`` is an architecture of ``space``: 22 block names (v1), or a v2 architecture
    text's tokens that fit the v2 space (its layers, widths and resolution)."""
    try:
        if isinstance(space, SpaceV2):
            space.check_arch(ArchV2.parse(",".join(arch)))
        else:
            if len(arch) != 22:
                raise ArchError(f"a v1 architecture has 22 block names, not {len(arch)}")
            Arch(tuple(arch))
    except (ArchError, ArchV2Error) as e:
        raise Invalid(f"arch: {e}") from None


def fidelity_stats(pairs: list[tuple[float, float]]) -> dict:
    """MAPE, the share within ±10 % and Kendall's tau of (predicted, measured) pairs: the validation
    summary's figures (``bench/v2_whole_replay.py`` scores replays with it too)."""
    errs = [abs(100.0 * (p - m) / m) for p, m in pairs]
    tau = None
    if len(pairs) >= 2:
        t = kendalltau([p for p, _ in pairs], [m for _, m in pairs]).statistic
        tau = float(t) if t is not None and math.isfinite(t) else None
    return {"count": len(pairs), "mape": sum(errs) / len(errs) if errs else None,
            "within_10pct": sum(e <= 10.0 for e in errs) / len(errs) if errs else None, "kendall_tau": tau}


def summarize(device: str, space: str, items: list[wire.ValidationOut]) -> wire.ValidationSummary:
    worst = sorted(items, key=lambda v: abs(v.error_pct), reverse=True)[:WORST]
    return wire.ValidationSummary(device=device, space=space, **fidelity_stats([(v.predicted_us, v.measured_us) for v in items]),
                                  worst=worst, validations=items)


def _of(session: Session, device_name: str, space_name: str):
    """The device, the space and the query of the device's validations in it (by id)."""
    device = get_device(session, device_name)
    space = resolve_any_space(space_name)
    q = (select(Validation).join(SpaceRow, SpaceRow.id == Validation.space_id)
         .where(Validation.device_id == device.id, SpaceRow.name == space.name).order_by(Validation.id))
    return device, space, q


def validation_summary(session: Session, device_name: str, space_name: str) -> wire.ValidationSummary:
    """Every validation of the device in the space with their statistics (the plots and pages)."""
    device, space, q = _of(session, device_name, space_name)
    return summarize(device.name, space.name, [_out(v, device.name, space.name) for v in session.scalars(q)])


def validation_page(session: Session, device_name: str, space_name: str,
                    page: tuple[int, str | None, int], caller: Caller | None = None) -> wire.ValidationSummary:
    """The statistics and the worst of every validation of the device in the space (read as three
    numbers a row), and one page (``page``: limit, cursor, byte budget) of the validations themselves."""
    device, space, q = _of(session, device_name, space_name)
    narrow = q.with_only_columns(Validation.id, Validation.predicted_us, Validation.measured_us)
    rows = session.execute(narrow).tuples().all()
    worst_ids = [i for i, p, m in sorted(rows, key=lambda r: abs(r[1] - r[2]) / r[2], reverse=True)[:WORST]]
    private = sees_private(caller, device.id)
    worst = {v.id: _out(v, device.name, space.name, private) for v in session.scalars(q.where(Validation.id.in_(worst_ids)))}

    def fetch(after: int | None, n: int):
        vs = session.scalars((q if after is None else q.where(Validation.id > after)).limit(n))
        return [(v.id, _out(v, device.name, space.name, private)) for v in vs]

    limit, cursor, budget = page
    got = paginate(fetch, limit, budget, id_cursor(cursor))
    return wire.ValidationSummary(device=device.name, space=space.name, **fidelity_stats([(p, m) for _, p, m in rows]),
                                  worst=[worst[i] for i in worst_ids], validations=got.items, next=got.next)
