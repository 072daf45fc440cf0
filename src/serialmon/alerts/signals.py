"""The SQL that measures each alert signal, one function per signal.

Every function takes a synchronous `Connection`, reads only serialmon's own
tables, and takes its time bounds as parameters (timezone-aware datetimes), so
that a caller with an injected clock gets repeatable results. Identifiers come
from `serialmon.db.Names` (quoted); values are always bound parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, text

from serialmon.db import Names


@dataclass(frozen=True)
class CoverageSignal:
    """Average element coverage of the models serialized in a window."""

    models: int
    mean_coverage: float | None
    worst: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class FailureSignal:
    """Successes and failures in a window, with failures grouped by reason."""

    successes: int
    failures: int
    reasons: list[dict] = field(default_factory=list)

    @property
    def attempts(self) -> int:
        return self.successes + self.failures

    @property
    def failure_rate(self) -> float | None:
        return self.failures / self.attempts if self.attempts else None


@dataclass(frozen=True)
class BatchActivity:
    """A running batch with its last heartbeat and its last recorded event."""

    batch_id: str
    name: str | None
    started_at: datetime
    heartbeat_at: datetime
    last_event_at: datetime | None
    host: str | None
    pid: int | None


@dataclass(frozen=True)
class WorkerHeartbeat:
    """A worker that has not stopped cleanly and whose heartbeat is old."""

    worker_id: str
    host: str
    pid: int
    heartbeat_at: datetime
    batch_id: str | None
    current_model: str | None


@dataclass(frozen=True)
class CategoryCoverage:
    """One category's coverage in the recent window and in its training period."""

    category: str
    recent_models: int
    recent_mean: float
    history_models: int
    history_mean: float | None
    history_std: float | None


def coverage_in_window(
    conn: Connection, names: Names, start: datetime, end: datetime, worst_limit: int = 5
) -> CoverageSignal:
    """Measure the average coverage of successful models in (start, end], using each model's latest event.

    A model serialized twice in the window counts once, with its latest
    coverage, because a resumed run overwrites the earlier row. Events without
    a coverage value are left out. `worst` lists the `worst_limit` models with
    the lowest coverage.
    """
    rows = conn.execute(
        text(
            f"""
            WITH latest AS (
                SELECT DISTINCT ON (model_name) model_name, element_coverage, category, batch_id
                FROM {names.table("serialization_events")}
                WHERE status = 'success'
                  AND element_coverage IS NOT NULL
                  AND occurred_at > :start AND occurred_at <= :end
                ORDER BY model_name, occurred_at DESC
            )
            SELECT model_name, element_coverage, category, batch_id,
                   count(*) OVER () AS models,
                   avg(element_coverage) OVER () AS mean_coverage
            FROM latest
            ORDER BY element_coverage, model_name
            LIMIT :worst_limit
            """
        ),
        {"start": start, "end": end, "worst_limit": max(worst_limit, 1)},
    ).mappings().all()
    if not rows:
        return CoverageSignal(models=0, mean_coverage=None)

    worst = [
        {
            "model_name": row["model_name"],
            "element_coverage": float(row["element_coverage"]),
            "category": row["category"],
            "batch_id": row["batch_id"],
        }
        for row in rows[:worst_limit]
    ]
    return CoverageSignal(models=int(rows[0]["models"]), mean_coverage=float(rows[0]["mean_coverage"]), worst=worst)


def failures_in_window(
    conn: Connection, names: Names, start: datetime, end: datetime, reason_limit: int = 10
) -> FailureSignal:
    """Count successes and failures in (start, end]; skipped models are not attempts.

    Every event counts, so a model that failed twice and then succeeded is three
    attempts. Failures are grouped by `error_type` (missing or empty: "unknown"),
    most frequent first, with the latest error message as an example.
    """
    counts = conn.execute(
        text(
            f"""
            SELECT count(*) FILTER (WHERE status = 'success') AS successes,
                   count(*) FILTER (WHERE status = 'failure') AS failures
            FROM {names.table("serialization_events")}
            WHERE status IN ('success', 'failure')
              AND occurred_at > :start AND occurred_at <= :end
            """
        ),
        {"start": start, "end": end},
    ).mappings().one()
    failures = int(counts["failures"])
    if failures == 0:
        return FailureSignal(successes=int(counts["successes"]), failures=0)

    reasons = conn.execute(
        text(
            f"""
            SELECT coalesce(nullif(error_type, ''), 'unknown') AS reason,
                   count(*) AS failures,
                   (array_agg(error_message ORDER BY occurred_at DESC)
                        FILTER (WHERE error_message IS NOT NULL))[1] AS example,
                   (array_agg(model_name ORDER BY occurred_at DESC))[1] AS latest_model
            FROM {names.table("serialization_events")}
            WHERE status = 'failure'
              AND occurred_at > :start AND occurred_at <= :end
            GROUP BY 1
            ORDER BY failures DESC, reason
            LIMIT :reason_limit
            """
        ),
        {"start": start, "end": end, "reason_limit": max(reason_limit, 1)},
    ).mappings().all()
    return FailureSignal(
        successes=int(counts["successes"]),
        failures=failures,
        reasons=[
            {
                "reason": row["reason"],
                "failures": int(row["failures"]),
                "example": row["example"],
                "latest_model": row["latest_model"],
            }
            for row in reasons
        ],
    )


def running_batches(conn: Connection, names: Names, now: datetime) -> list[BatchActivity]:
    """Return every batch with status `running`, with the time of its latest event at or before `now`."""
    rows = conn.execute(
        text(
            f"""
            SELECT b.batch_id, b.name, b.started_at, b.heartbeat_at, b.host, b.pid,
                   (SELECT max(e.occurred_at)
                    FROM {names.table("serialization_events")} e
                    WHERE e.batch_id = b.batch_id AND e.occurred_at <= :now) AS last_event_at
            FROM {names.table("batch_jobs")} b
            WHERE b.status = 'running'
            ORDER BY b.batch_id
            """
        ),
        {"now": now},
    ).mappings().all()
    return [BatchActivity(**row) for row in rows]


def silent_workers(
    conn: Connection, names: Names, stale_before: datetime, forget_before: datetime
) -> list[WorkerHeartbeat]:
    """Return workers whose last heartbeat is in [forget_before, stale_before) and that did not stop cleanly.

    A worker whose batch has finished (completed, failed or abandoned) is left
    out: its silence is expected. Heartbeats older than `forget_before` are left
    out too, so that a worker that crashed long ago does not fire forever.
    """
    rows = conn.execute(
        text(
            f"""
            SELECT w.worker_id, w.host, w.pid, w.heartbeat_at, w.batch_id, w.current_model
            FROM {names.table("worker_heartbeats")} w
            LEFT JOIN {names.table("batch_jobs")} b ON b.batch_id = w.batch_id
            WHERE w.stopped_at IS NULL
              AND w.heartbeat_at < :stale_before
              AND w.heartbeat_at >= :forget_before
              AND (b.status IS NULL OR b.status = 'running')
            ORDER BY w.worker_id
            """
        ),
        {"stale_before": stale_before, "forget_before": forget_before},
    ).mappings().all()
    return [WorkerHeartbeat(**row) for row in rows]


def coverage_by_category(
    conn: Connection, names: Names, history_start: datetime, window_start: datetime, end: datetime
) -> list[CategoryCoverage]:
    """Compare each category's recent coverage, in (window_start, end], with (history_start, window_start].

    Recent: each model once, with its latest coverage, as the low-coverage
    rule counts it. History: every successful event with a coverage value. A
    model serialized twice in the training period counts twice there, which
    keeps this query to one aggregate pass over a week of events. Deduplicating
    the history too sorted every event and took 5-7 times as long in
    bench/bench_alerts.py (2.9 s against 0.4 s at a million events). Only categories
    with at least one recent model are returned. `history_std` is the sample
    standard deviation (None below two events).
    """
    rows = conn.execute(
        text(
            f"""
            WITH recent_models AS (
                SELECT DISTINCT ON (model_name) category, element_coverage
                FROM {names.table("serialization_events")}
                WHERE status = 'success'
                  AND element_coverage IS NOT NULL
                  AND category IS NOT NULL
                  AND occurred_at > :window_start AND occurred_at <= :end
                ORDER BY model_name, occurred_at DESC
            ),
            recent AS (
                SELECT category, count(*) AS models, avg(element_coverage) AS mean
                FROM recent_models
                GROUP BY category
            ),
            history AS (
                SELECT category, count(*) AS models, avg(element_coverage) AS mean,
                       stddev_samp(element_coverage) AS std
                FROM {names.table("serialization_events")}
                WHERE status = 'success'
                  AND element_coverage IS NOT NULL
                  AND category IN (SELECT category FROM recent)
                  AND occurred_at > :history_start AND occurred_at <= :window_start
                GROUP BY category
            )
            SELECT recent.category,
                   recent.models AS recent_models, recent.mean AS recent_mean,
                   coalesce(history.models, 0) AS history_models, history.mean AS history_mean,
                   history.std AS history_std
            FROM recent
            LEFT JOIN history ON history.category = recent.category
            ORDER BY recent.category
            """
        ),
        {"history_start": history_start, "window_start": window_start, "end": end},
    ).mappings().all()
    return [
        CategoryCoverage(
            category=row["category"],
            recent_models=int(row["recent_models"]),
            recent_mean=float(row["recent_mean"]),
            history_models=int(row["history_models"]),
            history_mean=None if row["history_mean"] is None else float(row["history_mean"]),
            history_std=None if row["history_std"] is None else float(row["history_std"]),
        )
        for row in rows
    ]
