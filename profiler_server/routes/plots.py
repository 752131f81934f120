from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from fbnet import wire
from fbnet.configuration import Selector
from profiler_server.deps import CacheDep, ReaderDep, ReadSession
from profiler_server.domain import compare as compare_dom
from profiler_server.domain import validations as validations_dom
from profiler_server.domain.devices import get_device
from profiler_server.domain.spaces import resolve_v1_space
from profiler_server.domain.tables import finished_runs
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


async def _render(request: Request, prepare: Callable[[], tuple[Hashable, Callable[[], bytes]]]) -> Response:
    """Behind the reader check (the routes' ReaderDep): ``prepare`` (off the event loop) reads and checks
    the data, 404 for a device, space or configuration without any, and returns the figure's cache key
    and its drawing. A cached figure is answered at once; a new one is drawn in one of a few rendering
    slots, waited for at most ``plot_wait_s`` (then 503 with Retry-After, nothing drawn)."""
    state, settings = request.app.state, request.app.state.settings
    key, draw = await run_in_threadpool(prepare)
    if (data := state.plot_cache.peek(key)) is not None:
        return _png(data)
    acquired = False
    with anyio.move_on_after(settings.plot_wait_s):  # the wait for a slot is bounded, not the drawing
        await state.plot_slots.acquire()
        acquired = True
    if not acquired:
        return JSONResponse({"detail": f"every plot rendering slot stayed busy for {settings.plot_wait_s:g} s; "
                                       f"retry after the Retry-After delay"},
                            status_code=503, headers={"Retry-After": str(settings.retry_after_s)})
    try:
        return _png(await run_in_threadpool(state.plot_cache.get, key, draw))
    finally:
        state.plot_slots.release()


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-cache"})


def require_runs(session, device: str, space, sel: Selector) -> None:
    """404 unless ``device`` has a finished run of ``space`` a table may use (before anything is drawn)."""
    runs = finished_runs(session, get_device(session, device), space)
    if not any(sel.include_unstable or not r.unstable for r in runs):
        hint = " (only runs marked unstable: include_unstable=true uses them)" if runs else ""
        raise NotFound(f"device {device!r} has no finished run of {space.name}{hint}: nothing to plot")


@router.get("/plots/table/{device}.png", response_class=Response, responses=PNG)
async def table_plot(device: str, space: str, request: Request, session: ReadSession, cache: CacheDep,
                     _: ReaderDep, sel: SelectorDep):
    """22 layers x 9 blocks heatmap of the device's table (in the configuration the selectors pick);
    404 for a space or configuration the device has no finished run of."""
    from profiler_server import plots

    def prepare():
        sp = resolve_v1_space(space)
        require_runs(session, device, sp, sel)
        table = cache.table(session, device, space, sel)
        return ("table", device, table.space, table.version), lambda: plots.table_heatmap(table, sp)  # the version covers the configuration

    return await _render(request, prepare)


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

    def prepare():
        item, curve = width_data(session, cache, device, space, sel, shape)
        h = item.table.model.heldout
        text = f"{h.within_10pct:.1%} within ±10 %, MAPE {h.mape:.1f} % (n={h.n})" if h.mape is not None else "n/a"
        key = ("width", device, space, item.table.version, shape)
        return key, lambda: plots.width_plot(curve.title, curve.widths, curve.fitted_us, curve.points, text)

    return await _render(request, prepare)


@router.get("/plots/compare.png", response_class=Response, responses=PNG)
async def compare_plot(pair: PairDep, request: Request, session: ReadSession, cache: CacheDep, _: ReaderDep):
    """Per-op latency ratio of two devices, or of two configurations of one device (like /compare)."""
    from profiler_server import plots

    def prepare():
        sp = resolve_v1_space(pair.space)
        require_runs(session, pair.a, sp, pair.sel_a)
        require_runs(session, pair.b, sp, pair.sel_b)
        ta, tb = pair.tables(session, cache)
        key = ("compare", pair.a, pair.b, ta.space, ta.version, tb.version)
        return key, lambda: plots.ratio_plot(compare_dom.compare(pair.space, ta, tb))

    return await _render(request, prepare)


@router.get("/plots/validations/{device}.png", response_class=Response, responses=PNG)
async def validation_plot(device: str, space: str, request: Request, session: ReadSession, _: ReaderDep):
    """Predicted vs measured whole-model latency with y = x and the ±10% band (404 without validations)."""
    from profiler_server import plots

    def prepare():
        summary = validations_dom.validation_summary(session, device, space)
        if not summary.count:
            raise NotFound(f"device {device!r} has no validation of {summary.space}: nothing to plot")
        return ("validations", plots.content_key(summary)), lambda: plots.validation_plot(summary)

    return await _render(request, prepare)
