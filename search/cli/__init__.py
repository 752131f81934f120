"""``fbnet-search``: inspect spaces and architectures, search, predict, sample, train, export.

The command line of the search app, and only that: :mod:`search.cli.common` holds what the commands
share (the console, the ``--space``/``--format`` options, turning a bad name into a one-line error),
and each command module (``search``, ``child``, ``space``) declares its commands on a Typer of its
own, merged here. Nothing in the library imports this package; the command modules import
``common`` and never each other.
"""

from __future__ import annotations

import os

import typer

from fbnet.cli import EXIT_CODES_HELP, Exit
from fbnet.cli import run as run_app
from search.cli import child, search, space

app = typer.Typer(
    help="FBNet differentiable architecture search on per-device latency tables. " + EXIT_CODES_HELP,
    epilog="Environment: TQDM_DISABLE=0 shows third-party progress bars (coremltools'), hidden by default.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for _module in (search, child, space):
    app.add_typer(_module.commands)


def main() -> None:
    # Third-party progress bars (coremltools' MIL pipeline, via tqdm) stay out of the user's log; our own
    # progress is fbnet.progress's. Set before torch (which imports tqdm); TQDM_DISABLE=0 brings them back.
    os.environ.setdefault("TQDM_DISABLE", "1")
    from fbnet.archfile import ArchFileError
    from fbnet.export import ExportError
    from search.config import TrainError
    from search.data import DataError

    run_app(app, [((DataError, ArchFileError), Exit.BAD_INPUT), ((TrainError, ExportError), Exit.FAILED)])


__all__ = ["app", "main"]
