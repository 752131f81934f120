from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from fbnet import wire
from profiler_server import __version__
from profiler_server.deps import ReadSession

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=wire.Health, responses={503: {"model": wire.Health}})
def healthz(session: ReadSession):
    """Liveness and DB reachability."""
    try:
        session.execute(text("SELECT 1"))
    except Exception:
        body = wire.Health(status="degraded", db=False, version=__version__)
        return JSONResponse(body.model_dump(), status_code=503)
    return wire.Health(status="ok", db=True, version=__version__)
