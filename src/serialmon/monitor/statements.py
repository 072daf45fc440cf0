"""Query statistics: the `pg_stat_statements` entries that touch the monitored table.

Column names follow the installed extension version, not the server
version: `total_time`/`mean_time` became `total_exec_time`/`mean_exec_time`
in 1.8 (PostgreSQL 13), and `blk_read_time` became `shared_blk_read_time` in
1.11 (PostgreSQL 17). The view's columns are therefore probed. The statistics
are never reset here.

A statement "touches the table" when its normalised text contains the
table's name, bare or as a quoted identifier (case-insensitive).
NOTE: a table whose name contains the monitored name (for example
`serialized_models_archive`) matches too.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.dialects import postgresql

from serialmon.monitor.sections import MonitorRun, SectionSkipped, iso
from serialmon.monitor.space import RelationInfo

HIDDEN_TEXT = "<insufficient privilege>"

# Each output column and the view columns that hold it, newest name first.
_COLUMN_CHOICES = {
    "total_time_ms": ("total_exec_time", "total_time"),
    "mean_time_ms": ("mean_exec_time", "mean_time"),
    "read_time_ms": ("shared_blk_read_time", "blk_read_time"),
}

_quote = postgresql.dialect().identifier_preparer.quote_identifier


class QueryStatsUnavailable(SectionSkipped):
    """`pg_stat_statements` cannot be read; `kind` is `missing`, `not_preloaded` or `failed`."""

    def __init__(self, kind: str, reason: str, fix: str | None = None) -> None:
        super().__init__(reason, fix)
        self.kind = kind


def _extension(conn: Connection) -> dict[str, Any] | None:
    row = conn.execute(
        text(
            "SELECT e.extversion AS version, n.nspname AS schema FROM pg_catalog.pg_extension e "
            "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'"
        )
    ).mappings().first()
    return dict(row) if row else None


def _preloaded(run: MonitorRun) -> bool | None:
    """Return whether `shared_preload_libraries` lists pg_stat_statements; None when the role may not read it."""
    try:
        value = run.section(
            "queries", lambda conn: conn.execute(text("SELECT current_setting('shared_preload_libraries')")).scalar_one()
        )
    except SectionSkipped:
        return None
    return "pg_stat_statements" in [part.strip().strip('"') for part in value.split(",")]


def _missing_reason(run: MonitorRun) -> QueryStatsUnavailable:
    preloaded = _preloaded(run)
    if preloaded is False:
        return QueryStatsUnavailable(
            "missing",
            "pg_stat_statements is neither preloaded nor installed in this database",
            "Add pg_stat_statements to shared_preload_libraries in postgresql.conf, restart PostgreSQL, "
            "then run CREATE EXTENSION pg_stat_statements; in this database.",
        )
    return QueryStatsUnavailable(
        "missing",
        "the pg_stat_statements extension is not installed in this database"
        + (" (the library is preloaded)" if preloaded else ""),
        "Run CREATE EXTENSION pg_stat_statements; in this database"
        + ("." if preloaded else " (it also needs pg_stat_statements in shared_preload_libraries and a restart)."),
    )


def probe(run: MonitorRun) -> dict[str, Any]:
    """Return the extension's schema, version and the column names to read (cached per run).

    Raises `QueryStatsUnavailable` when the extension is not installed or
    its library is not preloaded.
    """
    if "statements_probe" in run.cache:
        return run.cache["statements_probe"]
    extension = run.section("queries", _extension)
    if extension is None:
        raise _missing_reason(run)

    view = f"{_quote(extension['schema'])}.pg_stat_statements"

    def columns(conn: Connection) -> set[str]:
        rows = conn.execute(
            text("SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = to_regclass(:view) AND attnum > 0"),
            {"view": view},
        ).scalars()
        return set(rows)

    available = run.section("queries", columns)
    chosen = {}
    for output, choices in _COLUMN_CHOICES.items():
        chosen[output] = next((name for name in choices if name in available), None)
    if chosen["total_time_ms"] is None or chosen["mean_time_ms"] is None:
        raise QueryStatsUnavailable(
            "failed",
            f"pg_stat_statements {extension['version']} has neither total_exec_time nor total_time",
            "ALTER EXTENSION pg_stat_statements UPDATE;",
        )
    result = {"view": view, "version": extension["version"], "columns": chosen}
    run.cache["statements_probe"] = result
    return result


def _read(run: MonitorRun, found: dict[str, Any], relation: RelationInfo, limit: int) -> dict[str, Any]:
    columns = found["columns"]
    read_time = f"s.{_quote(columns['read_time_ms'])}" if columns["read_time_ms"] else "NULL::float8"
    select = f"""
        SELECT s.queryid, s.query, s.calls, s.rows,
               s.{_quote(columns['total_time_ms'])} AS total_time_ms,
               s.{_quote(columns['mean_time_ms'])} AS mean_time_ms,
               s.shared_blks_hit, s.shared_blks_read, {read_time} AS read_time_ms
        FROM {found['view']} s
        WHERE s.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
          AND (strpos(lower(s.query), lower(:bare)) > 0 OR strpos(lower(s.query), lower(:quoted)) > 0)
    """
    parameters = {"bare": relation.name, "quoted": _quote(relation.name), "limit": limit}

    def read(conn: Connection) -> dict[str, Any]:
        by_total = conn.execute(text(select + " ORDER BY total_time_ms DESC LIMIT :limit"), parameters).mappings().all()
        by_mean = conn.execute(text(select + " ORDER BY mean_time_ms DESC LIMIT :limit"), parameters).mappings().all()
        hidden = conn.execute(
            text(
                f"SELECT count(*) FROM {found['view']} s WHERE s.query = :hidden "
                f"AND s.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())"
            ),
            {"hidden": HIDDEN_TEXT},
        ).scalar_one()
        return {"by_total": by_total, "by_mean": by_mean, "hidden": hidden}

    try:
        return run.section("queries", read)
    except SectionSkipped as skipped:
        if "shared_preload_libraries" in skipped.reason:
            raise QueryStatsUnavailable(
                "not_preloaded",
                "pg_stat_statements is installed but its library is not preloaded, so it collects nothing",
                "Add pg_stat_statements to shared_preload_libraries in postgresql.conf and restart PostgreSQL.",
            ) from skipped
        raise


def _statement(row: Any) -> dict[str, Any]:
    hit, read = row["shared_blks_hit"] or 0, row["shared_blks_read"] or 0
    return {
        "queryid": str(row["queryid"]) if row["queryid"] is not None else None,
        "query": row["query"],
        "calls": row["calls"],
        "rows": row["rows"],
        "total_time_ms": iso(row["total_time_ms"]),
        "mean_time_ms": iso(row["mean_time_ms"]),
        "shared_blks_hit": hit,
        "shared_blks_read": read,
        "buffer_hit_ratio": hit / (hit + read) if hit + read else None,
        "read_time_ms": iso(row["read_time_ms"]),
    }


def query_stats(run: MonitorRun, relation: RelationInfo, limit: int = 20) -> dict[str, Any]:
    """Return the `queries` section: statements touching the table by total and by mean time.

    Raises `QueryStatsUnavailable` (missing, not preloaded) or
    `SectionSkipped`. When the role may not read other users' statements,
    `hidden_statements` counts them and `notes` gives the fix.
    """
    if limit < 1 or limit > 1000:
        raise ValueError(f"limit={limit} is out of range; expected 1 to 1000")
    cached = run.cache.get("query_stats")
    if cached is not None and cached["limit"] >= limit:
        return cached["result"]
    found = probe(run)
    rows = _read(run, found, relation, limit)
    notes = []
    if rows["hidden"]:
        notes.append(
            f"{rows['hidden']} statements of other roles show as {HIDDEN_TEXT} and cannot be matched to the table; "
            "GRANT pg_read_all_stats (or pg_monitor) TO the monitor's role."
        )
    result = {
        "available": True,
        "extension_version": found["version"],
        "columns": found["columns"],
        "by_total_time": [_statement(row) for row in rows["by_total"]],
        "by_mean_time": [_statement(row) for row in rows["by_mean"]],
        "hidden_statements": rows["hidden"],
        "notes": notes,
    }
    run.cache["query_stats"] = {"limit": limit, "result": result}
    return result
