"""`serialmon demo`: the one-command tour on the embedded PostgreSQL."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)


def demo_command(
    models: int = typer.Option(3000, "--models", min=50, max=200_000, help="Models to simulate."),
    workers: int = typer.Option(2, "--workers", min=1, max=16, help="Worker processes."),
    seed: int = typer.Option(1, "--seed", help="Random seed of the simulated run."),
    no_dashboard: bool = typer.Option(False, "--no-dashboard", help="Run headless: do not start the dashboard."),
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="Dashboard port (on 127.0.0.1)."),
) -> None:
    """Simulate a multi-worker run with alerts and e-mail, print a summary, open the dashboard."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from serialmon.cli import console
    from serialmon.config import get_settings
    from serialmon.demo import run_demo

    settings = get_settings()
    if settings.database_url is not None:
        console.print("[yellow]Note:[/] the demo ignores the configured database and uses the embedded server.")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("simulating", total=models, visible=False)

        def step(message: str) -> None:
            console.print(f"[bold cyan]>[/] {message}")
            progress.update(task, visible=message.startswith("Simulating"))

        result = run_demo(
            settings, models=models, workers=workers, seed=seed,
            on_step=step, on_progress=lambda done: progress.advance(task, done),
        )
        progress.update(task, visible=False)

    _print_summary(result, port if not no_dashboard else None)
    if no_dashboard:
        return

    import os

    from serialmon.cli_dashboard import dashboard_command

    # The dashboard runs in a child process that reads its settings from the environment.
    os.environ["MODEL_DATA_DB_URL"] = result.database_url
    dashboard_command(host="127.0.0.1", port=port, no_browser=False)


def _print_summary(result, port: int | None) -> None:
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    from serialmon.cli import console
    from serialmon.db import describe_url

    snapshot = result.snapshot
    quality = snapshot.get("quality", {})
    table = Table(show_header=False, box=None)
    table.add_row("models simulated / recorded", f"{result.models_simulated} / {result.models_recorded}")
    table.add_row("events recorded", f"{result.events_recorded} ({result.failed_attempts} failed attempts)")
    failure_rate = snapshot.get("failure_rate")
    table.add_row("failure rate over the run", f"{failure_rate:.1%}" if failure_rate is not None else "-")
    average = quality.get("avg_element_coverage")
    table.add_row("average element coverage", f"{average:.1f} %" if average is not None else "-")
    table.add_row("alert evaluations", str(result.alert_evaluations))
    table.add_row("alerts fired", escape(", ".join(result.alerts_fired)) or "-")
    table.add_row("alerts escalated", escape(", ".join(result.alerts_escalated)) or "-")
    table.add_row("alert reminders", escape(", ".join(result.alerts_reminded)) or "-")
    table.add_row("alerts resolved", escape(", ".join(result.alerts_resolved)) or "-")
    if result.smtp:
        table.add_row("e-mails sent", f"{result.notifications_sent} through SMTP")
    else:
        table.add_row("e-mails written", f"{len(result.emails)} .eml files in {result.outbox_dir}")
    table.add_row("took", f"{result.elapsed_sec:.0f} s")
    console.print(Panel(table, title="serialmon demo", expand=False))

    url = describe_url(result.database_url)
    console.print("Look further with the demo database:", highlight=False)
    console.print(f"  export MODEL_DATA_DB_URL='{escape(url)}'", highlight=False, soft_wrap=True)
    for command in ("serialmon status", "serialmon db-report", "serialmon alerts history", "serialmon dashboard"):
        console.print(f"  {command}", highlight=False)
    if port is not None:
        console.print(f"Dashboard: http://127.0.0.1:{port} (Ctrl+C to stop)")
