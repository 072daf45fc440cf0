"""Benchmark the database monitor's full report on a 20 MB and a 2 GB JSONB-heavy table, side by side.

Usage:
    python bench/bench_monitor.py [--small-mb 20] [--large-mb 2048] [--runs 15] [--keep]

Starts a temporary embedded PostgreSQL in a new folder under the system
temporary directory, builds both tables server-side (generate_series, JSONB of
md5 strings, which do not compress, so the TOAST table holds real chunks),
runs VACUUM ANALYZE, runs the report `--runs` times per table after two
warm-up runs, alternating between the tables so that noise from other work
on the machine hits both alike, and prints the median and 90th percentile per table. The tables are
UNLOGGED to spare the disk twice their size in WAL; the monitor's queries
read them the same way. The folder is deleted afterwards unless `--keep`.
Needs about 2.5 times the large size in free disk space.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from machine import machine_info
from serialmon.config import load_settings
from serialmon.db import dispose_engines
from serialmon.embedded import EmbeddedServer
from serialmon.monitor import DatabaseMonitor
from serialmon.schema import init_db

BYTES_PER_ROW = 27_000  # stored size of one row's JSONB at 700 md5 strings per model
STRINGS_PER_ROW = 700
BATCH_ROWS = 5_000

LOAD = """
INSERT INTO serialized_models (model_name, model_type, feature_count, category, serialized_content,
                               structure_summary, feature_types, units, parameters, bounding_box)
SELECT 'model-' || g, CASE WHEN g %% 4 = 0 THEN 'assembly' ELSE 'part' END, g %% 500, 'category-' || (g %% 12),
       jsonb_build_object('model_name', 'model-' || g,
           'features', (SELECT jsonb_agg(md5(g::text || '-' || k::text)) FROM generate_series(1, %(strings)s::int) k)),
       jsonb_build_object('features', g %% 500, 'sketches', g %% 40),
       ARRAY['PROTRUSION', 'CUT', CASE WHEN g %% 3 = 0 THEN 'HOLE' ELSE 'ROUND' END],
       '{"length": "mm", "mass": "kg"}', jsonb_build_object('p', md5(g::text)), '{"x": 120, "y": 80, "z": 40}'
FROM generate_series(%(first)s::int, %(last)s::int) g
"""

QUERIES = (
    "SELECT count(*) FROM serialized_models WHERE feature_types @> ARRAY['HOLE']",
    "SELECT model_name FROM serialized_models WHERE model_name = 'model-17'",
    "SELECT category, count(*) FROM serialized_models GROUP BY category",
    "SELECT id, updated_at FROM serialized_models ORDER BY id DESC LIMIT 20",
)


def build(conninfo: str, megabytes: int) -> int:
    """Create and fill the monitored table in one database; returns the row count."""
    rows = max(1, megabytes * 1_000_000 // BYTES_PER_ROW)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("ALTER TABLE serialized_models SET UNLOGGED")
        for first in range(1, rows + 1, BATCH_ROWS):
            last = min(first + BATCH_ROWS - 1, rows)
            conn.execute(LOAD, {"strings": STRINGS_PER_ROW, "first": first, "last": last})
        conn.execute("VACUUM ANALYZE serialized_models")
        for query in QUERIES:
            for _ in range(3):
                conn.execute(query)
    return rows


def time_reports(settings_by_label: dict[str, object], runs: int) -> dict[str, list[float]]:
    """Time the full report on each table, alternating between them so machine noise hits both alike."""
    monitors = {label: DatabaseMonitor(settings) for label, settings in settings_by_label.items()}

    async def measure() -> dict[str, list[float]]:
        for monitor in monitors.values():
            for _ in range(2):
                await monitor.get_full_report()
        timings: dict[str, list[float]] = {label: [] for label in monitors}
        for _ in range(runs):
            for label, monitor in monitors.items():
                started = time.perf_counter()
                await monitor.get_full_report()
                timings[label].append((time.perf_counter() - started) * 1000)
        return timings

    return asyncio.run(measure())


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-mb", type=int, default=20)
    parser.add_argument("--large-mb", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help="keep the temporary server folder")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="serialmon-bench-monitor-"))
    free = shutil.disk_usage(folder).free
    needed = int(args.large_mb * 1_000_000 * 2.5)
    if free < needed:
        sys.exit(f"only {free / 1e9:.1f} GB free in {folder}; the benchmark needs about {needed / 1e9:.1f} GB")

    server = EmbeddedServer(folder)
    url = server.start()
    results = []
    built: dict[str, tuple] = {}
    try:
        for label, megabytes in (("small", args.small_mb), ("large", args.large_mb)):
            database = f"bench_{label}"
            admin = url.replace("postgresql+psycopg://", "postgresql://").replace("/serialmon?", "/postgres?")
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {database}")
                conn.execute(f"CREATE DATABASE {database}")
            database_url = url.replace("/serialmon?", f"/{database}?")
            settings = load_settings(database_url=database_url, data_dir=folder / "data")
            init_db(settings, create_models_table=True)

            started = time.perf_counter()
            rows = build(database_url.replace("postgresql+psycopg://", "postgresql://"), megabytes)
            build_sec = time.perf_counter() - started

            with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
                total, heap, toast = conn.execute(
                    "SELECT pg_total_relation_size('serialized_models'), pg_relation_size('serialized_models'), "
                    "pg_total_relation_size(reltoastrelid) FROM pg_class WHERE oid = 'serialized_models'::regclass"
                ).fetchone()
                version = conn.execute("SHOW server_version").fetchone()[0]
            built[label] = (settings, rows, total, heap, toast, build_sec, version)
        timings = time_reports({label: entry[0] for label, entry in built.items()}, args.runs)
        for label, (_, rows, total, heap, toast, build_sec, version) in built.items():
            results.append((label, rows, total, heap, toast, build_sec, timings[label], version))
    finally:
        dispose_engines()
        server.stop()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    info = machine_info()
    print(f"machine: {info['CPU']}, {info['cores (logical)']} cores, {info['memory']}, Python {info['Python']}, "
          f"PostgreSQL {results[0][7]}, {info['OS']}")  # fmt: skip
    print(f"{args.runs} timed runs of get_full_report() per table, alternating, after 2 warm-up runs, session=None")
    print()
    print("| table | rows | total size | heap | TOAST | median ms | p90 ms | min ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, rows, total, heap, toast, _, timings, _ in results:
        print(
            f"| {label} | {rows} | {total / 1e6:.0f} MB | {heap / 1e6:.1f} MB | {toast / 1e6:.0f} MB "
            f"| {statistics.median(timings):.1f} | {percentile(timings, 0.9):.1f} | {min(timings):.1f} |"
        )
    small, large = statistics.median(results[0][6]), statistics.median(results[1][6])
    print()
    print(f"large / small median: {large / small:.2f}x (target <= 1.2x, and <= 200 ms)")
    print(f"build time: small {results[0][5]:.0f} s, large {results[1][5]:.0f} s")


if __name__ == "__main__":
    main()
