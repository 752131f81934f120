"""What uvicorn is told about connections: a request-head timeout (uvicorn has none) and its own limits.

uvicorn closes a connection that idles between requests after ``timeout_keep_alive``, but not one that
has begun a request and never finishes its head: a client that sends ``GET / HTTP/1.1\\r\\nHost: x\\r\\n``
and then trickles a byte now and then, or nothing at all (slowloris), was held forever, and 300 of
them cost 300 sockets and their buffers for as long as the client liked. ``HeadTimeoutH11Protocol``
is uvicorn's h11 protocol plus one timer: it runs from the moment a connection opens, or from the
first byte of the next request on a kept-alive connection, until the request head (request line and
every header) has arrived; when it fires first the connection is answered ``408`` and closed. A body
is not covered here: the gate (``middleware.Guard``) reads bodies under a bound of its own.

The same protocol refuses a new GET (not ``/healthz``) from its first bytes while admission is
saturated (``admission.saturated``): a canned 503 with ``Retry-After``, and the connection closed,
without parsing the request or creating its ASGI task. Under a flood most requests are refused, and
this refusal costs a small part of one that goes through the whole stack.
"""

from __future__ import annotations

import asyncio
from functools import cache

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from profiler_server import admission
from profiler_server.config import Settings

SPARED = b"GET " + admission.HEALTH_PATH.encode()  # health checks have a lane of their own
_TIMEOUT_BODY = b"request head not complete in time\n"
REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                   b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


@cache
def _settings() -> Settings:
    """The settings, read once per process: the protocol is built by uvicorn, per connection, from
    uvicorn's own config, in worker processes that only inherit the environment."""
    return Settings()


@cache
def _overloaded(keep_alive: bool) -> bytes:
    body = b'{"detail":"overloaded: retry after the Retry-After delay"}'
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: %d\r\n"
            b"content-length: %d\r\n%s\r\n%s" % (_settings().retry_after_s, len(body),
                                                   b"" if keep_alive else b"connection: close\r\n", body))


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head (FBNET_HEADER_TIMEOUT_S)."""

    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:  # a new request begins
            if data.startswith(b"GET /") and not data.startswith(SPARED) and admission.saturated():
                self._refuse(data)
                return
            if self._head_timer is None:
                self._arm_head_timer()  # the next request on a kept-alive connection
        self._head_bytes += len(data)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is parsed: the request runs, no deadline
            self._cancel_head_timer()
            self._head_bytes = 0

    def _refuse(self, data: bytes) -> None:
        """503 without parsing. One whole GET head and nothing else (the usual case): the connection
        stays open for the next request (reconnecting costs the process more than the refusal);
        anything else (a head in pieces, pipelined requests): closed."""
        whole = data.endswith(b"\r\n\r\n") and data.count(b"\r\n\r\n") == 1
        self.transport.write(_overloaded(whole))
        if whole:
            self._arm_head_timer()  # the next request's deadline (and an idle connection's)
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(_settings().header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self._head_bytes:  # a client that sent part of a request is told why; an idle one just closed
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()


def uvicorn_limits(settings: Settings) -> dict:
    """The keyword arguments of ``uvicorn.Config``/``uvicorn.run`` that bound connections."""
    return {"http": HeadTimeoutH11Protocol, "limit_concurrency": settings.max_connections,
            "backlog": settings.backlog, "timeout_keep_alive": settings.keep_alive_s}
