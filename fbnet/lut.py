"""The table maths: a served latency table -> the supernet's latency matrix, and ``predict``.

**The one rule.** A client prices every op of an architecture with the value the table serves for
it, identity skips included (a measured table serves them at 0.0, an imported one may give them a
cost), and re-derives nothing. The search's latency matrix, ``fbnet-search predict`` and
``fbnet-agent validate`` all go through this module, so they cannot disagree with the table.

No torch here (the search turns ``LatencyLUT.matrix`` into a tensor). A table with missing ops is refused with
the list of them: no number is ever made up.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from fbnet.space import CANDIDATE_NAMES, NUM_LAYERS, Arch, Space
from fbnet.wire import Table


class TableError(RuntimeError):
    """A table that cannot be obtained or does not fit the space (one-line message)."""


def fmt_missing(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# ---- reading tables ----------------------------------------------------------------------------
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
                         f"op(s) have no latency: {fmt_missing(sorted(table.missing))}")


def latencies(table: Table, keys) -> tuple[dict[str, float], list[str]]:
    """The served latency of each key (identity skips too). Returns (found, missing keys)."""
    by_key = {e.key: e for e in table.entries}
    found: dict[str, float] = {}
    missing: list[str] = []
    for key in dict.fromkeys(keys):
        e = by_key.get(key)
        if e is None or e.latency_us is None or not math.isfinite(e.latency_us) or e.latency_us < 0:
            missing.append(key)
        else:
            found[key] = float(e.latency_us)
    return found, missing


# ---- the supernet's matrix ----------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyLUT:
    """A device's table aligned with the supernet: ``matrix[l][i]`` is candidate i at layer l (us)."""

    space: Space
    device: str
    table_version: str
    keys: tuple[tuple[str, ...], ...]
    matrix: tuple[tuple[float, ...], ...]
    fixed: tuple[tuple[str, float], ...]
    overhead_us: float | None = None

    @property
    def fixed_us(self) -> float:
        return sum(v for _, v in self.fixed)

    def lookup(self) -> dict[str, float]:
        out = {k: v for row_k, row_v in zip(self.keys, self.matrix, strict=True)
               for k, v in zip(row_k, row_v, strict=True)}
        out.update(dict(self.fixed))
        return out

    def arch_latency(self, arch: Arch) -> float:
        """Table latency of an architecture (the same sum as :func:`predict`)."""
        return predict(self, arch)["latency_us"]


def build_lut(table: Table, space: Space) -> LatencyLUT:
    """Check the table (space, version, completeness) and align it with the supernet."""
    check_table(table, space)
    keys = [[space.layer_op(layer, i).key for i in range(len(CANDIDATE_NAMES))] for layer in range(NUM_LAYERS)]
    fixed_keys = [op.key for op in space.fixed_ops]
    found, missing = latencies(table, [k for row in keys for k in row] + fixed_keys)
    if missing:
        raise TableError(f"the table of {table.device!r}/{space.name} lacks {len(missing)} op(s) the supernet "
                         f"needs: {fmt_missing(missing)}")
    return LatencyLUT(
        space=space, device=table.device, table_version=table.version,
        keys=tuple(tuple(r) for r in keys),
        matrix=tuple(tuple(found[k] for k in r) for r in keys),
        fixed=tuple((k, found[k]) for k in fixed_keys),
        overhead_us=table.overhead_us,
    )


# ---- prediction ---------------------------------------------------------------------------------
def predict(source: Table | LatencyLUT, arch: Arch, space: Space | None = None, *,
            overhead_us: float | None = None) -> dict:
    """``{"latency_us", "per_op": [{"key", "latency_us"}], "raw_sum_us", "ops_run"}``.

    Every op of the architecture in execution order (stem, the 22 layers, head, pool, fc), each at
    the value the table serves, identity skips included. A table need not be complete, but every op
    of this architecture must have a latency. The plain sum is the prediction; with ``overhead_us``
    (the runtime's per-call overhead, the table's ``overhead_us``) it is corrected for paying that
    overhead once per isolated op instead of once per model: ``sum - (ops_run - 1) * overhead_us``,
    where ``ops_run`` counts the ops that execute (identity skips run nothing).
    """
    if isinstance(source, LatencyLUT):
        space = source.space
        lookup = source.lookup()
    else:
        if space is None:
            raise TypeError("predict(table, arch, space): the space is needed with a Table")
        check_table(source, space, require_complete=False)
        lookup, missing = latencies(source, [op.key for op in space.arch_ops(arch, with_identity=True)])
        if missing:
            raise TableError(f"the table of {source.device!r}/{space.name} has no latency for "
                             f"{len(missing)} op(s) of this architecture: {fmt_missing(missing)}")
    ops = space.arch_ops(arch, with_identity=True)
    per_op = [{"key": op.key, "latency_us": lookup[op.key]} for op in ops]
    raw = math.fsum(p["latency_us"] for p in per_op)
    if overhead_us is not None and (not math.isfinite(overhead_us) or overhead_us < 0):
        raise TableError(f"overhead_us must be a finite number >= 0, got {overhead_us}")
    ops_run = sum(not op.is_identity for op in ops)
    latency = raw - (ops_run - 1) * overhead_us if overhead_us else raw
    return {"latency_us": latency, "per_op": per_op, "raw_sum_us": raw, "ops_run": ops_run}


__all__ = ["LatencyLUT", "TableError", "build_lut", "check_table", "fmt_missing", "latencies", "load_table_file",
           "parse_table", "predict"]
