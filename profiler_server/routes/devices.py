from fastapi import APIRouter

from fbnet import wire
from profiler_server.auth import require_admin
from profiler_server.deps import CacheDep, CallerDep, PageDep, ReaderDep, ReadSession, SettingsDep, WriteSession
from profiler_server.domain import devices as dom
from profiler_server.domain.paging import paginate

router = APIRouter(tags=["devices"])


def _coverage(session, cache, name: str, device_id: int) -> dict[str, dict[str, int]]:
    out = {}
    for space in dom.device_spaces(session, device_id):
        t = cache.table(session, name, space)
        if isinstance(t, wire.GridTable):  # a v2 grid: covered = measured or identity; fitted apart
            c = t.counts
            out[space] = {"ops": len(t.columns.key), "covered": c["measured"] + c["identity"], "fitted": c["fitted"]}
        else:
            out[space] = {"ops": len(t.entries), "covered": sum(e.latency_us is not None for e in t.entries)}
    return out


@router.post("/devices", status_code=201, response_model=wire.DeviceCreated)
def create_device(body: wire.DeviceCreate, session: WriteSession, caller: CallerDep):
    """Register a device (admin token); the response carries its agent token, shown only this once."""
    require_admin(caller)
    device, token = dom.create_device(session, body)
    session.commit()
    return wire.DeviceCreated(**dom.device_out(device, caller=caller).model_dump(), token=token)


@router.get("/devices", response_model=wire.DevicePage)
def list_devices(session: ReadSession, cache: CacheDep, reader: ReaderDep, settings: SettingsDep, page: PageDep):
    """Devices by name with per-space coverage, one page at a time (``next``: the cursor of the next
    page); serials in their metadata only to the admin and the device."""

    def fetch(after: str | None, n: int):
        return [(d.name, dom.device_out(d, _coverage(session, cache, d.name, d.id), reader))
                for d in dom.list_devices(session, after, n)]

    got = paginate(fetch, page.limit, settings.page_bytes, page.cursor, chunk=16)
    return wire.DevicePage(devices=got.items, next=got.next)


@router.get("/devices/{name}", response_model=wire.DeviceOut)
def get_device(name: str, session: ReadSession, cache: CacheDep, reader: ReaderDep):
    d = dom.get_device(session, name)
    return dom.device_out(d, _coverage(session, cache, d.name, d.id), reader)


@router.post("/devices/{name}/token", response_model=wire.DeviceCreated)
def rotate_token(name: str, session: WriteSession, caller: CallerDep):
    """Replace the device's token (admin token): the old one stops working now; the new one is shown once."""
    require_admin(caller)
    device, token = dom.rotate_token(session, name)
    session.commit()
    return wire.DeviceCreated(**dom.device_out(device, caller=caller).model_dump(), token=token)


@router.delete("/devices/{name}/token", response_model=wire.DeviceOut)
def revoke_token(name: str, session: WriteSession, caller: CallerDep):
    """Revoke the device's token (admin token): nothing writes to the device until a rotation."""
    require_admin(caller)
    device = dom.revoke_tokens(session, name)
    session.commit()
    return dom.device_out(device)
