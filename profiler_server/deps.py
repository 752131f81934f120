"""Injected dependencies: settings, DB sessions, the table cache and the caller's identity."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from db.engine import Database
from profiler_server.auth import Caller, identify, require_reader
from profiler_server.config import Settings
from profiler_server.domain.tables import TableCache


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_database(request: Request) -> Database:
    return request.app.state.db


def get_cache(request: Request) -> TableCache:
    return request.app.state.table_cache


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
CacheDep = Annotated[TableCache, Depends(get_cache)]


def read_session(db: DatabaseDep) -> Iterator[Session]:
    with db.read_sessions() as s:
        yield s


def write_session(db: DatabaseDep) -> Iterator[Session]:
    """A session for one write; handlers commit explicitly, anything not committed is rolled back."""
    with db.write_sessions() as s:
        try:
            yield s
        finally:
            s.rollback()


ReadSession = Annotated[Session, Depends(read_session)]
WriteSession = Annotated[Session, Depends(write_session)]


def get_caller(
    db: DatabaseDep,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(description="Bearer <token>")] = None,
) -> Caller:
    with db.read_sessions() as s:
        return identify(s, settings, authorization)


CallerDep = Annotated[Caller, Depends(get_caller)]


def get_reader(caller: CallerDep, settings: SettingsDep) -> Caller:
    require_reader(caller, settings)
    return caller


ReaderDep = Annotated[Caller, Depends(get_reader)]
