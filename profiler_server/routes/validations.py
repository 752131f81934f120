from fastapi import APIRouter

from fbnet import wire
from profiler_server.deps import CallerDep, ReaderDep, ReadSession, WriteSession
from profiler_server.domain import validations as dom

router = APIRouter(tags=["validations"])


@router.post("/validations", status_code=201, response_model=wire.ValidationOut)
def add_validation(body: wire.ValidationCreate, session: WriteSession, caller: CallerDep):
    """Record a whole model measured on the device against the table's prediction (device token)."""
    out = dom.add_validation(session, caller, body)
    session.commit()
    return out


@router.get("/validations/{device}", response_model=wire.ValidationSummary)
def get_validations(device: str, space: str, session: ReadSession, _: ReaderDep):
    """All validations of the device in ``space`` with MAPE, share within ±10% and Kendall tau."""
    return dom.validation_summary(session, device, space)
