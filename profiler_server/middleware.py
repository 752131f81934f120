"""The gate in front of every route (a pure ASGI middleware), so that hostile input costs nothing.

For every HTTP request, before any route runs or any body is parsed:

1. the caller is identified from ``Authorization: Bearer`` (one indexed lookup; 401 for a bad token)
   and handed to the routes in ``scope["state"]["caller"]``;
2. a write (POST, PUT, PATCH, DELETE) without a token is refused (401) without reading its body:
   every write route needs the admin's or a device's token;
3. a body announced (``Content-Length``) or streamed beyond ``max_body_bytes`` is refused (413);
   the body is read here, counted chunk by chunk, and replayed to the route.

A database that is busy or down answers 503 with ``Retry-After`` (never 500).

Before all of that, admission (``admission.py``): at most ``FBNET_MAX_INFLIGHT`` requests are handled
at once per process, at most as many wait, each at most ``FBNET_ADMISSION_WAIT_S`` for a slot; beyond
that a request is answered 503 with ``Retry-After`` at once, without touching a worker thread or the
database. ``/healthz`` has a small lane of its own, so that a health check is answered while the main
lane is full and a flood of health checks cannot take the slots of real requests.
"""

from __future__ import annotations

import json
import logging

import anyio
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from profiler_server.admission import HEALTH_LANE, HEALTH_PATH, HEALTH_QUEUE, HEALTH_WAIT_S, Admission, register_main
from profiler_server.auth import ANONYMOUS, FailedTokens, identify
from profiler_server.config import Settings
from profiler_server.errors import DomainError

log = logging.getLogger("profiler_server")
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BUSY = (OperationalError, PoolTimeout)


def busy_response_headers(settings: Settings) -> dict[str, str]:
    return {"Retry-After": str(settings.retry_after_s)}


async def send_json(send: Send, status: int, detail, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if status in (401, 408, 413) and "Connection" not in (headers or {}):
        raw.append((b"connection", b"close"))  # the unread body is not worth keeping the connection
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class _Refused(Exception):
    """A request answered here, before any route: status, detail, response headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        self.status, self.detail, self.headers = status, detail, headers


class Guard:
    """The gate: identify the caller, refuse anonymous writes and oversized bodies, replay the body."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings
        self.admission = Admission(settings.max_inflight, settings.admission_wait_s)
        register_main(self.admission)  # the transport refuses early while it is saturated
        self.health_lane = Admission(HEALTH_LANE, max(HEALTH_WAIT_S, settings.admission_wait_s), HEALTH_QUEUE)
        self.failed_tokens = FailedTokens(settings.auth_fail_limit, settings.auth_fail_window_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lane = self.health_lane if scope["path"] == HEALTH_PATH else self.admission
        if not await lane.enter():
            headers = busy_response_headers(self.settings)
            if scope["method"] in WRITES:
                headers["Connection"] = "close"  # its body is not read
            await send_json(send, 503, f"overloaded: more than {lane.limit} requests in progress; retry after "
                                       "the Retry-After delay", headers)
            return
        try:
            await self._guarded(scope, receive, send)
        finally:
            lane.leave()

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        try:
            caller = await self._identify(scope, headers.get(b"authorization", b"").decode("latin-1"))
            scope.setdefault("state", {})["caller"] = caller
            if scope["method"] in WRITES and caller is ANONYMOUS:
                raise _Refused(401, f"{scope['method']} needs a token (Authorization: Bearer <token>)",
                               {"WWW-Authenticate": "Bearer"})
            self._check_declared_length(headers.get(b"content-length"))
            if scope["method"] not in WRITES:
                await self.app(scope, receive, send)
                return
            body = await self._read_body(receive)
        except _Refused as r:
            await send_json(send, r.status, r.detail, r.headers)
            return
        if body is not None:
            await self.app(scope, _replay(body, receive), send)

    async def _identify(self, scope: Scope, authorization: str):
        """The caller behind ``Authorization`` (one indexed lookup in a worker thread)."""
        if not authorization:
            return ANONYMOUS
        db = scope["app"].state.db

        def lookup():
            with db.read_sessions() as s:
                return identify(s, self.settings, authorization)

        try:
            client = (scope.get("client") or ("unknown",))[0]
            return await self.failed_tokens.identify(client, lambda: run_in_threadpool(lookup))
        except DomainError as e:
            headers = {"WWW-Authenticate": "Bearer"} if e.status_code == 401 else getattr(e, "headers", None)
            raise _Refused(e.status_code, e.detail, headers) from None
        except BUSY as e:
            log.error("database busy or down: %s", e)
            raise _Refused(503, "database busy or unavailable; retry after the Retry-After delay",
                           busy_response_headers(self.settings)) from None

    def _check_declared_length(self, declared: bytes | None) -> None:
        if declared is None:
            return
        try:
            n = int(declared)
        except ValueError:
            raise _Refused(400, "invalid Content-Length") from None
        if n > self.settings.max_body_bytes:
            raise _Refused(413, f"request body of {n} bytes exceeds the limit of {self.settings.max_body_bytes} bytes")

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, counted chunk by chunk; ``None`` when the client went away."""
        limit = self.settings.max_body_bytes
        chunks, total = [], 0
        with anyio.move_on_after(self.settings.body_timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > limit:
                    raise _Refused(413, f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        raise _Refused(408, f"request body not received within {self.settings.body_timeout_s:g} s")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the already-read body once, then defers to the real one."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
