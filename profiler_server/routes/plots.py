from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from fbnet import wire
from profiler_server.deps import CacheDep, ReaderDep, ReadSession
from profiler_server.domain import compare as compare_dom
from profiler_server.domain import validations as validations_dom
from profiler_server.domain.spaces import resolve_v1_space
from profiler_server.errors import Invalid, NotFound
from profiler_server.routes.compare import PairDep
from profiler_server.routes.tables import SelectorDep

router = APIRouter(tags=["plots"])
PNG = {200: {"content": {"image/png": {}}}}


@dataclass(frozen=True)
class WidthShape:
    """The layer of a width plot and its other choices (defaults: first resolution, widest input, largest
    expansion)."""

    layer: Annotated[int, Query(ge=0, le=1000)] = 0
    block: Annotated[str, Query(max_length=32)] = "ir_k3"

    resolution: Annotated[int | None, Query(ge=1, le=4096)] = None
    cin: Annotated[int | None, Query(ge=1, le=100_000)] = None
    expansion: Annotated[float | None, Query(gt=0, le=100)] = None


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
        return request.app.state.plot_cache.get(key, lambda: plots.table_heatmap(table, resolve_v1_space(space)))

    return await _render(request, work)


def width_data(session, cache, device: str, space: str, sel, shape: WidthShape):
    """The cached v2 table of ``device`` and the width curve ``shape`` asks for (422/404 named)."""
    from profiler_server.domain.grid import width_curve

    item = cache.get(session, device, space, sel)
    if not isinstance(item.table, wire.GridTable):
        raise Invalid(f"{space} is a v1 space: width curves are for v2 spaces (fbnetv2-*)")
    if item.fit is None:
        raise NotFound(f"{device} has no measured op of {space} in this configuration: nothing is fitted")
    try:
        return item, width_curve(item.table, item.fit, shape.layer, shape.block, shape.resolution, shape.cin,
                                 shape.expansion)
    except ValueError as e:
        raise Invalid(str(e)) from None


WidthShapeDep = Annotated[WidthShape, Depends()]


@router.get("/tables/{device}/width", response_model=wire.WidthCurveOut, tags=["tables"])
def width_json(device: str, space: str, session: ReadSession, cache: CacheDep, _: ReaderDep, sel: SelectorDep,
               shape: WidthShapeDep):
    """The data of ``/plots/width/{device}.png``: the fitted model at every output width of one layer
    of a v2 space and the layer's grid entries (measured or fitted)."""
    item, c = width_data(session, cache, device, space, sel, shape)
    return wire.WidthCurveOut(device=device, space=space, version=item.table.version, title=c.title,
                              widths=c.widths, fitted_us=c.fitted_us, points=c.points)


@router.get("/plots/width/{device}.png", response_class=Response, responses=PNG)
async def width_plot(device: str, space: str, request: Request, session: ReadSession, cache: CacheDep,
                     _: ReaderDep, sel: SelectorDep, shape: WidthShapeDep):
    """Latency against output width for one layer of a v2 space: measured grid entries over the
    fitted model's staircase at every width (in the configuration the selectors pick)."""
    from profiler_server import plots

    def work():
        item, curve = width_data(session, cache, device, space, sel, shape)
        h = item.table.model.heldout
        text = f"{h.within_10pct:.1%} within ±10 %, MAPE {h.mape:.1f} % (n={h.n})" if h.mape is not None else "n/a"
        key = ("width", device, space, item.table.version, shape)
        return request.app.state.plot_cache.get(key, lambda: plots.width_plot(curve.title, curve.widths,
                                                                              curve.fitted_us, curve.points, text))

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
