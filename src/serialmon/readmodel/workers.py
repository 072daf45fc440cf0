"""Pipeline worker processes and their heartbeats, read from `worker_heartbeats`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from serialmon.config import Settings
from serialmon.readmodel.filters import Filters, database_now, iso, statement

SILENT_AFTER_HEARTBEATS = 3  # a worker is silent after this many missed heartbeat intervals

# Workers that sent a heartbeat inside the range [since, until). The category,
# type, coverage and search filters do not apply: a worker handles any model.
_WORKERS_SQL = """
    SELECT worker_id, host, pid, started_at, heartbeat_at, current_model, batch_id, events_recorded, stopped_at
    FROM {worker_heartbeats}
    WHERE heartbeat_at >= coalesce(CAST(:since AS timestamptz), '-infinity')
      AND started_at < coalesce(CAST(:until AS timestamptz), 'infinity')
    ORDER BY host, pid, worker_id
"""


def workers(
    conn: Connection, settings: Settings, filters: Filters | None = None, *, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Return the workers with a heartbeat in the filters' time range, ordered by host and pid.

    Each worker: `worker_id`, `host`, `pid`, `started_at`, `heartbeat_at`,
    `stopped_at` (ISO 8601), `heartbeat_age_sec`, `state` ("stopped" when it
    recorded its stop, "live" when its last heartbeat is at most 3 heartbeat intervals
    old (`heartbeat_interval_sec`), "silent" otherwise), `current_model`,
    `batch_id`, `events_recorded`.
    """
    filters = filters or Filters()
    now = now or database_now(conn)
    silent_after_sec = SILENT_AFTER_HEARTBEATS * settings.heartbeat_interval_sec
    rows = conn.execute(statement(settings, _WORKERS_SQL), {"since": filters.since, "until": filters.until})

    result = []
    for row in rows:
        age_sec = (now - row.heartbeat_at).total_seconds()
        if row.stopped_at is not None:
            state = "stopped"
        elif age_sec <= silent_after_sec:
            state = "live"
        else:
            state = "silent"
        result.append({
            "worker_id": row.worker_id,
            "host": row.host,
            "pid": row.pid,
            "started_at": iso(row.started_at),
            "heartbeat_at": iso(row.heartbeat_at),
            "stopped_at": iso(row.stopped_at),
            "heartbeat_age_sec": age_sec,
            "state": state,
            "current_model": row.current_model,
            "batch_id": row.batch_id,
            "events_recorded": row.events_recorded,
        })
    return result
