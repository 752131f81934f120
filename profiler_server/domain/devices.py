"""Devices and their tokens."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import Device, DeviceToken, Run
from db.models import Space as SpaceRow
from fbnet import wire
from profiler_server.auth import hash_token, new_token
from profiler_server.errors import Conflict, NotFound


def create_device(session: Session, body: wire.DeviceCreate) -> tuple[Device, str]:
    """Register a device; returns it with its agent token (the only time the token is seen)."""
    if session.scalars(select(Device.id).where(Device.name == body.name)).first() is not None:
        raise Conflict(f"device {body.name!r} already exists")
    fields = body.model_dump(exclude={"metadata"})
    device = Device(**fields, meta=body.metadata, table_gen=0)
    token = new_token()
    device.tokens.append(DeviceToken(token_sha256=hash_token(token)))
    session.add(device)
    session.flush()
    return device, token


def get_device(session: Session, name: str) -> Device:
    device = session.scalars(select(Device).where(Device.name == name)).first()
    if device is None:
        raise NotFound(f"unknown device {name!r}")
    return device


def list_devices(session: Session) -> list[Device]:
    return list(session.scalars(select(Device).order_by(Device.name)))


def touch(session: Session, device_id: int) -> None:
    """Mark the device's tables as changed (new cache generation)."""
    session.execute(update(Device).where(Device.id == device_id).values(table_gen=Device.table_gen + 1))


def device_spaces(session: Session, device_id: int) -> list[str]:
    q = select(SpaceRow.name).join(Run, Run.space_id == SpaceRow.id).where(Run.device_id == device_id).distinct()
    return sorted(session.scalars(q))


def device_out(device: Device, coverage: dict[str, dict[str, int]] | None = None) -> wire.DeviceOut:
    return wire.DeviceOut(
        name=device.name, platform=device.platform, runtime=device.runtime, precision=device.precision,
        model=device.model, soc=device.soc, os=device.os, metadata=device.meta or {},
        created_at=device.created_at, coverage=coverage or {},
    )
