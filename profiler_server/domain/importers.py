"""Importers of external latency tables, mapped onto the project's op keys.

Formats: ``hwnasbench`` (flat ``{key: ms}``, notes/DATA.md section 2), ``proxylessnas`` and ``ofa``
(``{key: {count, mean, var|std}}`` in ms, JSON or YAML, sections 3 and 4). Only keys that describe an
op of the space map; everything else is reported as unmapped, never guessed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import yaml
from sqlalchemy.orm import Session

from db.models import Device, ImportedTable, Run
from db.summaries import IMPORT, summarize_run
from fbnet import wire
from fbnet.configuration import Selector
from fbnet.space import BY_NAME, Op, Space
from profiler_server.domain.devices import touch
from profiler_server.domain.runs import FINISHED, store_rows
from profiler_server.domain.spaces import ensure_space
from profiler_server.domain.tables import assemble
from profiler_server.errors import Invalid

FORMATS = ("hwnasbench", "proxylessnas", "ofa")


@dataclass
class Parsed:
    entries_in_file: int
    values: dict[str, dict]  # our op key -> measurement row (µs)
    unmapped: list[str]


def _i(m: re.Match, g: str) -> int:
    return int(m[g])


def _block(kernel: int, expansion: int, groups: int) -> str | None:
    name = f"k{kernel}_e{expansion}" + (f"_g{groups}" if groups != 1 else "")
    return name if name in BY_NAME else None


_HW = {
    "conv": re.compile(r"^ConvBlock_H(?P<h>\d+)_W(?P<w>\d+)_Cin(?P<cin>\d+)_Cout(?P<cout>\d+)_exp(?P<e>\d+)"
                       r"_kernel(?P<k>\d+)_stride(?P<s>\d+)_group(?P<g>\d+)$"),
    "skip": re.compile(r"^Skip_H(?P<h>\d+)_W(?P<w>\d+)_Cin(?P<cin>\d+)_Cout(?P<cout>\d+)_stride(?P<s>\d+)$"),
    "convnorm": re.compile(r"^ConvNorm_H(?P<h>\d+)_W(?P<w>\d+)_Cin(?P<cin>\d+)_Cout(?P<cout>\d+)_kernel(?P<k>\d+)"
                           r"_stride(?P<s>\d+)_group1$"),
    "pool": re.compile(r"^AvgP_H(?P<h>\d+)_W(?P<w>\d+)_Cin(?P<cin>\d+)_Cout(?P=cin)_kernel(?P=h)_stride1$"),
    "fc": re.compile(r"^FC_Cin(?P<cin>\d+)_Cout(?P<cout>\d+)$"),
}


def hwnasbench_key(key: str) -> str | None:
    """Our op key for a HW-NAS-Bench FBNet LUT key, or None if it is not an op we know."""
    if m := _HW["conv"].match(key):
        block = _block(_i(m, "k"), _i(m, "e"), _i(m, "g"))
        if block is None:
            return None
        return Op(block, _i(m, "cin"), _i(m, "h"), _i(m, "w"), _i(m, "cout"), _i(m, "s")).key
    if m := _HW["skip"].match(key):
        return Op("skip", _i(m, "cin"), _i(m, "h"), _i(m, "w"), _i(m, "cout"), _i(m, "s")).key
    if m := _HW["convnorm"].match(key):
        kind = {3: "stem", 1: "head"}.get(_i(m, "k"))
        return None if kind is None else Op(kind, _i(m, "cin"), _i(m, "h"), _i(m, "w"), _i(m, "cout"), _i(m, "s")).key
    if m := _HW["pool"].match(key):
        return Op("pool", _i(m, "cin"), _i(m, "h"), _i(m, "w"), _i(m, "cin"), 1).key
    if m := _HW["fc"].match(key):
        return Op("fc", _i(m, "cin"), 1, 1, _i(m, "cout"), 1).key
    return None


_SHAPE = r"(?P<h>\d+)x(?P<w>\d+)x(?P<cin>\d+)-output:(?P<ho>\d+)x(?P<wo>\d+)x(?P<cout>\d+)"
_PX = {
    "mb": re.compile(rf"^expanded_conv-input:{_SHAPE}-expand:(?P<e>\d+)-kernel:(?P<k>\d+)-stride:(?P<s>\d+)"
                     r"-idskip:(?P<id>[01])(?:-se:(?P<se>[01]))?(?:-hs:(?P<hs>[01]))?$"),
    "stem": re.compile(rf"^Conv-input:{_SHAPE}$"),
    "head": re.compile(rf"^Conv_1-input:{_SHAPE}$"),
    "pool": re.compile(r"^AvgPool2D-input:(?P<h>\d+)x(?P<w>\d+)x(?P<cin>\d+)-output:1x1x(?P=cin)$"),
    "fc": re.compile(r"^Logits-input:1x1x(?P<cin>\d+)-output:(?P<cout>\d+)$"),
}


def mobile_key(key: str, fmt: str) -> str | None:
    """Our op key for a ProxylessNAS/OFA LUT key (MBConv with ReLU, no SE, no h-swish only)."""
    if m := _PX["mb"].match(key):
        if m["se"] == "1" or m["hs"] == "1":
            return None  # squeeze-excite / h-swish blocks are not FBNet blocks
        cin, e = _i(m, "cin"), _i(m, "e")
        if fmt == "ofa":  # OFA's 'expand' is the middle channel count, ProxylessNAS's the ratio
            if e % cin:
                return None
            e //= cin
        block = _block(_i(m, "k"), e, 1)
        if block is None:
            return None
        return Op(block, cin, _i(m, "h"), _i(m, "w"), _i(m, "cout"), _i(m, "s")).key
    for kind in ("stem", "head"):
        if m := _PX[kind].match(key):
            h, ho = _i(m, "h"), _i(m, "ho")
            s = next((s for s in (1, 2, 4) if (h - 1) // s + 1 == ho), None)
            if s is None:
                return None
            return Op(kind, _i(m, "cin"), h, _i(m, "w"), _i(m, "cout"), s).key
    if m := _PX["pool"].match(key):
        return Op("pool", _i(m, "cin"), _i(m, "h"), _i(m, "w"), _i(m, "cin"), 1).key
    if fmt == "ofa" and (m := _PX["fc"].match(key)):  # ProxylessNAS's Logits also holds the pool
        return Op("fc", _i(m, "cin"), 1, 1, _i(m, "cout"), 1).key
    return None


def _ms(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise Invalid(f"entry {key!r}: latency must be a finite number >= 0 (ms), got {value!r}")
    return float(value)


def _row(ms: float, n: int = 1, std_ms: float = 0.0) -> dict:
    us = ms * 1000.0
    return {"n": n, "median_us": us, "mean_us": us, "std_us": std_ms * 1000.0, "min_us": us, "p10_us": us,
            "p90_us": us, "samples_us": None}


def load_document(body: bytes, fmt: str) -> dict:
    """Decode the uploaded file: JSON for every format, YAML too for proxylessnas/ofa."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        if fmt == "hwnasbench":
            raise Invalid(f"the {fmt} table must be a JSON object: {e}") from None
        try:
            doc = yaml.safe_load(body)
        except yaml.YAMLError as ye:
            raise Invalid(f"the {fmt} table is neither JSON nor YAML: {ye}") from None
    if not isinstance(doc, dict) or not doc:
        raise Invalid(f"the {fmt} table must be a non-empty object of op key -> latency")
    return doc


def parse(doc: dict, fmt: str, space: Space) -> Parsed:
    if fmt not in FORMATS:
        raise Invalid(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    values: dict[str, dict] = {}
    unmapped: list[str] = []
    for raw_key, value in doc.items():
        key = str(raw_key)
        if fmt == "hwnasbench":
            row = _row(_ms(value, key))
            ours = hwnasbench_key(key)
        else:
            if not isinstance(value, dict) or "mean" not in value:
                raise Invalid(f"entry {key!r}: expected an object with 'mean' (ms), got {value!r}")
            mean = _ms(value["mean"], key)
            if "std" in value:
                std = _ms(value["std"], key)
            else:
                std = math.sqrt(_ms(value.get("var", 0.0), key))
            count = value.get("count", 1)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise Invalid(f"entry {key!r}: 'count' must be a positive integer, got {count!r}")
            row = _row(mean, count, std)
            ours = mobile_key(key, fmt)
        if ours is None or ours not in space.op_by_key:
            unmapped.append(key)
        elif ours in values:
            raise Invalid(f"entries map to the same op {ours!r} twice (second: {key!r})")
        else:
            values[ours] = row
    return Parsed(len(doc), values, unmapped)


def import_table(session: Session, device: Device, space: Space, fmt: str, doc: dict,
                 source: str | None = None, precision: str | None = None) -> wire.ImportResult:
    """Store ``doc`` as one finished run (transport 'import') of ``device`` and report the mapping.

    The import is a configuration of its own (runtime ``fmt``, runtime_version ``import-<fmt>``, the
    given precision, else the device's): it never blends with measured runs."""
    parsed = parse(doc, fmt, space)
    if not parsed.values:
        raise Invalid(f"no entry of the {fmt} table belongs to space {space.name!r}; nothing was stored")
    row = ensure_space(session, space)
    now = datetime.now(UTC)
    run = Run(device_id=device.id, space_id=row.id, space_version=space.version, transport=IMPORT,
              agent_version=f"import-{fmt}", runtime=fmt, runtime_version=f"import-{fmt}", status=FINISHED,
              precision=precision or device.precision,
              started_at=now, finished_at=now, extra={"source": source} if source else {})
    session.add(run)
    session.flush()
    store_rows(session, run.id, [{"key": k, **v} for k, v in parsed.values.items()])
    session.add(ImportedTable(device_id=device.id, space_id=row.id, run_id=run.id, format=fmt, source=source,
                              entries_in_file=parsed.entries_in_file, mapped=len(parsed.values),
                              unmapped=parsed.unmapped))
    touch(session, device.id)
    session.flush()
    summarize_run(session, run.id)
    sel = Selector(precision=precision or device.precision, runtime_version=f"import-{fmt}")
    missing = assemble(session, device, space, sel).missing
    return wire.ImportResult(device=device.name, space=space.name, format=fmt,
                                entries_in_file=parsed.entries_in_file, mapped=len(parsed.values),
                                unmapped=parsed.unmapped, missing=missing)
