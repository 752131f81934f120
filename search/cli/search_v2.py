"""``fbnet-search run --space fbnetv2-cifar``: the DMaskingNAS search (:mod:`search.trainer_v2`) priced
in latency (the device's v2 grid table: ``--server``/``--device`` or a saved ``--table FILE``), FLOPs or
parameters (``--cost``, with ``--target-ms`` / ``--target-mflops`` / ``--target-mparams``). Bad input
is one line (exit 2)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from fbnet.cli import fail
from fbnet.configuration import Selector
from search.cli.common import console, print_signal, warn
from search.config import DataConfig, Execution, SearchConfig, TableSource


def _grid_file(path: Path, space):
    """A saved v2 grid table (GridTable JSON); a v1 table or anything else: one line."""
    from fbnet.wire import GridTable

    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        fail(f"cannot read the table {path}: {e}")
    if not isinstance(raw, dict) or "columns" not in raw or "corrected_us" not in (raw.get("columns") or {}):
        fail(f"{path} has no v2 grid (not a GridTable with columns key/corrected_us): a latency search over "
             f"{space.name} needs the space's v2 grid table (--cost flops or params needs none)")
    try:
        return GridTable.model_validate(raw)
    except ValueError as e:
        fail(f"{path} is not a v2 grid table: {str(e).splitlines()[0]}")


def _grid_table(source: TableSource, selector: Selector, space):
    from fbnet.client import get_grid_table
    from fbnet.lut import TableError

    if source.table is not None:
        t = _grid_file(source.table, space)
    elif source.server is None or source.device is None:
        fail("a latency search needs the device's v2 grid: --server and --device, or --table FILE "
             "(or --cost flops|params)")
    else:
        try:
            t = get_grid_table(space=space.name, server=source.server, device=source.device,
                               cache_dir=source.cache_dir, token=source.token, on_warning=warn, selector=selector)
        except TableError as e:
            fail(str(e))
    if t.space != space.name:
        fail(f"the table is of space {t.space!r}, the search of {space.name!r}")
    if t.missing:
        fail(f"the grid table of {t.device} lacks {len(t.missing)} entries (e.g. {t.missing[0]}): "
             f"a latency search needs every op of {space.name}'s grid")
    return t


def v2_cost(search: SearchConfig, source: TableSource, selector: Selector, space):
    """The :class:`search.trainer_v2.V2Cost` the options ask for (latency: the grid's corrected entries
    plus each op's in-model context, and the per-call overhead once, as ``fbnet.lut_v2.predict_v2``)."""
    from fbnet.lut import model_overhead_us
    from fbnet.lut_v2 import grid_prices, op_context_us
    from search.trainer_v2 import V2Cost
    from search.v2_cost import CostError, cost_tables, price_for

    try:
        if search.cost != "latency":
            return V2Cost(search.cost, cost_tables(space, price_for(search.cost, space)))
        t = _grid_table(source, selector, space)
        prices = grid_prices(t)
        precision = t.configuration.precision if t.configuration else "fp32"
        table = {k: v + op_context_us(t.context_us_per_mb, space.grid[k], precision) for k, v in prices.items() if k in space.grid}
        tables = cost_tables(space, price_for("latency", space, table), "us")
        return V2Cost("latency", tables, model_overhead_us(t), t.device, t.version)
    except CostError as e:
        fail(str(e))


def run_v2(source: TableSource, selector: Selector, data: DataConfig, search: SearchConfig, execution: Execution):
    """``run`` on a v2 space (module docstring)."""
    from fbnet.progress import progress
    from fbnet.space_v2 import get_v2_space
    from search.config import TrainError
    from search.data import DataError, load_dataset
    from search.trainer import RunOptions
    from search.trainer_v2 import run_search_v2, target_of, train_resolution
    from search.v2_cost import CostError

    space = get_v2_space(source.space)
    try:
        target_of(search)
    except TrainError as e:
        fail(str(e))
    cost = v2_cost(search, source, selector, space)
    options = RunOptions(progress=partial(progress, enabled=execution.progress), tensorboard=execution.tensorboard)
    try:
        ds = load_dataset(data.data, train_resolution(search, space), subset=data.subset, seed=search.seed,
                          num_classes=space.num_classes)
        res = run_search_v2(search, space, cost, ds, execution.out, options, resume=execution.resume)
    except (DataError, TrainError, CostError) as e:
        fail(str(e))
    target = target_of(search)
    aim = "" if target is None else f" (target {target:.4g}: {100 * (res.cost / target - 1):+.1f} %)"
    ents = ", ".join(f"{k} {v:.3f}" for k, v in res.entropies.items())
    console.print(f"[bold]{res.arch.to_text()}[/bold]", highlight=False, soft_wrap=True)
    console.print(f"{res.cost:.4g} {res.unit}{aim}, {res.selection}; entropies (nats, the largest of each kind): "
                  f"{ents}; wrote {execution.out / 'arch.json'}", highlight=False, soft_wrap=True)
    print_signal(res.history)


__all__ = ["run_v2", "v2_cost"]
