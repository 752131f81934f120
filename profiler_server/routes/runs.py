from typing import Annotated

from fastapi import APIRouter, Path

from fbnet import wire
from profiler_server.deps import CallerDep, ReaderDep, ReadSession, WriteSession
from profiler_server.domain import runs as dom

router = APIRouter(tags=["runs"])
RunId = Annotated[int, Path(ge=1, le=wire.MAX_ID)]


@router.post("/runs", status_code=201, response_model=wire.RunOut)
def create_run(body: wire.RunCreate, session: WriteSession, caller: CallerDep):
    """Open a profiling run for the token's device (or ``device``, which the token must be allowed to write)."""
    run = dom.create_run(session, caller, body)
    session.commit()
    return dom.run_out(run)


@router.get("/runs", response_model=list[wire.RunOut])
def list_runs(session: ReadSession, _: ReaderDep, device: str | None = None, space: str | None = None):
    return dom.runs_out(session, dom.list_runs(session, device, space))


@router.get("/runs/{run_id}", response_model=wire.RunOut)
def get_run(run_id: RunId, session: ReadSession, _: ReaderDep):
    return dom.runs_out(session, [dom.get_run(session, run_id)])[0]


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
def finish_run(run_id: RunId, body: wire.RunFinish, session: WriteSession, caller: CallerDep):
    run = dom.finish_run(session, caller, run_id, body)
    session.commit()
    return dom.runs_out(session, [run])[0]
