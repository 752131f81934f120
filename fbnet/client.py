"""The one client of the profiler service (search, agents): the auth header, the timeouts, the retry
policy and the typed calls (tables, configurations, runs, measurements, validations), each returning
the wire models of :mod:`fbnet.wire`; and the table fetcher with its on-disk cache revalidated by ETag.

Errors are typed: :class:`ServiceDown` (unreachable, or 5xx/429, after every retry; the commands exit
3) and :class:`ServiceRefused` (4xx: retrying will not help; exit 4), with the service's ``detail``
in the message.

No numbers are ever made up: the one substitution is deliberate and announced: when the server
cannot be reached, the last table this client fetched from it (a real measurement, stored with
its ETag) is used, with a warning.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from fbnet.configuration import ConfigurationOut, Selector
from fbnet.io import atomic_write
from fbnet.lut import TableError, load_table_file, parse_table
from fbnet.space_v2 import is_v2_space
from fbnet.wire import (
    MAX_PAGE_LIMIT,
    BatchResult,
    DeviceOut,
    GridTable,
    Health,
    MeasurementBatch,
    PlanOut,
    PlanRequest,
    RunCreate,
    RunFinish,
    RunMeasurements,
    RunOut,
    Table,
    ValidationCreate,
    ValidationOut,
    ValidationSummary,
)

DEFAULT_CACHE_DIR = Path(".fbnet-cache")
# The token a caller did not give comes from its role's variable: a reader (the search, read-only
# tables) or a device's agent (runs, measurements, validations; it reads tables too).
TOKEN_ENVS = {"reader": "FBNET_TOKEN", "agent": "FBNET_AGENT_TOKEN"}
TOKEN_ENV = TOKEN_ENVS["reader"]
Role = Literal["reader", "agent"]
MAX_RETRY_AFTER_S = 60.0  # a Retry-After above this is capped (a misconfigured proxy must not park the agent)


class ServiceError(RuntimeError):
    """The service did not do what was asked (one-line message)."""


class ServiceDown(ServiceError):
    """The service could not be reached (or kept answering 5xx/429) after all retries."""


class ServiceRefused(ServiceError):
    """The service refused a request (HTTP 4xx, or another answer the call does not take): retrying
    will not help. ``status_code`` and ``reason`` (its ``detail``) are the service's; the message
    names the request too (``fbnet.cli.run`` prints an error's ``detail`` attribute alone, so this one
    has none)."""

    def __init__(self, message: str, status_code: int, reason: str):
        super().__init__(message)
        self.status_code = status_code
        self.reason = reason


class StaleTableWarning(RuntimeWarning):
    """The server was unreachable and a cached table is used instead."""


def detail(r: httpx.Response, limit: int = 500) -> str:
    """The human message of an error response: FastAPI's ``detail`` (string, or pydantic's list of
    errors joined as ``loc: msg``), else the start of the body."""
    try:
        d = r.json().get("detail", r.text)
    except (ValueError, AttributeError):
        d = r.text
    if isinstance(d, list):
        d = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', []))}: {e.get('msg')}" for e in d if isinstance(e, dict))
    elif not isinstance(d, str):
        d = json.dumps(d)
    return d[:limit]


def retry_after_s(r: httpx.Response, cap_s: float = MAX_RETRY_AFTER_S) -> float | None:
    """Seconds a 503/429 asks the client to wait (``Retry-After`` in seconds), capped; None if absent."""
    try:
        v = float(r.headers.get("retry-after", ""))
    except ValueError:
        return None
    return min(max(v, 0.0), cap_s)


def auth_headers(token: str | None, role: Role = "reader") -> dict[str, str]:
    """The one place the auth header is built: ``token``, else the role's variable (``TOKEN_ENVS``);
    an empty token sends none."""
    if role not in TOKEN_ENVS:
        raise ValueError(f"role {role!r}: use one of {', '.join(TOKEN_ENVS)}")
    token = token if token is not None else os.environ.get(TOKEN_ENVS[role])
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass(frozen=True)
class RetryPolicy:
    """Transport errors, 5xx and 429 are retried ``retries`` times; the n-th retry waits
    ``backoff_s x 2**(n-1)``, or longer when the answer said ``Retry-After`` (capped)."""

    retries: int = 3
    backoff_s: float = 0.5
    max_retry_after_s: float = MAX_RETRY_AFTER_S

    @property
    def tries(self) -> int:
        return self.retries + 1

    def delay_s(self, attempt: int, retry_after: float | None) -> float:
        """How long to wait before try ``attempt`` (1 = the first retry)."""
        return max(retry_after or 0.0, self.backoff_s * 2 ** (attempt - 1))

    def retry_after(self, r: httpx.Response) -> float | None:
        return retry_after_s(r, self.max_retry_after_s)

    @staticmethod
    def retryable(status_code: int) -> bool:
        return status_code >= 500 or status_code == 429


NO_RETRY = RetryPolicy(retries=0)


AnyTable = Table | GridTable


def parse_any_table(data: str | bytes | dict, space: str, origin: str) -> AnyTable:
    """A v1 :class:`Table` or, for a v2 space (``fbnetv2-*``), a columnar :class:`GridTable`."""
    if not is_v2_space(space):
        return parse_table(data, origin)
    try:
        return (GridTable.model_validate(data) if isinstance(data, dict)
                else GridTable.model_validate_json(data))
    except ValueError as e:
        raise TableError(f"{origin} is not a v2 grid table: {str(e).splitlines()[0]}") from None


def refuse_fitted(table: AnyTable) -> None:
    """:class:`TableError` when a v2 table serves fitted entries (what ``measured_only`` asks)."""
    n = table.counts.get("fitted", 0) if isinstance(table, GridTable) else 0
    if n:
        raise TableError(f"{n} of {len(table.columns.key)} entries of {table.space} on {table.device} are fitted, "
                         f"not measured; measured-only refuses them (measure them, or drop measured-only)")


@dataclass(frozen=True)
class TableReply:
    """One answer of ``GET /tables/{device}``: the table (None when the server answered 304 to the
    ETag given) and its ETag; a v2 space's is a :class:`GridTable`."""

    table: AnyTable | None
    etag: str | None
    url: str


def _body(x: BaseModel | Mapping) -> dict:
    """A wire model as JSON, or a mapping sent as is (the agents' spool holds what a model dumped)."""
    return x.model_dump(mode="json") if isinstance(x, BaseModel) else dict(x)


class ServiceClient:
    """Typed calls of the profiler service over one ``httpx.Client``: the auth header of ``role``
    (:func:`auth_headers`), timeouts, and ``retry`` (:class:`RetryPolicy`) for every call."""

    def __init__(self, server: str, token: str | None = None, *, role: Role = "reader", timeout_s: float = 15.0,
                 connect_timeout_s: float = 5.0, retry: RetryPolicy | None = None,
                 transport: httpx.BaseTransport | None = None):
        self.server = server.rstrip("/")
        self.retry = retry if retry is not None else RetryPolicy()
        headers = {"Accept": "application/json", **auth_headers(token, role)}
        self._http = httpx.Client(base_url=self.server, headers=headers, transport=transport,
                                  timeout=httpx.Timeout(timeout_s, connect=min(connect_timeout_s, timeout_s)))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the one request path ----------------------------------------------------------------
    def request(self, method: str, url: str, *, expect: tuple[int, ...] = (200, 201), **kw) -> httpx.Response:
        """``method url`` under the retry policy; an answer in ``expect`` is returned. Raises
        :class:`ServiceRefused` for a 4xx, :class:`ServiceDown` when every try failed."""
        last, wait = "", None
        for attempt in range(self.retry.tries):
            if attempt:
                time.sleep(self.retry.delay_s(attempt, wait))
            wait = None
            try:
                r = self._http.request(method, url, **kw)
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code in expect:
                return r
            if self.retry.retryable(r.status_code):
                last, wait = f"HTTP {r.status_code}: {detail(r)}", self.retry.retry_after(r)
                continue
            d = detail(r)  # a 4xx (or an answer this call does not take, e.g. a proxy's redirect)
            raise ServiceRefused(f"{method} {url} refused (HTTP {r.status_code}): {d}", r.status_code, d)
        tries = f"{self.retry.tries} {'try' if self.retry.tries == 1 else 'tries'}"
        raise ServiceDown(f"service {self.server} unreachable after {tries}: {last}")

    # -- tables ------------------------------------------------------------------------------
    def table(self, device: str, space: str, selector: Selector | None = None, *,
              etag: str | None = None, measured_only: bool = False) -> TableReply:
        """``GET /tables/{device}`` in the configuration ``selector`` picks; with ``etag``, a table
        that did not change comes back as None (304). A v2 space answers a :class:`GridTable`;
        ``measured_only`` makes the service refuse (409, :class:`ServiceRefused`) one with fitted entries."""
        url = f"/tables/{quote(device, safe='')}"
        params = {"space": space, **(selector or Selector()).params()}
        if measured_only:
            params["measured_only"] = "true"
        r = self.request("GET", url, params=params, headers={"If-None-Match": etag} if etag else {},
                         expect=(200, 304))
        if r.status_code == 304:
            return TableReply(None, r.headers.get("ETag", etag), str(r.request.url))
        return TableReply(parse_any_table(r.content, space, f"the response of {self.server}{url}"),
                          r.headers.get("ETag"), str(r.request.url))

    def plan(self, device: str, req: PlanRequest | Mapping) -> PlanOut:
        """``POST /plans/{device}``: the v2 grid ops the device should measure now (agent token)."""
        r = self.request("POST", f"/plans/{quote(device, safe='')}", json=_body(req))
        return PlanOut.model_validate(r.json())

    def configurations(self, device: str, space: str, include_unstable: bool = False) -> list[ConfigurationOut]:
        r = self.request("GET", f"/tables/{quote(device, safe='')}/configurations",
                         params={"space": space, "include_unstable": include_unstable})
        return [ConfigurationOut.model_validate(c) for c in r.json()]

    # -- runs --------------------------------------------------------------------------------
    def create_run(self, run: RunCreate | Mapping) -> RunOut:
        """``POST /runs``; a run whose ``idempotency_key`` the device already used comes back as is."""
        return RunOut.model_validate(self.request("POST", "/runs", json=_body(run)).json())

    def post_measurements(self, run_id: int, batch: MeasurementBatch) -> BatchResult:
        r = self.request("POST", f"/runs/{run_id}/measurements", json=_body(batch))
        return BatchResult.model_validate(r.json())

    def finish_run(self, run_id: int, fin: RunFinish | Mapping) -> RunOut:
        return RunOut.model_validate(self.request("POST", f"/runs/{run_id}/finish", json=_body(fin)).json())

    def get_run(self, run_id: int) -> RunOut:
        return RunOut.model_validate(self.request("GET", f"/runs/{run_id}").json())

    # -- lists: every page, following ``next`` --------------------------------------------------
    def pages(self, url: str, params: Mapping | None = None, limit: int = MAX_PAGE_LIMIT) -> Iterator[dict]:
        """Every page of a list route (``GET /runs``, ``/devices``, ``/validations/{d}``,
        ``/runs/{id}/measurements``): each answer's ``next`` is sent back as ``cursor`` until it is null."""
        params, seen = {**(params or {}), "limit": limit}, set()
        while True:
            page = self.request("GET", url, params=params).json()
            yield page
            cursor = page.get("next")
            if cursor is None:
                return
            if cursor in seen:  # a server that hands the same cursor back would loop forever
                raise ServiceError(f"GET {url} answered the cursor {cursor!r} twice: the pages do not advance")
            seen.add(cursor)
            params["cursor"] = cursor

    def runs(self, device: str | None = None, space: str | None = None) -> list[RunOut]:
        """Every run (of ``device``, in ``space``), oldest first, through all pages of ``GET /runs``."""
        params = {k: v for k, v in (("device", device), ("space", space)) if v is not None}
        return [RunOut.model_validate(x) for page in self.pages("/runs", params) for x in page["runs"]]

    def run_measurements(self, run_id: int, *, samples: bool = False) -> RunMeasurements:
        """Every measurement of the run (through all pages; the raw samples only with ``samples``)."""
        pages = list(self.pages(f"/runs/{run_id}/measurements", {"samples": "true"} if samples else {}))
        ms = [m for p in pages for m in p["measurements"]]
        return RunMeasurements.model_validate({**pages[0], "measurements": ms, "keys": [m["key"] for m in ms],
                                               "next": None})

    def devices(self) -> list[DeviceOut]:
        """Every device, by name, through all pages of ``GET /devices``."""
        return [DeviceOut.model_validate(x) for page in self.pages("/devices") for x in page["devices"]]

    # -- validations, health -----------------------------------------------------------------
    def post_validation(self, v: ValidationCreate, idempotency_key: str | None = None) -> ValidationOut:
        """``POST /validations`` with an ``Idempotency-Key`` (a new one unless given), the same on every
        retry: a try whose answer was lost (a timeout) is not stored twice."""
        key = idempotency_key or uuid.uuid4().hex
        r = self.request("POST", "/validations", json=_body(v), headers={"Idempotency-Key": key})
        return ValidationOut.model_validate(r.json())

    def validations(self, device: str, space: str) -> ValidationSummary:
        """The summary of the device's validations in ``space`` with every validation (all pages)."""
        pages = list(self.pages(f"/validations/{quote(device, safe='')}", {"space": space}))
        vs = [v for p in pages for v in p["validations"]]
        return ValidationSummary.model_validate({**pages[0], "validations": vs, "next": None})

    def health(self) -> Health:
        return Health.model_validate(self.request("GET", "/healthz").json())


# ---- the table fetcher with its ETag cache ---------------------------------------------------------
def save_table(table: Table, path: str | os.PathLike) -> Path:
    return atomic_write(path, table.model_dump_json(indent=1))


@dataclass(frozen=True)
class Fetched:
    table: AnyTable
    source: str  # "server" (200), "revalidated" (304, cached copy is current) or "cache" (offline)
    etag: str | None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "server"


class TableClient:
    """GET /tables/{device}?space=...[&precision=&threads=...] through a :class:`ServiceClient`, with an
    on-disk cache (one file per device, space and selector) revalidated by ETag. A table is not retried
    by default (``retry``): an unreachable server falls back to the cached table at once."""

    def __init__(self, server: str, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, *, timeout: float = 15.0,
                 token: str | None = None, on_warning: Callable[[str], None] | None = None,
                 transport: httpx.BaseTransport | None = None, retry: RetryPolicy = NO_RETRY):
        self.server = server.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.service = ServiceClient(server, token, timeout_s=timeout, connect_timeout_s=timeout, retry=retry,
                                     transport=transport)
        self._warn = on_warning or (lambda msg: warnings.warn(msg, StaleTableWarning, stacklevel=3))

    def close(self) -> None:
        self.service.close()

    def __enter__(self) -> TableClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def cache_path(self, device: str, space: str, selector: Selector | None = None) -> Path:
        sel = selector or Selector()
        tag = "" if sel.is_default else f".{sel.slug()}"
        return self.cache_dir / "tables" / _slug(self.server) / _slug(device) / f"{_slug(space)}{tag}.json"

    def _read_cache(self, device: str, space: str, sel: Selector) -> tuple[AnyTable, str | None, str] | None:
        p = self.cache_path(device, space, sel)
        if not p.is_file():
            return None
        try:
            blob = json.loads(p.read_text())
            table = parse_any_table(blob["table"], space, f"cached table {p}")
            return table, blob.get("etag"), blob.get("fetched_at", "?")
        except (ValueError, KeyError, TableError):
            # A corrupt cache file is not a measurement; it is ignored (and overwritten on success).
            return None

    def fetch(self, device: str, space: str, selector: Selector | None = None, *,
              measured_only: bool = False) -> Fetched:
        """The table of ``device`` for ``space`` in the configuration ``selector`` picks (default: the
        server's rule, the newest complete one); see the module docstring for the offline rule. A v2
        space's is a :class:`GridTable` (cached and revalidated alike); ``measured_only`` refuses one
        with fitted entries (:class:`TableError`), from the service or from the cache."""
        sel = selector or Selector()
        cached = self._read_cache(device, space, sel)
        try:
            reply = self.service.table(device, space, sel, etag=cached[1] if cached else None,
                                       measured_only=measured_only)
        except ServiceDown as e:
            got = self._offline(device, space, cached, str(e))
            if measured_only:
                refuse_fitted(got.table)
            return got
        except ServiceRefused as e:
            if e.status_code == 409 and measured_only:
                raise TableError(f"{device}/{space}: {e.reason}") from None
            raise TableError(str(e)) from None
        except ServiceError as e:
            raise TableError(str(e)) from None
        if reply.table is None:
            if cached:
                return Fetched(cached[0], "revalidated", cached[1])
            raise TableError(f"GET {reply.url}: 304 without a cached table")
        atomic_write(self.cache_path(device, space, sel), json.dumps({
            "etag": reply.etag, "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "url": reply.url, "selector": sel.params(), "table": reply.table.model_dump(mode="json"),
        }))
        return Fetched(reply.table, "server", reply.etag)

    def _offline(self, device: str, space: str, cached, why: str) -> Fetched:
        if not cached:
            raise TableError(f"{why}, and no cached table of {device!r}/{space} in {self.cache_dir}")
        self._warn(f"{why}; using the cached table of {device!r}/{space} fetched {cached[2]} "
                   f"(version {cached[0].version})")
        return Fetched(cached[0], "cache", cached[1])


def get_table(*, space: str, server: str | None = None, device: str | None = None,
              table_file: str | os.PathLike | None = None, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
              token: str | None = None, on_warning: Callable[[str], None] | None = None,
              selector: Selector | None = None) -> Table:
    """The table a user named: a saved file, or a server and a device (``space`` is its name), in the
    configuration ``selector`` picks (a saved file must be of a configuration the selector matches)."""
    sel = selector or Selector()
    if table_file is not None:
        if server is not None:
            raise TableError("give either a table file or a server, not both")
        table = load_table_file(table_file)
        if device is not None and device != table.device:
            raise TableError(f"device {device!r} was asked for, but the table file is of device {table.device!r}")
        if not sel.is_default and (table.configuration is None or not sel.matches(table.configuration)):
            have = table.configuration.describe() if table.configuration else "no configuration"
            raise TableError(f"{sel.describe()} was asked for, but the table file is of {have}")
        return table
    if server is None or device is None:
        raise TableError("a latency table is needed: a server and a device, or a saved table file")
    with TableClient(server, cache_dir, token=token, on_warning=on_warning) as client:
        return client.fetch(device, space, sel).table


def get_grid_table(*, space: str, server: str, device: str, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
                   token: str | None = None, on_warning: Callable[[str], None] | None = None,
                   selector: Selector | None = None, measured_only: bool = False) -> GridTable:
    """The served v2 grid table of ``device`` (through the ETag cache); ``measured_only`` refuses fitted
    entries (:class:`TableError`)."""
    if not is_v2_space(space):
        raise TableError(f"{space!r} is not a v2 space: its table is a v1 table (get_table)")
    with TableClient(server, cache_dir, token=token, on_warning=on_warning) as client:
        return client.fetch(device, space, selector, measured_only=measured_only).table


__all__ = ["DEFAULT_CACHE_DIR", "NO_RETRY", "TOKEN_ENVS", "AnyTable", "Fetched", "get_grid_table", "parse_any_table",
           "refuse_fitted", "RetryPolicy", "ServiceClient", "ServiceDown",
           "ServiceError", "ServiceRefused", "StaleTableWarning", "TableClient", "TableReply", "auth_headers",
           "detail", "get_table", "retry_after_s", "save_table"]
