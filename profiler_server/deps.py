"""Injected dependencies: settings, DB sessions, the table cache and the caller's identity."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from db.engine import Database
from fbnet.wire import MAX_PAGE_LIMIT, PAGE_LIMIT
from profiler_server.auth import Caller, require_reader
from profiler_server.config import Settings
from profiler_server.domain.tables import TableCache


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_database(request: Request) -> Database:
    return request.app.state.db


async def get_cache(request: Request) -> TableCache:
    return request.app.state.table_cache


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
CacheDep = Annotated[TableCache, Depends(get_cache)]


async def read_session(db: DatabaseDep) -> AsyncIterator[Session]:
    # Creating a session does no I/O (it connects on first use, in the handler's thread); closing
    # returns the connection to the pool, which may talk to the database: off the event loop.
    s = db.read_sessions()
    try:
        yield s
    finally:
        await run_in_threadpool(s.close)


def write_session(db: DatabaseDep) -> Iterator[Session]:
    """A session for one write; handlers commit explicitly, anything not committed is rolled back."""
    with db.write_sessions() as s:
        try:
            yield s
        finally:
            s.rollback()


ReadSession = Annotated[Session, Depends(read_session)]
WriteSession = Annotated[Session, Depends(write_session)]


_bearer = HTTPBearer(auto_error=False, description="the admin's, a device's or the read token")


async def get_caller(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None
) -> Caller:
    """Who is calling: identified once per request by :class:`profiler_server.middleware.Guard`
    (before any body is read); the bearer scheme is declared here for the OpenAPI document."""
    return request.state.caller


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_reader(caller: CallerDep, settings: SettingsDep) -> Caller:
    require_reader(caller, settings)
    return caller


ReaderDep = Annotated[Caller, Depends(get_reader)]


@dataclass(frozen=True)
class PageParams:
    limit: int
    cursor: str | None


async def page_params(  # async: FastAPI would run a plain-def dependency on a worker thread
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_LIMIT, description=(
        f"items per page (default {PAGE_LIMIT}; above {MAX_PAGE_LIMIT}: 422, not clamped)"))] = PAGE_LIMIT,
    cursor: Annotated[str | None, Query(max_length=80, description="the 'next' of the page before")] = None,
) -> PageParams:
    """``?limit=&cursor=`` of every list route (:mod:`profiler_server.domain.paging`)."""
    return PageParams(limit, cursor)


PageDep = Annotated[PageParams, Depends(page_params)]


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", pattern=r"^[A-Za-z0-9._:-]{8,64}$", description=(
    "client-chosen, one per request it may retry: a retry with the same key (and body) answers what the first "
    "try stored (200) instead of storing it again; the same key with another body is refused (409)"))]
