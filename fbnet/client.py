"""HTTP helpers shared by the clients (search, agents): the one error-detail helper and the one
table fetcher, with an on-disk cache revalidated by ETag.

No numbers are ever made up: the one substitution is deliberate and announced: when the server
cannot be reached, the last table this client fetched from it (a real measurement, stored with
its ETag) is used, with a warning.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx

from fbnet.configuration import Selector
from fbnet.io import atomic_write
from fbnet.lut import TableError, load_table_file, parse_table
from fbnet.wire import Table

DEFAULT_CACHE_DIR = Path(".fbnet-cache")
TOKEN_ENV = "FBNET_TOKEN"


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


def save_table(table: Table, path: str | os.PathLike) -> Path:
    return atomic_write(path, table.model_dump_json(indent=1))


@dataclass(frozen=True)
class Fetched:
    table: Table
    source: str  # "server" (200), "revalidated" (304, cached copy is current) or "cache" (offline)
    etag: str | None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "server"


class TableClient:
    """GET /tables/{device}?space=...[&precision=&threads=...] with an on-disk cache (one file per
    device, space and selector) revalidated by ETag."""

    def __init__(self, server: str, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, *, timeout: float = 15.0,
                 token: str | None = None, on_warning: Callable[[str], None] | None = None,
                 transport: httpx.BaseTransport | None = None):
        self.server = server.rstrip("/")
        self.cache_dir = Path(cache_dir)
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.server, timeout=timeout, headers=headers, transport=transport)
        self._warn = on_warning or (lambda msg: warnings.warn(msg, StaleTableWarning, stacklevel=3))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TableClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def cache_path(self, device: str, space: str, selector: Selector | None = None) -> Path:
        sel = selector or Selector()
        tag = "" if sel.is_default else f".{sel.slug()}"
        return self.cache_dir / "tables" / _slug(self.server) / _slug(device) / f"{_slug(space)}{tag}.json"

    def _read_cache(self, device: str, space: str, sel: Selector) -> tuple[Table, str | None, str] | None:
        p = self.cache_path(device, space, sel)
        if not p.is_file():
            return None
        try:
            blob = json.loads(p.read_text())
            return parse_table(blob["table"], f"cached table {p}"), blob.get("etag"), blob.get("fetched_at", "?")
        except (ValueError, KeyError, TableError):
            # A corrupt cache file is not a measurement; it is ignored (and overwritten on success).
            return None

    def fetch(self, device: str, space: str, selector: Selector | None = None) -> Fetched:
        """The table of ``device`` for ``space`` in the configuration ``selector`` picks (default: the
        server's rule, the newest complete one); see the module docstring for the offline rule."""
        sel = selector or Selector()
        cached = self._read_cache(device, space, sel)
        headers = {"If-None-Match": cached[1]} if cached and cached[1] else {}
        url = f"/tables/{quote(device, safe='')}"
        params = {"space": space, **sel.params()}
        try:
            r = self._http.get(url, params=params, headers=headers)
        except httpx.TransportError as e:
            return self._offline(device, space, cached, f"cannot reach {self.server} ({type(e).__name__}: {e})")
        if r.status_code == 304 and cached:
            return Fetched(cached[0], "revalidated", cached[1])
        if r.status_code >= 500:
            return self._offline(device, space, cached, f"{self.server} answered {r.status_code}")
        if r.status_code != 200:
            raise TableError(f"GET {r.request.url}: {r.status_code} {detail(r, 300)}")
        table = parse_table(r.content, f"the response of {self.server}{url}")
        etag = r.headers.get("ETag")
        atomic_write(self.cache_path(device, space, sel), json.dumps({
            "etag": etag, "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "url": str(r.request.url), "selector": sel.params(), "table": table.model_dump(mode="json"),
        }))
        return Fetched(table, "server", etag)

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


__all__ = ["DEFAULT_CACHE_DIR", "Fetched", "StaleTableWarning", "TableClient", "detail", "get_table", "save_table"]
