import inspect
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from fbnet import wire
from fbnet.configuration import Precision, Selector
from profiler_server.auth import require_admin
from profiler_server.deps import CallerDep, ReaderDep, ReadSession, WriteSession
from profiler_server.domain import importers
from profiler_server.domain.devices import get_device
from profiler_server.domain.spaces import resolve_any_space, resolve_v1_space
from profiler_server.domain.tables import configurations, etag_matches
from profiler_server.errors import Conflict

router = APIRouter(tags=["tables"])

SpaceQuery = Annotated[str, Query(description="space name, e.g. fbnet-224, fbnet-cifar or fbnetv2-cifar")]
MeasuredOnly = Annotated[bool, Query(description=(
    "refuse (409) a v2 table with fitted entries; v1 tables are always measured"))]


async def selector(  # async: FastAPI would run a plain-def dependency on a worker thread
    precision: Annotated[Precision | None, Query(description="fp32, fp16 or int8")] = None,
    threads: Annotated[int | None, Query(ge=1, le=256)] = None,
    cpu_mask: Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00]*$")] = None,
    compute_units: Annotated[str | None, Query(max_length=32, pattern=r"^[^\x00]*$")] = None,
    runtime_version: Annotated[str | None, Query(max_length=64, pattern=r"^[^\x00]*$")] = None,
    include_unstable: Annotated[bool, Query(description="also use runs marked unstable")] = False,
) -> Selector:
    """The configuration a reader asks for; what is left out picks the newest complete one."""
    return Selector(precision=precision, threads=threads, cpu_mask=cpu_mask, compute_units=compute_units,
                    runtime_version=runtime_version, include_unstable=include_unstable)


SelectorDep = Annotated[Selector, Depends(selector)]


def prefixed_selector(prefix: str):
    """The same selector under prefixed query names (``a_precision``, ...), for routes that take two."""
    params = [p.replace(name=prefix + p.name, kind=inspect.Parameter.KEYWORD_ONLY)
              for p in inspect.signature(selector).parameters.values()]

    async def dep(**kw) -> Selector:
        return await selector(**{k.removeprefix(prefix): v for k, v in kw.items()})

    dep.__signature__ = inspect.Signature(params, return_annotation=Selector)
    return dep


@router.get(
    "/tables/{device}",
    response_model=wire.Table,
    responses={200: {"content": {"text/csv": {}}}, 304: {"description": "not modified (If-None-Match)"}},
)
async def get_table(
    device: str,
    space: SpaceQuery,
    request: Request,
    _: ReaderDep,
    sel: SelectorDep,
    format: Literal["json", "csv"] = "json",
    if_none_match: Annotated[str | None, Header()] = None,
    measured_only: MeasuredOnly = False,
):
    """The device's latency table of ``space`` (µs) in ONE configuration (finished runs only); the
    selectors pick it, unspecified ones the newest complete configuration. ``ETag`` is the table's
    version (it covers the configuration). A v2 space (``fbnetv2-*``) answers a ``GridTable``: every
    grid op in columns, each marked ``measured``, ``fitted``, ``identity`` or ``missing``, with the
    model's held-out error (``model.heldout``)."""
    item = None
    # the hot path, on the event loop: the device's current generation (SQLite), then the cache (app
    # state read directly: every injected dependency costs the hot path measurably)
    state = request.app.state
    db, cache, probe = state.db, state.table_cache, state.generations
    if probe is not None and (gen := probe.generation(device)) is not None:
        item = cache.peek(gen[0], gen[1], space, sel)
    if item is None:  # a miss, or PostgreSQL: one thread hop, in which the session opens, checks and closes

        def lookup():
            with db.read_sessions() as session:
                return cache.get(session, device, space, sel)

        item = await run_in_threadpool(lookup)
    if measured_only and isinstance(item.table, wire.GridTable):
        refuse_fitted(item.table)
    etag = item.etag if format == "json" else f'"{item.table.version}-csv"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    if format == "csv":
        return Response(item.csv_bytes, media_type="text/csv", headers=headers)
    return Response(item.json_bytes, media_type="application/json", headers=headers)


def refuse_fitted(table: wire.GridTable) -> None:
    """409 when ``table`` serves fitted entries (``measured_only=true``)."""
    n = table.counts.get("fitted", 0)
    if n:
        h = table.model.heldout if table.model else None
        err = f" (held-out MAPE {h.mape:.1f} % over {h.n} ops)" if h and h.mape is not None else ""
        raise Conflict(f"{n} of {len(table.columns.key)} entries of {table.space} on {table.device} are fitted, not "
                       f"measured{err}; measured_only=true refuses them: drop it to take them marked source "
                       f"'fitted', or measure them (POST /plans/{table.device})")


@router.get("/tables/{device}/configurations", response_model=list[wire.ConfigurationOut])
def list_configurations(device: str, space: SpaceQuery, session: ReadSession, _: ReaderDep,
                        include_unstable: bool = False):
    """The device's configurations of ``space`` (finished runs), oldest first, with coverage; ``default``
    marks the one ``GET /tables/{device}`` serves without selectors."""
    return configurations(session, get_device(session, device), resolve_any_space(space),
                          include_unstable=include_unstable)


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
    precision: Annotated[Precision | None, Query(description="the table's precision [default: the device's]")] = None,
):
    """Load an external table (admin token) as one source of the device's table, mapped onto our op keys."""
    require_admin(caller)
    body = await request.body()

    def work() -> wire.ImportResult:
        sp = resolve_v1_space(space)
        dev = get_device(session, device)
        doc = importers.load_document(body, format)
        result = importers.import_table(session, dev, sp, format, doc, source, precision)
        session.commit()
        return result

    return await run_in_threadpool(work)
