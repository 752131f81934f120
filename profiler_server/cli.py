"""``fbnet-server``: serve the API, register devices, import external tables, write plots."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from fbnet.cli import EXIT_CODES_HELP

app = typer.Typer(help="The fbnet-lut profiler service. " + EXIT_CODES_HELP, no_args_is_help=True,
                  add_completion=False)
plot_app = typer.Typer(help="Write PNG figures of the stored data.", no_args_is_help=True)
app.add_typer(plot_app, name="plot")
token_app = typer.Typer(help="Rotate or revoke a device's agent token.", no_args_is_help=True)
app.add_typer(token_app, name="token")

DbOpt = Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL (default: FBNET_DB_URL or ./fbnet.db)")]


def _settings(db: str | None):
    from profiler_server.config import Settings

    s = Settings()
    if db:
        s.db_url = db
    return s


def _database(db: str | None):
    from db.engine import open_database
    from db.migrate import upgrade_to_head

    url = _settings(db).resolved_db_url()
    upgrade_to_head(url)
    return open_database(url)


def _committed(db: str | None, work):
    """``work(session)`` in one write transaction on the database (migrated to head first), committed;
    the engine is disposed whatever happens. Returns what ``work`` returned."""
    database = _database(db)
    try:
        with database.write_sessions() as s:
            out = work(s)
            s.commit()
            return out
    finally:
        database.dispose()


def _serve_workers(config) -> None:
    """``uvicorn.run`` with several workers, with Nagle off. uvicorn binds the shared socket itself as
    ``socket.socket(family)`` (protocol 0), and asyncio only sets TCP_NODELAY on connections of a
    socket whose protocol says TCP, so every response of a multi-worker service waited ~40 ms for the
    client's delayed ACK (measured: /healthz p50 44 ms with 4 workers vs 1.3 ms with one). Accepted
    connections inherit TCP_NODELAY from the listening socket."""
    import socket

    from uvicorn.supervisors import Multiprocess

    sock = config.bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass


@app.command()
def serve(
    db: DbOpt = None,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
):
    """Run the HTTP API (migrates the database to head first)."""
    import uvicorn

    if db:
        os.environ["FBNET_DB_URL"] = db  # workers are fresh processes: the environment carries it
    from profiler_server.transport import uvicorn_limits

    settings = _settings(db)  # the transport limits: header timeout, connections, backlog, keep-alive
    if workers > 1:
        _serve_workers(uvicorn.Config("profiler_server.app:create_app", factory=True, host=host, port=port,
                                      workers=workers, log_level=log_level, **uvicorn_limits(settings)))
    else:
        from profiler_server.app import create_app

        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, **uvicorn_limits(settings))


@app.command("create-device")
def create_device(
    name: Annotated[str, typer.Argument(help="slug: a-z, 0-9 and '-'")],
    platform: Annotated[str, typer.Option(help="android, ios, linux, macos, windows, other")] = "linux",
    runtime: Annotated[str, typer.Option(help="e.g. executorch-xnnpack, coreml")] = "executorch-xnnpack",
    precision: Annotated[str, typer.Option()] = "fp32",
    model: Annotated[str | None, typer.Option(help="device model, e.g. Pixel 3")] = None,
    soc: Annotated[str | None, typer.Option(help="SoC, e.g. Snapdragon 845")] = None,
    os_: Annotated[str | None, typer.Option("--os", help="OS version")] = None,
    db: DbOpt = None,
):
    """Register a device and print its agent token (shown only once)."""
    from pydantic import ValidationError

    from fbnet import wire
    from profiler_server.domain import devices

    try:
        body = wire.DeviceCreate(name=name, platform=platform, runtime=runtime, precision=precision,
                                    model=model, soc=soc, os=os_)
    except ValidationError as e:
        raise typer.BadParameter(str(e)) from None
    _, token = _committed(db, lambda s: devices.create_device(s, body))
    typer.echo(token)


@app.command("import")
def import_table(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="the external table file")],
    device: Annotated[str, typer.Option(help="registered device name")],
    space: Annotated[str, typer.Option(help="space, e.g. fbnet-cifar")],
    format: Annotated[str, typer.Option(help="hwnasbench, proxylessnas or ofa")] = "hwnasbench",
    precision: Annotated[str | None, typer.Option(help="the table's precision [default: the device's]")] = None,
    db: DbOpt = None,
):
    """Load an external table as a configuration of its own of the device; prints the mapping report."""
    from profiler_server.domain import devices, importers
    from profiler_server.domain.spaces import resolve_space

    doc = importers.load_document(file.read_bytes(), format)
    result = _committed(db, lambda s: importers.import_table(s, devices.get_device(s, device), resolve_space(space),
                                                             format, doc, source=file.name, precision=precision))
    typer.echo(json.dumps(result.model_dump(), indent=1))


@token_app.command("rotate")
def token_rotate(device: Annotated[str, typer.Argument(help="registered device name")], db: DbOpt = None):
    """Replace the device's token by a new one and print it (shown only once); the old one stops working."""
    from profiler_server.domain import devices

    _, token = _committed(db, lambda s: devices.rotate_token(s, device))
    typer.echo(token)


@token_app.command("revoke")
def token_revoke(device: Annotated[str, typer.Argument(help="registered device name")], db: DbOpt = None):
    """Revoke the device's token: nothing writes to the device until `token rotate` gives a new one."""
    from profiler_server.domain import devices

    _committed(db, lambda s: devices.revoke_tokens(s, device))
    typer.echo(f"revoked every token of {device}")


@app.command()
def backup(
    path: Annotated[Path, typer.Argument(dir_okay=False, help="the copy to write (a SQLite file)")],
    db: DbOpt = None,
):
    """Consistent copy of a live SQLite database (SQLite's online backup API; the service keeps
    serving). PostgreSQL: use pg_dump (see the README)."""
    from db.backup import backup_sqlite

    n = backup_sqlite(_settings(db).resolved_db_url(), path)
    typer.echo(f"wrote {path} ({n} bytes)")


@app.command()
def check(db: DbOpt = None):
    """Consistency of the database (SQLite integrity_check; orphans and duplicates on every engine)."""
    from db.check import check_database
    from fbnet.cli import Exit, fail

    problems = check_database(_settings(db).resolved_db_url())
    if problems:
        fail("; ".join(problems), Exit.FAILED)
    typer.echo("ok")


def _write(out: Path, data: bytes) -> None:
    out.write_bytes(data)
    typer.echo(f"wrote {out}")


@plot_app.command("table")
def plot_table(device: str, space: Annotated[str, typer.Option()], out: Annotated[Path, typer.Option("-o", "--out")],
               db: DbOpt = None):
    """Heatmap of a device's table (22 layers x 9 blocks)."""
    from profiler_server import plots
    from profiler_server.domain.spaces import resolve_space
    from profiler_server.domain.tables import TableCache

    database = _database(db)
    with database.read_sessions() as s:
        _write(out, plots.table_heatmap(TableCache(max_runs=_settings(db).table_runs).table(s, device, space),
                                        resolve_space(space)))
    database.dispose()


@plot_app.command("compare")
def plot_compare(space: Annotated[str, typer.Option()], a: Annotated[str, typer.Option()],
                 b: Annotated[str, typer.Option()], out: Annotated[Path, typer.Option("-o", "--out")],
                 a_precision: Annotated[str | None, typer.Option(help="a's configuration: its precision")] = None,
                 b_precision: Annotated[str | None, typer.Option(help="b's configuration: its precision")] = None,
                 db: DbOpt = None):
    """Per-op latency ratio of devices a and b, or of two precisions of one device (a = b)."""
    from fbnet.configuration import Selector
    from profiler_server import plots
    from profiler_server.domain.compare import compare
    from profiler_server.domain.tables import TableCache

    database = _database(db)
    with database.read_sessions() as s:
        c = TableCache(max_runs=_settings(db).table_runs)
        ta = c.table(s, a, space, Selector(precision=a_precision))
        _write(out, plots.ratio_plot(compare(space, ta, c.table(s, b, space, Selector(precision=b_precision)))))
    database.dispose()


@plot_app.command("validations")
def plot_validations(device: str, space: Annotated[str, typer.Option()],
                     out: Annotated[Path, typer.Option("-o", "--out")], db: DbOpt = None):
    """Predicted vs measured whole-model latency with the ±10% band."""
    from profiler_server import plots
    from profiler_server.domain.validations import validation_summary

    database = _database(db)
    with database.read_sessions() as s:
        _write(out, plots.validation_plot(validation_summary(s, device, space)))
    database.dispose()


def main() -> None:
    from db.backup import BackupError
    from fbnet.cli import Exit, run
    from profiler_server.errors import DomainError

    # unknown device, space, duplicate name, ... from any command: one line, exit 2 (bad input)
    run(app, [(DomainError, Exit.BAD_INPUT), (BackupError, Exit.BAD_INPUT)])


if __name__ == "__main__":
    main()
