"""The one progress factory: a rich bar on a terminal, plain lines elsewhere (CI logs, pipes).

Library code takes a progress *callback* or a ``progress`` factory argument and never prints on its
own; the command lines choose what the user sees. Used by the trainer, the child training and the
agents' flows; imports no command-line module.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import contextmanager


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


__all__ = ["progress", "ticker"]
