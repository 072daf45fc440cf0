"""The fleet-wide snapshot: every figure of `serialmon status`, the exporter and the dashboard, in one dict.

`get_snapshot()` is composed of the read model's own functions with one time
range and one `now`, so each number in it is the number that the dashboard's
pages and the exporter show. It reads the ledger once and builds both the
quality summary and the per-category coverage from that read, with the same
code as `quality_summary()` and `category_breakdown()`.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from serialmon.config import Settings
from serialmon.errors import SerialmonError, first_line
from serialmon.ledger import ProgressCallback, ledger_state, refresh_ledger
from serialmon.readmodel.batches import batches
from serialmon.readmodel.failures import failure_groups
from serialmon.readmodel.filters import Filters, check_limit, check_positive, database_now, iso
from serialmon.readmodel.quality import coverage_by_category, read_ledger_groups, summarize_quality
from serialmon.readmodel.runs import (
    RECENT_MODELS_MAX,
    merge_categories,
    overview,
    read_event_categories,
    recent_models,
)
from serialmon.readmodel.workers import workers

logger = logging.getLogger(__name__)

WINDOW_MINUTES_MAX = 60 * 24 * 366
SNAPSHOT_LOCK_WAIT_SEC = 1.0  # a snapshot waits this long for another refresh, then reads the ledger as it is


def get_snapshot(
    conn: Connection,
    settings: Settings,
    *,
    minutes: float | None = None,
    filters: Filters | None = None,
    refresh: bool = True,
    progress: ProgressCallback | None = None,
    recent_limit: int = 20,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Return the fleet-wide state as a JSON-serialisable dict; blocking.

    The event figures cover the `minutes` minutes before `filters.until` (or
    now), intersected with the filters' range. `minutes` defaults to
    `alert_window_minutes`, except when `filters.since` is set: then the
    filters' range alone applies. With
    `refresh` (the default) the ledger is refreshed first, which reads only
    rows changed since the last refresh; `progress(done, total)` reports that
    refresh. A refresh that fails is logged and reported under
    `ledger.error`, and the snapshot then reads the ledger as it is.

    Keys (see docs/snapshot.md for units and definitions): `generated_at`,
    `window_minutes`, `window`, `filters`, `total_models`, `table_models`,
    `attempts`, `by_type`, `by_status`, `by_category`, `processing_time_sec`,
    `failure_rate`, `success_rate`, `throughput_per_hour`, `first_event_at`,
    `last_event_at`, `quality`, `failure_reasons`, `batches`, `workers`,
    `recent_models`, `thresholds`, `ledger`.

    Raises `ValueError` for `minutes` outside (0, 527040] or `recent_limit`
    outside 1-10,000, and SQLAlchemy errors when the read queries fail.
    """
    if minutes is not None:
        check_positive("minutes", minutes, WINDOW_MINUTES_MAX)
    check_limit("recent_limit", recent_limit, RECENT_MODELS_MAX)
    filters = filters or Filters()

    refresh_info = _refresh(settings, progress) if refresh else {"refresh": None, "error": None}
    now = now or database_now(conn)
    if minutes is None and filters.since is None:
        minutes = settings.alert_window_minutes
    window = snapshot_window(filters, minutes, now)

    # The ledger is read once, for the quality summary and the per-category coverage.
    ledger_groups = read_ledger_groups(conn, settings, window)
    runs = overview(conn, settings, window, now=now)
    quality = summarize_quality(conn, settings, ledger_groups)
    by_category = merge_categories(
        read_event_categories(conn, settings, window), coverage_by_category(ledger_groups)
    )
    return {
        "generated_at": iso(now),
        "window_minutes": minutes,
        "window": {"since": iso(window.since), "until": iso(window.until)},
        "filters": filters.as_dict(),
        "total_models": runs["total_models"],
        "table_models": quality["table_models"],
        "attempts": runs["attempts"],
        "by_type": runs["by_type"],
        "by_status": runs["by_status"],
        "by_category": by_category,
        "processing_time_sec": runs["processing_time_sec"],
        "failure_rate": runs["failure_rate"],
        "success_rate": runs["success_rate"],
        "throughput_per_hour": runs["throughput_per_hour"],
        "first_event_at": runs["first_event_at"],
        "last_event_at": runs["last_event_at"],
        "quality": quality,
        "failure_reasons": failure_groups(conn, settings, window),
        "batches": batches(conn, settings, window, now=now),
        "workers": workers(conn, settings, window, now=now),
        "recent_models": recent_models(conn, settings, window, limit=recent_limit),
        "thresholds": {
            "coverage_warning": settings.coverage_warning,
            "coverage_critical": settings.coverage_critical,
            "failure_rate_warning": settings.failure_rate_warning,
            "failure_rate_critical": settings.failure_rate_critical,
            "stall_minutes": settings.stall_minutes,
        },
        "ledger": {**ledger_state(conn, settings), **refresh_info},
    }


def snapshot_window(filters: Filters, minutes: float | None, now: datetime) -> Filters:
    """Return `filters` limited to the `minutes` minutes before `filters.until` (or `now`); None: unchanged.

    This is the window of `get_snapshot()`, for callers that read other
    figures over the same range.
    """
    if minutes is None:
        return filters
    check_positive("minutes", minutes, WINDOW_MINUTES_MAX)
    end = min(filters.until, now) if filters.until is not None else now
    return filters.with_window(end - timedelta(minutes=minutes), None)


def _refresh(settings: Settings, progress: ProgressCallback | None) -> dict[str, Any]:
    try:
        result = refresh_ledger(settings, progress=progress, lock_wait_sec=SNAPSHOT_LOCK_WAIT_SEC)
    except (SerialmonError, SQLAlchemyError) as error:
        reason = first_line(error)
        logger.warning("ledger refresh failed, the snapshot reads the ledger as it is: %s", reason)
        return {"refresh": None, "error": reason}
    return {"refresh": result.as_dict(), "error": None}


