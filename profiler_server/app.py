"""The FastAPI application: ``create_app(settings)`` wires settings, the database and the routes."""

from __future__ import annotations

import ctypes
import logging
import math
import os
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from db.engine import open_database
from db.generations import GenerationProbe
from db.migrate import upgrade_to_head
from fbnet import wire
from profiler_server import __version__
from profiler_server.config import Settings
from profiler_server.domain.grid import cached_grid_table
from profiler_server.domain.tables import TableCache
from profiler_server.errors import CONFLICT_DETAIL, DomainError, validation_errors
from profiler_server.middleware import BUSY, Guard, busy_response_headers
from profiler_server.plots import PlotCache
from profiler_server.routes import compare, devices, health, plans, plots, runs, spaces, tables, validations
from profiler_server.ui import routes as ui

log = logging.getLogger("profiler_server")


def _json_safe(x):
    """Non-finite floats (a request may carry Infinity/NaN) as strings: the error must still be JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc mallopt parameter


def bound_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
    """Let the worker threads share ``n`` glibc malloc arenas (as ``MALLOC_ARENA_MAX=n`` would) unless the
    environment already says how many. glibc gives each thread that allocates concurrently an arena of
    its own, up to 8 per core, and keeps their fragmented pages: with 16 worker threads that was a slow,
    steady growth of the resident memory under a long mixed load. Called before any worker thread
    exists; a no-op where the C library is not glibc. Returns whether the bound was set."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, n))
    except (OSError, AttributeError):
        return False


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service; the database is migrated to head and opened when the app starts."""
    settings = settings or Settings()
    app = FastAPI(title="fbnet-lut profiler service", version=__version__, lifespan=_lifespan(settings),
                  responses=ERROR_RESPONSES,
                  description="Per-device operator latency tables for hardware-aware NAS (FBNet).")
    app.state.settings = settings
    app.state.table_cache = TableCache(max_runs=settings.table_runs, grid_assembler=cached_grid_table)
    app.state.plot_cache = PlotCache()
    _add_error_handlers(app, settings)
    for r in (health, devices, spaces, runs, plans, tables, compare, validations, plots):
        app.include_router(r.router)
    app.include_router(ui.router)  # the read-only pages (/ and /ui)
    app.add_middleware(Guard, settings=settings)
    return app


ERROR_RESPONSES = {code: {"model": wire.ErrorOut, "description": what} for code, what in (
    (401, "no or an invalid token"), (403, "the token may not do this"), (404, "unknown device, space or run"),
    (409, "conflict with stored data"), (413, "request body too large (FBNET_MAX_BODY_BYTES)"),
    (422, "invalid input; detail names the problem"),
    (503, "database busy or unavailable: retry after the Retry-After header's seconds"))}


def _lifespan(settings: Settings):
    """Open the database (migrated to head) when the app starts; close it when it stops."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        bound_malloc_arenas()
        url = settings.resolved_db_url()
        upgrade_to_head(url)
        # one thread limit for sync routes and run_in_threadpool; the pools are sized to match
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        app.state.plot_slots = anyio.Semaphore(settings.plot_concurrency)
        app.state.db = open_database(url, pool_size=settings.threads, wait_s=settings.db_wait_s,
                                     sqlite_cache_kib=settings.sqlite_cache_kib)
        app.state.generations = GenerationProbe.open(url)
        try:
            yield
        finally:
            if app.state.generations is not None:
                app.state.generations.close()
            app.state.db.dispose()

    return lifespan


def _add_error_handlers(app: FastAPI, settings: Settings) -> None:
    """Every error answers JSON with a ``detail``: domain errors their status, a busy database 503."""

    @app.exception_handler(DomainError)
    async def _domain_error(_: Request, exc: DomainError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _json_safe(jsonable_encoder(validation_errors(exc.errors())))}, status_code=422)

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError):
        log.warning("conflict with stored data (answered 409): %s", exc.orig)
        return JSONResponse({"detail": CONFLICT_DETAIL}, status_code=409)

    async def _db_busy(_: Request, exc: Exception):
        log.error("database busy or down: %s", exc)
        return JSONResponse({"detail": "database busy or unavailable; retry after the Retry-After delay"},
                            status_code=503, headers=busy_response_headers(settings))

    for exc_type in BUSY:
        app.add_exception_handler(exc_type, _db_busy)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)
