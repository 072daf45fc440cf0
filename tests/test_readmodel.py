"""The read model: every figure checked against values computed independently in the test, on a real PostgreSQL."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import numpy
import psycopg
import pytest

from serialmon.db import get_engine
from serialmon.ledger import refresh_ledger
from serialmon.readmodel import (
    Filters,
    batches,
    category_breakdown,
    failure_groups,
    get_snapshot,
    overview,
    quality_summary,
    recent_models,
    trends,
    workers,
)

NOW = datetime(2031, 5, 6, 12, 0, 0, tzinfo=timezone.utc)
CATEGORIES = ["EMJAC", "SDI", "STOCK", None]


def event(minutes_ago, status="success", seconds=30.0, *, name="m1.prt", model_type="part", category="EMJAC",
          coverage=None, batch_id=None, error_type=None, error_message=None, now=NOW):
    return {
        "occurred_at": now - timedelta(minutes=minutes_ago), "model_name": name, "model_type": model_type,
        "status": status, "processing_time_sec": seconds, "element_coverage": coverage, "category": category,
        "batch_id": batch_id, "error_type": error_type, "error_message": error_message,
    }


def insert_events(libpq_url, events):
    with psycopg.connect(libpq_url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO serialmon.serialization_events (event_id, occurred_at, model_name, model_type, status, "
            "processing_time_sec, element_coverage, category, batch_id, error_type, error_message, host, pid) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'host-a', 1)",
            [
                (uuid.uuid4(), e["occurred_at"], e["model_name"], e["model_type"], e["status"],
                 e["processing_time_sec"], e["element_coverage"], e["category"], e["batch_id"],
                 e["error_type"], e["error_message"])
                for e in events
            ],
        )


def insert_models(libpq_url, rows):
    """Insert (name, category, model_type, content) rows into the monitored table, playing the pipeline."""
    with psycopg.connect(libpq_url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO serialized_models (model_name, category, model_type, serialized_content) "
            "VALUES (%s, %s, %s, %s)",
            [(name, category, model_type, None if content is None else json.dumps(content))
             for name, category, model_type, content in rows],
        )


def with_quality(coverage, unrecoverable=0):
    return {"serialization_quality": {
        "total_features": 10, "features_with_elements": 9, "element_coverage": coverage,
        "unrecoverable_unknown": unrecoverable,
    }}


def random_events(seed=7, count=300, old=50):
    """`count` events inside the last hour before NOW and `old` events before it."""
    rng = random.Random(seed)
    events = []
    for index in range(count + old):
        minutes_ago = rng.uniform(0.2, 59.8) if index < count else rng.uniform(61, 200)
        status = rng.choices(["success", "failure", "skipped"], weights=[70, 20, 10])[0]
        events.append(event(
            minutes_ago, status, round(rng.lognormvariate(3.5, 0.8), 3),
            name=f"m{rng.randrange(150)}.prt", model_type=rng.choice(["part", "assembly"]),
            category=rng.choice(CATEGORIES), coverage=round(rng.uniform(20, 100), 2) if status == "success" else None,
            error_type=rng.choice(["GrpcError", "TimeoutError"]) if status == "failure" else None,
            error_message="failed" if status == "failure" else None,
        ))
    return events


def in_range(events, since, until=NOW):
    return [e for e in events if since <= e["occurred_at"] < until]


@pytest.fixture
def conn(initialized):
    with get_engine(initialized).connect() as connection:
        yield connection


# The snapshot against independent computations


def test_snapshot_figures_equal_independent_values(initialized, libpq_url, conn):
    events = random_events()
    insert_events(libpq_url, events)
    window = in_range(events, NOW - timedelta(minutes=60))
    timed = [e for e in window if e["status"] != "skipped"]
    times = numpy.array([e["processing_time_sec"] for e in timed])
    failures = sum(1 for e in window if e["status"] == "failure")
    successes = sum(1 for e in window if e["status"] == "success")

    snapshot = get_snapshot(conn, initialized, minutes=60, now=NOW)

    assert snapshot["window_minutes"] == 60
    assert snapshot["attempts"] == len(window)
    assert snapshot["total_models"] == len({e["model_name"] for e in window})
    assert snapshot["by_status"] == {
        status: sum(1 for e in window if e["status"] == status) for status in ("success", "failure", "skipped")
    }
    assert snapshot["failure_rate"] == pytest.approx(failures / (successes + failures))
    assert snapshot["success_rate"] == pytest.approx(successes / (successes + failures))
    timing = snapshot["processing_time_sec"]
    assert timing["count"] == len(timed)
    assert timing["p50"] == pytest.approx(numpy.percentile(times, 50))
    assert timing["p95"] == pytest.approx(numpy.percentile(times, 95))
    assert timing["p99"] == pytest.approx(numpy.percentile(times, 99))
    assert timing["mean"] == pytest.approx(times.mean())
    assert timing["sum"] == pytest.approx(times.sum())
    throughput = snapshot["throughput_per_hour"]
    assert throughput["last_5_min"] == pytest.approx(12 * len(in_range(timed, NOW - timedelta(minutes=5))))
    assert throughput["last_hour"] == pytest.approx(len(timed))
    assert throughput["window"] == pytest.approx(len(timed) / 1.0)
    for model_type in ("part", "assembly"):
        typed = [e for e in window if e["model_type"] == model_type]
        assert snapshot["by_type"][model_type]["attempts"] == len(typed)
        assert snapshot["by_type"][model_type]["models"] == len({e["model_name"] for e in typed})


def test_category_breakdown_equals_independent_values(initialized, libpq_url, conn):
    events = random_events(seed=11)
    insert_events(libpq_url, events)
    window = in_range(events, NOW - timedelta(minutes=60))

    rows = {row["category"]: row for row in get_snapshot(conn, initialized, minutes=60, now=NOW)["by_category"]}

    assert set(rows) == set(CATEGORIES)
    for category in CATEGORIES:
        chosen = [e for e in window if e["category"] == category]
        timed = [e["processing_time_sec"] for e in chosen if e["status"] != "skipped"]
        failures = sum(1 for e in chosen if e["status"] == "failure")
        assert rows[category]["attempts"] == len(chosen)
        assert rows[category]["failure_rate"] == pytest.approx(failures / len(timed))
        assert rows[category]["p95_processing_time_sec"] == pytest.approx(numpy.percentile(timed, 95))


def test_failure_rate_ignores_skipped_models(initialized, libpq_url, conn):
    insert_events(libpq_url, [
        event(1, "success"), event(2, "failure"), event(3, "failure"), event(4, "success"),
        *[event(5 + i, "skipped", 0.01) for i in range(20)],
    ])

    runs = overview(conn, initialized, Filters(since=NOW - timedelta(hours=1)), now=NOW)

    assert runs["failure_rate"] == 0.5
    assert runs["by_status"]["skipped"] == 20
    assert runs["processing_time_sec"]["count"] == 4
    assert runs["processing_time_sec"]["p50"] == 30.0


def test_empty_database_gives_none_not_zero(initialized, conn):
    snapshot = get_snapshot(conn, initialized, now=NOW)

    assert snapshot["attempts"] == 0
    assert snapshot["failure_rate"] is None
    assert snapshot["processing_time_sec"]["p95"] is None
    assert snapshot["throughput_per_hour"] == {"last_5_min": 0.0, "last_hour": 0.0, "window": 0.0}
    assert snapshot["quality"]["avg_element_coverage"] is None
    assert snapshot["batches"] == []
    assert json.loads(json.dumps(snapshot)) == snapshot


def test_window_without_start_measures_from_first_event(initialized, libpq_url, conn):
    insert_events(libpq_url, [event(120, "success"), event(90, "failure"), event(30, "success"), event(45, "skipped")])

    runs = overview(conn, initialized, Filters(), now=NOW)

    assert runs["attempts"] == 4
    assert runs["throughput_per_hour"]["window"] == pytest.approx(3 / 2.0)


# Batches and workers


def insert_batch(libpq_url, batch_id, *, total, processed, started_minutes_ago, heartbeat_minutes_ago=0.0,
                 status="running"):
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO serialmon.batch_jobs (batch_id, name, status, total_models, processed, succeeded, failed, "
            "skipped, started_at, updated_at, heartbeat_at) VALUES (%s, %s, %s, %s, %s, %s, 0, 0, %s, %s, %s)",
            (batch_id, f"run {batch_id}", status, total, processed, processed,
             NOW - timedelta(minutes=started_minutes_ago), NOW - timedelta(minutes=heartbeat_minutes_ago),
             NOW - timedelta(minutes=heartbeat_minutes_ago)),
        )


def test_batch_eta_uses_recent_throughput(initialized, libpq_url, conn):
    # 300 models in the first 105 minutes, then 100 in the last 15: the run sped up.
    insert_batch(libpq_url, "b1", total=1000, processed=400, started_minutes_ago=120)
    early = [event(16 + 104 * i / 300, batch_id="b1", name=f"e{i}") for i in range(300)]
    recent = [event(0.1 + 14.8 * i / 100, batch_id="b1", name=f"r{i}") for i in range(100)]
    insert_events(libpq_url, early + recent)

    (batch,) = batches(conn, initialized, now=NOW)

    recent_rate_per_sec = 100 / (15 * 60)
    assert batch["status"] == "running"
    assert batch["percent"] == 40.0
    assert batch["remaining"] == 600
    assert batch["recent_events"] == 100
    assert batch["throughput_per_hour"] == pytest.approx(400.0)
    assert batch["eta_seconds"] == pytest.approx(600 / recent_rate_per_sec)
    assert batch["eta_at"] == (NOW + timedelta(seconds=5400)).isoformat()


def test_young_batch_throughput_counts_from_its_start(initialized, libpq_url, conn):
    insert_batch(libpq_url, "b2", total=100, processed=10, started_minutes_ago=5)
    insert_events(libpq_url, [event(0.5 * i, batch_id="b2", name=f"y{i}") for i in range(10)])

    (batch,) = batches(conn, initialized, now=NOW)

    assert batch["throughput_per_hour"] == pytest.approx(10 / (5 / 60))
    assert batch["eta_seconds"] == pytest.approx(90 / (10 / 300))


def test_batch_progress_counts_retried_model_once(initialized, libpq_url, conn):
    insert_batch(libpq_url, "retry", total=3, processed=4, started_minutes_ago=30)
    insert_events(libpq_url, [
        event(20, batch_id="retry", name="a.prt", status="failure"),
        event(10, batch_id="retry", name="a.prt"),
        event(9, batch_id="retry", name="b.prt"),
        event(8, batch_id="retry", name="c.prt", status="failure"),
    ])

    (batch,) = batches(conn, initialized, now=NOW)

    assert batch["processed"] == 3
    assert batch["percent"] == 100.0
    assert batch["succeeded"] == 2
    assert batch["failed"] == 1
    assert batch["attempts"] == 4
    assert batch["remaining"] == 0


def test_stale_running_batch_is_abandoned(initialized, libpq_url, conn):
    insert_batch(libpq_url, "stale", total=50, processed=10, started_minutes_ago=60, heartbeat_minutes_ago=20)
    insert_batch(libpq_url, "fresh", total=50, processed=10, started_minutes_ago=60, heartbeat_minutes_ago=1)
    insert_batch(libpq_url, "done", total=50, processed=50, started_minutes_ago=60, heartbeat_minutes_ago=30,
                 status="completed")

    rows = {row["batch_id"]: row for row in batches(conn, initialized, now=NOW)}

    assert initialized.stall_minutes == 15
    assert rows["stale"]["status"] == "abandoned"
    assert rows["stale"]["stored_status"] == "running"
    assert rows["stale"]["eta_seconds"] is None
    assert rows["fresh"]["status"] == "running"
    assert rows["done"]["status"] == "completed"
    assert rows["done"]["stalled"] is False


def test_workers_live_silent_or_stopped(initialized, libpq_url, conn):
    with psycopg.connect(libpq_url, autocommit=True) as db:
        for worker_id, age_sec, stopped in (("w-live", 30, False), ("w-silent", 50, False), ("w-stopped", 5, True)):
            db.execute(
                "INSERT INTO serialmon.worker_heartbeats (worker_id, host, pid, started_at, heartbeat_at, "
                "current_model, events_recorded, stopped_at) VALUES (%s, 'host-a', 7, %s, %s, 'a.prt', 12, %s)",
                (worker_id, NOW - timedelta(hours=1), NOW - timedelta(seconds=age_sec),
                 NOW if stopped else None),
            )

    rows = {row["worker_id"]: row for row in workers(conn, initialized, now=NOW)}

    # 3 x heartbeat_interval_sec (15 s) = 45 s
    assert rows["w-live"]["state"] == "live"
    assert rows["w-silent"]["state"] == "silent"
    assert rows["w-stopped"]["state"] == "stopped"
    assert rows["w-live"]["heartbeat_age_sec"] == 30
    assert rows["w-live"]["current_model"] == "a.prt"
    assert rows["w-live"]["events_recorded"] == 12


# Quality from the ledger


def test_quality_summary_from_ledger(initialized, libpq_url, conn):
    coverages = [100.0, 95.0, 85.0, 79.9, 60.0, 49.0, 10.0, 0.0]
    insert_models(libpq_url, [
        *[(f"q{i}.prt", "EMJAC", "part", with_quality(value, unrecoverable=i)) for i, value in enumerate(coverages)],
        ("bad1.prt", "EMJAC", "part", {"element_coverage": "NaN"}),
        ("bad2.prt", "SDI", "assembly", None),
        ("bad3.prt", "SDI", "assembly", {"element_coverage": "n/a"}),
    ])
    refresh_ledger(initialized)

    quality = quality_summary(conn, initialized)

    assert quality["table_models"] == 11
    assert quality["quality_known"] == 8
    assert quality["quality_unknown"] == 3
    assert quality["avg_element_coverage"] == pytest.approx(numpy.mean(coverages))
    assert quality["min_element_coverage"] == 0.0
    assert quality["below_warning"] == sum(1 for value in coverages if value < 80)
    assert quality["below_critical"] == sum(1 for value in coverages if value < 50)
    assert quality["unrecoverable_unknown"] == sum(range(len(coverages)))
    assert quality["models_with_unrecoverable_unknown"] == len(coverages) - 1
    assert quality["unknown_reasons"][0] == {
        "reason": "element_coverage is a JSON string, not a number", "models": 2, "example_model": "bad1.prt",
    }
    assert quality["unknown_reasons"][1]["reason"] == "serialized_content is NULL"
    histogram = {bucket["bucket_start"]: bucket["models"] for bucket in quality["coverage_histogram"]}
    expected = numpy.histogram(coverages, bins=numpy.arange(0, 101, 10))[0]
    assert [histogram[start] for start in range(0, 100, 10)] == list(expected)
    assert quality["ledger_refreshed_at"] is not None


# Filters


def test_filters_change_figures(initialized, libpq_url, conn):
    events = random_events(seed=3)
    insert_events(libpq_url, events)
    insert_models(libpq_url, [
        ("a.prt", "EMJAC", "part", with_quality(90.0)), ("b.asm", "SDI", "assembly", with_quality(40.0)),
        ("c.prt", "SDI", "part", with_quality(70.0)), ("d.prt", "STOCK", "part", None),
    ])
    refresh_ledger(initialized)
    since = NOW - timedelta(minutes=60)

    cases = [
        (Filters(categories=("SDI",)), lambda e: e["category"] == "SDI", 2),
        (Filters(categories=["EMJAC", "STOCK"]), lambda e: e["category"] in ("EMJAC", "STOCK"), 2),
        (Filters(model_type="assembly"), lambda e: e["model_type"] == "assembly", 1),
        (Filters(coverage_min=50, coverage_max=80),
         lambda e: e["element_coverage"] is not None and 50 <= e["element_coverage"] <= 80, 1),
        (Filters(search="M1"), lambda e: "m1" in e["model_name"], 0),
        (Filters(since=NOW - timedelta(minutes=20), until=NOW - timedelta(minutes=10)),
         lambda e: NOW - timedelta(minutes=20) <= e["occurred_at"] < NOW - timedelta(minutes=10), 4),
    ]
    for filters, keep, table_models in cases:
        chosen = [e for e in in_range(events, since) if keep(e)]
        runs = overview(conn, initialized, filters.with_window(since, None), now=NOW)
        assert runs["attempts"] == len(chosen), filters
        assert runs["total_models"] == len({e["model_name"] for e in chosen}), filters
        assert quality_summary(conn, initialized, filters)["table_models"] == table_models, filters


def test_search_escapes_wildcards(initialized, libpq_url, conn):
    insert_events(libpq_url, [event(1, name="part_100%.prt"), event(2, name="partX100Y.prt")])

    names = [row["model_name"] for row in recent_models(conn, initialized, Filters(search="_100%"))]

    assert names == ["part_100%.prt"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"model_type": "drawing"}, "model_type 'drawing' is invalid"),
        ({"coverage_min": -1}, "coverage_min -1 is out of range"),
        ({"coverage_max": 101}, "coverage_max 101 is out of range"),
        ({"coverage_min": float("nan")}, "coverage_min nan is invalid"),
        ({"coverage_min": 80, "coverage_max": 20}, "coverage_min 80 is greater than coverage_max 20"),
        ({"since": NOW, "until": NOW - timedelta(seconds=1)}, "is after until"),
        ({"since": "yesterday"}, "since 'yesterday' is invalid"),
        ({"categories": ["EMJAC", ""]}, "category '' is invalid"),
        ({"search": "x" * 300}, "search text of 300 characters is too long"),
    ],
)
def test_filters_reject_invalid_values(arguments, message):
    with pytest.raises(ValueError, match=message):
        Filters(**arguments)


@pytest.mark.parametrize(
    ("function", "arguments", "message"),
    [
        (trends, {"hours": 0}, "hours 0 is out of range"),
        (trends, {"bucket_minutes": 0}, "bucket_minutes 0 is out of range"),
        (trends, {"hours": 8000, "bucket_minutes": 1}, "more than 10000 buckets"),
        (recent_models, {"limit": 0}, "limit 0 is out of range"),
        (failure_groups, {"limit": 5000}, "limit 5000 is out of range"),
        (get_snapshot, {"minutes": -5}, "minutes -5 is out of range"),
    ],
)
def test_functions_reject_invalid_arguments(initialized, conn, function, arguments, message):
    with pytest.raises(ValueError, match=message):
        function(conn, initialized, **arguments)


def test_naive_filter_times_are_utc():
    filters = Filters(since=datetime(2031, 5, 6, 10, 0))

    assert filters.since == datetime(2031, 5, 6, 10, 0, tzinfo=timezone.utc)


# Trends, failures, recent models


def test_trends_buckets_equal_independent_values(initialized, libpq_url, conn):
    events = random_events(seed=5, count=400, old=0)
    insert_events(libpq_url, events)

    buckets = trends(conn, initialized, hours=1, bucket_minutes=15, now=NOW)

    assert [bucket["bucket_start"] for bucket in buckets] == [
        (NOW - timedelta(minutes=60 - 15 * i)).isoformat() for i in range(4)
    ]
    for bucket in buckets:
        start = datetime.fromisoformat(bucket["bucket_start"])
        chosen = in_range(events, start, start + timedelta(minutes=15))
        timed = [e["processing_time_sec"] for e in chosen if e["status"] != "skipped"]
        assert bucket["attempts"] == len(chosen)
        assert bucket["failure"] == sum(1 for e in chosen if e["status"] == "failure")
        assert bucket["throughput_per_hour"] == pytest.approx(len(timed) * 4)
        assert bucket["p50_processing_time_sec"] == pytest.approx(numpy.percentile(timed, 50))
        assert bucket["p95_processing_time_sec"] == pytest.approx(numpy.percentile(timed, 95))


def test_trends_include_empty_buckets(initialized, libpq_url, conn):
    insert_events(libpq_url, [event(30)])

    buckets = trends(conn, initialized, hours=3, bucket_minutes=60, now=NOW)

    assert [bucket["attempts"] for bucket in buckets] == [0, 0, 1]
    assert buckets[0]["p95_processing_time_sec"] is None
    assert buckets[0]["throughput_per_hour"] == 0.0


def test_failure_groups_show_latest_example(initialized, libpq_url, conn):
    insert_events(libpq_url, [
        event(30, "failure", name="a.prt", error_type="GrpcError", error_message="old"),
        event(10, "failure", name="b.prt", error_type="GrpcError", error_message="newest grpc"),
        event(20, "failure", name="b.prt", error_type="GrpcError", error_message="middle"),
        event(5, "failure", name="c.prt", error_type=None, error_message="no type"),
        event(1, "success", name="d.prt"),
    ])

    groups = failure_groups(conn, initialized, Filters(since=NOW - timedelta(hours=1)))

    assert groups[0] == {
        "error_type": "GrpcError", "failures": 3, "models": 2,
        "first_seen": (NOW - timedelta(minutes=30)).isoformat(), "last_seen": (NOW - timedelta(minutes=10)).isoformat(),
        "latest_model": "b.prt", "latest_message": "newest grpc",
    }
    assert groups[1]["error_type"] is None
    assert groups[1]["latest_message"] == "no type"


def test_recent_models_newest_first_with_ledger_coverage(initialized, libpq_url, conn):
    insert_models(libpq_url, [("a.prt", "EMJAC", "part", with_quality(64.0))])
    refresh_ledger(initialized)
    insert_events(libpq_url, [event(3, name="a.prt"), event(2, name="b.prt", coverage=12.0), event(1, name="a.prt")])

    rows = recent_models(conn, initialized, limit=2)
    searched = recent_models(conn, initialized, search="B.P")

    assert [row["model_name"] for row in rows] == ["a.prt", "b.prt"]
    assert rows[0]["ledger_element_coverage"] == 64.0
    assert rows[0]["quality_known"] is True
    assert rows[1]["element_coverage"] == 12.0
    assert rows[1]["ledger_element_coverage"] is None
    assert [row["model_name"] for row in searched] == ["b.prt"]


# Composition and the command line


def test_snapshot_is_composed_of_read_model_functions(initialized, libpq_url, conn):
    insert_events(libpq_url, random_events(seed=9))
    insert_models(libpq_url, [("a.prt", "EMJAC", "part", with_quality(64.0))])
    insert_batch(libpq_url, "b1", total=100, processed=10, started_minutes_ago=30)
    filters = Filters(categories=("EMJAC",))

    snapshot = get_snapshot(conn, initialized, minutes=30, filters=filters, now=NOW)
    window = filters.with_window(NOW - timedelta(minutes=30), None)

    assert snapshot["ledger"]["refresh"]["rows_read"] == 1
    assert snapshot["quality"] == quality_summary(conn, initialized, window)
    assert snapshot["by_category"] == category_breakdown(conn, initialized, window)
    assert snapshot["failure_reasons"] == failure_groups(conn, initialized, window)
    assert snapshot["batches"] == batches(conn, initialized, window, now=NOW)
    assert snapshot["recent_models"] == recent_models(conn, initialized, window, limit=20)
    runs = overview(conn, initialized, window, now=NOW)
    assert snapshot["total_models"] == runs["total_models"]
    assert snapshot["table_models"] == snapshot["quality"]["table_models"] == 1
    # Separate queries may add the same floats in another order, so the last bits can differ.
    assert snapshot["processing_time_sec"] == pytest.approx(runs["processing_time_sec"])
    assert {row["category"] for row in snapshot["by_category"]} == {"EMJAC"}
    assert json.loads(json.dumps(snapshot)) == snapshot


def test_snapshot_reports_refresh_failure_and_still_answers(settings, libpq_url):
    from serialmon.schema import init_db

    init_db(settings, create_models_table=False)
    insert_events(libpq_url, [event(1, "failure", now=datetime.now(timezone.utc))])

    with get_engine(settings).connect() as connection:
        snapshot = get_snapshot(connection, settings)

    assert "does not exist" in snapshot["ledger"]["error"]
    assert snapshot["ledger"]["refresh"] is None
    assert snapshot["by_status"]["failure"] == 1


def run_cli(database_url, *args, extra_env=None):
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("SERIALMON_", "SMTP_", "ALERT_")) and key not in ("DATABASE_URL", "MODEL_DATA_DB_URL")
    }
    env["DATABASE_URL"] = database_url
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "serialmon.cli", *args], capture_output=True, text=True, env=env, timeout=120,
    )


def test_status_json_equals_snapshot(initialized, database_url, libpq_url):
    now = datetime.now(timezone.utc)
    insert_events(libpq_url, [
        event(20, "success", 12.0, now=now, category="SDI"), event(25, "failure", 40.0, now=now, category="SDI"),
        event(30, "success", 20.0, now=now, category="EMJAC", model_type="assembly"),
    ])
    insert_models(libpq_url, [("a.prt", "SDI", "part", with_quality(55.0)), ("b.prt", "EMJAC", "part", None)])

    result = run_cli(database_url, "status", "--json", "--minutes", "45", "--category", "SDI")

    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    with get_engine(initialized).connect() as connection:
        expected = get_snapshot(
            connection, initialized, minutes=45, filters=Filters(categories=("SDI",)), refresh=False
        )
    for key in ("total_models", "table_models", "attempts", "by_status", "by_type", "failure_rate",
                "processing_time_sec", "quality", "failure_reasons", "by_category"):
        assert printed[key] == expected[key], key
    assert printed["total_models"] == 1
    assert printed["table_models"] == 1
    assert printed["failure_rate"] == 0.5


def test_status_prints_tables(initialized, database_url, libpq_url):
    insert_events(libpq_url, [event(2, "failure", name="[red]odd.prt", error_type="GrpcError",
                                    now=datetime.now(timezone.utc))])

    result = run_cli(database_url, "status", "--model-type", "part")

    assert result.returncode == 0, result.stderr
    for title in ("Runs", "Quality", "Failure reasons", "Recent models", "Ledger:"):
        assert title in result.stdout
    assert "[red]odd.prt" in result.stdout


def test_status_rejects_unknown_model_type(initialized, database_url):
    result = run_cli(database_url, "status", "--model-type", "drawing")

    assert result.returncode == 2
    assert "model_type 'drawing' is invalid" in result.stderr


def test_refresh_command_reports_rows(initialized, database_url, libpq_url):
    insert_models(libpq_url, [("a.prt", "SDI", "part", with_quality(55.0)), ("b.prt", "SDI", "part", None)])

    result = run_cli(database_url, "refresh")

    assert result.returncode == 0, result.stderr
    assert "read 2 new or changed rows (2 new, 0 changed, 1 with unknown quality)" in result.stdout


def test_status_missing_table_is_one_line(initialized, database_url):
    missing = {"SERIALMON_MODELS_TABLE": "nope"}
    report = run_cli(database_url, "db-report", extra_env=missing)
    expected = (
        'Error: The monitored table "public"."nope" does not exist in this database. '
        "Set SERIALMON_MODELS_SCHEMA / SERIALMON_MODELS_TABLE, or run `serialmon init --create-models-table`."
    )
    assert report.returncode == 2
    assert report.stderr.splitlines() == [expected]

    for args in (("status",), ("status", "--json"), ("status", "--no-refresh")):
        result = run_cli(database_url, *args, extra_env=missing)

        assert result.returncode == 2, args
        assert result.stderr.splitlines() == [expected], args
        assert result.stdout == "", args


def test_status_unreachable_database_is_one_line(tmp_path):
    result = run_cli("postgresql://nobody:topsecret@127.0.0.1:1/none", "status")

    assert result.returncode == 2
    assert "Cannot connect to the database" in result.stderr
    assert "topsecret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_snapshot_window_ends_at_until(initialized, libpq_url, conn):
    insert_events(libpq_url, [event(130, "failure"), event(150, "success"), event(10, "success")])

    snapshot = get_snapshot(conn, initialized, minutes=60, filters=Filters(until=NOW - timedelta(hours=2)), now=NOW)

    assert snapshot["window"]["since"] == (NOW - timedelta(hours=3)).isoformat()
    assert snapshot["attempts"] == 2
    assert snapshot["failure_rate"] == 0.5
