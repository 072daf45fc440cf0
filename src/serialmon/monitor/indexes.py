"""Indexes: size, scans, cache hits and validity of each index, unused indexes, and the GIN index on `feature_types`.

"Unused" means not unique, not a primary key, and `idx_scan = 0` since the
statistics were last reset. The reset time is shown beside it: after a
restore or a reset every index starts at zero scans, so a finding counts as
`conclusive` only once the statistics are `unused_index_min_days` old.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from serialmon.monitor.sections import MonitorRun, SectionSkipped, iso, plain
from serialmon.monitor.space import RelationInfo

GIN_COLUMN = "feature_types"


def _view_columns(conn: Connection, view: str) -> set[str]:
    rows = conn.execute(
        text("SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = CAST(:view AS regclass) AND attnum > 0"),
        {"view": view},
    ).scalars()
    return set(rows)


def _index_rows(conn: Connection, relation: RelationInfo, *, with_definition: bool) -> list[dict[str, Any]]:
    # last_idx_scan exists in pg_stat_all_indexes from PostgreSQL 16 on.
    has_last_scan = "last_idx_scan" in _view_columns(conn, "pg_catalog.pg_stat_all_indexes")
    last_scan = "s.last_idx_scan" if has_last_scan else "NULL::timestamptz"
    # pg_get_indexdef() takes an ACCESS SHARE lock on the table, so it is left out while the table is locked.
    definition = "pg_catalog.pg_get_indexdef(i.indexrelid)" if with_definition else "NULL::text"
    rows = conn.execute(
        text(
            f"""
            SELECT i.indexrelid::bigint AS oid, ic.relname AS name, am.amname AS method,
                   i.indisunique AS is_unique, i.indisprimary AS is_primary,
                   i.indisvalid AS is_valid, i.indisready AS is_ready,
                   {definition} AS definition,
                   ic.relpages, ic.reltuples,
                   ARRAY(SELECT a.attname FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) AS columns,
                   coalesce(s.idx_scan, 0) AS scans, coalesce(s.idx_tup_read, 0) AS tuples_read,
                   coalesce(s.idx_tup_fetch, 0) AS tuples_fetched, {last_scan} AS last_scan,
                   io.idx_blks_hit AS blocks_hit, io.idx_blks_read AS blocks_read
            FROM pg_catalog.pg_index i
            JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
            JOIN pg_catalog.pg_am am ON am.oid = ic.relam
            LEFT JOIN pg_catalog.pg_stat_all_indexes s ON s.indexrelid = i.indexrelid
            LEFT JOIN pg_catalog.pg_statio_all_indexes io ON io.indexrelid = i.indexrelid
            WHERE i.indrelid = CAST(:oid AS oid)
            ORDER BY ic.relname
            """
        ),
        {"oid": relation.oid},
    ).mappings()
    return [dict(row) for row in rows]


def _stats_reset(conn: Connection) -> dict[str, Any]:
    row = conn.execute(
        text(
            """
            SELECT stats_reset, extract(epoch FROM now() - stats_reset) / 86400.0 AS age_days
            FROM pg_catalog.pg_stat_database WHERE datname = current_database()
            """
        )
    ).mappings().first()
    return dict(row) if row else {"stats_reset": None, "age_days": None}


def index_sizes(run: MonitorRun, rows: list[dict[str, Any]], block_size: int) -> dict[int, tuple[int, str]]:
    """Return each index's bytes and their source: the file, or `pg_class.relpages` when it is locked (cached)."""
    if "index_sizes" in run.cache:
        return run.cache["index_sizes"]
    sizes: dict[int, tuple[int, str]] = {}
    readable = [row["oid"] for row in rows if run.lock_on([row["oid"]]) is None]
    if readable:
        try:
            found = run.section(
                "indexes",
                lambda conn: dict(
                    conn.execute(
                        text(
                            "SELECT oid::bigint, pg_relation_size(oid) FROM pg_catalog.pg_class "
                            "WHERE oid = ANY(CAST(:oids AS oid[]))"
                        ),
                        {"oids": readable},
                    ).all()
                ),
            )
            sizes.update({int(oid): (int(size), "file") for oid, size in found.items()})
        except SectionSkipped as skipped:
            run.note_skip("indexes", skipped.reason + "; index sizes fall back to pg_class.relpages", skipped.fix)
    for row in rows:
        if row["oid"] not in sizes:
            sizes[row["oid"]] = (max(row["relpages"], 0) * block_size, "pg_class.relpages")
    run.cache["index_sizes"] = sizes
    return sizes


def _gin_pending(run: MonitorRun, index_oid: int) -> dict[str, Any]:
    """Return the GIN pending list from `pgstatginindex()`, or why it is not available."""
    def read(conn: Connection) -> dict[str, Any] | None:
        installed = conn.execute(
            text("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE proname = 'pgstatginindex')")
        ).scalar_one()
        if not installed:
            return None
        row = conn.execute(
            text("SELECT pending_pages, pending_tuples FROM pgstatginindex(CAST(:oid AS oid)::regclass)"),
            {"oid": index_oid},
        ).mappings().one()
        return dict(row)

    try:
        run.require_unlocked([index_oid])
        pending = run.section("indexes", read)
    except SectionSkipped as skipped:
        return {"available": False, "reason": skipped.reason, "fix": skipped.fix}
    if pending is None:
        return {
            "available": False,
            "reason": "the pgstattuple extension (which provides pgstatginindex) is not installed",
            "fix": "CREATE EXTENSION pgstattuple; (serialmon init does this where the role may).",
        }
    return {"available": True, **pending}


def index_health(run: MonitorRun, relation: RelationInfo) -> dict[str, Any]:
    """Return the `indexes` section: `indexes` (one dict per index), `unused`, `gin`, `stats_reset` (cached per run)."""
    if "index_health" in run.cache:
        return run.cache["index_health"]
    unlocked = run.lock_on([relation.oid]) is None
    rows = run.section("indexes", lambda conn: _index_rows(conn, relation, with_definition=unlocked))
    reset = run.section("indexes", _stats_reset)
    sizes = index_sizes(run, rows, relation.block_size)
    min_days = run.settings.unused_index_min_days

    indexes = []
    for row in rows:
        hit, read = row.pop("blocks_hit"), row.pop("blocks_read")
        size, source = sizes[row["oid"]]
        total = (hit or 0) + (read or 0)
        indexes.append(
            {
                **plain(row),
                "size_bytes": size,
                "size_source": source,
                "blocks_hit": hit,
                "blocks_read": read,
                "cache_hit_ratio": hit / total if total else None,
            }
        )

    age_days = iso(reset["age_days"])
    unused = [
        {
            "name": index["name"],
            "size_bytes": index["size_bytes"],
            "stats_reset": iso(reset["stats_reset"]),
            "stats_age_days": age_days,
            "conclusive": age_days is not None and age_days >= min_days,
        }
        for index in indexes
        if not index["is_unique"] and not index["is_primary"] and index["scans"] == 0
    ]

    gin_candidates = [index for index in indexes if index["method"] == "gin" and GIN_COLUMN in index["columns"]]
    gin: dict[str, Any]
    if not gin_candidates:
        gin = {"present": False, "column": GIN_COLUMN}
    else:
        index = next((found for found in gin_candidates if found["is_valid"]), gin_candidates[0])
        gin = {
            "present": True,
            "column": GIN_COLUMN,
            "name": index["name"],
            "is_valid": index["is_valid"],
            "is_ready": index["is_ready"],
            "scans": index["scans"],
            "last_scan": index["last_scan"],
            "scanned": index["scans"] > 0,
            "size_bytes": index["size_bytes"],
            "pending_list": _gin_pending(run, index["oid"]),
        }

    run.cache["index_health"] = {
        "indexes": indexes,
        "unused": unused,
        "gin": gin,
        "stats_reset": iso(reset["stats_reset"]),
        "stats_age_days": age_days,
        "unused_rule": (
            f"not unique, no scans since statistics were reset; conclusive once statistics are {min_days:g} days old"
            + ("" if reset["stats_reset"] else " (statistics of this database were never reset, so their age is unknown)")
        ),
    }
    return run.cache["index_health"]
