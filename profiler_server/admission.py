"""Admission control: how many requests a process handles at once, and how long one waits for a turn.

Without it an overload queued without bound in front of the worker threads (the database pool matches
the thread count, so its timeout never fired): every request got slower, none was refused. Now at
most ``limit`` requests run at once (``FBNET_MAX_INFLIGHT``), at most as many again wait, first come
first served, for at most ``wait_s`` (``FBNET_ADMISSION_WAIT_S``), and everything beyond is answered
503 with ``Retry-After`` at once. The gate (``middleware.Guard``) takes and gives back the slots.

A refusal must cost far less than a request, since under overload most requests are refused: on one
core at 4x the sustainable rate, refusing through the whole ASGI stack took more of the process than
was left for the requests it admitted. So while the lane is saturated (every slot taken, the wait
queue full) the transport (``transport.HeadTimeoutH11Protocol``) refuses a new GET from its first
bytes, with a canned 503, before parsing it (:func:`saturated`); the waits are plain asyncio futures
with one timer each (an anyio cancel scope per wait cost a fifth of the refusal path).
"""

from __future__ import annotations

import asyncio
from collections import deque

HEALTH_PATH = "/healthz"
# /healthz has a lane of its own: 4 at once (each is one short database round trip); many may wait
# their turn, up to 2 s (waiting costs nothing), so that a monitor or a load balancer polling it is not
# refused over a hiccup of the machine (with the main lane's 0.25 s, wrk's 8 pollers saw a few 503s)
HEALTH_LANE, HEALTH_QUEUE, HEALTH_WAIT_S = 4, 64, 2.0


class Admission:
    """At most ``limit`` requests at once; at most ``queue`` (default ``limit``) more wait, each at most
    ``wait_s`` seconds."""

    def __init__(self, limit: int, wait_s: float, queue: int | None = None):
        self.limit, self.wait_s = limit, wait_s
        self.queue = limit if queue is None else queue
        self._free = limit
        self._waiters: deque[asyncio.Future] = deque()

    def _purge(self) -> None:
        while self._waiters and self._waiters[0].done():  # expired (in order: one wait_s for all) or cancelled
            self._waiters.popleft()

    def saturated(self) -> bool:
        """Every slot taken and the wait queue full: a new request would be refused."""
        self._purge()
        return self._free == 0 and len(self._waiters) >= self.queue

    async def enter(self) -> bool:
        """Take a slot; ``False`` when none came free within ``wait_s`` or the wait queue is full."""
        self._purge()
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        if self.wait_s <= 0 or len(self._waiters) >= self.queue:
            return False
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_later(self.wait_s, _expire, fut)
        try:
            return await fut  # True: a leaving request handed its slot over
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():
                self.leave()  # handed a slot as it was cancelled: pass it on
            raise
        finally:
            timer.cancel()

    def leave(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():  # expired or cancelled ones are skipped
                fut.set_result(True)
                return
        self._free += 1


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(False)


_main: Admission | None = None  # the process's main lane (one service per process), for the transport


def register_main(lane: Admission) -> None:
    global _main
    _main = lane


def saturated() -> bool:
    """Whether the process's main lane would refuse a new request now."""
    return _main is not None and _main.saturated()
