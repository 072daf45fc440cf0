"""Figures of serialization attempts, read from `serialization_events`.

Definitions used everywhere:

- attempt: one event (one `record_serialization` call), of status success,
  failure or skipped.
- total_models: distinct model names with at least one event in the range.
- failure rate: failures / (successes + failures); skipped models are not
  attempts at serializing and are left out. None when there is no attempt.
- processing time: over successes and failures, because skipped models take
  no time worth measuring. Percentiles are exact: `percentile_cont`, linear
  interpolation between the two nearest values, as numpy's default.
- throughput: successes + failures per hour.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Connection

from serialmon.config import Settings
from serialmon.readmodel.filters import (
    Filters,
    check_limit,
    check_positive,
    database_now,
    hours_between,
    iso,
    statement,
)
from serialmon.readmodel.quality import coverage_by_category, read_ledger_groups

STATUSES = ("success", "failure", "skipped")
RECENT_MODELS_MAX = 10_000
TREND_HOURS_MAX = 24 * 366
TREND_BUCKETS_MAX = 10_000

_OVERVIEW_SQL = """
    WITH events AS ({filtered_events})
    SELECT
        count(*) AS attempts,
        count(DISTINCT model_name) AS models,
        count(*) FILTER (WHERE status = 'success') AS success,
        count(*) FILTER (WHERE status = 'failure') AS failure,
        count(*) FILTER (WHERE status = 'skipped') AS skipped,
        min(occurred_at) AS first_event_at,
        max(occurred_at) AS last_event_at,
        percentile_cont(CAST(ARRAY[0.5, 0.95, 0.99] AS float8[]))
            WITHIN GROUP (ORDER BY processing_time_sec) FILTER (WHERE status <> 'skipped') AS quantiles,
        avg(processing_time_sec) FILTER (WHERE status <> 'skipped') AS mean,
        max(processing_time_sec) FILTER (WHERE status <> 'skipped') AS max,
        sum(processing_time_sec) FILTER (WHERE status <> 'skipped') AS total,
        count(*) FILTER (WHERE status <> 'skipped') AS timed
    FROM events
"""

_BY_TYPE_SQL = """
    WITH events AS ({filtered_events})
    SELECT
        model_type,
        count(*) AS attempts,
        count(DISTINCT model_name) AS models,
        count(*) FILTER (WHERE status = 'success') AS success,
        count(*) FILTER (WHERE status = 'failure') AS failure,
        count(*) FILTER (WHERE status = 'skipped') AS skipped
    FROM events
    GROUP BY model_type
    ORDER BY model_type
"""

# Run with the range set to the hour before the end of the window.
_RECENT_THROUGHPUT_SQL = """
    WITH events AS ({filtered_events})
    SELECT
        count(*) FILTER (WHERE status <> 'skipped' AND occurred_at >= :five_minutes_ago) AS last_5_min,
        count(*) FILTER (WHERE status <> 'skipped') AS last_hour
    FROM events
"""

_ATTEMPT_COUNTS_SQL = """
    WITH events AS ({filtered_events})
    SELECT status, model_type, category, count(*) AS attempts
    FROM events
    GROUP BY status, model_type, category
    ORDER BY status, model_type, category NULLS FIRST
"""

_CATEGORY_EVENTS_SQL = """
    WITH events AS ({filtered_events})
    SELECT
        category,
        count(*) AS attempts,
        count(DISTINCT model_name) AS models,
        count(*) FILTER (WHERE status = 'success') AS success,
        count(*) FILTER (WHERE status = 'failure') AS failure,
        count(*) FILTER (WHERE status = 'skipped') AS skipped,
        percentile_cont(0.95) WITHIN GROUP (ORDER BY processing_time_sec)
            FILTER (WHERE status <> 'skipped') AS p95_processing_time_sec
    FROM events
    GROUP BY category
"""

# Buckets are aligned to multiples of the bucket length since the Unix epoch,
# so the same event falls in the same bucket whatever the range.
_TRENDS_SQL = """
    WITH events AS ({filtered_events}),
    per_bucket AS (
        SELECT
            CAST(floor(CAST(extract(epoch FROM occurred_at) AS float8) / :bucket_sec) AS bigint) * :bucket_sec
                AS bucket,
            count(*) AS attempts,
            count(DISTINCT model_name) AS models,
            count(*) FILTER (WHERE status = 'success') AS success,
            count(*) FILTER (WHERE status = 'failure') AS failure,
            count(*) FILTER (WHERE status = 'skipped') AS skipped,
            percentile_cont(CAST(ARRAY[0.5, 0.95] AS float8[]))
                WITHIN GROUP (ORDER BY processing_time_sec) FILTER (WHERE status <> 'skipped') AS quantiles,
            avg(element_coverage) AS avg_element_coverage
        FROM events
        GROUP BY 1
    )
    SELECT
        b.bucket,
        coalesce(p.attempts, 0) AS attempts,
        coalesce(p.models, 0) AS models,
        coalesce(p.success, 0) AS success,
        coalesce(p.failure, 0) AS failure,
        coalesce(p.skipped, 0) AS skipped,
        p.quantiles,
        p.avg_element_coverage
    FROM generate_series(CAST(:first_bucket AS bigint), CAST(:last_bucket AS bigint), CAST(:bucket_sec AS bigint))
        AS b(bucket)
    LEFT JOIN per_bucket AS p ON p.bucket = b.bucket
    ORDER BY b.bucket
"""

_RECENT_MODELS_SQL = """
    WITH events AS ({filtered_events})
    SELECT
        e.event_id, e.occurred_at, e.model_name, e.model_type, e.category, e.status, e.processing_time_sec,
        e.element_coverage, e.unrecoverable_unknown, e.feature_count, e.batch_id, e.worker_id, e.host,
        e.error_type, e.error_message,
        q.element_coverage AS ledger_element_coverage, q.quality_known, q.quality_reason
    FROM (
        SELECT *
        FROM events
        WHERE CAST(:search_pattern AS text) IS NULL OR model_name ILIKE CAST(:search_pattern AS text)
        ORDER BY occurred_at DESC, event_id
        LIMIT :limit
    ) AS e
    LEFT JOIN LATERAL (
        SELECT element_coverage, quality_known, quality_reason
        FROM {model_quality}
        WHERE model_name = e.model_name
        ORDER BY model_id DESC
        LIMIT 1
    ) AS q ON true
    ORDER BY e.occurred_at DESC, e.event_id
"""


def ratio(numerator: float, denominator: float) -> float | None:
    """Return numerator / denominator, or None when the denominator is 0."""
    return numerator / denominator if denominator else None


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def overview(
    conn: Connection, settings: Settings, filters: Filters | None = None, *, now: datetime | None = None
) -> dict[str, Any]:
    """Return the headline figures of the events in the filters' range.

    Keys: `since`, `until` (the range, ISO 8601; None for open), `total_models`
    (distinct model names with an event), `attempts` (events), `by_status`
    {success, failure, skipped}, `by_type` {model_type: {attempts, models,
    success, failure, skipped}}, `failure_rate` and `success_rate` (0-1, skipped
    excluded, None without attempts), `processing_time_sec` {p50, p95, p99,
    mean, max, sum, count} in seconds, `throughput_per_hour` {last_5_min,
    last_hour, window} in models per hour, `first_event_at`, `last_event_at`.
    The number of rows in the monitored table is `quality_summary()`'s
    `table_models`.

    `last_5_min` and `last_hour` are rates over the 5 and 60 minutes before the
    end of the range (`until`, or now), whatever its start. `window` is the rate
    over the whole range, which starts at the first event when it has no start.
    """
    filters = filters or Filters()
    now = now or database_now(conn)
    params = filters.params()

    totals = conn.execute(statement(settings, _OVERVIEW_SQL), params).one()
    by_type = {
        row.model_type: {
            "attempts": row.attempts, "models": row.models,
            "success": row.success, "failure": row.failure, "skipped": row.skipped,
        }
        for row in conn.execute(statement(settings, _BY_TYPE_SQL), params)
    }

    quantiles = totals.quantiles or [None, None, None]
    attempted = totals.success + totals.failure
    return {
        "since": iso(filters.since),
        "until": iso(filters.until),
        "total_models": totals.models,
        "attempts": totals.attempts,
        "by_status": {"success": totals.success, "failure": totals.failure, "skipped": totals.skipped},
        "by_type": by_type,
        "failure_rate": ratio(totals.failure, attempted),
        "success_rate": ratio(totals.success, attempted),
        "processing_time_sec": {
            "p50": _float(quantiles[0]),
            "p95": _float(quantiles[1]),
            "p99": _float(quantiles[2]),
            "mean": _float(totals.mean),
            "max": _float(totals.max),
            "sum": float(totals.total or 0.0),
            "count": totals.timed,
        },
        "throughput_per_hour": _throughput(conn, settings, filters, now, attempted, totals.first_event_at),
        "first_event_at": iso(totals.first_event_at),
        "last_event_at": iso(totals.last_event_at),
    }


def _throughput(
    conn: Connection,
    settings: Settings,
    filters: Filters,
    now: datetime,
    attempted: int,
    first_event_at: datetime | None,
) -> dict[str, float | None]:
    end = min(filters.until, now) if filters.until is not None else now
    recent = replace(filters, since=end - timedelta(hours=1), until=end)
    params = {**recent.params(), "five_minutes_ago": end - timedelta(minutes=5)}
    counts = conn.execute(statement(settings, _RECENT_THROUGHPUT_SQL), params).one()

    start = filters.since or first_event_at
    window_hours = hours_between(start, end) if start is not None else 0.0
    return {
        "last_5_min": counts.last_5_min * 12.0,
        "last_hour": float(counts.last_hour),
        "window": attempted / window_hours if window_hours > 0 else None,
    }


def attempt_counts(conn: Connection, settings: Settings, filters: Filters | None = None) -> list[dict[str, Any]]:
    """Return the number of events per (status, model_type, category): [{status, model_type, category, attempts}]."""
    filters = filters or Filters()
    rows = conn.execute(statement(settings, _ATTEMPT_COUNTS_SQL), filters.params())
    return [
        {"status": row.status, "model_type": row.model_type, "category": row.category, "attempts": row.attempts}
        for row in rows
    ]


def category_breakdown(conn: Connection, settings: Settings, filters: Filters | None = None) -> list[dict[str, Any]]:
    """Return one row per category, from the events in range and from the ledger, most attempts first.

    Each row has `category` (None for models without one), `attempts`,
    `models` (distinct names), `success`, `failure`, `skipped`, `failure_rate`
    (0-1, skipped excluded) and `p95_processing_time_sec` from the events in
    range. From the ledger, which is the table as it is now and not limited by
    time, it has `table_models`, `avg_element_coverage` (percent, known quality
    only), `below_warning` (models under `coverage_warning`) and `quality_unknown`.
    """
    filters = filters or Filters()
    return merge_categories(
        read_event_categories(conn, settings, filters),
        coverage_by_category(read_ledger_groups(conn, settings, filters)),
    )


def read_event_categories(conn: Connection, settings: Settings, filters: Filters) -> list[Any]:
    """Return the events in range aggregated by category (rows of `_CATEGORY_EVENTS_SQL`)."""
    return list(conn.execute(statement(settings, _CATEGORY_EVENTS_SQL), filters.params()))


def merge_categories(
    event_rows: list[Any], ledger_coverage: dict[str | None, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Join the per-category event figures with the ledger's per-category coverage, most attempts first."""
    merged: dict[str | None, dict[str, Any]] = {}
    for row in event_rows:
        entry = _empty_category(merged, row.category)
        entry.update(
            attempts=row.attempts, models=row.models, success=row.success, failure=row.failure,
            skipped=row.skipped, failure_rate=ratio(row.failure, row.success + row.failure),
            p95_processing_time_sec=_float(row.p95_processing_time_sec),
        )
    for category, coverage in ledger_coverage.items():
        _empty_category(merged, category).update(coverage)

    return sorted(
        merged.values(), key=lambda entry: (-entry["attempts"], -entry["table_models"], str(entry["category"]))
    )


def _empty_category(merged: dict[str | None, dict[str, Any]], category: str | None) -> dict[str, Any]:
    if category not in merged:
        merged[category] = {
            "category": category, "attempts": 0, "models": 0, "success": 0, "failure": 0, "skipped": 0,
            "failure_rate": None, "p95_processing_time_sec": None, "table_models": 0,
            "avg_element_coverage": None, "below_warning": 0, "quality_unknown": 0,
        }
    return merged[category]


def trends(
    conn: Connection,
    settings: Settings,
    filters: Filters | None = None,
    *,
    hours: float = 24,
    bucket_minutes: int = 60,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Return the events of the last `hours` hours in buckets of `bucket_minutes`, oldest first.

    The range ends at the filters' `until` (or now) and starts `hours` earlier,
    or at the filters' `since` when that is later. Buckets are aligned to
    multiples of `bucket_minutes` since the Unix epoch, and empty buckets are
    included with zero counts. Each bucket: `bucket_start`, `bucket_end`
    (ISO 8601), `attempts`, `models`, `success`, `failure`, `skipped`,
    `failure_rate`, `throughput_per_hour` (successes + failures per hour of
    the bucket's part inside the range), `p50_processing_time_sec`,
    `p95_processing_time_sec`, `avg_element_coverage` (events that carry one).

    Raises `ValueError` when `hours` is not in (0, 8784], `bucket_minutes` not
    in 1-1440, or the range would need more than 10,000 buckets.
    """
    check_positive("hours", hours, TREND_HOURS_MAX)
    check_limit("bucket_minutes", bucket_minutes, 1440)
    filters = filters or Filters()
    now = now or database_now(conn)

    end = filters.until or now
    start = end - timedelta(hours=hours)
    if filters.since is not None and filters.since > start:
        start = filters.since
    bucket_sec = bucket_minutes * 60
    first_bucket = math.floor(start.timestamp() / bucket_sec) * bucket_sec
    last_bucket = math.floor(end.timestamp() / bucket_sec) * bucket_sec
    if last_bucket == end.timestamp() and last_bucket > first_bucket:
        last_bucket -= bucket_sec  # the range ends exactly on a boundary: no empty bucket after it
    if (last_bucket - first_bucket) / bucket_sec + 1 > TREND_BUCKETS_MAX:
        raise ValueError(
            f"hours {hours:g} with bucket_minutes {bucket_minutes} needs more than {TREND_BUCKETS_MAX} buckets: "
            "use longer buckets"
        )

    window = filters.with_window(start, end)
    params = {**window.params(), "bucket_sec": bucket_sec, "first_bucket": first_bucket, "last_bucket": last_bucket}
    buckets = []
    for row in conn.execute(statement(settings, _TRENDS_SQL), params):
        bucket_start = datetime.fromtimestamp(row.bucket, tz=timezone.utc)
        bucket_end = bucket_start + timedelta(seconds=bucket_sec)
        covered_hours = hours_between(max(bucket_start, start), min(bucket_end, end))
        quantiles = row.quantiles or [None, None]
        processed = row.success + row.failure
        buckets.append({
            "bucket_start": iso(bucket_start),
            "bucket_end": iso(bucket_end),
            "attempts": row.attempts,
            "models": row.models,
            "success": row.success,
            "failure": row.failure,
            "skipped": row.skipped,
            "failure_rate": ratio(row.failure, processed),
            "throughput_per_hour": processed / covered_hours if covered_hours > 0 else None,
            "p50_processing_time_sec": _float(quantiles[0]),
            "p95_processing_time_sec": _float(quantiles[1]),
            "avg_element_coverage": _float(row.avg_element_coverage),
        })
    return buckets


def recent_models(
    conn: Connection,
    settings: Settings,
    filters: Filters | None = None,
    *,
    search: str | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Return the latest `limit` events (1-10,000), newest first, with the model's coverage from the ledger.

    `search` narrows further to model names containing it (case-insensitive),
    on top of the filters' own `search`. Each row: `event_id`, `occurred_at`,
    `model_name`, `model_type`, `category`, `status`, `processing_time_sec`,
    `element_coverage` (recorded with the event), `unrecoverable_unknown`,
    `feature_count`, `batch_id`, `worker_id`, `host`, `error_type`,
    `error_message`, and `ledger_element_coverage`, `quality_known`,
    `quality_reason` from the ledger (None when the model is not in the table).
    """
    check_limit("limit", limit, RECENT_MODELS_MAX)
    filters = filters or Filters()
    search_filter = Filters(search=search)  # validates and escapes it like the filters' own search
    params = {**filters.params(), "search_pattern": search_filter.params()["name_pattern"], "limit": limit}
    return [
        {
            "event_id": str(row.event_id),
            "occurred_at": iso(row.occurred_at),
            "model_name": row.model_name,
            "model_type": row.model_type,
            "category": row.category,
            "status": row.status,
            "processing_time_sec": row.processing_time_sec,
            "element_coverage": row.element_coverage,
            "unrecoverable_unknown": row.unrecoverable_unknown,
            "feature_count": row.feature_count,
            "batch_id": row.batch_id,
            "worker_id": row.worker_id,
            "host": row.host,
            "error_type": row.error_type,
            "error_message": row.error_message,
            "ledger_element_coverage": row.ledger_element_coverage,
            "quality_known": row.quality_known,
            "quality_reason": row.quality_reason,
        }
        for row in conn.execute(statement(settings, _RECENT_MODELS_SQL), params)
    ]
