"""Whole-model validations: measured vs table-predicted latency, and their summary."""

from __future__ import annotations

import math

from scipy.stats import kendalltau
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Space as SpaceRow
from db.models import Validation
from fbnet import wire
from fbnet.arch_v2 import ArchV2, ArchV2Error
from fbnet.space import Arch, ArchError
from fbnet.space_v2 import SpaceV2
from profiler_server.auth import Caller
from profiler_server.domain.devices import get_device
from profiler_server.domain.runs import get_run, target_device
from profiler_server.domain.spaces import ensure_space, resolve_any_space
from profiler_server.errors import Invalid

WORST = 5


def _out(v: Validation, device: str, space: str) -> wire.ValidationOut:
    return wire.ValidationOut(
        id=v.id, device=device, space=space, arch=v.arch, predicted_us=v.predicted_us, measured_us=v.measured_us,
        n=v.n, std_us=v.std_us, table_version=v.table_version, run_id=v.run_id, label=v.label, extra=v.extra or {},
        error_pct=100.0 * (v.predicted_us - v.measured_us) / v.measured_us, created_at=v.created_at,
    )


def add_validation(session: Session, caller: Caller, body: wire.ValidationCreate) -> wire.ValidationOut:
    device = target_device(session, caller, body.device)
    space = resolve_any_space(body.space)
    check_arch(space, body.arch)
    if body.run_id is not None and get_run(session, body.run_id).device_id != device.id:
        raise Invalid(f"run {body.run_id} belongs to another device")
    row = ensure_space(session, space)
    v = Validation(device_id=device.id, space_id=row.id, run_id=body.run_id, arch=list(body.arch),
                   predicted_us=body.predicted_us, measured_us=body.measured_us, n=body.n, std_us=body.std_us,
                   table_version=body.table_version, label=body.label, extra=body.extra)
    session.add(v)
    session.flush()
    return _out(v, device.name, space.name)


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


def summarize(device: str, space: str, items: list[wire.ValidationOut]) -> wire.ValidationSummary:
    errs = [abs(v.error_pct) for v in items]
    mape = sum(errs) / len(errs) if errs else None
    within = sum(e <= 10.0 for e in errs) / len(errs) if errs else None
    tau = None
    if len(items) >= 2:
        t = kendalltau([v.predicted_us for v in items], [v.measured_us for v in items]).statistic
        tau = float(t) if t is not None and math.isfinite(t) else None
    worst = sorted(items, key=lambda v: abs(v.error_pct), reverse=True)[:WORST]
    return wire.ValidationSummary(device=device, space=space, count=len(items), mape=mape,
                                     within_10pct=within, kendall_tau=tau, worst=worst, validations=items)


def validation_summary(session: Session, device_name: str, space_name: str) -> wire.ValidationSummary:
    device = get_device(session, device_name)
    space = resolve_any_space(space_name)
    q = (select(Validation).join(SpaceRow, SpaceRow.id == Validation.space_id)
         .where(Validation.device_id == device.id, SpaceRow.name == space.name).order_by(Validation.id))
    items = [_out(v, device.name, space.name) for v in session.scalars(q)]
    return summarize(device.name, space.name, items)
