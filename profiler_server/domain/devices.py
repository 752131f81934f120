"""Devices and their tokens."""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from db.models import Device, DeviceToken, Run
from db.models import Space as SpaceRow
from fbnet import wire
from profiler_server.auth import Caller, hash_token, new_token, redact, sees_private
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


def rotate_token(session: Session, name: str) -> tuple[Device, str]:
    """Replace every token of the device by a new one (returned once); old tokens stop working at once."""
    device = revoke_tokens(session, name)
    token = new_token()
    session.add(DeviceToken(device_id=device.id, token_sha256=hash_token(token)))
    session.flush()
    return device, token


def revoke_tokens(session: Session, name: str) -> Device:
    """Delete every token of the device: nothing can write to it until the admin rotates a new one."""
    device = get_device(session, name)
    session.execute(delete(DeviceToken).where(DeviceToken.device_id == device.id))
    session.flush()
    return device


def list_devices(session: Session, after: str | None = None, limit: int | None = None) -> list[Device]:
    """The devices by name (``after`` a name, at most ``limit``: a page of ``GET /devices``)."""
    q = select(Device) if after is None else select(Device).where(Device.name > after)
    return list(session.scalars(q.order_by(Device.name).limit(limit)))


def touch(session: Session, device_id: int) -> None:
    """Mark the device's tables as changed (new cache generation)."""
    session.execute(update(Device).where(Device.id == device_id).values(table_gen=Device.table_gen + 1))


def device_spaces(session: Session, device_id: int) -> list[str]:
    q = select(SpaceRow.name).join(Run, Run.space_id == SpaceRow.id).where(Run.device_id == device_id).distinct()
    return sorted(session.scalars(q))


def device_out(device: Device, coverage: dict[str, dict[str, int]] | None = None,
               caller: Caller | None = None) -> wire.DeviceOut:
    """The device as the API shows it; serials and host names in its metadata (at any depth) only to
    the admin and the device's own token."""
    meta = device.meta or {}
    return wire.DeviceOut(
        name=device.name, platform=device.platform, runtime=device.runtime, precision=device.precision,
        model=device.model, soc=device.soc, os=device.os, metadata=meta if sees_private(caller, device.id) else redact(meta),
        created_at=device.created_at, coverage=coverage or {},
    )
