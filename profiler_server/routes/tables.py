from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from fbnet import wire
from profiler_server.auth import require_admin
from profiler_server.deps import CacheDep, CallerDep, ReaderDep, ReadSession, WriteSession
from profiler_server.domain import importers
from profiler_server.domain.devices import get_device
from profiler_server.domain.spaces import resolve_space
from profiler_server.domain.tables import etag_matches

router = APIRouter(tags=["tables"])

SpaceQuery = Annotated[str, Query(description="space name, e.g. fbnet-224 or fbnet-cifar")]


@router.get(
    "/tables/{device}",
    response_model=wire.Table,
    responses={200: {"content": {"text/csv": {}}}, 304: {"description": "not modified (If-None-Match)"}},
)
def get_table(
    device: str,
    space: SpaceQuery,
    session: ReadSession,
    cache: CacheDep,
    _: ReaderDep,
    format: Literal["json", "csv"] = "json",
    if_none_match: Annotated[str | None, Header()] = None,
):
    """The device's latency table of ``space`` (µs). ``ETag`` is the table's version."""
    item = cache.get(session, device, space)
    etag = item.etag if format == "json" else f'"{item.table.version}-csv"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    if format == "csv":
        return Response(item.csv_bytes, media_type="text/csv", headers=headers)
    return Response(item.json_bytes, media_type="application/json", headers=headers)


_IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": True}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


@router.post("/tables/{device}/import", response_model=wire.ImportResult, openapi_extra=_IMPORT_BODY)
async def import_table(
    device: str,
    space: SpaceQuery,
    request: Request,
    session: WriteSession,
    caller: CallerDep,
    format: Literal["hwnasbench", "proxylessnas", "ofa"] = "hwnasbench",
    source: Annotated[str | None, Query(max_length=256, pattern=r"^[^\x00]*$")] = None,
):
    """Load an external table (admin token) as one source of the device's table, mapped onto our op keys."""
    require_admin(caller)
    body = await request.body()

    def work() -> wire.ImportResult:
        sp = resolve_space(space)
        dev = get_device(session, device)
        doc = importers.load_document(body, format)
        result = importers.import_table(session, dev, sp, format, doc, source)
        session.commit()
        return result

    return await run_in_threadpool(work)
