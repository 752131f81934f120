"""Command-line metadata of typed config fields, declared next to the fields (no command-line code).

A config model is declared once, next to the library code that takes it; a field's description is
its option's help, and ``Field(json_schema_extra=cli(...))`` says the rest: the flag when it is not
``--field-name``, a short alias, the help panel of rarely-used knobs, an environment variable, the
allowed values of a free-text field. :func:`fbnet.cli.options` turns models into options.
"""

from __future__ import annotations

from typing import Any


def cli(flag: str | None = None, *, short: str | None = None, panel: str | None = None, envvar: str | None = None,
        hidden: bool = False, metavar: str | None = None, choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The ``json_schema_extra`` of a config field: how its option looks on a command line."""
    meta = dict(flag=flag, short=short, panel=panel, envvar=envvar, hidden=hidden, metavar=metavar,
                choices=list(choices) if choices else None)
    return {"cli": {k: v for k, v in meta.items() if v not in (None, False)}}


__all__ = ["cli"]
