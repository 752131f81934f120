"""What every command line shares, and only command lines import: one way to fail, the mapping of
library errors to exit codes (:mod:`fbnet.exitcodes`), and :func:`options`, which turns typed
configs into command-line options.

A command is a thin shell: it declares which typed configs it reads (each a pydantic model declared
once, next to the library code that takes it), gets them filled in from the command line, a
``--config FILE`` and a ``--preset NAME``, calls a library function and prints. The library never
imports this module (an import-linter contract in ``pyproject.toml`` keeps it so).
"""

from __future__ import annotations

import inspect
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from fbnet.exitcodes import EXIT_CODES_HELP, Exit
from fbnet.options import cli
from fbnet.progress import progress, ticker


def fail(msg: str, code: int = Exit.BAD_INPUT) -> typing.NoReturn:
    """Print ``error: msg`` on one line to stderr (no traceback) and exit with ``code``."""
    import typer
    from rich.console import Console

    Console(stderr=True).print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(int(code))


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


# ---- typed configs as options -----------------------------------------------------------------------
# A model field becomes ``--field-name`` (``--x/--no-x`` for a bool). What a field may say about its
# option goes in ``Field(json_schema_extra=cli(...))``; the help text is the field's description.


@dataclass(frozen=True)
class Use:
    """One typed config a command reads: the model, which of its fields become options (``only`` or
    all but ``exclude``), help-panel and default overrides for this command."""

    model: type[BaseModel]
    only: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    panel: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    help: Mapping[str, str] = field(default_factory=dict)

    def fields(self) -> dict[str, FieldInfo]:
        names = self.only if self.only is not None else tuple(self.model.model_fields)
        return {n: self.model.model_fields[n] for n in names if n not in self.exclude}


class ConfigFileError(ValueError):
    """A ``--config`` file that cannot be read or does not fit the command."""


def load_config_file(path: Path, groups: Mapping[str, Use]) -> dict[str, dict[str, Any]]:
    """A TOML file's values per group: a ``[group]`` table, or top-level keys naming a field of
    exactly the groups that have it. Unknown keys are an error (a typo must not be ignored)."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigFileError(f"--config {path}: {e}") from None
    out: dict[str, dict[str, Any]] = {g: {} for g in groups}
    for key, value in doc.items():
        if key in groups and isinstance(value, dict):
            unknown = set(value) - set(groups[key].fields())
            if unknown:
                raise ConfigFileError(f"--config {path}: [{key}] has no setting {', '.join(sorted(unknown))}")
            out[key].update(value)
            continue
        owners = [g for g, use in groups.items() if key in use.fields()]
        if not owners:
            raise ConfigFileError(f"--config {path}: unknown setting {key!r}")
        for g in owners:
            out[g][key] = value
    return out


def _flag(name: str, info: FieldInfo) -> str:
    meta = _meta(info)
    return meta.get("flag") or "--" + name.replace("_", "-")


def _meta(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return dict(extra.get("cli", {}))


def _choices(tp) -> tuple[Any, list[str] | None, bool]:
    """(the type typer sees, click choices if any, whether None is allowed)."""
    args = typing.get_args(tp)
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else str
    if typing.get_origin(tp) is Literal:
        return str, [str(a) for a in typing.get_args(tp)], optional
    if isinstance(tp, type) and issubclass(tp, Enum):
        return str, [str(m.value) for m in tp], optional
    return tp, None, optional


def _parameter(name: str, info: FieldInfo, use: Use) -> inspect.Parameter:
    import typer

    meta = _meta(info)
    tp, choices, optional = _choices(info.annotation)
    choices = meta.get("choices") or choices
    flag = _flag(name, info)
    default = use.defaults.get(name, None if info.is_required() else info.get_default(call_default_factory=True))
    # every switch has both forms: a preset or a --config file may have turned on what is off by default
    names = [flag + "/--no-" + flag[2:]] if tp is bool else [flag]
    if meta.get("short"):
        names.append(meta["short"])
    if isinstance(default, Enum):
        default = default.value
    opt = typer.Option(*names, help=use.help.get(name, info.description), envvar=meta.get("envvar"),
                       rich_help_panel=meta.get("panel") or use.panel, hidden=bool(meta.get("hidden")),
                       metavar=meta.get("metavar"),
                       show_default=default is not None and tp is not bool or tp is bool)
    if choices:  # typer makes a choice of an Enum; the wrapper passes its value on
        tp = StrEnum(f"{name.title()}Choice", {c: c for c in choices})
    ann = tp | None if (optional or default is None) and tp is not bool else tp
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[ann, opt], default=default)


def _explicit(ctx, names: Iterable[str], values: Mapping[str, Any]) -> dict[str, Any]:
    """The options the user gave (command line or environment), not typer's defaults."""
    def given(n: str) -> bool:
        source = ctx.get_parameter_source(n)
        return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

    return {n: values[n].value if isinstance(values[n], Enum) else values[n] for n in names if given(n)}


def _build(group: str, use: Use, layers: list[Mapping[str, Any]]) -> BaseModel:
    merged: dict[str, Any] = dict(use.defaults)
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if k in use.fields() or k in use.model.model_fields})
    try:
        return use.model(**merged)
    except ValidationError as e:
        first = e.errors()[0]
        loc = first["loc"][0] if first["loc"] else group
        info = use.model.model_fields.get(str(loc))
        what = _flag(str(loc), info) if info is not None else group
        fail(f"{what}: {first['msg']}")


def options(presets: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None, config_file: bool = False,
            **groups: Use | type[BaseModel]) -> Callable:
    """Decorate a command whose keyword parameters named like ``groups`` take typed configs.

    Every field of every group becomes an option (declared once, in the model); a field name shared
    by several groups is one option that fills them all. With ``config_file`` the command takes
    ``--config FILE`` (TOML); with ``presets`` (name -> group -> values) it takes ``--preset NAME``.
    Precedence: the model's defaults < the preset < the file < the command line and environment.
    """
    uses = {g: u if isinstance(u, Use) else Use(u) for g, u in groups.items()}

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for n, p in sig.parameters.items() if n not in uses]
        generated: dict[str, inspect.Parameter] = {}
        for use in uses.values():
            for name, info in use.fields().items():
                generated.setdefault(name, _parameter(name, info, use))
        extra = _file_and_preset_parameters(presets, config_file)
        clash = {p.name for p in own} & set(generated)
        if clash:
            raise TypeError(f"{fn.__name__}: parameters {sorted(clash)} are also config fields")

        @wraps(fn)
        def command(**kwargs):
            ctx = kwargs.pop(_CTX)
            given = _explicit(ctx, generated, kwargs)
            preset = kwargs.pop("preset", None)
            layers = _layers(preset.value if isinstance(preset, Enum) else preset, kwargs.pop("config", None), presets, uses)
            built = {g: _build(g, use, [layers[g], given]) for g, use in uses.items()}
            return fn(**{p.name: kwargs[p.name] for p in own}, **built)

        params = [*own, *generated.values(), *extra, _context_parameter()]
        params.sort(key=lambda p: p.kind)
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__
        return command

    return decorate


_CTX = "_fbnet_ctx"


def _context_parameter() -> inspect.Parameter:
    import typer

    return inspect.Parameter(_CTX, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)


def _file_and_preset_parameters(presets, config_file: bool) -> list[inspect.Parameter]:
    import typer

    out = []
    if presets:
        names = sorted(presets)
        choice = StrEnum("PresetChoice", {n: n for n in names})
        out.append(inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            choice | None, typer.Option("--preset",
                                     help="a named set of settings (" + ", ".join(names) + "); "
                                     "--config and explicit options override it")]))
    if config_file:
        out.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Path | None, typer.Option("--config", help="a TOML file of settings: option names with _ at the top "
                                      "level or in a table per group; explicit options override it")]))
    return out


def _layers(preset: str | None, config: Path | None, presets, uses: Mapping[str, Use]) -> dict[str, dict]:
    layers: dict[str, dict] = {g: {} for g in uses}
    if preset:
        for g, values in presets[preset].items():
            layers[g].update(values)
    if config is not None:
        try:
            for g, values in load_config_file(config, uses).items():
                layers[g].update(values)
        except ConfigFileError as e:
            fail(str(e))
    return layers


def envvars_help(**names: str) -> str:
    """A help line naming the environment variables a command reads."""
    return "Environment: " + "; ".join(f"{k} ({v})" for k, v in names.items()) + "."


__all__ = ["EXIT_CODES_HELP", "ConfigFileError", "Exit", "Use", "cli", "envvars_help", "fail", "load_config_file",
           "options", "progress", "run", "ticker"]
