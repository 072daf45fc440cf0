"""Figures that only the dashboard shows: filter choices, the worst models, failure examples, size history.

Like the rest of the read model, each function takes a synchronous
`Connection` and the `Settings` and returns JSON-serialisable values
(datetimes as ISO 8601 text in UTC).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from serialmon.config import Settings
from serialmon.db import names
from serialmon.readmodel.filters import Filters, check_limit, database_now, iso, statement

WORST_MODELS_MAX = 1_000
EXAMPLES_PER_GROUP_MAX = 20
SIZE_HISTORY_POINTS_MAX = 10_000

# Categories of the table (ledger) and of the recorded events. The events part
# is a full scan of `serialization_events`, which has no index on category.
_CATEGORIES_SQL = """
    SELECT category FROM {model_quality} WHERE category IS NOT NULL GROUP BY category
    UNION
    SELECT category FROM {events} WHERE category IS NOT NULL GROUP BY category
    ORDER BY category
"""

# min/max use the index on occurred_at; the count reads the narrow ledger, never the monitored table.
_EXTENT_SQL = """
    SELECT
        (SELECT min(occurred_at) FROM {events}) AS first_event_at,
        (SELECT max(occurred_at) FROM {events}) AS last_event_at,
        (SELECT count(*) FROM {model_quality}) AS ledger_rows
"""

# Models of known coverage, lowest first; ties go to the one with more
# unknown features that cannot be recreated.
_WORST_MODELS_SQL = """
    WITH ledger AS ({filtered_ledger})
    SELECT
        model_name, model_type, category, element_coverage, total_features, features_with_elements,
        unrecoverable_unknown, recoverable_unknown, quality_source, content_bytes, model_updated_at
    FROM ledger
    WHERE element_coverage IS NOT NULL
    ORDER BY element_coverage, unrecoverable_unknown DESC NULLS LAST, model_name
    LIMIT :limit
"""

# The latest distinct models of each failure group, newest first.
_FAILURE_EXAMPLES_SQL = """
    WITH events AS ({filtered_events}),
    failed_models AS (
        SELECT error_type, model_name, max(occurred_at) AS last_failed_at
        FROM events
        WHERE status = 'failure'
        GROUP BY error_type, model_name
    ),
    ranked AS (
        SELECT
            error_type, model_name,
            row_number() OVER (PARTITION BY error_type ORDER BY last_failed_at DESC, model_name) AS rank
        FROM failed_models
    )
    SELECT error_type, model_name
    FROM ranked
    WHERE rank <= :per_group
    ORDER BY error_type NULLS FIRST, rank
"""

_SIZE_RANGE_SQL = """
    SELECT min(sampled_at) AS first_at, max(sampled_at) AS last_at
    FROM {samples}
    WHERE relation = :relation
      AND sampled_at >= coalesce(CAST(:since AS timestamptz), '-infinity')
      AND sampled_at < coalesce(CAST(:until AS timestamptz), 'infinity')
"""

# The latest sample of each time bucket of `:bucket_sec` seconds.
_SIZE_HISTORY_SQL = """
    SELECT DISTINCT ON (bucket)
        floor(extract(epoch FROM sampled_at) / :bucket_sec) AS bucket,
        sampled_at, heap_bytes, toast_bytes, index_bytes, total_bytes, live_tuples, dead_tuples
    FROM {samples}
    WHERE relation = :relation
      AND sampled_at >= coalesce(CAST(:since AS timestamptz), '-infinity')
      AND sampled_at < coalesce(CAST(:until AS timestamptz), 'infinity')
    ORDER BY bucket, sampled_at DESC
"""


def filter_options(conn: Connection, settings: Settings) -> dict[str, Any]:
    """Return what the dashboard's filters can choose from: {"categories": sorted names}.

    Categories come from the ledger and from the recorded events. The events
    part reads every event (there is no index on category), so callers cache it.
    """
    return {"categories": [row.category for row in conn.execute(statement(settings, _CATEGORIES_SQL))]}


def data_extent(conn: Connection, settings: Settings) -> dict[str, Any]:
    """Return how much data there is: {first_event_at, last_event_at, ledger_rows}; cheap.

    Event times are ISO 8601 (None without events); `ledger_rows` counts the
    rows of the monitored table as of the last ledger refresh.
    """
    extent = conn.execute(statement(settings, _EXTENT_SQL)).one()
    return {
        "first_event_at": iso(extent.first_event_at),
        "last_event_at": iso(extent.last_event_at),
        "ledger_rows": extent.ledger_rows,
    }


def worst_models(
    conn: Connection, settings: Settings, filters: Filters | None = None, *, limit: int = 20
) -> list[dict[str, Any]]:
    """Return up to `limit` (1-1,000) ledger models with the lowest element coverage, lowest first.

    Models whose quality is unknown have no coverage and are left out (the
    quality summary counts them). Each row: `model_name`, `model_type`,
    `category`, `element_coverage` (percent), `total_features`,
    `features_with_elements`, `unrecoverable_unknown`, `recoverable_unknown`,
    `quality_source`, `content_bytes` and `model_updated_at`. Time filters do
    not apply: the ledger describes the table as it is now.
    """
    check_limit("limit", limit, WORST_MODELS_MAX)
    filters = filters or Filters()
    rows = conn.execute(statement(settings, _WORST_MODELS_SQL), {**filters.params(), "limit": limit})
    return [
        {
            "model_name": row.model_name,
            "model_type": row.model_type,
            "category": row.category,
            "element_coverage": row.element_coverage,
            "total_features": row.total_features,
            "features_with_elements": row.features_with_elements,
            "unrecoverable_unknown": row.unrecoverable_unknown,
            "recoverable_unknown": row.recoverable_unknown,
            "quality_source": row.quality_source,
            "content_bytes": row.content_bytes,
            "model_updated_at": iso(row.model_updated_at),
        }
        for row in rows
    ]


def failure_examples(
    conn: Connection, settings: Settings, filters: Filters | None = None, *, per_group: int = 3
) -> list[dict[str, Any]]:
    """Return, per `error_type` of the failures in range, the `per_group` (1-20) models that failed last.

    Each entry: `error_type` (None when the pipeline recorded none) and
    `example_models` (distinct model names, the latest failure first). Groups
    come in `error_type` order; match them to `failure_groups()` by
    `error_type`.
    """
    check_limit("per_group", per_group, EXAMPLES_PER_GROUP_MAX)
    filters = filters or Filters()
    rows = conn.execute(statement(settings, _FAILURE_EXAMPLES_SQL), {**filters.params(), "per_group": per_group})
    groups: dict[str | None, list[str]] = {}
    for row in rows:
        groups.setdefault(row.error_type, []).append(row.model_name)
    return [{"error_type": error_type, "example_models": models} for error_type, models in groups.items()]


def size_history(
    conn: Connection,
    settings: Settings,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    max_points: int = 500,
) -> list[dict[str, Any]]:
    """Return the monitored table's size samples in [since, until), oldest first, thinned to `max_points`.

    Samples come from `table_size_samples` (the database monitor records one
    per `size_sample_interval_sec`). When the range contains more than
    `max_points` (1-10,000) samples, it is cut into `max_points` equal time
    buckets and the latest sample of each is kept. Each point:
    `sampled_at` (ISO 8601), `heap_bytes`, `toast_bytes`, `index_bytes`,
    `total_bytes`, `live_tuples`, `dead_tuples`. Naive datetimes are taken as UTC.
    """
    check_limit("max_points", max_points, SIZE_HISTORY_POINTS_MAX)
    window = Filters(since=since, until=until)  # validates the bounds and makes them aware
    samples = names(settings).table("table_size_samples").replace(":", "\\:")
    params = {"relation": names(settings).models, "since": window.since, "until": window.until}

    extent = conn.execute(text(_SIZE_RANGE_SQL.format(samples=samples)), params).one()
    if extent.first_at is None:
        return []
    span_sec = (extent.last_at - extent.first_at).total_seconds()
    # A span cut into n buckets of whole seconds touches at most n + 2 of them once aligned to the epoch.
    bucket_sec = max(1, math.ceil(span_sec / max(max_points - 2, 1)))

    rows = list(conn.execute(text(_SIZE_HISTORY_SQL.format(samples=samples)), {**params, "bucket_sec": bucket_sec}))
    return [
        {
            "sampled_at": iso(row.sampled_at),
            "heap_bytes": row.heap_bytes,
            "toast_bytes": row.toast_bytes,
            "index_bytes": row.index_bytes,
            "total_bytes": row.total_bytes,
            "live_tuples": row.live_tuples,
            "dead_tuples": row.dead_tuples,
        }
        for row in rows[-max_points:]
    ]


def window_filters(conn: Connection, filters: Filters | None, minutes: float | None) -> Filters:
    """Return `filters` limited to the `minutes` minutes before `filters.until` or the database's now.

    This is `get_snapshot(minutes=...)`'s own window (`snapshot_window`), so
    figures read with it match the snapshot's. `minutes=None` leaves the
    filters unchanged.
    """
    from serialmon.readmodel.snapshot import snapshot_window

    return snapshot_window(filters or Filters(), minutes, database_now(conn))
