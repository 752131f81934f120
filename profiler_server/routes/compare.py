from fastapi import APIRouter

from fbnet import wire
from profiler_server.deps import CacheDep, ReaderDep, ReadSession
from profiler_server.domain import compare as dom

router = APIRouter(tags=["compare"])


@router.get("/compare", response_model=wire.CompareOut)
def compare(space: str, a: str, b: str, session: ReadSession, cache: CacheDep, _: ReaderDep):
    """Per-op latency ratio a / b of two devices' tables, with the geometric mean."""
    return dom.compare(space, cache.table(session, a, space), cache.table(session, b, space))
