"""Latency tables for the search: fetched over HTTP (cached on disk, ETag-revalidated) or read from
a saved file, checked against the local space, and turned into a [22 x 9] latency matrix aligned
with the supernet plus the fixed-op constant.

No numbers are ever made up: a table with missing ops is refused with the list of them. The one
substitution is deliberate and announced: when the server cannot be reached, the last table this
client fetched from it (a real measurement, stored with its ETag) is used, with a warning.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from profiler_server.schemas import Table
from search.space import CANDIDATE_NAMES, NUM_LAYERS, Arch, Space

DEFAULT_CACHE_DIR = Path(".fbnet-cache")
TOKEN_ENV = "FBNET_TOKEN"


class TableError(RuntimeError):
    """A table that cannot be obtained or does not fit the space (one-line message)."""


class StaleTableWarning(RuntimeWarning):
    """The server was unreachable and a cached table is used instead."""


def _fmt_missing(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# ---- reading and writing tables --------------------------------------------------------------
def parse_table(data: str | bytes | dict, origin: str) -> Table:
    try:
        if isinstance(data, dict):
            return Table.model_validate(data)
        return Table.model_validate_json(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise TableError(f"{origin} is not a latency table: {where}: {first.get('msg')}") from None


def load_table_file(path: str | os.PathLike) -> Table:
    """A table saved as JSON (the body of GET /tables/{device}, or ``fbnet-search fetch``)."""
    p = Path(path)
    if not p.is_file():
        raise TableError(f"table file {p} does not exist")
    return parse_table(p.read_bytes(), f"table file {p}")


def save_table(table: Table, path: str | os.PathLike) -> Path:
    p = Path(path)
    _atomic_write(p, table.model_dump_json(indent=1))
    return p


def _atomic_write(path: Path, text: str) -> None:
    # Several torchrun ranks may refresh the same cache file at once: write aside, then rename.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ---- the HTTP client -------------------------------------------------------------------------
@dataclass(frozen=True)
class Fetched:
    table: Table
    source: str  # "server" (200), "revalidated" (304, cached copy is current) or "cache" (offline)
    etag: str | None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "server"


class TableClient:
    """GET /tables/{device}?space=... with an on-disk cache revalidated by ETag."""

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

    def cache_path(self, device: str, space: str) -> Path:
        return self.cache_dir / "tables" / _slug(self.server) / _slug(device) / f"{_slug(space)}.json"

    def _read_cache(self, device: str, space: str) -> tuple[Table, str | None, str] | None:
        p = self.cache_path(device, space)
        if not p.is_file():
            return None
        try:
            blob = json.loads(p.read_text())
            return parse_table(blob["table"], f"cached table {p}"), blob.get("etag"), blob.get("fetched_at", "?")
        except (ValueError, KeyError, TableError):
            # A corrupt cache file is not a measurement; it is ignored (and overwritten on success).
            return None

    def fetch(self, device: str, space: str) -> Fetched:
        """The table of ``device`` for ``space``; see the module docstring for the offline rule."""
        cached = self._read_cache(device, space)
        headers = {"If-None-Match": cached[1]} if cached and cached[1] else {}
        url = f"/tables/{quote(device, safe='')}"
        try:
            r = self._http.get(url, params={"space": space}, headers=headers)
        except httpx.TransportError as e:
            return self._offline(device, space, cached, f"cannot reach {self.server} ({type(e).__name__}: {e})")
        if r.status_code == 304 and cached:
            return Fetched(cached[0], "revalidated", cached[1])
        if r.status_code >= 500:
            return self._offline(device, space, cached, f"{self.server} answered {r.status_code}")
        if r.status_code != 200:
            raise TableError(f"GET {self.server}{url}?space={space}: {r.status_code} {_detail(r)}")
        table = parse_table(r.content, f"the response of {self.server}{url}")
        etag = r.headers.get("ETag")
        _atomic_write(self.cache_path(device, space), json.dumps({
            "etag": etag, "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "url": f"{self.server}{url}?space={space}", "table": table.model_dump(mode="json"),
        }))
        return Fetched(table, "server", etag)

    def _offline(self, device: str, space: str, cached, why: str) -> Fetched:
        if not cached:
            raise TableError(f"{why}, and no cached table of {device!r}/{space} in {self.cache_dir}")
        self._warn(f"{why}; using the cached table of {device!r}/{space} fetched {cached[2]} "
                   f"(version {cached[0].version})")
        return Fetched(cached[0], "cache", cached[1])


def _detail(r: httpx.Response) -> str:
    try:
        d = r.json().get("detail")
        return d if isinstance(d, str) else json.dumps(d)
    except (ValueError, AttributeError):
        return r.text[:200]


# ---- table -> supernet latency matrix ---------------------------------------------------------
def check_table(table: Table, space: Space, *, require_complete: bool = True) -> None:
    """Refuse a table of another space, another space version, or (by default) with missing ops."""
    if table.space != space.name:
        raise TableError(f"the table of {table.device!r} is for space {table.space!r}, not {space.name!r}")
    if table.space_version != space.version:
        raise TableError(
            f"the table of {table.device!r} was built for {space.name} version {table.space_version}, "
            f"but the local space is version {space.version}: the op lists differ, re-profile or update"
        )
    if table.unit != "us":
        raise TableError(f"table unit {table.unit!r}: only microseconds are supported")
    if require_complete and (not table.complete or table.missing):
        raise TableError(f"the table of {table.device!r}/{space.name} is incomplete: {len(table.missing)} "
                         f"op(s) have no latency: {_fmt_missing(sorted(table.missing))}")


def latencies(table: Table, space: Space, keys) -> tuple[dict[str, float], list[str]]:
    """Latency per key; identity skips are 0 by construction. Returns (found, missing keys)."""
    by_key = {e.key: e for e in table.entries}
    found: dict[str, float] = {}
    missing: list[str] = []
    for key in dict.fromkeys(keys):
        op = space.op_by_key[key]
        if op.is_identity:
            found[key] = 0.0
            continue
        e = by_key.get(key)
        if e is None or e.latency_us is None or not math.isfinite(e.latency_us) or e.latency_us < 0:
            missing.append(key)
        else:
            found[key] = float(e.latency_us)
    return found, missing


@dataclass(frozen=True)
class LatencyLUT:
    """A device's table aligned with the supernet: ``matrix[l][i]`` is candidate i at layer l (us)."""

    space: Space
    device: str
    table_version: str
    keys: tuple[tuple[str, ...], ...]
    matrix: tuple[tuple[float, ...], ...]
    fixed: tuple[tuple[str, float], ...]

    @property
    def fixed_us(self) -> float:
        return sum(v for _, v in self.fixed)

    def tensor(self, dtype=None, device=None):
        """The [22, 9] latency tensor (torch is imported only here)."""
        import torch

        return torch.tensor(self.matrix, dtype=dtype or torch.float32, device=device)

    def arch_latency(self, arch: Arch) -> float:
        """Table latency of an architecture (the same sum as :func:`predict`)."""
        return predict(self, arch)["latency_us"]


def build_lut(table: Table, space: Space) -> LatencyLUT:
    """Check the table (space, version, completeness) and align it with the supernet."""
    check_table(table, space)
    keys = [[space.layer_op(layer, i).key for i in range(len(CANDIDATE_NAMES))] for layer in range(NUM_LAYERS)]
    fixed_keys = [op.key for op in space.fixed_ops]
    found, missing = latencies(table, space, [k for row in keys for k in row] + fixed_keys)
    if missing:
        raise TableError(f"the table of {table.device!r}/{space.name} lacks {len(missing)} op(s) the supernet "
                         f"needs: {_fmt_missing(missing)}")
    return LatencyLUT(
        space=space, device=table.device, table_version=table.version,
        keys=tuple(tuple(r) for r in keys),
        matrix=tuple(tuple(found[k] for k in r) for r in keys),
        fixed=tuple((k, found[k]) for k in fixed_keys),
    )


def predict(source: Table | LatencyLUT, arch: Arch, space: Space | None = None, *,
            overhead_us: float | None = None) -> dict:
    """``{"latency_us", "per_op": [{"key", "latency_us"}], "raw_sum_us"}``: the arch's table latency.

    Ops are those of ``Space.arch_ops`` (execution order, identity skips left out). A table need
    not be complete, but every op of this architecture must have a latency. The plain sum is the
    prediction; with ``overhead_us`` (the runtime's per-call overhead the agents record, the table's
    ``overhead_us``) the sum is corrected for paying that overhead once per isolated op instead of
    once per whole model: ``sum - (ops - 1) * overhead_us``.
    """
    if isinstance(source, LatencyLUT):
        space = source.space
        lookup = {k: v for row_k, row_v in zip(source.keys, source.matrix, strict=True) for k, v in zip(row_k, row_v, strict=True)}
        lookup.update(dict(source.fixed))
        keys = [op.key for op in space.arch_ops(arch)]
    else:
        if space is None:
            raise TypeError("predict(table, arch, space): the space is needed with a Table")
        check_table(source, space, require_complete=False)
        keys = [op.key for op in space.arch_ops(arch)]
        lookup, missing = latencies(source, space, keys)
        if missing:
            raise TableError(f"the table of {source.device!r}/{space.name} has no latency for "
                             f"{len(missing)} op(s) of this architecture: {_fmt_missing(missing)}")
    per_op = [{"key": k, "latency_us": lookup[k]} for k in keys]
    raw = sum(p["latency_us"] for p in per_op)
    if overhead_us is not None and (not math.isfinite(overhead_us) or overhead_us < 0):
        raise TableError(f"overhead_us must be a finite number >= 0, got {overhead_us}")
    latency = raw - (len(keys) - 1) * overhead_us if overhead_us else raw
    return {"latency_us": latency, "per_op": per_op, "raw_sum_us": raw}


def get_table(*, space: Space, server: str | None = None, device: str | None = None,
              table_file: str | os.PathLike | None = None, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
              token: str | None = None, on_warning: Callable[[str], None] | None = None) -> Table:
    """The table named on a command line: ``--table FILE`` or ``--server URL --device NAME``."""
    if table_file is not None:
        if server is not None:
            raise TableError("give either --table FILE or --server URL, not both")
        table = load_table_file(table_file)
        if device is not None and device != table.device:
            raise TableError(f"--device {device!r} but the table file is of device {table.device!r}")
        return table
    if server is None or device is None:
        raise TableError("a latency table is needed: give --server URL --device NAME, or --table FILE")
    with TableClient(server, cache_dir, token=token, on_warning=on_warning) as client:
        return client.fetch(device, space.name).table


__all__ = ["DEFAULT_CACHE_DIR", "Fetched", "LatencyLUT", "StaleTableWarning", "TableClient", "TableError",
           "build_lut", "check_table", "get_table", "latencies", "load_table_file", "parse_table", "predict", "save_table"]
