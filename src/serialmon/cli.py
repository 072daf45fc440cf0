"""The `serialmon` command line.

User mistakes (a bad option, an unreachable database, a missing table) end with
one line that tells what to do, and exit code 2. `--debug` shows the traceback.
Each concern registers its commands from its own `cli_*` module.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from serialmon.config import describe_settings, get_settings, load_settings, set_settings
from serialmon.errors import SerialmonError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="serialmon",
    help="Monitor a pipeline that serializes CAD models into PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Start, stop and locate the embedded PostgreSQL.", no_args_is_help=True)
app.add_typer(db_app, name="db")

_state = {"debug": False}

# Modules that add commands with `register(app)`; one module per concern.
_COMMAND_MODULES: tuple[str, ...] = (
    "serialmon.cli_simulate",
    "serialmon.cli_doctor",
    "serialmon.cli_demo",
    "serialmon.cli_alerts",
    "serialmon.cli_status",
    "serialmon.cli_monitor",
    "serialmon.cli_dashboard",
)


@app.callback()
def _main_options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logging."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show info logging."),
) -> None:
    _state["debug"] = debug
    level = logging.WARNING
    if verbose:
        level = logging.INFO
    if debug:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not debug:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        set_settings(load_settings())
    except SerialmonError as error:
        fail(str(error))


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit; used for mistakes the user can fix."""
    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def debug_enabled() -> bool:
    return _state["debug"]


def is_loopback(host: str) -> bool:
    """Return whether `host` is this machine only (localhost or a loopback address)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command("config")
def config_command(
    reference: bool = typer.Option(False, "--reference", help="Print every setting with its default as Markdown."),
) -> None:
    """Print the effective settings and where each came from (secrets masked)."""
    if reference:
        from serialmon.config import settings_reference

        print(settings_reference(), end="")
        return
    table = Table("variable", "value", "source", title="serialmon settings")
    for variable, value, source in describe_settings(get_settings()):
        table.add_row(variable, value, source)
    console.print(table)


@app.command("init")
def init_command(
    create_models_table: bool = typer.Option(
        False, "--create-models-table", help="Also create serialized_models (as the pipeline does) if missing."
    ),
) -> None:
    """Create or upgrade serialmon's schema; safe to run any number of times."""
    from serialmon.schema import init_db

    result = init_db(get_settings(), create_models_table=create_models_table)
    console.print(f"Schema [bold]{result.schema}[/] is at revision {result.revision}.")
    if result.models_table_created:
        console.print(f"Created {result.models_table} with a GIN index on feature_types.")
    elif result.models_table_existed:
        console.print(f"{result.models_table} already exists; serialmon left it unchanged.")
    for extension, outcome in result.extensions.items():
        console.print(f"Extension {extension}: {outcome}")


def _embedded():
    from serialmon.embedded import default_server

    from urllib.parse import unquote

    settings = get_settings()
    server = default_server(settings.data_dir)
    configured = settings.database_url.get_secret_value() if settings.database_url else None
    if configured is not None and str(server.pgdata) not in unquote(configured):
        err_console.print("[yellow]Note:[/] a database URL is configured, so serialmon does not use this server.")
    return server


@db_app.command("start")
def db_start() -> None:
    """Start the embedded PostgreSQL (it keeps running until `serialmon db stop`)."""
    server = _embedded()
    url = server.start()
    console.print(f"Embedded PostgreSQL is running in {server.pgdata}")
    console.print(url, highlight=False, soft_wrap=True)


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL."""
    from serialmon.db import dispose_engines

    dispose_engines()
    stopped = _embedded().stop()
    console.print("Embedded PostgreSQL stopped." if stopped else "Embedded PostgreSQL was not running.")


@db_app.command("status")
def db_status() -> None:
    """Show whether the embedded PostgreSQL runs, where, and its URL."""
    status = _embedded().status()
    console.print(f"running: {status.running}")
    console.print(f"data directory: {status.data_dir}")
    console.print(f"version: {status.version or '-'}")
    if status.pid:
        console.print(f"pid: {status.pid}")
    if status.url:
        console.print(f"url: {status.url}", highlight=False, soft_wrap=True)


@db_app.command("url")
def db_url() -> None:
    """Print the database URL serialmon uses (password masked), starting the embedded server if needed."""
    from serialmon.db import database_url, describe_url

    print(describe_url(database_url(get_settings())))


for _module in _COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main(argv: Optional[list[str]] = None) -> None:
    """Run the CLI; user errors print one line and exit 2, `--debug` shows the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    _state["debug"] = "--debug" in args
    try:
        # Without standalone mode, click returns the code of an Exit instead of raising it.
        code = app(args=args, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except SerialmonError as error:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]Error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("Interrupted.")
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - the last line of defence
        if isinstance(error, typer.Abort):
            sys.exit(1)
        # Usage errors (bad option or value); typer vendors click, so match typer's base class.
        if isinstance(error, typer.TyperException) and hasattr(error, "show"):
            error.show()
            sys.exit(getattr(error, "exit_code", 2))
        if _state["debug"]:
            raise
        from sqlalchemy.exc import DBAPIError, ProgrammingError

        if isinstance(error, ValueError):
            # The API validates its arguments with ValueErrors that name the field, value and range.
            err_console.print(f"[bold red]Error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        if isinstance(error, ProgrammingError) and "does not exist" in str(error.orig):
            first = str(error.orig).strip().splitlines()[0]
            err_console.print(
                f"[bold red]Error:[/] {escape(first)}. Run `serialmon init` (add --create-models-table for a new "
                "database), and check SERIALMON_MODELS_TABLE with `serialmon doctor`.",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(2)
        # A database error's text ends with the whole SQL statement: show the server's first line only.
        shown = str(error.orig).strip().splitlines()[0] if isinstance(error, DBAPIError) and str(error.orig).strip() \
            else str(error)
        err_console.print(
            f"[bold red]Error:[/] {type(error).__name__}: {escape(shown)}. Rerun with --debug for the traceback.",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["app", "console", "err_console", "fail", "debug_enabled", "is_loopback", "main", "Path"]
