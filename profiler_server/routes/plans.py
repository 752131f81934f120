"""``POST /plans/{device}``: the next v2 grid ops an agent should measure (domain.planning)."""

from fastapi import APIRouter

from fbnet import wire
from profiler_server.deps import CallerDep, WriteSession
from profiler_server.domain import planning

router = APIRouter(tags=["plans"])


@router.post("/plans/{device}", response_model=wire.PlanOut)
def next_batch(device: str, body: wire.PlanRequest, session: WriteSession, caller: CallerDep):
    """The ops of a v2 space (``fbnetv2-cifar``) the device should measure now in the configuration of
    ``body`` (its agent token or the admin's): the rest of the current batch if it is not measured yet
    (finished runs of the configuration, the open run ``run_id``, or reported ``failed``), else a new
    batch: the space-filling design first, then adaptive rounds where the model is least sure.
    Measurements go through ``POST /runs`` (space ``fbnetv2-cifar``, the same configuration) and
    ``POST /runs/{id}/measurements``; a finished run refits the table. ``done`` says when to stop
    (``budget``, ``goal`` or ``exhausted``)."""
    out = planning.next_batch(session, caller, device, body)
    session.commit()
    return out
