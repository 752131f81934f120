import logging
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Path, Query, Request, Response

from fbnet import wire
from fbnet.space_v2 import is_v2_space
from profiler_server.deps import CallerDep, IdempotencyKey, PageDep, ReaderDep, ReadSession, SettingsDep, WriteSession
from profiler_server.domain import runs as dom
from profiler_server.errors import Invalid

router = APIRouter(tags=["runs"])
log = logging.getLogger("profiler_server")
RunId = Annotated[int, Path(ge=1, le=wire.MAX_ID)]


@router.post("/runs", status_code=201, response_model=wire.RunOut,
             responses={200: {"model": wire.RunOut, "description": "the run this idempotency key already opened"}})
def create_run(body: wire.RunCreate, session: WriteSession, caller: CallerDep, response: Response,
               idempotency_key: IdempotencyKey = None):
    """Open a profiling run for the token's device (or ``device``, which the token must be allowed to write).
    With an ``idempotency_key`` (in the body, or the ``Idempotency-Key`` header) the device already used,
    the run it opened is returned (200)."""
    if idempotency_key is not None:
        if body.idempotency_key not in (None, idempotency_key):
            raise Invalid("the Idempotency-Key header and the body's idempotency_key differ; send one of them")
        body = body.model_copy(update={"idempotency_key": idempotency_key})
    run, created = dom.create_run(session, caller, body)
    session.commit()
    if not created:
        response.status_code = 200
    return dom.runs_out(session, [run], caller)[0]


@router.get("/runs", response_model=wire.RunPage)
def list_runs(session: ReadSession, caller: ReaderDep, settings: SettingsDep, page: PageDep,
              device: str | None = None, space: str | None = None):
    """Runs with provenance, oldest first, one page at a time (``next``: the cursor of the next page);
    serials and host names only for the admin and the device's own token."""
    got = dom.runs_page(session, caller, (device, space), page.limit, page.cursor, settings.page_bytes)
    return wire.RunPage(runs=got.items, next=got.next)


@router.get("/runs/{run_id}", response_model=wire.RunOut)
def get_run(run_id: RunId, session: ReadSession, caller: ReaderDep):
    return dom.runs_out(session, [dom.get_run(session, run_id)], caller)[0]


@router.post("/runs/{run_id}/measurements", response_model=wire.BatchResult)
def add_measurements(run_id: RunId, batch: wire.MeasurementBatch, session: WriteSession, caller: CallerDep):
    """Store a batch of per-op statistics, all or nothing; an op already in the run counts as duplicate."""
    result = dom.add_measurements(session, caller, run_id, batch)
    session.commit()
    return result


@router.get("/runs/{run_id}/measurements", response_model=wire.RunMeasurements)
def get_measurements(run_id: RunId, session: ReadSession, _: ReaderDep, settings: SettingsDep, page: PageDep,
                     samples: Annotated[bool, Query(description="include each op's raw samples")] = False):
    """What a run holds, one page at a time in the order it was stored (``next``: the cursor of the next
    page); the raw samples only with ``samples=true`` (a page ends early at the byte cap)."""
    return dom.run_measurements(session, run_id, (page.limit, page.cursor, settings.page_bytes), samples)


@router.post("/runs/{run_id}/finish", response_model=wire.RunOut)
def finish_run(run_id: RunId, body: wire.RunFinish, session: WriteSession, caller: CallerDep, request: Request,
               background: BackgroundTasks):
    """Close an open run; a finished run of a v2 space also refits the device's grid table, after the
    answer is sent (the next ``GET /tables`` finds the fit made)."""
    run = dom.finish_run(session, caller, run_id, body)
    session.commit()
    if run.status == dom.FINISHED and is_v2_space(run.space.name):
        background.add_task(_refit, request.app.state, run.device.name, run.space.name)
    out = dom.runs_out(session, [run], caller)[0]
    # the session lives until the background refit is done: end the transaction the read above opened
    # (on SQLite a writer's, BEGIN IMMEDIATE), so that the refit (which stores the fit) and other writers
    # do not wait on it
    session.rollback()
    return out


def _refit(state, device: str, space: str) -> None:
    """Assemble (and so fit) the device's default v2 table into the table cache."""
    try:
        with state.db.read_sessions() as session:
            state.table_cache.get(session, device, space)
    except Exception:  # a refit ahead of time is an optimisation: a GET assembles it anyway
        log.exception("refitting %s / %s after a run failed", device, space)
