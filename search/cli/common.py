"""What the ``fbnet-search`` commands share: the consoles, the ``--space`` and ``--format`` options,
the environment lines of their help, and the steps that turn a bad name, file or table into a
one-line error (exit 2). Imports no command module."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console

from fbnet.cli import envvars_help, fail
from fbnet.configuration import Selector
from fbnet.space import Arch, ArchError, SpaceError, get_space
from search.config import TableSource

console = Console()
err = Console(stderr=True)

TOKEN_ENV_HELP = envvars_help(FBNET_TOKEN="the reader token when --token is not given")
DATA_ENV = dict(FBNET_FASHION_MNIST_DIR="where --data fashion-mnist is read, default "
                "/usr/share/datasets/fashion-mnist")
DATA_ENV_HELP = envvars_help(**DATA_ENV)
RUN_ENV_HELP = envvars_help(FBNET_TOKEN="the reader token when --token is not given", **DATA_ENV,
                            WORLD_SIZE="set by torchrun: RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT too")


class Fmt(StrEnum):
    text = "text"
    json = "json"


SPACE_OPT = typer.Option("fbnet-cifar", "--space", "-s", help="fbnet-224, fbnet-cifar, fbnet-<res>[-w<width>], fbnetv2-224 or fbnetv2-cifar")
FMT_OPT = typer.Option(Fmt.text, "--format", help="text or json")


def space_named(name: str):
    try:
        return get_space(name)
    except SpaceError as e:
        fail(str(e))


def parse_arch(text: str) -> Arch:
    try:
        return Arch.parse(text)
    except ArchError as e:
        fail(str(e))


def read_arch(path: Path):
    from fbnet.archfile import ArchFileError, read_arch_file

    try:
        return read_arch_file(path)
    except ArchFileError as e:
        fail(str(e))


def arch_from(arch_text: str | None, from_file: Path | None) -> tuple[Arch, dict]:
    """``--arch`` or ``--from DIR/arch.json`` (exactly one): the architecture, and arch.json's
    ``arch``/``space`` when it came from a file."""
    if (arch_text is None) == (from_file is None):
        fail("give exactly one of --arch ARCH or --from DIR/arch.json")
    if arch_text is not None:
        return parse_arch(arch_text), {}
    doc = read_arch(from_file)
    return doc.architecture, {k: v for k, v in {"arch": doc.arch, "space": doc.space}.items() if v is not None}


def warn(msg: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {msg}", highlight=False, soft_wrap=True)


def print_signal(history) -> None:
    """The search's theta-signal summary (:func:`search.signal.signal_line`): a line, or a warning."""
    from search.signal import signal_line

    text, noisy = signal_line(history)
    if noisy:
        warn(text)
    elif text:
        console.print(text, highlight=False, soft_wrap=True)


def load_table(source: TableSource, selector: Selector | None = None):
    """The table ``source`` names, in the configuration ``selector`` picks; its description on stderr."""
    from fbnet.client import get_table
    from fbnet.lut import TableError, describe

    try:
        t = get_table(space=space_named(source.space).name, server=source.server, device=source.device,
                      table_file=source.table, cache_dir=source.cache_dir, token=source.token, on_warning=warn,
                      selector=selector)
    except TableError as e:
        fail(str(e))
    err.print(describe(t), highlight=False, soft_wrap=True)
    return t


def build_lut(space, table):
    from fbnet.lut import TableError
    from fbnet.lut import build_lut as _build_lut

    try:
        return _build_lut(table, space)
    except TableError as e:
        fail(str(e))


__all__ = ["DATA_ENV_HELP", "FMT_OPT", "RUN_ENV_HELP", "SPACE_OPT", "TOKEN_ENV_HELP", "Fmt", "arch_from", "build_lut", "print_signal",
           "console", "err", "load_table", "parse_arch", "read_arch", "space_named", "warn"]
