"""``GET /compare``: the per-op latency ratio of two tables (two devices or two configurations)."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from fbnet import wire
from fbnet.configuration import Selector
from profiler_server.deps import CacheDep, ReaderDep, ReadSession
from profiler_server.domain import compare as dom
from profiler_server.domain.spaces import resolve_v1_space
from profiler_server.routes.tables import prefixed_selector

router = APIRouter(tags=["compare"])
SelA = Annotated[Selector, Depends(prefixed_selector("a_"))]
SelB = Annotated[Selector, Depends(prefixed_selector("b_"))]


@dataclass
class Pair:
    """The two tables a comparison reads: ``a`` and ``b`` (devices) in ``space``, each with its selector."""

    space: Annotated[str, Query()]
    a: Annotated[str, Query()]
    b: Annotated[str, Query()]
    sel_a: SelA
    sel_b: SelB

    def tables(self, session, cache):
        resolve_v1_space(self.space)  # a v2 grid has no per-op comparison (yet): 422, named
        return (cache.table(session, self.a, self.space, self.sel_a),
                cache.table(session, self.b, self.space, self.sel_b))


PairDep = Annotated[Pair, Depends()]


@router.get("/compare", response_model=wire.CompareOut)
def compare(pair: PairDep, session: ReadSession, cache: CacheDep, _: ReaderDep):
    """Per-op latency ratio a / b of two tables, with the geometric mean: two devices, or two
    configurations of one device (``a_precision=int8&b_precision=fp32``, ``a_threads``, ...)."""
    return dom.compare(pair.space, *pair.tables(session, cache))
