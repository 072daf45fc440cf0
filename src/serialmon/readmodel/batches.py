"""Batch progress and ETA, read from `batch_jobs` and the batch's recent events."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from serialmon.config import Settings
from serialmon.readmodel.filters import Filters, check_limit, database_now, iso, statement

RECENT_MINUTES = 15  # the throughput behind a batch's ETA is measured over this many minutes
BATCHES_MAX = 1_000

# Batches that overlap the range [since, until), running ones first. The
# category, type, coverage and search filters do not apply: a batch spans them.
_BATCHES_SQL = """
    SELECT
        b.batch_id, b.name, b.status, b.total_models, b.processed, b.succeeded, b.failed, b.skipped,
        b.started_at, b.updated_at, b.heartbeat_at, b.finished_at, b.host, b.pid,
        recent.events AS recent_events,
        models.processed AS models_processed, models.succeeded AS models_succeeded,
        models.failed AS models_failed, models.skipped AS models_skipped
    FROM {batch_jobs} AS b
    LEFT JOIN LATERAL (
        SELECT count(*) AS events
        FROM {events} AS e
        WHERE e.batch_id = b.batch_id AND e.occurred_at > :recent_since AND e.occurred_at <= :now
    ) AS recent ON true
    LEFT JOIN LATERAL (
        -- Each model counts once, by its latest attempt: a model retried after a failure is one model.
        SELECT count(*) AS processed,
               count(*) FILTER (WHERE latest.status = 'success') AS succeeded,
               count(*) FILTER (WHERE latest.status = 'failure') AS failed,
               count(*) FILTER (WHERE latest.status = 'skipped') AS skipped
        FROM (
            SELECT DISTINCT ON (e.model_name) e.status
            FROM {events} AS e
            WHERE e.batch_id = b.batch_id
            ORDER BY e.model_name, e.occurred_at DESC, e.recorded_at DESC
        ) AS latest
    ) AS models ON true
    WHERE b.started_at < coalesce(CAST(:until AS timestamptz), 'infinity')
      AND (b.finished_at IS NULL OR b.finished_at >= coalesce(CAST(:since AS timestamptz), '-infinity'))
    ORDER BY b.status = 'running' DESC, b.started_at DESC, b.batch_id
    LIMIT :limit
"""


def batches(
    conn: Connection,
    settings: Settings,
    filters: Filters | None = None,
    *,
    limit: int = 50,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Return the batches that overlap the filters' time range, running ones first, at most `limit` (1-1,000).

    Each batch has `batch_id`, `name` and `status`. The status is the stored
    one, except that a running batch whose heartbeat is older than
    `stall_minutes` is `abandoned`. Then come `stored_status`, `stalled` (that
    condition) and `total`. `processed` counts distinct models with an event in
    the batch. `succeeded`, `failed` and `skipped` count models by the status of
    their latest attempt, so a model retried after a failure counts once.
    `attempts` and `failed_attempts` count every recorded event, from the batch
    row's counters. Then come `percent` (processed / total x 100, None without
    a total), `started_at`, `updated_at`, `heartbeat_at`, `finished_at`
    (ISO 8601), `heartbeat_age_sec`, `host` and `pid`.

    `recent_events` counts the batch's events of any status in the last 15
    minutes, or since its start when that is later, and `throughput_per_hour`
    is that count per hour. `remaining` is total - processed. `eta_seconds`
    and `eta_at` are remaining / recent throughput: 0 when nothing remains, and
    None unless the batch is running with a known total and a recent throughput.

    The ETA uses the recent throughput, not the run's average, so it follows
    a run that speeds up or slows down.
    """
    check_limit("limit", limit, BATCHES_MAX)
    filters = filters or Filters()
    now = now or database_now(conn)
    params = {
        "since": filters.since,
        "until": filters.until,
        "recent_since": now - timedelta(minutes=RECENT_MINUTES),
        "now": now,
        "limit": limit,
    }
    return [_batch(row, settings, now) for row in conn.execute(statement(settings, _BATCHES_SQL), params)]


def _batch(row: Any, settings: Settings, now: datetime) -> dict[str, Any]:
    heartbeat_age_sec = (now - row.heartbeat_at).total_seconds()
    stalled = row.status == "running" and heartbeat_age_sec > settings.stall_minutes * 60
    status = "abandoned" if stalled else row.status

    # Over the last RECENT_MINUTES, or since the batch started when that is later.
    recent_start = max(now - timedelta(minutes=RECENT_MINUTES), row.started_at)
    recent_sec = (now - recent_start).total_seconds()
    rate_per_sec = row.recent_events / recent_sec if recent_sec > 0 else 0.0

    total = row.total_models
    remaining = max(total - row.models_processed, 0) if total is not None else None
    eta_seconds: float | None = None
    if status == "running" and remaining is not None:
        if remaining == 0:
            eta_seconds = 0.0
        elif rate_per_sec > 0:
            eta_seconds = remaining / rate_per_sec

    return {
        "batch_id": row.batch_id,
        "name": row.name,
        "status": status,
        "stored_status": row.status,
        "stalled": stalled,
        "total": total,
        "processed": row.models_processed,
        "succeeded": row.models_succeeded,
        "failed": row.models_failed,
        "skipped": row.models_skipped,
        "percent": 100.0 * row.models_processed / total if total else None,
        "attempts": row.processed,
        "failed_attempts": row.failed,
        "started_at": iso(row.started_at),
        "updated_at": iso(row.updated_at),
        "heartbeat_at": iso(row.heartbeat_at),
        "finished_at": iso(row.finished_at),
        "heartbeat_age_sec": heartbeat_age_sec,
        "recent_events": row.recent_events,
        "throughput_per_hour": rate_per_sec * 3600.0,
        "remaining": remaining,
        "eta_seconds": eta_seconds,
        "eta_at": iso(now + timedelta(seconds=eta_seconds)) if eta_seconds is not None else None,
        "host": row.host,
        "pid": row.pid,
    }
