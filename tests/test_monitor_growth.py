"""Size samples: least-squares growth, days until the limit, cache hits between samples, interval and retention."""

from __future__ import annotations

import psycopg
import pytest

from serialmon.monitor import DatabaseMonitor

RELATION = '"public"."serialized_models"'
MB = 1_000_000


def insert_sample(conn: psycopg.Connection, minutes_ago: float, total_bytes: int, **counters: int) -> None:
    columns = {
        "heap_bytes": total_bytes // 4,
        "toast_bytes": total_bytes // 2,
        "index_bytes": total_bytes - total_bytes // 4 - total_bytes // 2,
        "total_bytes": total_bytes,
        **counters,
    }
    names = ", ".join(columns)
    placeholders = ", ".join(["%s"] * len(columns))
    conn.execute(
        f"INSERT INTO serialmon.table_size_samples (relation, sampled_at, {names}) "
        f"VALUES (%s, now() - make_interval(secs => %s), {placeholders})",
        (RELATION, minutes_ago * 60, *columns.values()),
    )


def least_squares_slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in points)
    variance = sum((x - mean_x) ** 2 for x, _ in points)
    return covariance / variance


async def test_growth_equals_hand_computed_slope(initialized, libpq_url):
    # (hours ago, total bytes): the last hour grows 60 MB/h; the day before it grew slower.
    samples = [(20.0, 100 * MB), (10.0, 150 * MB), (0.75, 200 * MB), (0.5, 215 * MB), (0.25, 230 * MB), (0.0, 245 * MB)]
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        for hours, total in samples:
            insert_sample(conn, hours * 60, total)
    limit = 1_000 * MB
    settings = initialized.model_copy(update={"table_size_limit_bytes": limit})

    growth = await DatabaseMonitor(settings).get_growth()

    hour = least_squares_slope([(-hours, total / MB) for hours, total in samples if hours < 1])
    day = least_squares_slope([(-hours, total / MB) for hours, total in samples])
    assert hour == pytest.approx(60.0)
    assert growth["samples_last_hour"] == 4
    assert growth["samples_last_day"] == 6
    assert growth["mb_per_hour_last_hour"] == pytest.approx(hour, rel=1e-3)
    assert growth["mb_per_hour_last_day"] == pytest.approx(day, rel=1e-3)
    assert growth["toast_mb_per_hour_last_day"] == pytest.approx(day / 2, rel=1e-2)
    assert growth["latest_total_bytes"] == 245 * MB
    assert growth["days_until_limit"] == pytest.approx((limit - 245 * MB) / MB / day / 24, rel=1e-3)


async def test_growth_without_samples_says_so(initialized):
    growth = await DatabaseMonitor(initialized).get_growth()

    assert growth["mb_per_hour_last_day"] is None
    assert growth["days_until_limit"] is None
    assert growth["cache_hit"]["overall"] is None
    assert "no size samples" in growth["note"]


async def test_cache_hit_uses_difference_not_lifetime(initialized, libpq_url):
    zero = dict.fromkeys(
        ("idx_blks_read", "idx_blks_hit", "toast_blks_read", "toast_blks_hit", "tidx_blks_read", "tidx_blks_hit"), 0
    )
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        insert_sample(conn, 10, 10 * MB, heap_blks_hit=1_000_000, heap_blks_read=1_000, **zero)
        insert_sample(conn, 5, 10 * MB, heap_blks_hit=1_000_600, heap_blks_read=1_400, **zero)

    cache = (await DatabaseMonitor(initialized).get_growth())["cache_hit"]

    assert cache["heap"] == pytest.approx(600 / 1_000)  # the lifetime ratio is 99.86 %
    assert cache["overall"] == pytest.approx(0.6)
    assert cache["indexes"] is None
    assert cache["blocks_accessed"] == 1_000


async def test_cache_hit_after_statistics_reset(initialized, libpq_url):
    counters = dict.fromkeys(
        ("idx_blks_read", "idx_blks_hit", "toast_blks_read", "toast_blks_hit", "tidx_blks_read", "tidx_blks_hit"), 0
    )
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        insert_sample(conn, 10, MB, heap_blks_hit=5_000, heap_blks_read=50, **counters)
        insert_sample(conn, 5, MB, heap_blks_hit=100, heap_blks_read=5, **counters)

    cache = (await DatabaseMonitor(initialized).get_growth())["cache_hit"]

    assert cache["overall"] is None
    assert "reset" in cache["reason"]


async def test_record_sample_respects_interval_and_retention(initialized, libpq_url):
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        insert_sample(conn, 200 * 24 * 60, MB)
        conn.execute("INSERT INTO serialized_models (model_name, serialized_content) VALUES ('a', '{}')")
        conn.execute("SELECT pg_stat_force_next_flush()")
    monitor = DatabaseMonitor(initialized)

    first = await monitor.record_size_sample()
    second = await monitor.record_size_sample()

    with psycopg.connect(libpq_url, autocommit=True) as conn:
        rows = conn.execute("SELECT total_bytes, live_tuples FROM serialmon.table_size_samples").fetchall()
        total = conn.execute("SELECT pg_total_relation_size('serialized_models')").fetchone()[0]
    assert first is not None
    assert first["total_bytes"] == total
    assert first["live_tuples"] == 1
    assert first["heap_blks_hit"] is not None
    assert second is None
    assert rows == [(total, 1)]  # the 200-day-old sample is gone


async def test_record_sample_every_time_with_zero_interval(initialized):
    settings = initialized.model_copy(update={"size_sample_interval_sec": 0})
    monitor = DatabaseMonitor(settings)

    assert await monitor.record_size_sample() is not None
    assert await monitor.record_size_sample() is not None
    growth = await monitor.get_growth()
    assert growth["samples_last_hour"] == 2
    assert growth["mb_per_hour_last_hour"] == pytest.approx(0.0, abs=1e-6)
