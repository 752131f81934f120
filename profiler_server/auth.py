"""Tokens and callers: random tokens, stored as SHA-256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Device, DeviceToken
from profiler_server.config import Settings
from profiler_server.errors import Forbidden, Unauthorized


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    kind: Literal["anonymous", "reader", "admin", "device"]
    device_id: int | None = None
    device_name: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"


ANONYMOUS = Caller("anonymous")


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def identify(session: Session, settings: Settings, authorization: str | None) -> Caller:
    """The caller behind an ``Authorization: Bearer <token>`` header (401 for a bad token)."""
    if not authorization:
        return ANONYMOUS
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization header must be 'Bearer <token>'")
    if settings.admin_token and _same(token, settings.admin_token.get_secret_value()):
        return Caller("admin")
    if settings.read_token and _same(token, settings.read_token.get_secret_value()):
        return Caller("reader")
    digest = hash_token(token)
    row = session.execute(
        select(DeviceToken.token_sha256, Device.id, Device.name)
        .join(Device, Device.id == DeviceToken.device_id)
        .where(DeviceToken.token_sha256 == digest)
    ).first()
    if row is None or not _same(row[0], digest):
        raise Unauthorized("invalid token")
    return Caller("device", device_id=row[1], device_name=row[2])


def require_admin(caller: Caller) -> None:
    if caller.kind == "anonymous":
        raise Unauthorized("this needs the admin token (Authorization: Bearer <token>)")
    if not caller.is_admin:
        raise Forbidden("this needs the admin token")


def require_writer(caller: Caller, device_name: str) -> None:
    """The admin, or the token of ``device_name`` itself."""
    if caller.kind == "anonymous":
        raise Unauthorized(f"writing to device {device_name!r} needs its token (Authorization: Bearer <token>)")
    if caller.is_admin or (caller.kind == "device" and caller.device_name == device_name):
        return
    raise Forbidden(f"this token may not write to device {device_name!r}")


def require_reader(caller: Caller, settings: Settings) -> None:
    if settings.read_token is None or caller.kind != "anonymous":
        return
    raise Unauthorized("this server requires a token to read (Authorization: Bearer <token>)")


# provenance that identifies a unit or a person (serials, UDIDs, host and device names): shown
# only to the admin and to the device's own token
PRIVATE_EXTRA = frozenset({"device_name", "serial", "udid", "hostname", "host"})


def redact(value):
    """``value`` without private keys at any depth (a serial nested in ``{"adb": {...}}`` too)."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items() if k not in PRIVATE_EXTRA}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def sees_private(caller: Caller | None, device_id: int) -> bool:
    """Whether the caller may see a device's serials and host names (the admin, or the device's own token)."""
    return caller is not None and (caller.is_admin or (caller.kind == "device" and caller.device_id == device_id))
