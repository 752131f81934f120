from typing import Annotated

from fastapi import APIRouter, Depends

from fbnet import wire
from fbnet.configuration import Selector
from profiler_server.deps import CacheDep, ReaderDep, ReadSession
from profiler_server.domain import compare as dom
from profiler_server.routes.tables import prefixed_selector

router = APIRouter(tags=["compare"])
SelA = Annotated[Selector, Depends(prefixed_selector("a_"))]
SelB = Annotated[Selector, Depends(prefixed_selector("b_"))]


@router.get("/compare", response_model=wire.CompareOut)
def compare(space: str, a: str, b: str, session: ReadSession, cache: CacheDep, _: ReaderDep, sel_a: SelA,
            sel_b: SelB):
    """Per-op latency ratio a / b of two tables, with the geometric mean: two devices, or two
    configurations of one device (``a_precision=int8&b_precision=fp32``, ``a_threads``, ...)."""
    return dom.compare(space, cache.table(session, a, space, sel_a), cache.table(session, b, space, sel_b))
