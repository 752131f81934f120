"""The search's log: ``history.csv`` (one row per epoch, rewritten atomically) and TensorBoard scalars;
the progress-factory protocol the search and the child training report through."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from fbnet.io import atomic_write


class EpochLog:
    """history.csv + TensorBoard under ``out`` (rank 0 only). Lists (per-layer values) go to the CSV
    as ``;``-joined text and to TensorBoard as their mean."""

    def __init__(self, out: Path, tensorboard: bool = True):
        self.csv_path = Path(out) / "history.csv"
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out) / "tb"))

    def write(self, history: list[dict]) -> None:
        keys = list(dict.fromkeys(k for h in history for k in h))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for row in history:
            w.writerow({k: ";".join(f"{x:.4f}" for x in v) if isinstance(v, list) else v for k, v in row.items()})
        atomic_write(self.csv_path, buf.getvalue())
        if self.tb is not None and history:
            row = history[-1]
            for k, v in row.items():
                if isinstance(v, list) and v:
                    self.tb.add_scalar(f"{k}_mean", sum(v) / len(v), row["epoch"])
                elif isinstance(v, int | float) and not isinstance(v, bool) and k != "epoch":
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()




# ---- progress ------------------------------------------------------------------------------------
# The search and the child training report progress through a factory the caller passes
# (``fbnet.progress.progress`` from the command line): ``factory(every=1, enabled=...)`` is a context
# manager whose value has ``add_task(description, total=, info=)`` and ``update(task, advance=, info=)``.
ProgressFactory = Callable[..., AbstractContextManager]


class _Silent:
    def add_task(self, description: str, total: int | None = None, **fields) -> int:
        return 0

    def update(self, task: int, advance: int = 0, **fields) -> None:
        pass


@contextmanager
def no_progress(**_) -> Iterator[_Silent]:
    """The default progress factory of the library: reports nothing."""
    yield _Silent()


__all__ = ["EpochLog", "ProgressFactory", "no_progress"]
