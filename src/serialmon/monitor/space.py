"""Space: the monitored table's relation, its sizes, tuples and maintenance times.

Sizes come from `pg_total_relation_size()` and friends, which stat the files
and take an `ACCESS SHARE` lock. When another session has an exclusive lock on
the table, sizes fall back to `pg_class.relpages` (as of the last VACUUM or
ANALYZE) and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from serialmon.config import Settings
from serialmon.db import names
from serialmon.errors import MissingTable
from serialmon.monitor.sections import MonitorRun, SectionSkipped, find_locks, iso, plain


@dataclass
class RelationInfo:
    """The monitored table as the catalog describes it; read without taking a lock."""

    oid: int
    schema: str
    name: str
    quoted: str
    block_size: int
    relpages: int
    reltuples: float
    fillfactor: int
    toast_oid: int | None
    toast_name: str | None
    toast_index_oid: int | None
    toast_relpages: int
    toast_reltuples: float
    can_select: bool
    index_oids: list[int] = field(default_factory=list)

    @property
    def all_oids(self) -> list[int]:
        """The table, its TOAST table and TOAST index, and its indexes."""
        oids = [self.oid, *self.index_oids]
        if self.toast_oid:
            oids.append(self.toast_oid)
        if self.toast_index_oid:
            oids.append(self.toast_index_oid)
        return oids

    @property
    def heap_oids(self) -> list[int]:
        """The relations whose data files hold the rows: the table and its TOAST table."""
        return [self.oid, self.toast_oid] if self.toast_oid else [self.oid]


def maxalign(size: int) -> int:
    """Round `size` up to MAXALIGN (8 bytes on the 64-bit platforms PostgreSQL supports in practice)."""
    return (size + 7) // 8 * 8


def toast_tuple_target(block_size: int) -> int:
    """Return TOAST_TUPLE_TARGET for a block size: the heap tuple size TOAST shrinks rows to (2032 for 8 kB)."""
    usable = block_size - maxalign(24 + 4 * 4)  # page header plus four line pointers
    return (usable // 4) // 8 * 8


def toast_max_chunk_size(block_size: int) -> int:
    """Return TOAST_MAX_CHUNK_SIZE: the data bytes of one TOAST chunk (1996 for 8 kB pages)."""
    # Chunk tuple = aligned header (24) + chunk_id (4) + chunk_seq (4) + bytea header (4) + data.
    return toast_tuple_target(block_size) - maxalign(23) - 4 - 4 - 4


def chunk_footprint(data_bytes: int) -> int:
    """Return the page bytes one TOAST chunk of `data_bytes` takes, line pointer included."""
    header = 1 if data_bytes + 1 <= 127 else 4  # short varlena header for small chunks
    return maxalign(maxalign(23) + 4 + 4 + header + data_bytes) + 4


def resolve_relation(conn: Connection, settings: Settings) -> RelationInfo:
    """Look up the monitored table in the catalog; raises `MissingTable` when it does not exist."""
    row = conn.execute(
        text(
            """
            SELECT c.oid::bigint AS oid, c.relpages, c.reltuples,
                   current_setting('block_size')::int AS block_size,
                   coalesce((SELECT option_value::int FROM pg_catalog.pg_options_to_table(c.reloptions)
                             WHERE option_name = 'fillfactor'), 100) AS fillfactor,
                   nullif(c.reltoastrelid, 0)::bigint AS toast_oid,
                   t.relname AS toast_name, t.relpages AS toast_relpages, t.reltuples AS toast_reltuples,
                   (SELECT ti.indexrelid::bigint FROM pg_catalog.pg_index ti
                    WHERE ti.indrelid = c.reltoastrelid LIMIT 1) AS toast_index_oid,
                   has_table_privilege(c.oid, 'SELECT') AS can_select,
                   ARRAY(SELECT i.indexrelid::bigint FROM pg_catalog.pg_index i
                         WHERE i.indrelid = c.oid ORDER BY i.indexrelid) AS index_oids
            FROM pg_catalog.pg_class c
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            LEFT JOIN pg_catalog.pg_class t ON t.oid = c.reltoastrelid
            WHERE n.nspname = :schema AND c.relname = :table AND c.relkind IN ('r', 'p', 'm')
            """
        ),
        {"schema": settings.models_schema, "table": settings.models_table},
    ).mappings().first()
    if row is None:
        raise MissingTable(
            f"The monitored table {names(settings).models} does not exist in this database.",
            "Set SERIALMON_MODELS_SCHEMA / SERIALMON_MODELS_TABLE, or run `serialmon init --create-models-table`.",
        )
    return RelationInfo(
        oid=int(row["oid"]),
        schema=settings.models_schema,
        name=settings.models_table,
        quoted=names(settings).models,
        block_size=row["block_size"],
        relpages=row["relpages"],
        reltuples=float(row["reltuples"]),
        fillfactor=row["fillfactor"],
        toast_oid=row["toast_oid"],
        toast_name=f"pg_toast.{row['toast_name']}" if row["toast_name"] else None,
        toast_index_oid=row["toast_index_oid"],
        toast_relpages=row["toast_relpages"] or 0,
        toast_reltuples=float(row["toast_reltuples"] or 0),
        can_select=bool(row["can_select"]),
        index_oids=[int(oid) for oid in row["index_oids"]],
    )


def start_run(conn: Connection, settings: Settings) -> tuple[MonitorRun, RelationInfo]:
    """Resolve the relation, read the locks other sessions hold on it, and start a fresh statistics snapshot.

    `pg_stat_clear_snapshot()` matters inside a caller's long transaction,
    where statistics would otherwise stay frozen at its first read.
    """
    run = MonitorRun(conn, settings)
    relation = resolve_relation(conn, settings)
    conn.execute(text("SELECT pg_catalog.pg_stat_clear_snapshot()"))
    run.locks = find_locks(conn, relation.all_oids)
    run.cache["relation"] = relation
    return run, relation


def relation_sizes(run: MonitorRun, relation: RelationInfo) -> dict[str, Any]:
    """Return heap, TOAST, index and total bytes (cached per run).

    `heap_bytes` covers the table's own forks (main, free space map,
    visibility map), `toast_bytes` the TOAST table with its index, and
    `total_bytes` their sum with the indexes. `heap_main_bytes` and
    `toast_main_bytes` are the main forks alone, which bloat compares with.
    """
    if "sizes" in run.cache:
        return run.cache["sizes"]
    if run.lock_on(relation.all_oids) is None:
        try:
            sizes = run.section("table", lambda conn: _file_sizes(conn, relation))
        except SectionSkipped as skipped:
            run.note_skip("table", skipped.reason + "; sizes fall back to pg_class.relpages", skipped.fix)
            sizes = _catalog_sizes(run.conn, relation)
    else:
        run.note_skip(
            "table",
            f"sizes read from pg_class.relpages (as of the last VACUUM or ANALYZE) without waiting: "
            f"{run.lock_on(relation.all_oids).describe()}",
            "Rerun the report when that command has finished for exact sizes.",
        )
        sizes = _catalog_sizes(run.conn, relation)
    run.cache["sizes"] = sizes
    return sizes


def _file_sizes(conn: Connection, relation: RelationInfo) -> dict[str, Any]:
    row = conn.execute(
        text(
            """
            SELECT pg_total_relation_size(c.oid) AS total_bytes,
                   pg_table_size(c.oid) AS table_bytes,
                   pg_relation_size(c.oid) AS heap_main_bytes,
                   pg_indexes_size(c.oid) AS index_bytes,
                   coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) AS toast_bytes,
                   coalesce(pg_relation_size(nullif(c.reltoastrelid, 0)), 0) AS toast_main_bytes
            FROM pg_catalog.pg_class c WHERE c.oid = :oid
            """
        ),
        {"oid": relation.oid},
    ).mappings().one()
    return {
        "heap_bytes": int(row["table_bytes"]) - int(row["toast_bytes"]),
        "heap_main_bytes": int(row["heap_main_bytes"]),
        "toast_bytes": int(row["toast_bytes"]),
        "toast_main_bytes": int(row["toast_main_bytes"]),
        "index_bytes": int(row["index_bytes"]),
        "total_bytes": int(row["total_bytes"]),
        "size_source": "files",
    }


def _catalog_sizes(conn: Connection, relation: RelationInfo) -> dict[str, Any]:
    row = conn.execute(
        text(
            """
            SELECT coalesce(sum(ic.relpages), 0)::bigint AS index_pages,
                   coalesce((SELECT relpages FROM pg_catalog.pg_class WHERE oid = :toast_index), 0) AS toast_index_pages
            FROM pg_catalog.pg_class ic WHERE ic.oid = ANY(CAST(:indexes AS oid[]))
            """
        ),
        {"indexes": relation.index_oids, "toast_index": relation.toast_index_oid or 0},
    ).mappings().one()
    block = relation.block_size
    heap = max(relation.relpages, 0) * block
    toast_main = max(relation.toast_relpages, 0) * block
    toast = toast_main + int(row["toast_index_pages"]) * block
    index = int(row["index_pages"]) * block
    return {
        "heap_bytes": heap,
        "heap_main_bytes": heap,
        "toast_bytes": toast,
        "toast_main_bytes": toast_main,
        "index_bytes": index,
        "total_bytes": heap + toast + index,
        "size_source": "pg_class.relpages (estimate as of the last VACUUM or ANALYZE)",
    }


def tuple_stats(conn: Connection, relation: RelationInfo) -> dict[str, Any]:
    """Return live and dead tuples, scan counts and maintenance times from `pg_stat_all_tables` (no lock)."""
    row = conn.execute(
        text(
            """
            SELECT s.n_live_tup AS live_tuples, s.n_dead_tup AS dead_tuples,
                   s.n_mod_since_analyze AS modified_since_analyze,
                   s.n_tup_ins AS inserted_tuples, s.n_tup_upd AS updated_tuples,
                   s.n_tup_hot_upd AS hot_updated_tuples, s.n_tup_del AS deleted_tuples,
                   s.seq_scan, s.idx_scan,
                   s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze,
                   s.vacuum_count, s.autovacuum_count, s.analyze_count, s.autoanalyze_count,
                   ts.n_live_tup AS toast_live_chunks, ts.n_dead_tup AS toast_dead_chunks,
                   ts.last_autovacuum AS toast_last_autovacuum
            FROM pg_catalog.pg_stat_all_tables s
            LEFT JOIN pg_catalog.pg_stat_all_tables ts ON ts.relid = CAST(:toast AS oid)
            WHERE s.relid = CAST(:oid AS oid)
            """
        ),
        {"oid": relation.oid, "toast": relation.toast_oid or 0},
    ).mappings().first()
    return plain(row) if row is not None else {}


def table_stats(run: MonitorRun, relation: RelationInfo) -> dict[str, Any]:
    """Return the `table` section: sizes, TOAST share, tuples and vacuum/analyze times."""
    sizes = relation_sizes(run, relation)
    stats = run.section("table", lambda conn: tuple_stats(conn, relation))
    total = sizes["total_bytes"]
    live = stats.get("live_tuples") or 0
    dead = stats.get("dead_tuples") or 0
    result: dict[str, Any] = {
        "relation": relation.quoted,
        **sizes,
        "toast_share": sizes["toast_bytes"] / total if total else None,
        "row_estimate": relation.reltuples if relation.reltuples >= 0 else None,
        "dead_tuple_ratio": dead / (live + dead) if live + dead else None,
        "fillfactor": relation.fillfactor,
        **stats,
    }
    return {key: iso(value) for key, value in result.items()}


def format_bytes(size: float | None) -> str:
    """Return `size` in binary units for messages, for example `1.5 GiB`; `-` for None."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
