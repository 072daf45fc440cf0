"""Failed attempts grouped by error type, read from `serialization_events`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from serialmon.config import Settings
from serialmon.readmodel.filters import Filters, check_limit, iso, statement

FAILURE_GROUPS_MAX = 1_000

_FAILURE_GROUPS_SQL = """
    WITH events AS ({filtered_events}),
    failures AS (
        SELECT * FROM events WHERE status = 'failure'
    ),
    groups AS (
        SELECT
            error_type,
            count(*) AS failures,
            count(DISTINCT model_name) AS models,
            min(occurred_at) AS first_seen,
            max(occurred_at) AS last_seen
        FROM failures
        GROUP BY error_type
    ),
    latest AS (
        SELECT DISTINCT ON (error_type) error_type, model_name, error_message
        FROM failures
        ORDER BY error_type, occurred_at DESC, event_id DESC
    )
    SELECT g.*, l.model_name AS latest_model, l.error_message AS latest_message
    FROM groups AS g
    JOIN latest AS l ON l.error_type IS NOT DISTINCT FROM g.error_type
    ORDER BY g.failures DESC, g.last_seen DESC
    LIMIT :limit
"""


def failure_groups(
    conn: Connection, settings: Settings, filters: Filters | None = None, *, limit: int = 20
) -> list[dict[str, Any]]:
    """Return failures in range grouped by `error_type`, most frequent first, at most `limit` (1-1,000) groups.

    Each group: `error_type` (None when the pipeline recorded none),
    `failures` (events), `models` (distinct names), `first_seen`, `last_seen`
    (ISO 8601), and the latest failure's `latest_model` and `latest_message`.
    """
    check_limit("limit", limit, FAILURE_GROUPS_MAX)
    filters = filters or Filters()
    rows = conn.execute(statement(settings, _FAILURE_GROUPS_SQL), {**filters.params(), "limit": limit})
    return [
        {
            "error_type": row.error_type,
            "failures": row.failures,
            "models": row.models,
            "first_seen": iso(row.first_seen),
            "last_seen": iso(row.last_seen),
            "latest_model": row.latest_model,
            "latest_message": row.latest_message,
        }
        for row in rows
    ]
