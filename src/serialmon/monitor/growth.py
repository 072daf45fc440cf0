"""Growth: size samples in `table_size_samples`, growth rates, days until the size limit, recent cache hits.

A sample holds the table's heap, TOAST and index bytes, its row counts and
the cumulative block counters of `pg_statio_all_tables`. Growth is the
least-squares slope (`regr_slope`) of total bytes over time, in MB per hour
(1 MB = 1,000,000 bytes), over the last hour and the last day. Cache hit
ratios come from the difference between the last two samples, so they
describe that interval rather than everything since the statistics began.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Connection, text

from serialmon.config import Settings
from serialmon.db import names
from serialmon.monitor.sections import MonitorRun, SectionSkipped, iso, plain
from serialmon.monitor.space import RelationInfo, relation_sizes, start_run

logger = logging.getLogger(__name__)

MB = 1_000_000
_COUNTERS = (
    "heap_blks_read", "heap_blks_hit", "idx_blks_read", "idx_blks_hit",
    "toast_blks_read", "toast_blks_hit", "tidx_blks_read", "tidx_blks_hit",
)  # fmt: skip
_KINDS = {"heap": "heap_blks", "indexes": "idx_blks", "toast": "toast_blks", "toast_index": "tidx_blks"}


def _io_counters(conn: Connection, relation: RelationInfo) -> dict[str, Any]:
    row = conn.execute(
        text(
            f"""
            SELECT {', '.join('io.' + name for name in _COUNTERS)}, s.n_live_tup, s.n_dead_tup
            FROM pg_catalog.pg_statio_all_tables io
            JOIN pg_catalog.pg_stat_all_tables s ON s.relid = io.relid
            WHERE io.relid = CAST(:oid AS oid)
            """
        ),
        {"oid": relation.oid},
    ).mappings().first()
    return dict(row) if row else {}


def record_size_sample(conn: Connection, settings: Settings) -> dict[str, Any] | None:
    """Insert one size sample unless the last one is younger than `size_sample_interval_sec`.

    Returns the inserted sample, or None when it was too early, another
    process is sampling (an advisory lock), or the table is exclusively
    locked by another session (sizes would then be stale). Deletes samples
    older than `size_samples_retention_days`. Writes only to serialmon's own
    table, inside `conn`'s transaction. Raises the database error when the
    role may not write `table_size_samples`.
    """
    table = names(settings).table("table_size_samples")
    run, relation = start_run(conn, settings)

    locked = conn.execute(
        text("SELECT pg_try_advisory_xact_lock(hashtext(:key))"), {"key": f"serialmon size sample {relation.quoted}"}
    ).scalar_one()
    if not locked:
        return None  # another process is taking this sample right now
    due = conn.execute(
        text(
            f"SELECT coalesce(max(sampled_at) <= now() - make_interval(secs => :interval), true) "
            f"FROM {table} WHERE relation = :relation"
        ),
        {"relation": relation.quoted, "interval": settings.size_sample_interval_sec},
    ).scalar_one()
    if not due:
        return None

    sizes = relation_sizes(run, relation)
    if sizes["size_source"] != "files":
        logger.info("size sample of %s skipped: %s", relation.quoted, run.skipped[-1]["reason"] if run.skipped else "")
        return None
    counters = run.section("growth", lambda section: _io_counters(section, relation))

    sample = conn.execute(
        text(
            f"""
            INSERT INTO {table} (relation, heap_bytes, toast_bytes, index_bytes, total_bytes, row_estimate,
                                 live_tuples, dead_tuples, {', '.join(_COUNTERS)})
            VALUES (:relation, :heap_bytes, :toast_bytes, :index_bytes, :total_bytes, :row_estimate,
                    :n_live_tup, :n_dead_tup, {', '.join(':' + name for name in _COUNTERS)})
            RETURNING *
            """
        ),
        {
            "relation": relation.quoted,
            **{key: sizes[key] for key in ("heap_bytes", "toast_bytes", "index_bytes", "total_bytes")},
            "row_estimate": round(relation.reltuples) if relation.reltuples >= 0 else None,
            **{name: counters.get(name) for name in (*_COUNTERS, "n_live_tup", "n_dead_tup")},
        },
    ).mappings().one()

    removed = conn.execute(
        text(f"DELETE FROM {table} WHERE sampled_at < now() - make_interval(days => :days)"),
        {"days": settings.size_samples_retention_days},
    ).rowcount
    if removed:
        logger.info("removed %d size samples older than %d days", removed, settings.size_samples_retention_days)
    return plain(sample)


def _fit(conn: Connection, table: str, relation: str) -> dict[str, Any]:
    # regr_slope(y, x) is the least-squares slope; x is epoch seconds, so slopes are bytes per second.
    return dict(
        conn.execute(
            text(
                f"""
                SELECT count(*) FILTER (WHERE sampled_at >= now() - interval '1 hour') AS samples_hour,
                       count(*) AS samples_day,
                       regr_slope(total_bytes, extract(epoch FROM sampled_at))
                           FILTER (WHERE sampled_at >= now() - interval '1 hour') AS total_hour,
                       regr_slope(total_bytes, extract(epoch FROM sampled_at)) AS total_day,
                       regr_slope(heap_bytes, extract(epoch FROM sampled_at)) AS heap_day,
                       regr_slope(toast_bytes, extract(epoch FROM sampled_at)) AS toast_day,
                       regr_slope(index_bytes, extract(epoch FROM sampled_at)) AS index_day,
                       regr_slope(live_tuples, extract(epoch FROM sampled_at)) AS rows_day
                FROM {table}
                WHERE relation = :relation AND sampled_at >= now() - interval '1 day'
                """
            ),
            {"relation": relation},
        ).mappings().one()
    )


def _last_two(conn: Connection, table: str, relation: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        text(f"SELECT * FROM {table} WHERE relation = :relation ORDER BY sampled_at DESC, id DESC LIMIT 2"),
        {"relation": relation},
    ).mappings()
    return [dict(row) for row in rows]


def cache_hit_between(newer: dict[str, Any], older: dict[str, Any]) -> dict[str, Any]:
    """Return hit ratios per kind of block and overall, from the counter differences of two samples.

    A ratio is None when no block of that kind was accessed in between.
    When a counter went backwards (statistics were reset between the
    samples) or is missing, every ratio is None and `reason` says why.
    """
    deltas = {}
    for name in _COUNTERS:
        if newer.get(name) is None or older.get(name) is None:
            return {"reason": f"the samples lack {name}", "overall": None}
        deltas[name] = newer[name] - older[name]
        if deltas[name] < 0:
            return {"reason": "statistics were reset between the two samples", "overall": None}
    result: dict[str, Any] = {}
    hits = reads = 0
    for kind, prefix in _KINDS.items():
        hit, read = deltas[f"{prefix}_hit"], deltas[f"{prefix}_read"]
        result[kind] = hit / (hit + read) if hit + read else None
        hits += hit
        reads += read
    result["overall"] = hits / (hits + reads) if hits + reads else None
    result["blocks_accessed"] = hits + reads
    result["from"] = iso(older["sampled_at"])
    result["to"] = iso(newer["sampled_at"])
    if not hits + reads:
        result["reason"] = "no block of the table was accessed between the two samples"
    return result


def _per_hour(slope: Any) -> float | None:
    return float(slope) * 3600 / MB if slope is not None else None


def growth(run: MonitorRun, relation: RelationInfo) -> dict[str, Any]:
    """Return the `growth` section.

    Keys: `mb_per_hour_last_hour`, `mb_per_hour_last_day` (None with fewer
    than two samples in the window), per-part slopes over the day,
    `rows_per_hour_last_day`, `latest_total_bytes`, `size_limit_bytes`,
    `days_until_limit` (None without a limit or growth), `cache_hit` from
    the last two samples, and `samples` counts.
    """
    if "growth" in run.cache:
        return run.cache["growth"]
    table = names(run.settings).table("table_size_samples")
    fit = run.section("growth", lambda conn: _fit(conn, table, relation.quoted))
    last = run.section("growth", lambda conn: _last_two(conn, table, relation.quoted))

    per_hour_day = _per_hour(fit["total_day"])
    result: dict[str, Any] = {
        "samples_last_hour": fit["samples_hour"],
        "samples_last_day": fit["samples_day"],
        "mb_per_hour_last_hour": _per_hour(fit["total_hour"]),
        "mb_per_hour_last_day": per_hour_day,
        "heap_mb_per_hour_last_day": _per_hour(fit["heap_day"]),
        "toast_mb_per_hour_last_day": _per_hour(fit["toast_day"]),
        "index_mb_per_hour_last_day": _per_hour(fit["index_day"]),
        "rows_per_hour_last_day": float(fit["rows_day"]) * 3600 if fit["rows_day"] is not None else None,
        "latest_sample_at": iso(last[0]["sampled_at"]) if last else None,
        "latest_total_bytes": last[0]["total_bytes"] if last else None,
        "size_limit_bytes": run.settings.table_size_limit_bytes,
        "days_until_limit": None,
    }

    limit = run.settings.table_size_limit_bytes
    slope = fit["total_day"] if fit["total_day"] is not None else fit["total_hour"]
    if limit and last:
        remaining = limit - last[0]["total_bytes"]
        if remaining <= 0:
            result["days_until_limit"] = 0.0
        elif slope is not None and float(slope) > 0:
            result["days_until_limit"] = remaining / float(slope) / 86400

    if len(last) == 2:
        result["cache_hit"] = cache_hit_between(last[0], last[1])
    else:
        result["cache_hit"] = {"overall": None, "reason": "fewer than two size samples"}
    if not last:
        result["note"] = "no size samples yet: they are recorded by record_size_sample() (the report does it)"
    run.cache["growth"] = result
    return result


def growth_or_reason(run: MonitorRun, relation: RelationInfo) -> dict[str, Any]:
    """Return `growth()`, or a dict with `available: False` and the reason."""
    try:
        return growth(run, relation)
    except SectionSkipped as skipped:
        run.note_skip("growth", skipped.reason, skipped.fix)
        return {"available": False, "reason": skipped.reason, "fix": skipped.fix}
