"""What every command line shares: one way to fail, one exit code per kind of error, one progress
factory. The apps' ``cli.py`` files parse arguments, call a library function and print; library
errors carry no flag names and are turned into one line here.

Exit codes (the same for ``fbnet-server``, ``fbnet-agent`` and ``fbnet-search``):

====  =====================================================================================
0     success
1     the work failed: an export, a measurement on the device, a training run
2     bad input: an argument, a file, a space, an architecture, a table that does not fit
3     the service could not be reached (results are spooled where that applies)
4     the service refused the request (HTTP 4xx: token, unknown device, conflict)
====  =====================================================================================
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from enum import IntEnum

EXIT_CODES_HELP = ("Exit codes: 0 success, 1 the work failed (export, measurement, training), 2 bad input, "
                   "3 the service could not be reached, 4 the service refused the request.")


class Exit(IntEnum):
    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    UNREACHABLE = 3
    REFUSED = 4


def fail(msg: str, code: int = Exit.BAD_INPUT) -> None:
    """Print ``error: msg`` on one line to stderr (no traceback) and exit with ``code``."""
    import typer
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(int(code))


def make_selector(precision: str | None = None, threads: int | None = None, cpu_mask: str | None = None,
                  compute_units: str | None = None, runtime_version: str | None = None,
                  include_unstable: bool = False):
    """The table configuration a command line asked for (``--precision``, ``--threads``, ...);
    bad values end the command with one line (exit 2)."""
    from pydantic import ValidationError

    from fbnet.configuration import Selector

    try:
        return Selector(precision=precision, threads=threads, cpu_mask=cpu_mask, compute_units=compute_units,
                        runtime_version=runtime_version, include_unstable=include_unstable)
    except ValidationError as e:
        first = e.errors()[0]
        fail(f"table configuration: --{'-'.join(str(x) for x in first['loc']).replace('_', '-')}: {first['msg']}")


def run(app, errors: Iterable[tuple[type[BaseException] | tuple[type[BaseException], ...], int]] = ()) -> None:
    """Run a typer ``app``; an exception of a listed class ends the process with one line and its
    code. The core's torch-free errors (bad space, architecture, table) are always listed; a command
    that exports lists ``fbnet.export.ExportError`` itself."""
    from fbnet.lut import TableError
    from fbnet.space import ArchError, SpaceError

    mapping: list[tuple[tuple[type[BaseException], ...], int]] = []
    for cls, code in [*errors, ((SpaceError, ArchError, TableError), Exit.BAD_INPUT)]:
        mapping.append((cls if isinstance(cls, tuple) else (cls,), int(code)))
    try:
        app()
    except BaseException as e:  # noqa: BLE001 - mapped below, re-raised otherwise
        for classes, code in mapping:
            if isinstance(e, classes):
                msg = getattr(e, "detail", None) or str(e)
                print(f"error: {msg}", file=sys.stderr)
                raise SystemExit(code) from None
        raise


# ---- progress ------------------------------------------------------------------------------------
class _Lines:
    """Progress without a terminal (CI logs, pipes): one plain line per ``every`` steps, and the last."""

    def __init__(self, stream, every: int | None):
        self.stream = stream
        self.every = every
        self.tasks: dict[int, dict] = {}

    def add_task(self, description: str, total: int | None = None, **fields) -> int:
        tid = len(self.tasks)
        self.tasks[tid] = {"description": description, "total": total, "completed": 0, "t0": time.monotonic(),
                           "fields": fields}
        return tid

    def update(self, task: int, advance: int = 0, total: int | None = None, **fields) -> None:
        t = self.tasks[task]
        if total is not None:
            t["total"] = total
        t["fields"].update(fields)
        if not advance:
            return
        t["completed"] += advance
        total_n = t["total"]
        every = self.every or max(1, (total_n or 10) // 10)
        if t["completed"] % every == 0 or (total_n is not None and t["completed"] >= total_n):
            info = " ".join(str(v) for v in t["fields"].values() if v not in (None, ""))
            of = f"/{total_n}" if total_n else ""
            print(f"{t['description']} {t['completed']}{of} {time.monotonic() - t['t0']:.0f}s {info}".rstrip(),
                  file=self.stream, flush=True)

    def advance(self, task: int, n: int = 1) -> None:
        self.update(task, advance=n)


@contextmanager
def progress(*, stderr: bool = True, every: int | None = None, enabled: bool = True, console=None):
    """The one progress factory. A rich bar (description, bar, n/total, an ``info`` field, elapsed,
    ETA) on a terminal; elsewhere plain lines (every ``every`` steps, default a tenth of the total).
    Tasks take an ``info`` field: ``p.add_task("export", total=n, info="")``,
    ``p.update(task, advance=1, info=key)``. ``enabled=False`` gives a silent one."""
    stream = sys.stderr if stderr else sys.stdout
    if not enabled:
        yield _Lines(_Null(), every=10**9)
        return
    if console is None and not stream.isatty():
        yield _Lines(stream, every)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = console or Console(stderr=stderr)
    with Progress(TextColumn("[bold]{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                  console=console, transient=False) as p:
        yield p


class _Null:
    def write(self, *_):
        pass

    def flush(self):
        pass


def ticker(prog, task) -> Callable[..., None]:
    """A callback ``(key, *_)`` that advances ``task`` by one with ``info=key``, growing the total when
    a step is repeated (re-measurements)."""

    def tick(key: str = "", *_):
        t = prog.tasks[task]
        total = t["total"] if isinstance(t, dict) else t.total
        done = t["completed"] if isinstance(t, dict) else t.completed
        if total is not None and done >= total:
            prog.update(task, total=total + 1)
        prog.update(task, advance=1, info=key)

    return tick


__all__ = ["EXIT_CODES_HELP", "Exit", "fail", "progress", "run", "ticker"]
