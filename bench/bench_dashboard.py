"""Benchmark the dashboard: how long each view takes to render with 20,000 models in the database.

    python bench/bench_dashboard.py                          # 20,000 models, embedded PostgreSQL
    python bench/bench_dashboard.py --models 2000 --repeat 3 # a quick smoke run
    SERIALMON_BENCH_DATABASE_URL=postgresql://... python bench/bench_dashboard.py

The simulator (`serialmon simulate`) fills the database with 2 worker
processes and about 1 KB of content per model. Event times are spread over
the simulated run, so the last 24 hours contain only part of it. Then the
ledger is refreshed and one database report records a size sample. Each view is rendered with
Streamlit's `AppTest`, which runs the whole script in this process as the
server would (sidebar included), on the default filters (last 24 hours):

- cold: the dashboard's cache cleared first, so every figure is read from
  PostgreSQL (the ledger is already up to date, as it is after the first
  page load);
- warm: the same view again, its figures served from the cache.

Prints the machine and a table of median and maximum times against the
target of 1 s per view. It never asserts. With `--append FILE` the result is
added to that Markdown file with the command.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from machine import machine_info
from serialmon.config import load_settings, normalize_url, set_settings
from serialmon.db import dispose_engines
from serialmon.embedded import EmbeddedServer

TARGET_SEC = 1.0
TIME_RANGES = ("Last 24 hours", "Last 7 days")  # the default range, and one that contains every simulated event
VIEWS = ("Overview", "Quality", "Categories", "Trends", "Failures", "Recent models", "Database", "Alerts")


def _libpq(url: str, database: str | None = None) -> str:
    parsed = make_url(normalize_url(url))
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def machine(libpq_url: str) -> dict[str, str]:
    """Return the machine rows (`bench/machine.py`) with the PostgreSQL and Streamlit versions."""
    import streamlit

    with psycopg.connect(libpq_url) as conn:
        server_version = conn.execute("SHOW server_version").fetchone()[0]
    return machine_info(server_version, Streamlit=streamlit.__version__)


def seed(url: str, data_dir: Path, models: int, content_kb: float, workers: int) -> dict[str, float]:
    """Fill a fresh database like a pipeline run; return the seconds each step took."""
    import asyncio

    from serialmon.collector import reset_serialize_metrics_collector
    from serialmon.ledger import refresh_ledger
    from serialmon.monitor import DatabaseMonitor
    from serialmon.schema import init_db
    from serialmon.simulate import SimulationConfig, run_simulation

    settings = load_settings(database_url=url, data_dir=data_dir)
    set_settings(settings)
    init_db(settings, create_models_table=True)
    steps: dict[str, float] = {}

    started = time.perf_counter()
    reset_serialize_metrics_collector()
    config = SimulationConfig(count=models, seed=1, content_kb=content_kb, workers=workers, history_hours=0.0)
    run_simulation(config, settings)
    reset_serialize_metrics_collector()
    steps["simulate"] = time.perf_counter() - started

    started = time.perf_counter()
    refresh_ledger(settings)
    steps["first ledger refresh"] = time.perf_counter() - started

    asyncio.run(DatabaseMonitor(settings).get_full_report())
    return steps


def count_events(url: str, time_ranges: tuple[str, ...]) -> dict[str, float]:
    """Return {"events <time range>": events in that range}, read with `get_snapshot()` as the dashboard does."""
    from serialmon.dashboard.data import TIME_RANGES as MINUTES
    from serialmon.db import run_sync
    from serialmon.readmodel import get_snapshot

    settings = load_settings(database_url=url)
    counts = {}
    for time_range in time_ranges:
        minutes = MINUTES[time_range]
        snapshot = run_sync(
            None, lambda conn, minutes=minutes: get_snapshot(conn, settings, minutes=minutes, refresh=False), settings
        )
        counts[f"events {time_range}"] = snapshot["attempts"]
    return counts


def render_views(
    url: str, data_dir: Path, repeat: int, time_ranges: tuple[str, ...]
) -> tuple[float, dict[tuple[str, str], dict[str, list[float]]]]:
    """Render each view `repeat` times cold and warm for each time range.

    Returns the first page load's seconds and {(time range, view): {"cold": [...], "warm": [...]}}.
    """
    from streamlit.testing.v1 import AppTest

    from serialmon.dashboard import APP_PATH
    from serialmon.dashboard.data import clear_cache

    os.environ["DATABASE_URL"] = url
    os.environ["SERIALMON_DATA_DIR"] = str(data_dir)
    set_settings(None)
    dispose_engines()
    clear_cache()

    app = AppTest.from_file(str(APP_PATH), default_timeout=120)
    started = time.perf_counter()
    app.run()  # imports Plotly and pandas and opens the pool: a new server process pays this once
    first_load = time.perf_counter() - started
    _check(app, "Overview")

    timings: dict[tuple[str, str], dict[str, list[float]]] = {}
    for time_range in time_ranges:
        app.selectbox(key="time_range").set_value(time_range)
        for _ in range(repeat):
            for view in VIEWS:
                runs = timings.setdefault((time_range, view), {"cold": [], "warm": []})
                app.session_state["view"] = view
                clear_cache()
                started = time.perf_counter()
                app.run()
                runs["cold"].append(time.perf_counter() - started)
                _check(app, view)

                started = time.perf_counter()
                app.run()
                runs["warm"].append(time.perf_counter() - started)
                _check(app, view)
    return first_load, timings


def _check(app: Any, view: str) -> None:
    """Stop the benchmark when the view raised or drew a problem banner (which ends with a fix)."""
    problems = [item.value for item in app.exception]
    problems += [item.value for item in app.info if item.value.startswith("**Fix:**")]
    if problems:
        raise SystemExit(f"the {view} view failed: {problems}")


def report(
    info: dict[str, str], steps: dict[str, float], first_load: float,
    timings: dict[tuple[str, str], dict[str, list[float]]], models: int, repeat: int,
) -> str:
    """Return the result as Markdown: machine, setup times and the table of view times."""
    lines = [
        "Machine: " + ", ".join(f"{key} {value}" for key, value in info.items()) + ".",
        "",
        f"Setup: {models:,} models simulated in {steps['simulate']:.1f} s; first ledger refresh "
        f"{steps['first ledger refresh']:.2f} s (once per new backlog, before the first page shows quality "
        f"figures); first page load in a new process {first_load:.2f} s (imports and connections).",
        "",
        f"Each view, {repeat} runs per time range (median and max ms of the script run on the server, "
        f"as `AppTest` measures it, without the browser's drawing; target {TARGET_SEC * 1000:.0f} ms):",
        "",
        "| time range | view | events in range | cold median | cold max | warm median | warm max | within target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (time_range, view), runs in timings.items():
        cold, warm = runs["cold"], runs["warm"]
        within = "yes" if max(cold) <= TARGET_SEC and max(warm) <= TARGET_SEC else "no"
        lines.append(
            f"| {time_range} | {view} | {steps['events ' + time_range]:,.0f} | "
            f"{statistics.median(cold) * 1000:.0f} | {max(cold) * 1000:.0f} | "
            f"{statistics.median(warm) * 1000:.0f} | {max(warm) * 1000:.0f} | {within} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=20_000, help="models to simulate (default 20,000)")
    parser.add_argument("--content-kb", type=float, default=1.0, help="typical serialized_content size in KB")
    parser.add_argument("--workers", type=int, default=2, help="simulator worker processes")
    parser.add_argument("--repeat", type=int, default=5, help="cold and warm renders per view")
    parser.add_argument("--append", metavar="FILE", help="append the result to this Markdown file")
    arguments = parser.parse_args()
    # Streamlit outside a server warns about the missing runtime on every cache call; the figures are unaffected.
    for name in ("streamlit", "streamlit.runtime.caching.cache_data_api"):
        logging.getLogger(name).setLevel(logging.ERROR)

    folder = Path(tempfile.mkdtemp(prefix="serialmon-bench-dashboard-"))
    configured = os.environ.get("SERIALMON_BENCH_DATABASE_URL")
    server = None
    if configured:
        server_url = normalize_url(configured)
    else:
        server = EmbeddedServer(folder / "pg")
        server_url = server.start()

    name = f"bench_dashboard_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_libpq(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(normalize_url(server_url)).set(database=name).render_as_string(hide_password=False)
    try:
        info = machine(_libpq(url))
        print("\n".join(f"{key}: {value}" for key, value in info.items()), flush=True)
        print(f"seeding {arguments.models:,} models ...", flush=True)
        steps = seed(url, folder / "data", arguments.models, arguments.content_kb, arguments.workers)
        steps.update(count_events(url, TIME_RANGES))
        first_load, timings = render_views(url, folder / "data", arguments.repeat, TIME_RANGES)
        result = report(info, steps, first_load, timings, arguments.models, arguments.repeat)
        print()
        print(result)
        if arguments.append:
            command = "python bench/bench_dashboard.py " + " ".join(sys.argv[1:])
            with open(arguments.append, "a", encoding="utf-8") as output:
                output.write(f"\n## Dashboard ({time.strftime('%Y-%m-%d')})\n\nCommand: `{command.strip()}`\n\n")
                output.write(result + "\n")
    finally:
        dispose_engines()
        with psycopg.connect(_libpq(server_url, "postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
