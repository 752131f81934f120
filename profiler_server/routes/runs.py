import logging
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Path, Request, Response

from fbnet import wire
from fbnet.space_v2 import is_v2_space
from profiler_server.deps import CallerDep, ReaderDep, ReadSession, WriteSession
from profiler_server.domain import runs as dom

router = APIRouter(tags=["runs"])
log = logging.getLogger("profiler_server")
RunId = Annotated[int, Path(ge=1, le=wire.MAX_ID)]


@router.post("/runs", status_code=201, response_model=wire.RunOut,
             responses={200: {"model": wire.RunOut, "description": "the run this idempotency key already opened"}})
def create_run(body: wire.RunCreate, session: WriteSession, caller: CallerDep, response: Response):
    """Open a profiling run for the token's device (or ``device``, which the token must be allowed to write).
    With an ``idempotency_key`` the device already used, the run it opened is returned (200)."""
    run, created = dom.create_run(session, caller, body)
    session.commit()
    if not created:
        response.status_code = 200
    return dom.runs_out(session, [run], caller)[0]


@router.get("/runs", response_model=list[wire.RunOut])
def list_runs(session: ReadSession, caller: ReaderDep, device: str | None = None, space: str | None = None):
    """Runs with provenance; serials and host names only for the admin and the device's own token."""
    return dom.runs_out(session, dom.list_runs(session, device, space), caller)


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
def get_measurements(run_id: RunId, session: ReadSession, _: ReaderDep):
    """What a run already holds (the agents' --resume reads the keys)."""
    return dom.run_measurements(session, run_id)


@router.post("/runs/{run_id}/finish", response_model=wire.RunOut)
def finish_run(run_id: RunId, body: wire.RunFinish, session: WriteSession, caller: CallerDep, request: Request,
               background: BackgroundTasks):
    """Close an open run; a finished run of a v2 space also refits the device's grid table, after the
    answer is sent (the next ``GET /tables`` finds the fit made)."""
    run = dom.finish_run(session, caller, run_id, body)
    session.commit()
    if run.status == dom.FINISHED and is_v2_space(run.space.name):
        background.add_task(_refit, request.app.state, run.device.name, run.space.name)
    return dom.runs_out(session, [run], caller)[0]


def _refit(state, device: str, space: str) -> None:
    """Assemble (and so fit) the device's default v2 table into the table cache."""
    try:
        with state.db.read_sessions() as session:
            state.table_cache.get(session, device, space)
    except Exception:  # a refit ahead of time is an optimisation: a GET assembles it anyway
        log.exception("refitting %s / %s after a run failed", device, space)
