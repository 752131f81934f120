"""Tokens and callers: random tokens, stored as SHA-256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Device, DeviceToken
from profiler_server.config import Settings
from profiler_server.errors import DomainError, Forbidden, Unauthorized
from profiler_server.privacy import public


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


# provenance that identifies a unit or a person (serials, UDIDs, host and device names): the device's
# page lists these apart for the callers that see them. What others see is decided by an allow-list
# (profiler_server.privacy), not by this list.
PRIVATE_EXTRA = frozenset({"device_name", "serial", "udid", "hostname", "host"})


def redact(value):
    """``value`` as anonymous readers and other devices see it: only the public keys, at any depth."""
    return public(value)


def sees_private(caller: Caller | None, device_id: int) -> bool:
    """Whether the caller may see a device's serials and host names (the admin, or the device's own token)."""
    return caller is not None and (caller.is_admin or (caller.kind == "device" and caller.device_id == device_id))


class TooManyFailures(DomainError):
    status_code = 429

    def __init__(self, retry_after_s: int):
        super().__init__(f"too many invalid tokens from this address; retry after {retry_after_s} s")
        self.headers = {"Retry-After": str(retry_after_s)}


class FailedTokens:
    """Invalid tokens per client address in a sliding window: once an address has ``limit`` failures
    within ``window_s``, its requests with a token are refused (429 + Retry-After) without a lookup
    until the oldest failure leaves the window. In memory, per process, and bounded: at most
    ``max_clients`` addresses (the least recently failed are forgotten) of ``limit`` timestamps each."""

    def __init__(self, limit: int, window_s: float, max_clients: int = 4096):
        self.limit, self.window_s, self.max_clients = limit, window_s, max_clients
        self._fails: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, client: str, now: float | None = None) -> int | None:
        """Seconds until ``client`` may try a token again; ``None`` when it may now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            fails = self._fails.get(client)
            if fails is None or len(fails) < self.limit:
                return None
            wait = fails[0] + self.window_s - now
            if wait <= 0:
                return None
            return max(1, math.ceil(wait))

    def failed(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            fails = self._fails.pop(client, None) or deque(maxlen=self.limit)
            while fails and fails[0] <= now - self.window_s:
                fails.popleft()
            fails.append(now)
            self._fails[client] = fails  # the most recent at the end
            while len(self._fails) > self.max_clients:
                self._fails.popitem(last=False)

    async def identify(self, client: str, lookup: Callable[[], Awaitable[Caller]]) -> Caller:
        """``await lookup()`` (which identifies the caller of a request with a token) unless ``client``
        is over the limit (:class:`TooManyFailures`); an invalid token counts against it."""
        if (wait := self.retry_after(client)) is not None:
            raise TooManyFailures(wait)
        try:
            return await lookup()
        except Unauthorized:
            self.failed(client)
            raise
