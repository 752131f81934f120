"""v2 (FBNetV2) tables: the measured entries of one configuration, every other grid op fitted.

A v2 space's grid (``fbnetv2-cifar``: 20 k ops) is not measured op by op: the agents measure a sample
the service plans (:mod:`profiler_server.domain.planning`), and the table serves every grid op with
its ``source``: ``measured`` (as a v1 table assembles it, from the finished runs of ONE
configuration), ``fitted`` (the model of :mod:`profiler_server.domain.fitting`, fitted on the
measured entries of that configuration), ``identity`` (cost 0) or ``missing`` (no fit covers it).
The table carries the model's held-out error (k-fold over the measured ops). The fit is a function of
the measured entries: tables are cached per device generation like v1 ones, so a finished run
(which bumps the generation) refits, and the version (the ETag) hashes the measured entries, the
configuration and the model's kind. Fits are stored in the database by the content hash of what they
were fitted on (``grid_fits``: the grid's predictions, the held-out error): a restarted server reads
the stored fit instead of refitting, and serves the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import version
from statistics import median

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from db.models import Device, GridFitRow
from fbnet import wire
from fbnet.configuration import Configuration, Selector
from fbnet.ops_v2 import OpV2
from fbnet.space_v2 import SpaceV2, get_v2_space
from profiler_server.domain import fitting
from profiler_server.domain.tables import CachedTable, _configurations, _newest_rows, finished_runs, pick, space_id

FIT_FOLDS = 5
MODEL_REVISION = 2  # raise it when a change to domain.fitting changes what a fit predicts (stored fits are keyed by it)
KEEP_FITS = 4  # grid_fits rows kept per device, space and configuration (the newest)
log = logging.getLogger(__name__)
GRID_RULE = (
    "A v2 table serves every op of the space's grid in grid order, as columns. Measured entries are assembled "
    "as in a v1 table from the FINISHED runs of ONE configuration (the newest {max_runs} runs per op; latency_us "
    "= median of the runs' medians, corrected_us = median of their overhead-corrected medians). Every other "
    "op is FITTED: the model (kind {kind}: per block family, a non-negative least-squares fit of corrected_us on "
    "multiply-adds with channel counts padded to a multiple of the family's vector width, chosen among "
    "{widths} by k-fold error (model.vector_width), then boosted trees on the log residual over the padded "
    "shape) is fitted on that configuration's measured corrected_us; a fitted entry's "
    "corrected_us is the prediction and its latency_us the prediction + overhead_us. Identity skips cost 0 "
    "(source identity); ops no fit covers (a family without a measured op) are missing. model.heldout is "
    "the error on measured ops predicted by fits that did not see them ({folds}-fold). measured_only=true "
    "refuses a table with fitted entries (409). version = content hash of the measured entries, the "
    "configuration and the model kind (the ETag)."
)


@dataclass(frozen=True)
class Grid:
    """A v2 space's grid in grid order, with its shape rows for the model."""

    space: SpaceV2
    ops: tuple[OpV2, ...]
    keys: tuple[str, ...]
    index: dict[str, int]
    shapes: np.ndarray
    identity: np.ndarray  # bool per op

    @property
    def priced(self) -> int:
        return int((~self.identity).sum())


@lru_cache(maxsize=8)
def _grid(name: str, version: str) -> Grid:
    sp = get_v2_space(name)
    ops, keys = tuple(sp.grid.values()), tuple(sp.grid)
    return Grid(sp, ops, keys, {k: i for i, k in enumerate(keys)}, fitting.shape_array(list(ops)),
                np.array([op.is_identity for op in ops]))


def grid_of(space: SpaceV2) -> Grid:
    return _grid(space.name, space.version)


@dataclass
class GridFit:
    """A fit of one configuration's measured entries, its held-out error and its grid predictions.
    ``shapes``/``y`` are the measured rows it was fitted on: the model itself is refitted from them
    only when something asks for it (a width curve) after the fit was read from the database."""

    kind: str
    widths: dict[str, int | None]
    heldout: fitting.HeldOut
    predicted: np.ndarray  # corrected us per grid op (NaN: no fit covers the op)
    families: dict[str, int]
    shapes: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    fitted: fitting.LatencyModel | None = field(default=None, repr=False)
    stored: bool = False  # a grid_fits row holds it

    @property
    def model(self) -> fitting.LatencyModel:
        if self.fitted is None:  # read from the database: the same deterministic fit of the same rows
            self.fitted = fitting.fit_model(self.shapes, self.y, self.kind)
        return self.fitted

    def heldout_out(self) -> wire.HeldOutError:
        h = self.heldout
        return wire.HeldOutError(n=h.n, folds=h.folds, within_10pct=h.within_10pct, mape=h.mape)

    def model_out(self) -> wire.GridModel:
        return wire.GridModel(kind=self.kind, families=self.families, vector_width=self.widths,
                              heldout=self.heldout_out())


_FITS: OrderedDict[str, GridFit] = OrderedDict()
_FIT_LOCK = threading.Lock()  # one fit at a time: two readers of a new generation share it


def fit_grid(grid: Grid, measured: dict[str, float], kind: str = fitting.DEFAULT_KIND,
             store: FitStore | None = None) -> GridFit | None:
    """The fit of ``measured`` (key -> corrected us, grid ops, no identity skips) over ``grid``;
    cached by content: once per process, and in the database through ``store`` (a restarted server
    reads the stored fit instead of refitting). None: nothing measured."""
    keys = sorted(k for k in measured if not grid.identity[grid.index[k]])
    if not keys:
        return None
    ck = fit_hash(grid, kind, [(k, measured[k]) for k in keys])
    with _FIT_LOCK:
        fit = _FITS.get(ck)
        if fit is not None:
            _FITS.move_to_end(ck)
        else:
            idx = np.array([grid.index[k] for k in keys])
            s, y = grid.shapes[idx], np.array([max(measured[k], 1e-3) for k in keys])
            fit = store.load(ck, grid, kind, s, y) if store is not None else None
            fit = fit or _fit(grid, s, y, kind)
            _FITS[ck] = fit
            while len(_FITS) > 32:
                _FITS.popitem(last=False)
    if store is not None and store.write and not fit.stored:
        store.save(ck, fit)
    return fit


def _fit(grid: Grid, s: np.ndarray, y: np.ndarray, kind: str) -> GridFit:
    model = fitting.fit_model(s, y, kind)
    fam = {f: int((s[:, 0] == i).sum()) for i, f in enumerate(fitting.FAMILIES) if (s[:, 0] == i).any()}
    return GridFit(kind, model.widths, fitting.heldout(s, y, kind, FIT_FOLDS), model.predict(grid.shapes), fam,
                   s, y, fitted=model)


@lru_cache(maxsize=1)
def _libraries() -> tuple[str, ...]:
    return tuple(f"{p} {version(p)}" for p in ("numpy", "scipy", "scikit-learn"))


def fit_hash(grid: Grid, kind: str, measured: list[tuple[str, float]]) -> str:
    """The content hash of a fit: the space version, the model kind and revision, the held-out folds,
    the numeric libraries' versions and the measured (key, corrected us) pairs, sorted by key."""
    blob = json.dumps([grid.space.version, kind, MODEL_REVISION, FIT_FOLDS, _libraries(), measured],
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class FitStore:
    """The ``grid_fits`` rows of one device, space and configuration: :func:`fit_grid` reads a fit by
    content hash through ``session`` and, with ``write``, stores a new one in a session of its own
    (committed at once; the request's session may be read-only) and keeps the newest :data:`KEEP_FITS`."""

    session: Session
    device_id: int
    space_id: int
    config_id: str
    write: bool = True

    def load(self, ck: str, grid: Grid, kind: str, s: np.ndarray, y: np.ndarray) -> GridFit | None:
        row = self.session.scalars(select(GridFitRow).where(GridFitRow.content_hash == ck)).first()
        if row is None:
            return None
        predicted = np.frombuffer(zlib.decompress(row.predicted), dtype="<f8")
        if row.kind != kind or len(predicted) != len(grid.ops):
            log.warning("grid fit %s: stored row %d does not match the grid (%d ops, kind %s); refitting",
                        ck[:12], row.id, len(predicted), row.kind)
            return None
        meta = json.loads(row.meta)
        h = fitting.HeldOut(**meta["heldout"], predicted=np.empty(0))
        log.info("grid fit %s read from the database (row %d)", ck[:12], row.id)
        return GridFit(kind, meta["widths"], h, predicted, meta["families"], s, y, stored=True)

    def save(self, ck: str, fit: GridFit) -> None:
        h = fit.heldout
        meta = {"heldout": {"n": h.n, "folds": h.folds, "within_10pct": h.within_10pct, "mape": h.mape},
                "widths": fit.widths, "families": fit.families}
        row = GridFitRow(content_hash=ck, device_id=self.device_id, space_id=self.space_id, config_id=self.config_id,
                         kind=fit.kind, n_ops=len(fit.predicted), meta=json.dumps(meta),
                         predicted=zlib.compress(np.asarray(fit.predicted, dtype="<f8").tobytes(), 6))
        mine = (GridFitRow.device_id == self.device_id, GridFitRow.space_id == self.space_id,
                GridFitRow.config_id == self.config_id)
        with Session(self.session.get_bind()) as s:
            try:
                s.add(row)
                s.flush()
                keep = select(GridFitRow.id).where(*mine).order_by(GridFitRow.id.desc()).limit(KEEP_FITS)
                s.execute(delete(GridFitRow).where(*mine, GridFitRow.id.not_in(list(s.scalars(keep)))))
                s.commit()
            except IntegrityError:  # another request or process stored the same fit first
                s.rollback()
            except OperationalError as e:  # the database is busy: the fit is served, stored next time
                s.rollback()
                log.warning("grid fit %s not stored: %s", ck[:12], str(e).splitlines()[0])
                return
        fit.stored = True
        log.info("grid fit %s stored", ck[:12])


@dataclass
class _Measured:
    latency_us: float
    corrected_us: float
    n: int
    run_ids: list[int]


def measured_entries(session: Session, device: Device, space: SpaceV2, selector: Selector,
                     max_runs: int) -> tuple[Configuration | None, dict[str, _Measured], list]:
    """The configuration ``selector`` picks, its measured entries (v1 assembly rule) and its runs."""
    runs = finished_runs(session, device, space)
    configs, covered = _configurations(session, device, space, space_id(session, space), runs,
                                       selector.include_unstable)
    chosen = pick(configs, selector, device.name, space.name)
    if chosen is None:
        return None, {}, []
    cfg = Configuration(**chosen.model_dump(include=set(Configuration.model_fields)))
    return cfg, *_entries(session, chosen, covered[chosen.id], runs, max_runs, selector.include_unstable)


def config_entries(session: Session, device: Device, space: SpaceV2, config_id: str,
                   max_runs: int = 16) -> dict[str, _Measured]:
    """The measured entries of the configuration ``config_id`` (stable runs only; empty if it has none)."""
    runs = finished_runs(session, device, space)
    configs, covered = _configurations(session, device, space, space_id(session, space), runs, False)
    chosen = next((c for c in configs if c.id == config_id and c.runs), None)
    return {} if chosen is None else _entries(session, chosen, covered[chosen.id], runs, max_runs, False)[0]


def _entries(session: Session, chosen, covered: set[str], runs: list, max_runs: int,
             include_unstable: bool) -> tuple[dict[str, _Measured], list]:
    rows = _newest_rows(session, chosen.id, chosen.runs, covered, max_runs, include_unstable)
    out = {}
    for key, rs in rows.items():
        lat = float(median(r.median_us for r in rs))
        corr = [c for r in rs if (c := r.corrected_us) is not None]
        out[key] = _Measured(lat, float(median(corr)) if corr else lat, sum(r.n for r in rs),
                             sorted(r.run_id for r in rs))
    used = {rid for m in out.values() for rid in m.run_ids}
    return out, [r for r in runs if r.id in used]


def _columns(grid: Grid, measured: dict[str, _Measured], fit: GridFit | None, overhead: float | None) -> dict:
    """The table's columns in grid order: measured entries, identity skips, fitted predictions (a
    prediction + ``overhead`` as latency_us), and what no fit covers as missing."""
    n = len(grid.ops)
    pred = fit.predicted if fit is not None else np.full(n, np.nan)
    fitted = np.isfinite(pred) & ~grid.identity
    corr = np.where(fitted, pred, 0.0).tolist()
    lat = np.where(fitted, pred + (overhead or 0.0), 0.0).tolist()
    source = np.where(fitted, "fitted", np.where(grid.identity, "identity", "missing")).astype(object).tolist()
    cols = {"key": list(grid.keys), "latency_us": lat, "corrected_us": corr, "source": source,
            "n": [0] * n, "runs": [0] * n}
    for i in np.flatnonzero(~fitted & ~grid.identity).tolist():  # missing: no fit covers the op
        lat[i] = corr[i] = None
    for key, m in measured.items():
        i = grid.index[key]
        lat[i], corr[i], source[i], cols["n"][i], cols["runs"][i] = (m.latency_us, m.corrected_us, "measured", m.n,
                                                                     len(m.run_ids))
    return cols


def _over_runs(runs: list, attr: str) -> float | None:
    vals = [v for r in runs if (v := getattr(r, attr)) is not None]
    return float(median(vals)) if vals else None


def assemble_v2(session: Session, device: Device, space: SpaceV2, selector: Selector | None = None,
                max_runs: int = 16) -> tuple[wire.GridTable, GridFit | None]:
    """The v2 table of ``device`` in the configuration ``selector`` picks (rule: :data:`GRID_RULE`), and
    the fit behind its fitted entries."""
    selector = selector or Selector()
    grid = grid_of(space)
    cfg, measured, runs = measured_entries(session, device, space, selector, max_runs)
    store = cfg and FitStore(session, device.id, space_id(session, space), cfg.config_id)
    fit = fit_grid(grid, {k: m.corrected_us for k, m in measured.items()}, store=store)
    overhead = _over_runs(runs, "overhead_us")
    context, cost = _over_runs(runs, "context_factor"), _over_runs(runs, "context_us_per_mb")
    cols = _columns(grid, measured, fit, overhead)
    counts = {s: 0 for s in ("measured", "fitted", "identity", "missing")}
    for s in cols["source"]:
        counts[s] += 1
    missing = [k for k, s in zip(cols["key"], cols["source"], strict=True) if s == "missing"]
    blob = json.dumps({"measured": {k: [m.latency_us, m.corrected_us, m.n, m.run_ids] for k, m in sorted(measured.items())},
                       "configuration": cfg and cfg.model_dump(), "include_unstable": selector.include_unstable,
                       "kind": fitting.DEFAULT_KIND, "space": space.version, "overhead_us": overhead,
                       "context": [context, cost]}, sort_keys=True, separators=(",", ":"))
    table = wire.GridTable.model_construct(
        device=device.name, space=space.name, space_version=space.version,
        version=hashlib.sha256(blob.encode()).hexdigest()[:20], unit="us", format="columnar",
        complete=not missing, counts=counts, missing=missing, overhead_us=overhead, context_factor=context,
        context_us_per_mb=cost, configuration=cfg, model=fit.model_out() if fit else None,
        rule=GRID_RULE.format(max_runs=max_runs, kind=fitting.DEFAULT_KIND, widths=list(fitting.VECTOR_WIDTHS),
                              folds=FIT_FOLDS),
        columns=wire.GridColumns.model_construct(**cols))
    return table, fit


def cached_grid_table(session: Session, device: Device, space: SpaceV2, selector: Selector,
                      max_runs: int) -> CachedTable:
    """The table cache's entry of a v2 table (:class:`profiler_server.domain.tables.TableCache`)."""
    table, fit = assemble_v2(session, device, space, selector, max_runs)
    return CachedTable(table, grid_json(table), f'"{table.version}"', fit=fit, csv_fn=grid_csv)


def grid_json(table: wire.GridTable) -> bytes:
    """The table's JSON (compact; the columns as plain lists)."""
    head = table.model_dump(mode="json", exclude={"columns"})
    c = table.columns
    cols = {"key": c.key, "latency_us": c.latency_us, "corrected_us": c.corrected_us, "source": c.source,
            "n": c.n, "runs": c.runs}
    return json.dumps({**head, "columns": cols}, separators=(",", ":")).encode()


def grid_csv(table: wire.GridTable) -> str:
    c = table.columns
    lines = ["key,latency_us,corrected_us,source,n,runs"]
    for row in zip(c.key, c.latency_us, c.corrected_us, c.source, c.n, c.runs, strict=True):
        lines.append(",".join("" if v is None else str(v) for v in row))
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class WidthCurve:
    """One layer's latency against its output width: the model at every width and the grid entries."""

    title: str
    widths: list[int]
    fitted_us: list[float]
    points: list[tuple[int, float, str]]  # (width, corrected us, source) of the layer's grid entries


def width_curve(table: wire.GridTable, fit: GridFit, layer: int, block: str, resolution: int | None = None,
                cin: int | None = None, expansion: float | None = None) -> WidthCurve:
    """Latency of ``block`` at ``layer`` against its output width (defaults: the first resolution, the
    largest input width, the largest expansion)."""
    space = get_v2_space(table.space)
    if not 0 <= layer < space.num_layers:
        raise ValueError(f"layer must be 0..{space.num_layers - 1}")
    if block not in space.blocks or block == "skip":
        raise ValueError(f"block must be one of {', '.join(b for b in space.blocks if b != 'skip')}")
    resolution = resolution or space.resolutions[0]
    cin = cin or max(space.input_widths(layer))
    expansion = expansion or max(space.expansions)
    if resolution not in space.resolutions or cin not in space.input_widths(layer) or expansion not in space.expansions:
        raise ValueError(f"resolution in {list(space.resolutions)}, cin in {list(space.input_widths(layer))}, "
                         f"expansion in {list(space.expansions)}")
    from fbnet.arch_v2 import LayerChoice

    options = space.layers[layer].widths
    widths = list(range(max(1, options[0] - 8), options[-1] + 9))
    ops = [space.layer_op(layer, resolution, cin, LayerChoice(block, w, expansion)) for w in widths]
    fitted = [float(v) for v in fit.model.predict(fitting.shape_array(ops))]
    at = {k: i for i, k in enumerate(table.columns.key)}
    points = []
    for w in options:
        i = at[space.layer_op(layer, resolution, cin, LayerChoice(block, w, expansion)).key]
        if table.columns.corrected_us[i] is not None:
            points.append((w, table.columns.corrected_us[i], table.columns.source[i]))
    title = (f"{table.device} / {table.space}: layer {layer} {block}, {resolution}px, cin {cin}, "
             f"expansion {expansion:g} ({fit.model.kind})")
    return WidthCurve(title, widths, fitted, points)
