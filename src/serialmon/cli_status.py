"""`serialmon status`, `serialmon refresh` and `serialmon exporter`: the read model on the command line.

The figures come from `serialmon.readmodel` (no SQL here), so they are the
dashboard's and the exporter's figures.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import typer

# A refresh with fewer changed rows than this finishes before a progress bar would help.
_PROGRESS_MIN_ROWS = 1_000


def register(app: typer.Typer) -> None:
    app.command("status")(status_command)
    app.command("refresh")(refresh_command)
    app.command("exporter")(exporter_command)


# Commands


def status_command(
    minutes: Optional[float] = typer.Option(
        None, "--minutes", "-m", min=0.01, help="Window of the event figures in minutes (default: the alert window)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the snapshot as JSON instead of tables."),
    category: Optional[list[str]] = typer.Option(
        None, "--category", "-c", help="Only this category (repeat for several)."
    ),
    model_type: Optional[str] = typer.Option(None, "--model-type", help="Only 'part' or 'assembly'."),
    recent: int = typer.Option(10, "--recent", min=1, max=10_000, help="Number of recent models to list."),
    no_refresh: bool = typer.Option(False, "--no-refresh", help="Read the ledger as it is, without refreshing it."),
) -> None:
    """Print the fleet-wide state: runs, quality, failures, batches and workers."""
    from serialmon.cli import console
    from serialmon.config import get_settings
    from serialmon.db import connect
    from serialmon.monitor.space import resolve_relation
    from serialmon.readmodel import Filters, get_snapshot

    try:
        filters = Filters(categories=tuple(category or ()), model_type=model_type)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None

    settings = get_settings()
    with _ledger_progress() as progress, connect(settings) as conn:
        # Without the monitored table the snapshot would still print figures, from a ledger it cannot
        # refresh, so a wrong SERIALMON_MODELS_TABLE ends here with db-report's `MissingTable` message.
        resolve_relation(conn, settings)
        snapshot = get_snapshot(
            conn, settings, minutes=minutes, filters=filters, refresh=not no_refresh,
            progress=progress, recent_limit=recent,
        )
        conn.rollback()

    if as_json:
        typer.echo(json.dumps(snapshot, indent=2))
        return
    _print_snapshot(console, snapshot)


def refresh_command(
    chunk_size: int = typer.Option(2_000, "--chunk-size", min=1, max=100_000, help="Rows per streamed chunk."),
    wait: float = typer.Option(
        30.0, "--wait", min=0.0, max=3_600.0, help="Seconds to wait for a refresh that is already running."
    ),
) -> None:
    """Bring the model-quality ledger up to date, reading only new and changed rows."""
    from serialmon.cli import console
    from serialmon.config import get_settings
    from serialmon.ledger import refresh_ledger

    with _ledger_progress(min_rows=1) as progress:
        result = refresh_ledger(get_settings(), progress=progress, chunk_size=chunk_size, lock_wait_sec=wait)

    if result.skipped:
        console.print(f"Another refresh of the ledger of {result.relation} is running; this one did nothing.")
        return
    console.print(
        f"Ledger of {result.relation}: read {result.rows_read} new or changed rows "
        f"({result.inserted} new, {result.updated} changed, {result.quality_unknown} with unknown quality), "
        f"removed {result.deleted}; {result.ledger_rows} rows in {result.duration_sec:.2f} s.",
        soft_wrap=True,
        highlight=False,
    )
    if result.rebuilt:
        console.print("[yellow]The ledger described another table and was rebuilt.[/]")


def exporter_command(
    port: int = typer.Option(9464, "--port", "-p", min=0, max=65535, help="TCP port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: loopback only)."),
    minutes: Optional[float] = typer.Option(
        None, "--minutes", "-m", min=0.01, help="Window of the windowed metrics in minutes (default: the alert window)."
    ),
    no_refresh: bool = typer.Option(False, "--no-refresh", help="Do not refresh the ledger on each scrape."),
) -> None:
    """Serve the fleet-wide figures at /metrics in the Prometheus text format until interrupted."""
    from serialmon.cli import console, err_console, is_loopback
    from serialmon.config import get_settings
    from serialmon.errors import SerialmonError
    from serialmon.exporter import start_exporter

    if not is_loopback(host):
        err_console.print(
            f"[yellow]Note:[/] listening on {host} lets other machines read the metrics, which include model names."
        )
    try:
        server, thread = start_exporter(
            get_settings(), host=host, port=port, minutes=minutes, refresh=not no_refresh
        )
    except OSError as error:
        raise SerialmonError(
            f"Cannot listen on {host}:{port}: {error.strerror or error}.", "Choose another --port or --host."
        ) from None

    console.print(f"Serving metrics at http://{host}:{server.server_port}/metrics (Ctrl-C stops).")
    try:
        while thread.is_alive():
            thread.join(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    console.print("Exporter stopped.")



@contextmanager
def _ledger_progress(min_rows: int = _PROGRESS_MIN_ROWS) -> Iterator[Any]:
    """Yield a `progress(done, total)` callback that shows a Rich bar on stderr for a large catch-up."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from serialmon.cli import err_console

    state: dict[str, Any] = {"bar": None, "task": None}

    def progress(done: int, total: int) -> None:
        if state["bar"] is None:
            if total < min_rows or not err_console.is_terminal:
                return
            bar = Progress(
                TextColumn("[bold]ledger"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                TimeRemainingColumn(), console=err_console, transient=True,
            )
            bar.start()
            state["bar"], state["task"] = bar, bar.add_task("ledger", total=total)
        state["bar"].update(state["task"], completed=done, total=total)

    try:
        yield progress
    finally:
        if state["bar"] is not None:
            state["bar"].stop()


# Rendering


def _number(value: Any, spec: str = ",.0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{100.0 * ratio:.1f} %"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _time(iso_text: str | None) -> str:
    """Return an ISO 8601 timestamp (UTC) as 'YYYY-MM-DD HH:MM:SS'."""
    return "-" if not iso_text else iso_text[:19].replace("T", " ")


def _short_time(iso_text: str | None) -> str:
    """Return an ISO 8601 timestamp (UTC) as 'MM-DD HH:MM:SS', for table cells."""
    return "-" if not iso_text else iso_text[5:19].replace("T", " ")


def _styled(value: str, style: str) -> Any:
    from rich.text import Text

    return Text(value, style=style)


def _add_row(table: Any, *cells: Any) -> None:
    """Add a row whose text cells are shown as they are: model names may contain Rich markup characters."""
    from rich.text import Text

    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


def _level(value: float | None, warning: float, critical: float, *, higher_is_worse: bool) -> str:
    if value is None:
        return "default"
    if higher_is_worse:
        value, warning, critical = -value, -warning, -critical
    if value < critical:
        return "bold red"
    if value < warning:
        return "yellow"
    return "green"


def _print_snapshot(console: Any, snapshot: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    thresholds = snapshot["thresholds"]
    window = snapshot["window"]
    scope = f"last {snapshot['window_minutes']:g} min" if snapshot["window_minutes"] else "selected range"
    console.print(
        f"[bold]serialmon status[/] - {scope} (since {_time(window['since'])} UTC), "
        f"generated {_time(snapshot['generated_at'])} UTC",
        highlight=False,
    )
    active = {key: value for key, value in snapshot["filters"].items() if value not in (None, [])}
    if active:
        console.print(escape(f"filters: {active}"), highlight=False)

    runs = Table("figure", "value", title="Runs (events in the window)", title_justify="left")
    status = snapshot["by_status"]
    failure_style = _level(
        snapshot["failure_rate"], thresholds["failure_rate_warning"], thresholds["failure_rate_critical"],
        higher_is_worse=True,
    )
    throughput = snapshot["throughput_per_hour"]
    timing = snapshot["processing_time_sec"]
    _add_row(runs, "models (distinct)", _number(snapshot["total_models"]))
    _add_row(runs, "attempts", f"{snapshot['attempts']:,} ({status['success']:,} ok, {status['failure']:,} failed, "
                 f"{status['skipped']:,} skipped)")
    _add_row(runs, "failure rate", _styled(_percent(snapshot["failure_rate"]), failure_style))
    _add_row(runs, 
        "throughput per hour",
        f"{_number(throughput['last_5_min'], ',.1f')} (5 min), {_number(throughput['last_hour'], ',.1f')} (1 h), "
        f"{_number(throughput['window'], ',.1f')} (window)",
    )
    _add_row(runs, 
        "processing time",
        f"p50 {_number(timing['p50'], ',.1f', ' s')}, p95 {_number(timing['p95'], ',.1f', ' s')}, "
        f"p99 {_number(timing['p99'], ',.1f', ' s')}, mean {_number(timing['mean'], ',.1f', ' s')}",
    )
    _add_row(runs, "models in table", _number(snapshot["table_models"]))
    console.print(runs)

    _print_quality(console, snapshot["quality"])
    _print_categories(console, snapshot["by_category"], thresholds)
    _print_failures(console, snapshot["failure_reasons"])
    _print_batches(console, snapshot["batches"])
    _print_workers(console, snapshot["workers"])
    _print_recent(console, snapshot["recent_models"], thresholds)

    ledger = snapshot["ledger"]
    if ledger["error"]:
        console.print(
            f"[yellow]Ledger not refreshed:[/] {escape(ledger['error'].rstrip('.'))}. Quality figures may be out of date."
        )
    refreshed = ledger["refresh"]
    read = f", this refresh read {refreshed['rows_read']:,} changed rows" if refreshed else ""
    console.print(f"Ledger: {ledger['rows']:,} rows, refreshed {_time(ledger['refreshed_at'])} UTC{read}.")


def _print_quality(console: Any, quality: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("figure", "value", title="Quality (table, from the ledger)", title_justify="left")
    average_style = _level(
        quality["avg_element_coverage"], quality["coverage_warning"], quality["coverage_critical"],
        higher_is_worse=False,
    )
    _add_row(table, 
        "element coverage",
        _styled(f"mean {_number(quality['avg_element_coverage'], '.1f', ' %')}", average_style)
        + f", min {_number(quality['min_element_coverage'], '.1f', ' %')}",
    )
    _add_row(table, f"below {quality['coverage_warning']:g} % (warning)", _number(quality["below_warning"]))
    _add_row(table, f"below {quality['coverage_critical']:g} % (critical)", _number(quality["below_critical"]))
    _add_row(table, 
        "unrecoverable unknown features",
        f"{quality['unrecoverable_unknown']:,} in {quality['models_with_unrecoverable_unknown']:,} models",
    )
    _add_row(table, "quality unknown", _number(quality["quality_unknown"]))
    for reason in quality["unknown_reasons"]:
        _add_row(table, f"  {reason['reason']}", f"{reason['models']:,} (e.g. {reason['example_model']})")
    histogram = "  ".join(
        f"{bucket['bucket_start']}-{bucket['bucket_end']}: {bucket['models']}"
        for bucket in quality["coverage_histogram"]
    )
    _add_row(table, "coverage histogram", histogram)
    console.print(table)


def _print_categories(console: Any, categories: list[dict[str, Any]], thresholds: dict[str, Any]) -> None:
    from rich.table import Table

    if not categories:
        return
    table = Table(
        "category", "attempts", "models", "failure rate", "p95 time", "in table", "mean coverage",
        title="By category", title_justify="left",
    )
    for row in categories:
        coverage_style = _level(
            row["avg_element_coverage"], thresholds["coverage_warning"], thresholds["coverage_critical"],
            higher_is_worse=False,
        )
        _add_row(table, 
            row["category"] or "(none)",
            _number(row["attempts"]),
            _number(row["models"]),
            _percent(row["failure_rate"]),
            _number(row["p95_processing_time_sec"], ",.1f", " s"),
            _number(row["table_models"]),
            _styled(_number(row["avg_element_coverage"], ".1f", " %"), coverage_style),
        )
    console.print(table)


def _print_failures(console: Any, groups: list[dict[str, Any]]) -> None:
    from rich.table import Table

    if not groups:
        return
    table = Table(
        "error type", "failures", "models", "last seen", "latest model", "latest message",
        title="Failure reasons", title_justify="left",
    )
    for group in groups:
        _add_row(table, 
            group["error_type"] or "(none)",
            _number(group["failures"]),
            _number(group["models"]),
            _short_time(group["last_seen"]),
            group["latest_model"] or "-",
            (group["latest_message"] or "-")[:80],
        )
    console.print(table)


def _print_batches(console: Any, batches: list[dict[str, Any]]) -> None:
    from rich.table import Table

    if not batches:
        return
    styles = {"running": "green", "completed": "default", "failed": "bold red", "abandoned": "bold red"}
    table = Table(
        "batch", "status", "progress (models)", "failed (attempts)", "skipped", "per hour (15 min)", "ETA",
        title="Batches", title_justify="left",
    )
    for batch in batches:
        total = _number(batch["total"])
        _add_row(table, 
            batch["name"] or batch["batch_id"],
            _styled(batch["status"], styles.get(batch["status"], "default")),
            f"{batch['processed']:,} / {total} ({_number(batch['percent'], '.1f', ' %')})",
            f"{_number(batch['failed'])} ({_number(batch['failed_attempts'])})",
            _number(batch["skipped"]),
            _number(batch["throughput_per_hour"], ",.1f"),
            _duration(batch["eta_seconds"]),
        )
    console.print(table)


def _print_workers(console: Any, workers: list[dict[str, Any]]) -> None:
    from rich.table import Table

    if not workers:
        return
    styles = {"live": "green", "silent": "bold red", "stopped": "default"}
    table = Table(
        "worker", "host", "pid", "state", "last heartbeat", "current model", "events",
        title="Workers", title_justify="left",
    )
    for worker in workers:
        _add_row(table, 
            worker["worker_id"],
            worker["host"],
            str(worker["pid"]),
            _styled(worker["state"], styles[worker["state"]]),
            f"{_duration(worker['heartbeat_age_sec'])} ago",
            worker["current_model"] or "-",
            _number(worker["events_recorded"]),
        )
    console.print(table)


def _print_recent(console: Any, models: list[dict[str, Any]], thresholds: dict[str, Any]) -> None:
    from rich.table import Table

    if not models:
        return
    styles = {"success": "green", "failure": "bold red", "skipped": "default"}
    table = Table(
        "time (UTC)", "model", "type", "category", "status", "time", "coverage",
        title="Recent models", title_justify="left",
    )
    for model in models:
        coverage = model["element_coverage"]
        if coverage is None:
            coverage = model["ledger_element_coverage"]
        coverage_style = _level(
            coverage, thresholds["coverage_warning"], thresholds["coverage_critical"], higher_is_worse=False
        )
        _add_row(table, 
            _short_time(model["occurred_at"]),
            model["model_name"],
            model["model_type"],
            model["category"] or "-",
            _styled(model["status"], styles.get(model["status"], "default")),
            _number(model["processing_time_sec"], ",.1f", " s"),
            _styled(_number(coverage, ".1f", " %"), coverage_style),
        )
    console.print(table)
