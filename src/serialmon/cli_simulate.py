"""`serialmon simulate`: fill the monitored table as the real pipeline would."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)


def simulate_command(
    count: int = typer.Option(500, "--count", "-n", min=1, help="Number of models to serialize."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, max=64, help="Worker processes."),
    seed: int = typer.Option(1, "--seed", help="Random seed; the same seed writes the same rows."),
    speed: float = typer.Option(
        0.0, "--speed", min=0.0,
        help="Run live, compressing pipeline time by this factor (60: a 40 s model takes 0.67 s). "
        "0 (default) writes at full speed and timestamps events on a simulated clock ending now.",
    ),
    content_kb: float = typer.Option(20.0, "--content-kb", min=0.5, help="Typical serialized_content size in KB."),
    failure_rate: float = typer.Option(0.05, "--failure-rate", min=0.0, max=1.0, help="Share of models that fail."),
    category: Optional[str] = typer.Option(None, "--category", help="Put every model in this category."),
    history_hours: Optional[float] = typer.Option(
        None, "--history-hours", min=0.0, help="Spread event times over the last N hours (default: the simulated run length)."
    ),
    no_record: bool = typer.Option(False, "--no-record", help="Only write rows; do not record through the collector."),
) -> None:
    """Write simulated models into serialized_models and record them through the collector."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from serialmon.cli import console
    from serialmon.config import get_settings
    from serialmon.simulate import SimulationConfig, run_simulation

    try:
        config = SimulationConfig(
            count=count, workers=workers, seed=seed, speed=speed, content_kb=content_kb,
            failure_rate=failure_rate, category=category, record=not no_record,
            # Live runs (--speed) stamp events with the real time; fast runs use a simulated clock.
            history_hours=history_hours if history_hours is not None else (None if speed > 0 else 0.0),
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None

    columns = (
        TextColumn("[bold]simulating"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.0f} models/s"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("simulate", total=count, rate=0.0)
        started = [None]

        def advance(done: int) -> None:
            import time

            started[0] = started[0] or time.perf_counter()
            progress.advance(task, done)
            elapsed = max(1e-6, time.perf_counter() - started[0])
            progress.update(task, rate=progress.tasks[0].completed / elapsed)

        result = run_simulation(config, get_settings(), on_progress=advance)

    counts = result.by_status
    console.print(
        f"Simulated {result.models} models with {workers} worker(s) in {result.elapsed_sec:.1f} s: "
        f"{counts['success']} serialized, {counts['skipped']} skipped, {counts['failure']} failed attempts "
        f"(each retried once). {result.rows_written} rows upserted into {get_settings().models_table}."
    )
    if result.batch_id:
        console.print(f"Batch {result.batch_id}. Next: `serialmon status` or `serialmon dashboard`.")
