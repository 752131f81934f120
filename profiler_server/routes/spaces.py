from fastapi import APIRouter

from fbnet import wire
from profiler_server.deps import ReaderDep, ReadSession
from profiler_server.domain import spaces as dom

router = APIRouter(tags=["spaces"])


@router.get("/spaces", response_model=list[wire.SpaceSummary])
def list_spaces(session: ReadSession, _: ReaderDep):
    """The named spaces and any other registered ones."""
    return dom.summaries(session)


@router.get("/spaces/{name}", response_model=wire.SpaceOut)
def get_space(name: str, _: ReaderDep):
    """A space's op list: the agents' work list. Derived spaces (fbnet-<res>[-w<mult>]) work too."""
    return dom.space_out(dom.resolve_v1_space(name))
