from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from profiler_server.deps import CacheDep, ReaderDep, ReadSession
from profiler_server.domain import compare as compare_dom
from profiler_server.domain import validations as validations_dom
from profiler_server.domain.spaces import resolve_space
from profiler_server.routes.compare import PairDep
from profiler_server.routes.tables import SelectorDep

router = APIRouter(tags=["plots"])
PNG = {200: {"content": {"image/png": {}}}}


async def _render(request: Request, work) -> Response:
    """Behind the reader check (the routes' ReaderDep), one of a few rendering slots, off the event
    loop; ``work`` returns a PNG from the per-content plot cache, drawing it only on a miss."""
    async with request.app.state.plot_slots:
        data = await run_in_threadpool(work)
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-cache"})


@router.get("/plots/table/{device}.png", response_class=Response, responses=PNG)
async def table_plot(device: str, space: str, request: Request, session: ReadSession, cache: CacheDep,
                     _: ReaderDep, sel: SelectorDep):
    """22 layers x 9 blocks heatmap of the device's table (in the configuration the selectors pick)."""
    from profiler_server import plots

    def work():
        table = cache.table(session, device, space, sel)
        key = ("table", device, table.space, table.version)  # the version covers the configuration
        return request.app.state.plot_cache.get(key, lambda: plots.table_heatmap(table, resolve_space(space)))

    return await _render(request, work)


@router.get("/plots/compare.png", response_class=Response, responses=PNG)
async def compare_plot(pair: PairDep, request: Request, session: ReadSession, cache: CacheDep, _: ReaderDep):
    """Per-op latency ratio of two devices, or of two configurations of one device (like /compare)."""
    from profiler_server import plots

    def work():
        ta, tb = pair.tables(session, cache)
        key = ("compare", pair.a, pair.b, ta.space, ta.version, tb.version)
        return request.app.state.plot_cache.get(key, lambda: plots.ratio_plot(compare_dom.compare(pair.space, ta, tb)))

    return await _render(request, work)


@router.get("/plots/validations/{device}.png", response_class=Response, responses=PNG)
async def validation_plot(device: str, space: str, request: Request, session: ReadSession, _: ReaderDep):
    """Predicted vs measured whole-model latency with y = x and the ±10% band."""
    from profiler_server import plots

    def work():
        summary = validations_dom.validation_summary(session, device, space)
        key = ("validations", plots.content_key(summary))
        return request.app.state.plot_cache.get(key, lambda: plots.validation_plot(summary))

    return await _render(request, work)
