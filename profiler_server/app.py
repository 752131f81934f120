"""The FastAPI application: ``create_app(settings)`` wires settings, the database and the routes."""

from __future__ import annotations

import logging
import math
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, OperationalError

from db.engine import open_database
from db.migrate import upgrade_to_head
from fbnet import wire
from profiler_server import __version__
from profiler_server.config import Settings
from profiler_server.domain.tables import TableCache
from profiler_server.errors import DomainError
from profiler_server.routes import compare, devices, health, plots, runs, spaces, tables, validations

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


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service; the database is migrated to head and opened when the app starts."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        url = settings.resolved_db_url()
        upgrade_to_head(url)
        app.state.db = open_database(url)
        try:
            yield
        finally:
            app.state.db.dispose()

    errors = {code: {"model": wire.ErrorOut, "description": what} for code, what in (
        (401, "no or an invalid token"), (403, "the token may not do this"), (404, "unknown device, space or run"),
        (409, "conflict with stored data"), (422, "invalid input; detail names the problem"))}
    app = FastAPI(title="fbnet-lut profiler service", version=__version__, lifespan=lifespan, responses=errors,
                  description="Per-device operator latency tables for hardware-aware NAS (FBNet).")
    app.state.settings = settings
    app.state.table_cache = TableCache()

    @app.exception_handler(DomainError)
    async def _domain_error(_: Request, exc: DomainError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError):
        return JSONResponse({"detail": f"conflict with stored data: {exc.orig}"}, status_code=409)

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError):
        log.error("database error: %s", exc)
        return JSONResponse({"detail": "database unavailable"}, status_code=503)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    for r in (health, devices, spaces, runs, tables, compare, validations, plots):
        app.include_router(r.router)
    return app
