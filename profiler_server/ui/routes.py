"""The pages' routes: ``/`` (links), ``/ui`` (devices), ``/ui/devices/{name}``, ``/ui/tables/{device}``,
``/ui/compare``, the figures they show and their vendored assets. Read-only: every page is a GET.

Readers: when the server requires a read token, a page takes it as the API does (``Authorization:
Bearer``), or from the ``fbnet_token`` cookie that ``/ui/login`` sets (a browser cannot send a
header on a plain link). Errors are HTML pages with the API's status codes and messages.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from sqlalchemy.orm import Session

from profiler_server import __version__
from profiler_server.auth import Caller, identify, require_reader
from profiler_server.deps import CacheDep, ReadSession
from profiler_server.errors import DomainError, NotFound
from profiler_server.routes import plots as plot_routes
from profiler_server.routes.compare import PairDep
from profiler_server.routes.tables import SelectorDep
from profiler_server.ui import views

router = APIRouter(include_in_schema=False)
COOKIE = "fbnet_token"

_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8", "svg": "image/svg+xml"}
ASSETS = {name: (files("profiler_server.ui") / "static" / name).read_bytes() for name in ("ui.js", "ui.css", "favicon.svg")}
ASSET_VERSION = hashlib.sha256(b"".join(ASSETS[k] for k in sorted(ASSETS))).hexdigest()[:10]
# nothing from another host, no inline script or style: the browser enforces what the templates promise
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "Cache-Control": "no-cache",
}


def _fmt(v, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def _when(t) -> str:
    return "–" if t is None else t.strftime("%Y-%m-%d %H:%M UTC")


TEMPLATES = Environment(loader=PackageLoader("profiler_server.ui", "templates"), autoescape=select_autoescape(["html"]),
                        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
TEMPLATES.filters.update(fmt=_fmt, when=_when)
TEMPLATES.globals.update(asset_version=ASSET_VERSION, version=__version__)
for _name in TEMPLATES.list_templates(extensions=["html"]):  # compiled once, at start, not by a first reader
    TEMPLATES.get_template(_name)


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def page_caller(request: Request, session: Session) -> Caller:
    """The reader behind the page: the ``Authorization`` header (identified by the Guard), else the
    ``fbnet_token`` cookie; refused (401) when the server requires a read token and there is none."""
    settings = request.app.state.settings
    caller: Caller = request.state.caller
    token = request.cookies.get(COOKIE)
    if caller.kind == "anonymous" and token:
        caller = identify(session, settings, f"Bearer {token}")
    require_reader(caller, settings)
    return caller


def render(request: Request, template: str, ctx: dict, status: int = 200,
           started: tuple[float, float] | None = None) -> HTMLResponse:
    html = TEMPLATES.get_template(template).render(**ctx, path=request.url.path, query=str(request.url.query))
    headers = dict(PAGE_HEADERS)
    if started is not None:  # the page's server-side wall time and this thread's CPU time (bench/ui_pages.py)
        wall, cpu = time.perf_counter() - started[0], time.thread_time() - started[1]
        headers["Server-Timing"] = f"page;dur={1000 * wall:.2f}, cpu;dur={1000 * cpu:.2f}"
    return HTMLResponse(html, status_code=status, headers=headers)


def error_page(request: Request, exc: DomainError) -> HTMLResponse:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    resp = render(request, "error.html", {"title": f"Error {exc.status_code}", "status": exc.status_code,
                                          "detail": detail, "next": request.url.path + (f"?{request.url.query}" if request.url.query else "")},
                  exc.status_code)
    if exc.status_code == 401:
        resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


def page(request: Request, session: Session, template: str, build: Callable[[Caller], dict]) -> HTMLResponse:
    """Resolve the reader, build the context from the domain, render; a domain error is its HTML page."""
    started = (time.perf_counter(), time.thread_time())
    try:
        ctx = build(page_caller(request, session))
    except DomainError as e:
        return error_page(request, e)
    return render(request, template, ctx, started=started)


# ---- pages (plain def: FastAPI runs them on a worker thread, where the session does its I/O) ------
@router.get("/", response_class=HTMLResponse)
def index(request: Request):
    """The service's front door: links to the pages and the API documents (nothing read from the database)."""
    return render(request, "index.html", {"title": "fbnet-lut profiler service"})


@router.get("/ui", response_class=HTMLResponse)
def devices(request: Request, session: ReadSession):
    return page(request, session, "devices.html", lambda caller: views.devices_page(session, caller))


@router.get("/ui/devices/{name}", response_class=HTMLResponse)
def device(name: str, request: Request, session: ReadSession):
    return page(request, session, "device.html", lambda caller: views.device_page(session, caller, name))


@router.get("/ui/tables/{device}", response_class=HTMLResponse)
def table(device: str, request: Request, session: ReadSession):
    def build(_: Caller) -> dict:
        tq = views.TableQuery.parse(request.query_params)
        return views.table_page(session, request.app.state.table_cache, device, tq, base_url(request))

    return page(request, session, "table.html", build)


@router.get("/ui/compare", response_class=HTMLResponse)
def compare(request: Request, session: ReadSession):
    def build(_: Caller) -> dict:
        return views.compare_page(session, request.app.state.table_cache, request.query_params, base_url(request))

    return page(request, session, "compare.html", build)


def _safe_next(target: str | None) -> str:
    """Only a page of this service (no other host, no scheme-relative ``//host``)."""
    return target if target and target.startswith("/ui") and not target.startswith("//") else "/ui"


@router.get("/ui/login", response_class=HTMLResponse)
def login(request: Request, session: ReadSession, token: str | None = None, next: str | None = None):
    """A form for the read token (GET: the service refuses anonymous POSTs); a valid token is kept in an
    HttpOnly cookie for the pages and the figures, and the browser goes on to ``next``."""
    if not token:
        return render(request, "login.html", {"title": "Read token", "next": _safe_next(next), "error": None})
    try:
        identify(session, request.app.state.settings, f"Bearer {token.strip()}")
    except DomainError as e:
        return render(request, "login.html", {"title": "Read token", "next": _safe_next(next), "error": e.detail}, 401)
    resp = RedirectResponse(_safe_next(next), status_code=303)
    resp.set_cookie(COOKIE, token.strip(), httponly=True, samesite="lax", path="/ui",
                    secure=request.url.scheme == "https")
    return resp


@router.get("/ui/logout")
def logout():
    resp = RedirectResponse("/ui", status_code=303)
    resp.delete_cookie(COOKIE, path="/ui")
    return resp


@router.get("/ui/static/{name}")
def asset(name: str):
    data = ASSETS.get(name)
    if data is None:
        raise NotFound(f"no asset {name!r}")
    return Response(data, media_type=_TYPES[name.rsplit(".", 1)[-1]],
                    headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})


# ---- figures: the API's plot routes behind the page's reader check (the cookie works for <img>) ---
async def _reader(request: Request, session: Session) -> Caller:
    return await run_in_threadpool(page_caller, request, session)


@router.get("/ui/plots/table/{device}.png")
async def table_png(device: str, space: str, request: Request, session: ReadSession, cache: CacheDep, sel: SelectorDep):
    caller = await _reader(request, session)
    return await plot_routes.table_plot(device, space, request, session, cache, caller, sel)


@router.get("/ui/plots/compare.png")
async def compare_png(pair: PairDep, request: Request, session: ReadSession, cache: CacheDep):
    caller = await _reader(request, session)
    return await plot_routes.compare_plot(pair, request, session, cache, caller)


@router.get("/ui/plots/validations/{device}.png")
async def validations_png(device: str, space: str, request: Request, session: ReadSession):
    caller = await _reader(request, session)
    return await plot_routes.validation_plot(device, space, request, session, caller)
