"""Benchmark `get_snapshot()` (ledger) against reading quality from `serialized_content` for every row.

    python bench/bench_snapshot.py                      # 20,000 models of ~100 KB, embedded PostgreSQL
    python bench/bench_snapshot.py --models 2000 --content-kb 20     # a quick smoke run
    SERIALMON_BENCH_DATABASE_URL=postgresql://... python bench/bench_snapshot.py

Rows are generated server-side (generate_series + jsonb_build_object) in the
documented layout. Each has features with element trees, Creo type ids and
unknown features. Most rows carry a `serialization_quality` block, some the
legacy top-level coverage, a few only features, and a handful malformed or
NULL content. Shared-buffer accesses (hits + reads) come from pg_stat_statements
deltas, so every statement a call runs is counted, cursor fetches included.

Prints the machine and one table against the targets (at least 100 times fewer
buffers, at most 100 ms per refresh after the first). It never asserts. With
`--append FILE` the table is added to that Markdown file with the command.
"""

from __future__ import annotations

import argparse
import os
import shutil
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
from serialmon.config import Settings, load_settings, normalize_url, set_settings
from serialmon.db import dispose_engines, get_engine
from serialmon.embedded import EmbeddedServer
from serialmon.ledger import refresh_ledger
from serialmon.readmodel import get_snapshot
from serialmon.schema import init_db

GENERATE_BATCH = 250  # rows per INSERT ... SELECT
FEATURE_BYTES = 820  # JSON text of one generated feature with its element tree, measured on this generator

# One INSERT per batch of ids [first, last]. Each model gets 70-130 % of the
# requested features, about 0.8 KB each with its element tree. A per-model
# chance decides which features have elements, so coverage varies by model.
_GENERATE_MODELS_SQL = """
INSERT INTO serialized_models (
    model_name, model_type, feature_count, category, tags, serialized_content, structure_summary,
    feature_types, units, parameters, relations, mass_properties, bounding_box, feature_statuses,
    model_created_at, model_author, created_at, updated_at)
SELECT
    'bench_' || g || CASE WHEN mod(g, 5) = 0 THEN '.asm' ELSE '.prt' END,
    CASE WHEN mod(g, 5) = 0 THEN 'assembly' ELSE 'part' END,
    fx.total,
    (ARRAY['EMJAC', 'SDI', 'STOCK', 'FABRICATION', 'PURCHASED', 'WELDMENT', 'ELECTRICAL'])[1 + mod(g, 7)],
    ARRAY['bench', 'rev' || mod(g, 3)],
    CASE
        WHEN mod(g, 500) = 0 THEN NULL
        WHEN mod(g, 100) < 85 THEN fx.document || jsonb_build_object('serialization_quality', jsonb_build_object(
            'total_features', fx.total, 'features_with_elements', fx.with_elements,
            'element_coverage', round(100.0 * fx.with_elements / greatest(fx.total - fx.containers, 1), 2),
            'group_features', fx.groups, 'analysis_features', fx.containers - fx.groups,
            'recoverable_unknown', fx.recoverable, 'unrecoverable_unknown', fx.unrecoverable))
        WHEN mod(g, 100) < 95 THEN fx.document || jsonb_build_object(
            'element_coverage', round(100.0 * fx.with_elements / greatest(fx.total - fx.containers, 1), 2))
        WHEN mod(g, 100) < 99 THEN fx.document
        ELSE fx.document || jsonb_build_object('element_coverage', 'NaN')
    END,
    jsonb_build_object('features', fx.total, 'sketches', 3, 'groups', fx.groups, 'depth', 2),
    ARRAY['PROTRUSION', 'CUT', 'HOLE', 'ROUND', 'DATUM_PLANE', 'SKETCH'],
    '{"length": "mm", "mass": "kg", "force": "N"}',
    (SELECT jsonb_object_agg('PARAM_' || p, round((random() * 1000)::numeric, 3)) FROM generate_series(1, 12) AS p),
    '[]',
    jsonb_build_object('volume', random() * 1e6, 'mass', random() * 100, 'density', 7.85),
    jsonb_build_object('min', jsonb_build_array(0, 0, 0),
                       'max', jsonb_build_array(random() * 500, random() * 500, random() * 500)),
    jsonb_build_object('regenerated', fx.total - fx.unrecoverable, 'failed', 0, 'suppressed', fx.unrecoverable),
    now() - random() * interval '3 years', 'bench', now(), now()
FROM generate_series(%(first)s::int, %(last)s::int) AS g
CROSS JOIN LATERAL (
    SELECT
        greatest(5, round(%(features)s::float8 * (0.7 + 0.6 * random())))::int AS wanted,
        0.4 + 0.6 * random() AS chance
    WHERE g IS NOT NULL
) AS shape
CROSS JOIN LATERAL (
    SELECT
        jsonb_build_object(
            'model_name', 'bench_' || g,
            'features', jsonb_agg(f.feature ORDER BY f.i),
            'sketches', jsonb_build_array(jsonb_build_object('id', 1, 'entities', 24)),
            'groups', '[]'::jsonb,
            'parameters', jsonb_build_object('MATERIAL', 'STEEL', 'REV', 'B'),
            'relations', '[]'::jsonb,
            'metadata', jsonb_build_object('creo_version', '10.0.2.0', 'exported_by', 'bench')
        ) AS document,
        count(*) AS total,
        count(*) FILTER (WHERE f.elements > 0) AS with_elements,
        count(*) FILTER (WHERE f.type_id IN (1104, 1232)) AS containers,
        count(*) FILTER (WHERE f.type_id = 1104) AS groups,
        count(*) FILTER (WHERE f.type_id >= 2000 AND f.elements > 0) AS recoverable,
        count(*) FILTER (WHERE f.type_id >= 2000 AND f.elements = 0) AS unrecoverable
    FROM (
        SELECT
            i, t.type_id, t.elements,
            jsonb_build_object(
                'id', i, 'name', 'F' || i, 'type_id', t.type_id,
                'type', CASE WHEN t.type_id >= 2000 THEN 'UNKNOWN' ELSE 'FEATURE_' || t.type_id END,
                'element_tree', jsonb_build_object(
                    'element_count', t.elements,
                    'elements', (
                        SELECT coalesce(jsonb_agg(jsonb_build_object(
                            'id', e, 'name', 'PRO_E_' || e, 'type', 'double',
                            'value', round((random() * 1000)::numeric, 4),
                            'path', md5(g::text || ':' || i || ':' || e)) ORDER BY e), '[]'::jsonb)
                        FROM generate_series(1, t.elements) AS e)),
                'references', jsonb_build_array(i - 1, i - 2),
                'feature_geometry', jsonb_build_object(
                    'surfaces', floor(random() * 12), 'edges', floor(random() * 40),
                    'area', round((random() * 1e4)::numeric, 2))
            ) AS feature
        FROM generate_series(1, shape.wanted) AS i
        CROSS JOIN LATERAL (
            SELECT
                (ARRAY[917, 917, 917, 918, 918, 919, 920, 920, 921, 923, 923, 949, 949, 1104, 1232, 2004])
                    [1 + floor(random() * 16)::int] AS type_id,
                CASE WHEN random() < shape.chance THEN 4 + floor(random() * 9)::int ELSE 0 END AS elements
            WHERE i IS NOT NULL
        ) AS t
    ) AS f
) AS fx
"""

_GENERATE_EVENTS_SQL = """
INSERT INTO serialmon.serialization_events (
    event_id, occurred_at, model_name, model_type, status, processing_time_sec, element_coverage,
    category, batch_id, error_type, error_message, host, pid, worker_id)
SELECT
    gen_random_uuid(), now() - g * interval '24 hours' / %(events)s,
    'bench_' || (1 + g %% %(models)s) || '.prt', CASE WHEN g %% 5 = 0 THEN 'assembly' ELSE 'part' END,
    CASE WHEN r.value < 0.05 THEN 'failure' WHEN r.value < 0.08 THEN 'skipped' ELSE 'success' END,
    30 + 60 * random(), CASE WHEN r.value >= 0.08 THEN 50 + 50 * random() END,
    (ARRAY['EMJAC', 'SDI', 'STOCK', 'FABRICATION', 'PURCHASED', 'WELDMENT', 'ELECTRICAL'])[1 + g %% 7],
    'bench-run', CASE WHEN r.value < 0.05 THEN 'GrpcError' END, CASE WHEN r.value < 0.05 THEN 'UNAVAILABLE' END,
    'bench-host', 1000 + g %% 4, 'bench-host:' || (1000 + g %% 4)
FROM generate_series(1, %(events)s::int) AS g
CROSS JOIN LATERAL (SELECT random() AS value WHERE g IS NOT NULL) AS r
"""

# The query a monitor without a ledger runs: the quality of every row, read
# from the content. It detoasts each row once (as serialmon.ledger does), so the
# comparison is with the cheapest form of the direct query.
_DIRECT_SQL = """
WITH quality AS (
    SELECT
        CASE
            WHEN jsonb_typeof(c.content -> 'serialization_quality' -> 'element_coverage') = 'number'
                THEN (c.content -> 'serialization_quality' ->> 'element_coverage')::float8
            WHEN jsonb_typeof(c.content -> 'element_coverage') = 'number'
                THEN (c.content ->> 'element_coverage')::float8
        END AS coverage,
        CASE WHEN jsonb_typeof(c.content -> 'serialization_quality' -> 'unrecoverable_unknown') = 'number'
            THEN (c.content -> 'serialization_quality' ->> 'unrecoverable_unknown')::int END AS unrecoverable
    FROM (SELECT serialized_content #> '{}' AS content FROM serialized_models OFFSET 0) AS c
)
SELECT count(*), avg(coverage), min(coverage), count(*) FILTER (WHERE coverage < 80),
       count(*) FILTER (WHERE coverage < 50), sum(unrecoverable)
FROM quality
"""

_BUFFERS_SQL = """
SELECT coalesce(sum(shared_blks_hit), 0) AS hit, coalesce(sum(shared_blks_read), 0) AS read
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND query NOT LIKE '%%pg_stat_statements%%'
"""


def machine(conn: psycopg.Connection) -> dict[str, str]:
    return machine_info(
        conn.execute("SHOW server_version").fetchone()[0],
        shared_buffers=conn.execute("SHOW shared_buffers").fetchone()[0],
    )


def libpq(url: str) -> str:
    return make_url(normalize_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)


def generate(admin: psycopg.Connection, models: int, content_kb: float, events: int) -> None:
    admin.execute("SELECT setseed(0.42)")
    started = time.perf_counter()
    for first in range(1, models + 1, GENERATE_BATCH):
        last = min(first + GENERATE_BATCH - 1, models)
        features = content_kb * 1000 / FEATURE_BYTES
        admin.execute(_GENERATE_MODELS_SQL, {"first": first, "last": last, "features": features})
        elapsed = time.perf_counter() - started
        print(f"\r  generated {last:,} / {models:,} models ({elapsed:.0f} s)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    admin.execute(_GENERATE_EVENTS_SQL, {"events": events, "models": models})
    admin.execute(
        "INSERT INTO serialmon.batch_jobs (batch_id, name, status, total_models, processed, succeeded, failed, "
        "skipped, started_at, heartbeat_at) VALUES ('bench-run', 'benchmark', 'running', %s, %s, %s, %s, %s, "
        "now() - interval '24 hours', now())",
        (int(events * 1.5), events, int(events * 0.92), int(events * 0.05), int(events * 0.03)),
    )
    admin.execute(
        "INSERT INTO serialmon.worker_heartbeats (worker_id, host, pid, heartbeat_at, events_recorded) "
        "SELECT 'bench-host:' || p, 'bench-host', p, now(), %s FROM generate_series(1000, 1003) AS p",
        (events // 4,),
    )
    admin.execute("VACUUM ANALYZE serialized_models")
    admin.execute("VACUUM ANALYZE serialmon.serialization_events")


def buffers(admin: psycopg.Connection, action: Any) -> tuple[int, int, float, Any]:
    """Run `action()` and return (shared hits, shared reads, seconds, result) from pg_stat_statements deltas."""
    admin.execute("SELECT pg_stat_statements_reset()")
    started = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - started
    hit, read = admin.execute(_BUFFERS_SQL).fetchone()
    return int(hit), int(read), elapsed, result


def median_time(action: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(args: argparse.Namespace) -> None:
    server = None
    data_dir = Path(tempfile.mkdtemp(prefix="serialmon_bench_"))
    configured = os.environ.get("SERIALMON_BENCH_DATABASE_URL")
    if configured:
        base_url = normalize_url(configured)
    else:
        server = EmbeddedServer(data_dir / "server")
        base_url = server.start()
    database = f"bench_snapshot_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq(base_url), autocommit=True) as root:
        root.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    url = make_url(base_url).set(database=database).render_as_string(hide_password=False)
    settings: Settings = load_settings(database_url=url, data_dir=data_dir / "data")
    set_settings(settings)

    try:
        init_db(settings, create_models_table=True)
        with psycopg.connect(libpq(url), autocommit=True) as admin:
            admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            host = machine(admin)
            print(f"Generating {args.models:,} models of ~{args.content_kb:g} KB and {args.events:,} events...",
                  file=sys.stderr)
            started = time.perf_counter()
            generate(admin, args.models, args.content_kb, args.events)
            generate_sec = time.perf_counter() - started
            sizes = admin.execute(
                "SELECT pg_table_size('serialized_models'), pg_relation_size('serialized_models'), "
                "avg(octet_length(serialized_content::text)), avg(pg_column_size(serialized_content)) "
                "FROM serialized_models"
            ).fetchone()

            first = refresh_ledger(settings)
            admin.execute("VACUUM ANALYZE serialmon.model_quality")
            results = measure(admin, settings, args)
        report(args, host, sizes, generate_sec, first, results)
    finally:
        dispose_engines()
        if not args.keep:
            with psycopg.connect(libpq(base_url), autocommit=True) as root:
                root.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        if server is not None and not args.keep:
            server.stop()
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"Kept database {database} and the folder {data_dir}", file=sys.stderr)


def flush_statistics(admin: psycopg.Connection) -> None:
    """Publish the admin session's table counters, as a pipeline session does within about a second."""
    version = int(admin.execute("SHOW server_version_num").fetchone()[0])
    if version >= 150000:
        admin.execute("SELECT pg_stat_force_next_flush()")
        admin.execute("SELECT 1")
    else:
        time.sleep(1.0)  # the statistics collector of PostgreSQL 13-14 sends every 500 ms


def measure(admin: psycopg.Connection, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Return the direct query's figures and, per change-check mode, the snapshot's and the refresh's."""
    engine = get_engine(settings)

    def direct() -> Any:
        with psycopg.connect(libpq(settings.database_url.get_secret_value())) as conn:
            return conn.execute(_DIRECT_SQL).fetchone()

    direct()  # warm the cache the same way for both sides
    results: dict[str, Any] = {"direct": buffers(admin, direct)}
    results["direct_sec"] = median_time(direct, max(1, args.repeats // 2))

    for mode in ("exact", "statistics"):
        mode_settings = settings.model_copy(update={"ledger_change_check": mode})
        set_settings(mode_settings)

        def snapshot(refresh: bool = True) -> dict[str, Any]:
            with engine.connect() as conn:
                return get_snapshot(conn, mode_settings, refresh=refresh)

        snapshot()
        snapshot()  # in statistics mode, the second one finds the counters unchanged
        figures = {
            "snapshot": buffers(admin, snapshot),
            "snapshot_no_refresh": buffers(admin, lambda: snapshot(refresh=False)),
            "refresh_unchanged": buffers(admin, lambda: refresh_ledger(mode_settings)),
            "snapshot_sec": median_time(snapshot, args.repeats),
            "refresh_unchanged_sec": median_time(lambda: refresh_ledger(mode_settings), args.repeats),
        }
        changed_times = []
        for repeat in range(args.repeats):
            admin.execute(
                "UPDATE serialized_models SET updated_at = now() WHERE id IN (SELECT id FROM serialized_models "
                "ORDER BY id OFFSET %s LIMIT 10)",
                (repeat * 10,),
            )
            flush_statistics(admin)
            started = time.perf_counter()
            result = refresh_ledger(mode_settings)
            changed_times.append(time.perf_counter() - started)
            if result.rows_read != 10:
                print(f"warning: a refresh after 10 updates read {result.rows_read} rows", file=sys.stderr)
        figures["refresh_changed_sec"] = statistics.median(changed_times)
        results[mode] = figures
    set_settings(settings)
    return results


def report(args, host, sizes, generate_sec, first, results) -> None:
    table_bytes, heap_bytes, average_text, average_stored = sizes
    direct_hit, direct_read, _, _ = results["direct"]
    direct_total = direct_hit + direct_read

    def split(figure: tuple) -> str:
        hit, read = figure[0], figure[1]
        return f"{hit + read:,} ({hit:,} + {read:,})"

    rows = [
        ("models; content size (JSON text / stored)",
         f"{args.models:,}; {average_text / 1000:.0f} KB / {average_stored / 1000:.0f} KB", ""),
        ("table size (heap + TOAST); heap only",
         f"{table_bytes / 2**20:,.0f} MiB; {heap_bytes / 2**20:,.0f} MiB", ""),
        ("generation time", f"{generate_sec:.0f} s", ""),
        ("first refresh (reads every row)", f"{first.duration_sec:.1f} s, {first.rows_read:,} rows", ""),
        ("direct query: shared buffers (hit + read)", split(results["direct"]), ""),
        ("direct query time (median)", f"{results['direct_sec'] * 1000:,.0f} ms", ""),
    ]
    for mode in ("exact", "statistics"):
        figures = results[mode]
        snap_hit, snap_read, _, snapshot = figures["snapshot"]
        snap_total = snap_hit + snap_read
        ratio = direct_total / snap_total if snap_total else float("inf")
        unchanged, changed = figures["refresh_unchanged_sec"], figures["refresh_changed_sec"]
        rows += [
            (f"**{mode}** get_snapshot(): shared buffers (hit + read)", split(figures["snapshot"]), ""),
            (f"{mode}: of which the refresh, nothing changed", split(figures["refresh_unchanged"]), ""),
            (f"{mode}: get_snapshot(refresh=False)", split(figures["snapshot_no_refresh"]), ""),
            (f"{mode}: buffers, direct / get_snapshot()", f"{ratio:,.0f}x",
             "met" if ratio >= 100 else "NOT met (>= 100x)"),
            (f"{mode}: get_snapshot() time (median)", f"{figures['snapshot_sec'] * 1000:,.0f} ms", ""),
            (f"{mode}: refresh after the first, nothing changed (median)", f"{unchanged * 1000:,.1f} ms",
             "met" if unchanged <= 0.1 else "NOT met (<= 100 ms)"),
            (f"{mode}: refresh after the first, 10 rows changed (median)", f"{changed * 1000:,.1f} ms",
             "met" if changed <= 0.1 else "NOT met (<= 100 ms)"),
        ]
    snapshot = results["exact"]["snapshot"][3]
    rows.append(("snapshot check: table_models, mean coverage",
                 f"{snapshot['table_models']:,}, {snapshot['quality']['avg_element_coverage']:.2f} %", ""))

    lines = ["| machine | |", "|---|---|"] + [f"| {key} | {value} |" for key, value in host.items()]
    lines += ["", "| figure | value | target |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {target} |" for name, value, target in rows]
    text = "\n".join(lines)
    print(text)

    if args.append:
        command = "python bench/bench_snapshot.py " + " ".join(sys.argv[1:])
        with open(args.append, "a", encoding="utf-8") as handle:
            handle.write(
                f"\n## Snapshot and ledger ({time.strftime('%Y-%m-%d')})\n\n"
                f"Command: `{command.strip()}`\n\n{text}\n"
            )
        print(f"\nAppended to {args.append}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=20_000, help="rows in serialized_models")
    parser.add_argument("--content-kb", type=float, default=100.0, help="typical serialized_content size in KB")
    parser.add_argument("--events", type=int, default=20_000, help="events spread over the last 24 hours")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per figure (median shown)")
    parser.add_argument("--append", metavar="FILE", help="append the result table to this Markdown file")
    parser.add_argument("--keep", action="store_true", help="keep the database (and embedded server) afterwards")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
