from fastapi import APIRouter, Response

from fbnet import wire
from profiler_server.deps import CallerDep, IdempotencyKey, PageDep, ReaderDep, ReadSession, SettingsDep, WriteSession
from profiler_server.domain import validations as dom

router = APIRouter(tags=["validations"])


@router.post("/validations", status_code=201, response_model=wire.ValidationOut,
             responses={200: {"model": wire.ValidationOut, "description": "the validation this key already stored"}})
def add_validation(body: wire.ValidationCreate, session: WriteSession, caller: CallerDep, response: Response,
                   idempotency_key: IdempotencyKey = None):
    """Record a whole model measured on the device against the table's prediction (device token)."""
    out, created = dom.add_validation(session, caller, body, idempotency_key)
    session.commit()
    if not created:
        response.status_code = 200
    return out


@router.get("/validations/{device}", response_model=wire.ValidationSummary)
def get_validations(device: str, space: str, session: ReadSession, caller: ReaderDep, settings: SettingsDep,
                    page: PageDep):
    """MAPE, share within ±10% and Kendall tau over all validations of the device in ``space`` (and the
    worst), with one page of the validations themselves, oldest first (``next``: the next page's cursor)."""
    return dom.validation_page(session, device, space, (page.limit, page.cursor, settings.page_bytes), caller)
