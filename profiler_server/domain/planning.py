"""What to measure next on a v2 grid: a space-filling design, then adaptive rounds.

``POST /plans/{device}`` (:func:`next_batch`) answers the ops an agent should measure now for one
device, space and configuration. The state is the ``plan_batches`` rows (one per issued batch) and
the measurements themselves:

- the **current batch** is the newest; while some of its ops are neither measured in a finished
  stable run of the configuration, nor in the agent's open run (``run_id``), nor reported ``failed``,
  asking again returns exactly those (an agent killed mid-batch resumes);
- a **new batch** starts the design or continues it: every op of the fixed families (stem, head,
  classifier: a few dozen) first, then a greedy maximin (farthest-point) order over the searchable
  ops in normalised coordinates (block family, kernel, SE, activation, log resolution, Cin, mid,
  Cout, stride), deterministic by the plan's seed; until ``design`` ops are measured;
- then **adaptive** rounds: the model is refitted on bootstrap resamples of the measured ops, the
  unmeasured ops where the fits disagree most (std of their log predictions) are the candidates, and
  a farthest-point pass among the top candidates (away from the measured ops) keeps the batch spread.

No batch once ``budget`` ops are measured or the held-out share within ±10 % reaches ``goal``; the
batch that reaches the budget is cut to it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import ConfigOp, Device, Measurement, PlanBatch, Run
from fbnet import wire
from fbnet.configuration import Configuration
from fbnet.space_v2 import SpaceV2, get_v2_space, is_v2_space
from profiler_server.auth import Caller, require_writer
from profiler_server.domain import fitting
from profiler_server.domain.devices import get_device
from profiler_server.domain.grid import FitStore, Grid, config_entries, fit_grid, grid_of
from profiler_server.domain.spaces import ensure_space
from profiler_server.errors import Conflict, Invalid

FIXED = tuple(fitting.FAMILIES.index(f) for f in ("conv_k3_hs", "ir_pool_hs", "fc"))
CANDIDATES_PER_PICK = 4  # adaptive: the most uncertain 4 x batch ops, then spread among them
BOOTSTRAP = 6


def coords(s: np.ndarray) -> np.ndarray:
    """Normalised design coordinates of shape rows (each column in [0, 1])."""
    c = fitting._C
    cols = [s[:, c["fam"]] == fitting.FAMILIES.index("skip"), s[:, c["k"]] == 5, s[:, c["se"]], s[:, c["hs"]],
            np.log2(s[:, c["h"]]), s[:, c["cin"]], s[:, c["mid"]], s[:, c["cout"]], s[:, c["stride"]]]
    x = np.stack([np.asarray(v, dtype=np.float64) for v in cols], axis=1)
    lo, hi = x.min(axis=0), x.max(axis=0)
    return (x - lo) / np.where(hi > lo, hi - lo, 1.0)


def farthest_points(x: np.ndarray, n: int, seed: int, away_from: np.ndarray | None = None) -> list[int]:
    """Greedy maximin: ``n`` row indices of ``x``, each the farthest from those before (and from the
    rows of ``away_from``); the first is drawn by ``seed`` unless ``away_from`` is given."""
    if n <= 0 or not len(x):
        return []
    if away_from is not None and len(away_from):
        d = np.full(len(x), np.inf)
        for a in away_from:
            d = np.minimum(d, ((x - a) ** 2).sum(axis=1))
        chosen: list[int] = []
    else:
        first = int(np.random.default_rng(seed).integers(len(x)))
        d, chosen = ((x - x[first]) ** 2).sum(axis=1), [first]
        d[first] = -1.0
    while len(chosen) < min(n, len(x)):
        j = int(np.argmax(d))
        chosen.append(j)
        d = np.minimum(d, ((x - x[j]) ** 2).sum(axis=1))
        d[j] = -1.0
    return chosen


@lru_cache(maxsize=16)
def design_order(name: str, version: str, seed: int, n: int) -> tuple[int, ...]:
    """Grid indices of the first ``n`` searchable design points after every fixed-family op."""
    grid = grid_of(get_v2_space(name))
    fam, priced = grid.shapes[:, 0], ~grid.identity
    fixed = np.flatnonzero(priced & np.isin(fam, FIXED))
    rest = np.flatnonzero(priced & ~np.isin(fam, FIXED))
    picks = farthest_points(coords(grid.shapes[rest]), n, seed)
    return tuple(int(i) for i in fixed) + tuple(int(rest[j]) for j in picks)


def _measured_keys(session: Session, device_id: int, space_id: int, config_id: str) -> set[str]:
    q = select(ConfigOp.key).where(ConfigOp.device_id == device_id, ConfigOp.space_id == space_id,
                                   ConfigOp.config_id == config_id, ConfigOp.n_stable > 0)
    return set(session.scalars(q))


def _open_run_keys(session: Session, device: Device, space_id: int, run_id: int | None) -> set[str]:
    """The keys the agent's open run already holds (its measurements are in no table until it finishes)."""
    if run_id is None:
        return set()
    run = session.get(Run, run_id)
    if run is None or run.device_id != device.id or run.space_id != space_id:
        raise Invalid(f"run {run_id} is not a run of {device.name} in this space")
    if run.status != "open":
        return set()  # finished: its ops count through the finished runs already
    return set(session.scalars(select(Measurement.key).where(Measurement.run_id == run_id)))


def _configuration(device: Device, req: wire.PlanRequest) -> Configuration:
    return Configuration(precision=req.precision or device.precision, runtime=req.runtime,
                         runtime_version=req.runtime_version, threads=req.threads, cpu_mask=req.cpu_mask,
                         compute_units=req.compute_units)


def _space(name: str) -> SpaceV2:
    if not is_v2_space(name):
        raise Invalid(f"plans are for v2 (FBNetV2) spaces, e.g. fbnetv2-cifar; {name!r} is not one "
                      f"(a v1 space is measured whole: GET /spaces/{name})")
    return get_v2_space(name)


def _batches(session: Session, device_id: int, space_id: int, config_id: str) -> list[PlanBatch]:
    q = select(PlanBatch).where(PlanBatch.device_id == device_id, PlanBatch.space_id == space_id,
                                PlanBatch.config_id == config_id).order_by(PlanBatch.round)
    return list(session.scalars(q))


def _record_failed(current: PlanBatch | None, failed: list[str]) -> None:
    """Mark ``failed`` keys of the current batch as not measurable (never issued again)."""
    if not failed:
        return
    stray = sorted(set(failed) - set(current.keys if current else []))
    if stray:
        raise Invalid(f"failed keys not in the current batch: {', '.join(stray[:5])}; nothing was recorded")
    current.failed = sorted(set(current.failed or []) | set(failed))


def _stop_reason(req: wire.PlanRequest, n_measured: int, fit) -> str | None:
    if req.budget is not None and n_measured >= req.budget:
        return "budget"
    h = fit.heldout if fit is not None else None
    if req.goal_within_10pct is not None and h is not None and h.within_10pct is not None \
            and h.n >= 20 and h.within_10pct >= req.goal_within_10pct:
        return "goal"
    return None


def _adaptive(grid: Grid, values: dict[str, float], exclude: set[str], batch: int, seed: int) -> list[int]:
    """The next adaptive batch: the most uncertain unmeasured ops (bootstrap disagreement), spread."""
    keys = grid.keys
    measured = np.array(sorted(grid.index[k] for k in values if not grid.identity[grid.index[k]]), dtype=int)
    cand = np.array([i for i in np.flatnonzero(~grid.identity) if keys[i] not in exclude], dtype=int)
    if not len(cand) or len(measured) < 2:
        return []
    y = np.array([max(values[keys[i]], 1e-3) for i in measured])
    score = fitting.disagreement(grid.shapes[measured], y, grid.shapes[cand], n_boot=BOOTSTRAP, seed=seed)
    score = np.where(np.isfinite(score), score, np.inf)  # no fit covers it: the most uncertain of all
    top = cand[np.argsort(-score, kind="stable")[:CANDIDATES_PER_PICK * batch]]
    x = coords(grid.shapes)
    return [int(top[j]) for j in farthest_points(x[top], batch, seed, away_from=x[measured])]


def _choose(grid: Grid, req: wire.PlanRequest, seed: int, exclude: set[str],
            values: dict[str, float]) -> tuple[str, list[str]]:
    """(phase, keys) of a new batch: the design's next ops while it lasts, else an adaptive batch."""
    keys = grid.keys
    order = design_order(grid.space.name, grid.space.version, seed, req.design)
    left = [keys[i] for i in order if keys[i] not in exclude][:req.batch]
    if left:
        return "design", left
    return "adaptive", [keys[i] for i in _adaptive(grid, values, exclude, req.batch, seed + len(exclude))]


def _out(device: Device, space: SpaceV2, cfg: Configuration, current: PlanBatch | None, keys: list[str],
         n_measured: int, fit, reason: str | None = None) -> wire.PlanOut:
    return wire.PlanOut(
        device=device.name, space=space.name, space_version=space.version, configuration=cfg,
        round=current.round if current else -1, phase="done" if reason else (current.phase if current else "design"),
        keys=keys, batch_size=len(current.keys) if current else 0, measured=n_measured,
        grid=grid_of(space).priced, heldout=fit.heldout_out() if fit is not None else None,
        done=reason is not None, reason=reason)


def next_batch(session: Session, caller: Caller, device_name: str, req: wire.PlanRequest) -> wire.PlanOut:
    """What the agent of ``device_name`` should measure now (module docstring); issues a new batch
    (a ``plan_batches`` row, flushed, not committed) when the current one is measured."""
    require_writer(caller, device_name)
    device, space = get_device(session, device_name), _space(req.space)
    row, cfg, grid = ensure_space(session, space), _configuration(device, req), grid_of(space)
    batches = _batches(session, device.id, row.id, cfg.config_id)
    current = batches[-1] if batches else None
    _record_failed(current, req.failed)
    measured = {k for k in _measured_keys(session, device.id, row.id, cfg.config_id)
                if k in grid.index and not grid.identity[grid.index[k]]}
    open_keys = _open_run_keys(session, device, row.id, req.run_id)
    done = measured | open_keys | {k for b in batches for k in b.failed or []}
    if current is not None and (left := [k for k in current.keys if k not in done]):
        return _out(device, space, cfg, current, left, len(measured), None)
    values = {k: m.corrected_us for k, m in config_entries(session, device, space, cfg.config_id).items()}
    # reads a stored fit; stores none (this session holds the write lock on SQLite: a table read stores it)
    fit = fit_grid(grid, values, store=FitStore(session, device.id, row.id, cfg.config_id, write=False))
    if (reason := _stop_reason(req, len(measured), fit)) is not None:
        return _out(device, space, cfg, current, [], len(measured), fit, reason)
    seed = batches[0].seed if batches else req.seed
    if req.budget is not None:  # the last batch stops at the budget, not a batch beyond it
        room = req.budget - len(measured | open_keys)
        if room <= 0:  # the agent's open run reaches the budget once it finishes
            return _out(device, space, cfg, current, [], len(measured), fit, "budget")
        req = req.model_copy(update={"batch": min(req.batch, room)})
    phase, keys = _choose(grid, req, seed, done | {k for b in batches for k in b.keys}, values)
    if not keys:
        return _out(device, space, cfg, current, [], len(measured), fit, "exhausted")
    batch = PlanBatch(device_id=device.id, space_id=row.id, config_id=cfg.config_id, configuration=cfg.model_dump(),
                      round=current.round + 1 if current else 0, phase=phase, seed=seed, keys=keys, failed=[])
    try:
        with session.begin_nested():
            session.add(batch)
    except IntegrityError:
        raise Conflict("another plan request of this configuration issued the batch first; ask again") from None
    return _out(device, space, cfg, batch, keys, len(measured), fit)
