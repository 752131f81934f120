"""What each page shows, built from the service's domain functions (no HTTP, no HTML here).

Every builder takes the read session and the caller the page resolved, and returns the template's
context. Private provenance (serials, host names) is shown only where the API shows it: to the
admin and to the device's own token (:func:`profiler_server.domain.runs.may_see_private`).
"""

from __future__ import annotations

import shlex
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Device, Run, Validation
from db.models import Space as SpaceRow
from fbnet import wire
from fbnet.configuration import SELECTOR_FIELDS, Configuration, Selector
from fbnet.space import Space
from profiler_server.auth import Caller
from profiler_server.domain import compare as compare_dom
from profiler_server.domain import devices as devices_dom
from profiler_server.domain import runs as runs_dom
from profiler_server.domain.spaces import resolve_space
from profiler_server.domain.tables import TableCache, configurations
from profiler_server.domain.validations import validation_summary
from profiler_server.errors import Invalid, NotFound

# the table page's columns a reader may sort by (server-side without JavaScript, in place with it)
SORTABLE = ("key", "block", "layers", "latency_us", "p10_us", "p90_us", "cv", "n", "runs", "source")
MAX_FILTER = 100
MAX_RUNS_SHOWN = 50  # a device's page lists its newest runs; GET /runs?device= has them all


# ---- query parsing -------------------------------------------------------------------------------
def parse_selector(query: Mapping[str, str], prefix: str = "") -> Selector:
    """The configuration selector in ``query`` (``precision``, ``threads``, ... under ``prefix``); empty
    values (a form's blank choice) are left out. A bad value is one 422 line naming the parameter."""
    names = (*SELECTOR_FIELDS, "include_unstable")
    raw = {n: query[prefix + n] for n in names if query.get(prefix + n) not in (None, "")}
    try:
        return Selector(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        name = prefix + str(err["loc"][0]) if err["loc"] else prefix
        raise Invalid(f"query parameter {name!r}: {err['msg']}") from None


@dataclass(frozen=True)
class TableQuery:
    """What the table page's URL asks for: the space, the configuration, the order and a filter."""

    space: str | None
    selector: Selector
    sort: str | None = None
    desc: bool = False
    q: str = ""

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> TableQuery:
        sort = query.get("sort") or None
        if sort is not None and sort not in SORTABLE:
            raise Invalid(f"query parameter 'sort': {sort!r} is not a column; use one of {', '.join(SORTABLE)}")
        order = query.get("order") or "asc"
        if order not in ("asc", "desc"):
            raise Invalid(f"query parameter 'order': {order!r}; use asc or desc")
        q = (query.get("q") or "").strip()
        if len(q) > MAX_FILTER:
            raise Invalid(f"query parameter 'q': longer than {MAX_FILTER} characters")
        return cls(query.get("space") or None, parse_selector(query), sort, order == "desc", q)


# ---- links ---------------------------------------------------------------------------------------
def config_selector(c: Configuration) -> Selector:
    """The selector that names configuration ``c`` (what ``fbnet-search --precision ...`` takes)."""
    return Selector(**{f: getattr(c, f) for f in SELECTOR_FIELDS if getattr(c, f) is not None})


def table_url(device: str, space: str, sel: Selector | None = None, **extra) -> str:
    params = {"space": space, **(sel.params() if sel else {}), **{k: v for k, v in extra.items() if v}}
    return f"/ui/tables/{device}?{urlencode(params)}"


def compare_params(space: str, a: str, b: str, sel_a: Selector | None = None, sel_b: Selector | None = None) -> str:
    params = {"space": space, "a": a, "b": b}
    params.update({f"a_{k}": v for k, v in (sel_a.params() if sel_a else {}).items()})
    params.update({f"b_{k}": v for k, v in (sel_b.params() if sel_b else {}).items()})
    return urlencode(params)


def search_command(base_url: str, device: str, space: str, sel: Selector) -> str:
    """The ``fbnet-search run`` line that pulls exactly this table."""
    args = ["fbnet-search", "run", "--server", base_url, "--device", device, "--space", space]
    for k, v in sel.params().items():
        args += [f"--{k.replace('_', '-')}"] if k == "include_unstable" else [f"--{k.replace('_', '-')}", str(v)]
    return " ".join(shlex.quote(a) for a in args) + " --data …"


# ---- shared pieces -------------------------------------------------------------------------------
sees_private = runs_dom.sees_private


def public_metadata(device: Device, caller: Caller) -> dict:
    """The device's metadata as this caller may see it."""
    meta = device.meta or {}
    return dict(meta) if sees_private(caller, device.id) else runs_dom.redact(meta)


def config_view(device: str, space: str, c: wire.ConfigurationOut) -> dict:
    sel = config_selector(c)
    return {"id": c.id, "describe": Configuration.model_validate(c.model_dump(include=set(Configuration.model_fields)))
            .describe(), "covered": c.covered, "ops": c.ops, "complete": c.complete, "default": c.default,
            "runs": len(c.runs), "unstable_runs": len(c.unstable_runs), "imported": c.imported, "runtime": c.runtime,
            "url": table_url(device, space, sel), "selector": sel}


def _last_runs(session: Session) -> dict[int, Run]:
    newest = select(func.max(Run.id)).group_by(Run.device_id)
    return {r.device_id: r for r in session.scalars(select(Run).where(Run.id.in_(newest)))}


def run_spaces(session: Session) -> list[str]:
    """The spaces some device has runs of (what compare can offer)."""
    q = select(SpaceRow.name).join(Run, Run.space_id == SpaceRow.id).distinct().order_by(SpaceRow.name)
    return list(session.scalars(q))


def space_peers(session: Session, space: str, device_id: int) -> list[str]:
    """Other devices with runs of ``space``: what this one can be compared with."""
    q = (select(Device.name).join(Run, Run.device_id == Device.id).join(SpaceRow, SpaceRow.id == Run.space_id)
         .where(SpaceRow.name == space, Device.id != device_id).distinct().order_by(Device.name))
    return list(session.scalars(q))


# ---- pages ---------------------------------------------------------------------------------------
class DeviceSummaries:
    """Per device, what the devices page shows from its runs and validations (configurations with
    coverage, validation summaries), kept per process and keyed by the device's table generation (any
    run finished or table imported bumps it) and its validations' count and newest id: a page view
    recomputes only the devices that changed since the last one."""

    def __init__(self, size: int = 4096):
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple, tuple] = OrderedDict()

    def get(self, session: Session, d: Device, spaces: list[str], val_key: tuple) -> tuple[list, list]:
        key = (d.id, d.table_gen, tuple(spaces), val_key)
        with self._lock:
            if (hit := self._items.get(key)) is not None:
                self._items.move_to_end(key)
                return hit
        configs = [(sp, config_view(d.name, sp, c)) for sp in spaces for c in configurations(session, d, resolve_space(sp))]
        vals = [s for sp in spaces if (s := validation_summary(session, d.name, sp)).count] if val_key[0] else []
        with self._lock:
            for stale in [k for k in self._items if k[0] == d.id]:
                del self._items[stale]
            self._items[key] = (configs, vals)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return configs, vals


SUMMARIES = DeviceSummaries()


def _spaces_by_device(session: Session) -> dict[int, list[str]]:
    q = (select(Run.device_id, SpaceRow.name).join(SpaceRow, SpaceRow.id == Run.space_id).distinct()
         .order_by(Run.device_id, SpaceRow.name))
    out: dict[int, list[str]] = {}
    for device_id, name in session.execute(q).tuples():
        out.setdefault(device_id, []).append(name)
    return out


def _validations_by_device(session: Session) -> dict[int, tuple]:
    """Per device: (count, newest id, newest time) of its validations, in one query."""
    q = select(Validation.device_id, func.count(), func.max(Validation.id), func.max(Validation.created_at)
               ).group_by(Validation.device_id)
    return {row[0]: tuple(row[1:]) for row in session.execute(q).tuples()}


def devices_page(session: Session, caller: Caller) -> dict:
    """Every device: model, SoC, OS, runtimes, configurations with coverage, last run, validations."""
    last_run, spaces, vals_of = _last_runs(session), _spaces_by_device(session), _validations_by_device(session)
    rows = []
    for d in devices_dom.list_devices(session):
        val_key = vals_of.get(d.id, (0, None, None))
        configs, vals = SUMMARIES.get(session, d, spaces.get(d.id, []), val_key[:2])
        run = last_run.get(d.id)
        rows.append({"name": d.name, "model": d.model, "soc": d.soc, "os": d.os, "platform": d.platform,
                     "runtimes": sorted({d.runtime} | {c["runtime"] for _, c in configs}),
                     "configs": configs, "validations": vals, "last_validation_at": val_key[2],
                     "last_run": run and {"id": run.id, "status": run.status, "unstable": bool(run.unstable),
                                          "at": run.finished_at or run.started_at}})
    return {"title": "Devices", "devices": rows, "spaces": run_spaces(session)}


def run_view(r: wire.RunOut) -> dict:
    """A run's status, stability, per-round factors and provenance (RunOut has the private fields
    already removed for callers that may not see them)."""
    proto = r.extra.get("protocol") or {}
    settle = proto.get("settle") or []
    cfg = Configuration(precision=r.precision, runtime=r.runtime, runtime_version=r.runtime_version,
                        threads=r.threads, cpu_mask=r.cpu_mask, compute_units=r.compute_units,
                        imported=r.transport == "import")
    return {"id": r.id, "space": r.space, "status": r.status, "unstable": r.unstable, "transport": r.transport,
            "spread": proto.get("spread"), "round_factors": proto.get("round_factors") or [],
            "tau": settle[-1].get("tau") if settle else None, "agent": r.agent_version, "build": r.build,
            "configuration": cfg.describe(), "n": r.n_measurements, "protocol": (r.warmup, r.repeats, r.rounds),
            "overhead_us": r.overhead_us, "context_factor": r.context_factor, "started": r.started_at,
            "finished": r.finished_at, "host": r.host,
            "private": {k: v for k, v in r.extra.items() if k in runs_dom.PRIVATE_EXTRA}}


def device_page(session: Session, caller: Caller, name: str) -> dict:
    """One device: its configurations, runs, validations (with their plot) and peers to compare with."""
    d = devices_dom.get_device(session, name)
    every_run = runs_dom.list_runs(session, name)
    runs = runs_dom.runs_out(session, every_run[-MAX_RUNS_SHOWN:], caller)
    spaces = []
    for sp in devices_dom.device_spaces(session, d.id):
        configs = [config_view(d.name, sp, c) for c in configurations(session, d, resolve_space(sp))]
        pairs = [(a, b) for i, a in enumerate(configs) for b in configs[i + 1:]]
        spaces.append({"space": sp, "configs": configs, "validations": validation_summary(session, d.name, sp),
                       "peers": [(p, compare_params(sp, d.name, p)) for p in space_peers(session, sp, d.id)],
                       "config_pairs": [(a, b, compare_params(sp, d.name, d.name, a["selector"], b["selector"]))
                                        for a, b in pairs[:6]]})
    return {"title": d.name, "device": d, "metadata": public_metadata(d, caller), "spaces": spaces,
            "runs": [run_view(r) for r in reversed(runs)], "older_runs": len(every_run) - len(runs),
            "private_visible": sees_private(caller, d.id)}


def entry_view(e: wire.TableEntry) -> dict:
    cv = e.std_us / e.latency_us if e.std_us is not None and e.latency_us else None
    return {"key": e.key, "block": e.block, "layers": ",".join(str(x) for x in e.layers), "latency_us": e.latency_us,
            "p10_us": e.p10_us, "p90_us": e.p90_us, "cv": cv, "n": e.n, "runs": e.runs, "source": e.source,
            "first_layer": min(e.layers) if e.layers else -1}


def _sorted(rows: list[dict], col: str | None, desc: bool) -> list[dict]:
    if col is None:
        return rows
    key = "first_layer" if col == "layers" else col
    present = [r for r in rows if r[key] is not None]
    return sorted(present, key=lambda r: r[key], reverse=desc) + [r for r in rows if r[key] is None]


def default_space(session: Session, device: Device) -> str:
    spaces = devices_dom.device_spaces(session, device.id)
    if not spaces:
        raise NotFound(f"device {device.name!r} has no runs yet: no table to show")
    return spaces[0]


def table_page(session: Session, cache: TableCache, device: str, tq: TableQuery, base_url: str) -> dict:
    """One configuration's table: entries (sorted, filtered), heatmap, downloads, the search's selectors."""
    d = devices_dom.get_device(session, device)
    space = tq.space or default_space(session, d)
    sp = resolve_space(space)
    table = cache.table(session, device, space, tq.selector)
    configs = [config_view(device, space, c)
               for c in configurations(session, d, sp, include_unstable=tq.selector.include_unstable)]
    sel = config_selector(table.configuration) if table.configuration else tq.selector
    if tq.selector.include_unstable:
        sel = sel.model_copy(update={"include_unstable": True})
    rows = [entry_view(e) for e in table.entries]
    if tq.q:
        needle = tq.q.lower()
        rows = [r for r in rows if needle in f"{r['key']} {r['block']} {r['source']}".lower()]
    api = f"{base_url}/tables/{device}?{urlencode({'space': space, **sel.params()})}"
    return {"title": f"{device} / {space}", "device": device, "space": space, "table": table, "configs": configs,
            "current": table.configuration and table.configuration.config_id, "rows": _sorted(rows, tq.sort, tq.desc),
            "total": len(table.entries), "tq": tq, "sortable": SORTABLE, "selector": sel,
            "self_url": lambda **kw: table_url(device, space, sel, **{"q": tq.q, **kw}),
            "api_json": api, "api_csv": f"{api}&format=csv", "search_cmd": search_command(base_url, device, space, sel),
            "heatmap": f"/ui/plots/table/{device}.png?{urlencode({'space': space, **sel.params()})}",
            "peers": space_peers(session, space, d.id)}


def _side(session: Session, sp: Space, t: wire.Table, swap: Callable[[Selector], str]) -> dict:
    """One side of a comparison: its device, configuration, and its other configurations as links that
    compare them instead (``swap(selector)``: the compare page's query with this side's selector replaced)."""
    dev = devices_dom.get_device(session, t.device)
    current = t.configuration and t.configuration.config_id
    others = [(c, swap(config_selector(c))) for c in configurations(session, dev, sp) if c.id != current]
    return {"device": t.device, "configuration": t.configuration and t.configuration.describe(),
            "others": [(config_view(t.device, sp.name, c)["describe"], params) for c, params in others],
            "url": table_url(t.device, sp.name, config_selector(t.configuration) if t.configuration else None)}


def compare_page(session: Session, cache: TableCache, query: Mapping[str, str], base_url: str) -> dict:
    """Two devices, or two configurations of one, side by side with the per-op ratio plot."""
    spaces = run_spaces(session)
    space, a, b = query.get("space") or (spaces[0] if spaces else ""), query.get("a") or "", query.get("b") or ""
    ctx = {"title": "Compare", "devices": [d.name for d in devices_dom.list_devices(session)], "spaces": spaces,
           "space": space, "a": a, "b": b, "result": None}
    if not (a and b):
        return ctx
    if not space:
        raise Invalid("query parameter 'space' is required (no device has runs yet)")
    sel_a, sel_b = parse_selector(query, "a_"), parse_selector(query, "b_")
    sp = resolve_space(space)
    ta, tb = cache.table(session, a, space, sel_a), cache.table(session, b, space, sel_b)
    out = compare_dom.compare(space, ta, tb)
    rows = [{"i": i, "key": e.key, "block": e.block, "a_us": e.a_us, "b_us": e.b_us, "ratio": e.ratio}
            for i, e in enumerate(out.entries)]
    side = {"a": _side(session, sp, ta, lambda c: compare_params(space, a, b, c, sel_b)),
            "b": _side(session, sp, tb, lambda c: compare_params(space, a, b, sel_a, c))}
    params = compare_params(space, a, b, sel_a, sel_b)
    faster = sum(r["ratio"] < 1 for r in rows if r["ratio"] is not None)
    ctx.update(result=out, rows=rows, side=side, plot=f"/ui/plots/compare.png?{params}",
               api=f"{base_url}/compare?{params}", faster_on_a=faster,
               rated=sum(r["ratio"] is not None for r in rows))
    return ctx
