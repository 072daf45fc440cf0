"""`serialmon doctor`: check the installation and print a fix for each problem."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_command)


def doctor_command(
    smtp: bool = typer.Option(False, "--smtp", help="Also connect to the mail server (sends no mail)."),
) -> None:
    """Check Python, dependencies, database, table, privileges, extensions and (--smtp) mail."""
    from rich.table import Table

    from serialmon.cli import console
    from serialmon.config import get_settings
    from serialmon.doctor import run_checks

    checks = run_checks(get_settings(), smtp=smtp)
    marks = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]"}
    table = Table("check", "status", "detail", "fix", title="serialmon doctor", show_lines=False)
    for check in checks:
        table.add_row(check.name, marks[check.status], check.detail, check.fix)
    console.print(table)

    failed = [check for check in checks if check.status == "fail"]
    warned = [check for check in checks if check.status == "warn"]
    if failed:
        console.print(f"[bold red]{len(failed)} problem(s) to fix[/] (see the fix column).")
        raise typer.Exit(1)
    console.print(f"[green]Healthy.[/] {len(warned)} warning(s)." if warned else "[green]Healthy.[/]")
