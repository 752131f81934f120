from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from profiler_server.deps import CacheDep, ReaderDep, ReadSession
from profiler_server.domain import compare as compare_dom
from profiler_server.domain import validations as validations_dom
from profiler_server.domain.spaces import resolve_space

router = APIRouter(tags=["plots"])
PNG = {200: {"content": {"image/png": {}}}}


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png")


@router.get("/plots/table/{device}.png", response_class=Response, responses=PNG)
async def table_plot(device: str, space: str, session: ReadSession, cache: CacheDep, _: ReaderDep):
    """22 layers x 9 blocks heatmap of the device's table."""
    from profiler_server import plots

    def work():
        return plots.table_heatmap(cache.table(session, device, space), resolve_space(space))

    return _png(await run_in_threadpool(work))


@router.get("/plots/compare.png", response_class=Response, responses=PNG)
async def compare_plot(space: str, a: str, b: str, session: ReadSession, cache: CacheDep, _: ReaderDep):
    """Per-op latency ratio of two devices."""
    from profiler_server import plots

    def work():
        out = compare_dom.compare(space, cache.table(session, a, space), cache.table(session, b, space))
        return plots.ratio_plot(out)

    return _png(await run_in_threadpool(work))


@router.get("/plots/validations/{device}.png", response_class=Response, responses=PNG)
async def validation_plot(device: str, space: str, session: ReadSession, _: ReaderDep):
    """Predicted vs measured whole-model latency with y = x and the ±10% band."""
    from profiler_server import plots

    def work():
        return plots.validation_plot(validations_dom.validation_summary(session, device, space))

    return _png(await run_in_threadpool(work))
