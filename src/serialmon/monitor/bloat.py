"""Bloat: wasted space in the table, its TOAST table and its B-tree indexes.

The estimate reads no table page beyond the JSONB sample. It compares each
relation's size with the size its live rows need:

- Heap: live tuples (`n_live_tup`) times the on-page tuple width from
  `pg_stats.avg_width`. For a TOASTed value that width is the 18-byte TOAST
  pointer, which is what the heap really holds, so the heap part is right.
- TOAST: live chunks of the TOAST table (its own `n_live_tup`, which every
  insert and delete of a chunk updates) times the average chunk footprint.
  The footprint comes from the stored sizes of TOASTed values in the JSONB
  sample: each value is cut into chunks of `TOAST_MAX_CHUNK_SIZE` (1996 bytes
  on 8 kB pages) with one shorter last chunk.

The classic estimate (check_postgres, and ioguix's query that many tools
use) gets TOAST-heavy tables wrong. It counts TOAST chunks from the TOAST
table's `pg_class.reltuples`, which only VACUUM sets because ANALYZE never
visits TOAST tables. After a bulk load that count is -1 or 0, and later it
is stale, so TOAST pages count as bloat. It also assumes four chunks per page.

The exact measurement (`exact=True`) runs `pgstattuple_approx()` on the heap,
`pgstattuple()` on the TOAST table and `pgstatindex()` on B-tree indexes. It
reads every page of those relations (pgstattuple_approx skips pages that the
visibility map marks all-visible), so it costs a full read of the table.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Connection, text

from serialmon.monitor.indexes import index_sizes
from serialmon.monitor.jsonb import sample_column_sizes
from serialmon.monitor.sections import MonitorRun, SectionSkipped, iso
from serialmon.monitor.space import (
    RelationInfo,
    chunk_footprint,
    maxalign,
    relation_sizes,
    toast_max_chunk_size,
    tuple_stats,
)

PAGE_HEADER = 24  # SizeOfPageHeaderData
LINE_POINTER = 4  # sizeof(ItemIdData)
HEAP_TUPLE_HEADER = 23  # SizeofHeapTupleHeader, before alignment
BTREE_SPECIAL = 16  # BTPageOpaqueData at the end of every B-tree page
INDEX_TUPLE_HEADER = 8  # IndexTupleData
BTREE_DEFAULT_FILLFACTOR = 90


def _column_widths(conn: Connection, relation: RelationInfo) -> list[dict[str, Any]]:
    rows = conn.execute(
        text(
            """
            SELECT a.attname AS name, s.null_frac, s.avg_width
            FROM pg_catalog.pg_attribute a
            LEFT JOIN pg_catalog.pg_stats s
              ON s.schemaname = :schema AND s.tablename = :table AND s.attname = a.attname AND NOT s.inherited
            WHERE a.attrelid = CAST(:oid AS oid) AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum
            """
        ),
        {"schema": relation.schema, "table": relation.name, "oid": relation.oid},
    ).mappings()
    return [dict(row) for row in rows]



def _waste(actual_bytes: int, expected_pages: int, block_size: int) -> dict[str, Any]:
    """Return size, expected size, wasted bytes (whole pages beyond the expected ones) and bloat percent."""
    actual_pages = actual_bytes // block_size
    wasted = max(actual_pages - expected_pages, 0) * block_size
    return {
        "size_bytes": actual_bytes,
        "expected_bytes": expected_pages * block_size,
        "wasted_bytes": wasted,
        "bloat_percent": _percent(wasted, actual_bytes) or 0.0,
    }

def _percent(wasted: float, size: float) -> float | None:
    return round(100.0 * wasted / size, 2) if size > 0 else None


def _heap_estimate(relation: RelationInfo, widths: list[dict[str, Any]], live: float, actual_bytes: int) -> dict[str, Any]:
    missing = [column["name"] for column in widths if column["avg_width"] is None]
    if missing:
        raise SectionSkipped(
            f"no pg_stats for column(s) {', '.join(missing)} (never analyzed, or not readable by this role)",
            f"Run ANALYZE {relation.quoted}; (autovacuum also does it after enough changes).",
        )
    data_width = sum((1.0 - float(column["null_frac"])) * column["avg_width"] for column in widths)
    has_nulls = any(float(column["null_frac"]) > 0 for column in widths)
    header = maxalign(HEAP_TUPLE_HEADER + (math.ceil(len(widths) / 8) if has_nulls else 0))
    tuple_bytes = maxalign(math.ceil(header + data_width)) + LINE_POINTER
    usable = (relation.block_size - PAGE_HEADER) * relation.fillfactor / 100.0
    # Tuples do not split across pages: on average half a tuple's room stays empty per page.
    per_page = max((usable - tuple_bytes / 2.0) / tuple_bytes, 1.0)
    expected_pages = math.ceil(live / per_page) if live > 0 else 0
    return {
        **_waste(actual_bytes, expected_pages, relation.block_size),
        "live_tuples": live,
        "tuple_bytes": tuple_bytes,
    }


def _toast_estimate(
    run: MonitorRun, relation: RelationInfo, stats: dict[str, Any], actual_bytes: int
) -> dict[str, Any]:
    live_chunks = stats.get("toast_live_chunks")
    chunk_source = "pg_stat_all_tables.n_live_tup of the TOAST table"
    if not live_chunks and actual_bytes > relation.block_size:
        if relation.toast_reltuples > 0:
            live_chunks, chunk_source = relation.toast_reltuples, "pg_class.reltuples of the TOAST table (last VACUUM)"
        else:
            raise SectionSkipped(
                "the TOAST table's live chunk count is unknown (statistics were reset and it was never vacuumed)",
                f"Run VACUUM {relation.quoted}; or use the exact measurement.",
            )
    live_chunks = float(live_chunks or 0)

    chunks, page_bytes, values = 0, 0, 0
    notes = []
    try:
        sample = sample_column_sizes(run, relation)
        for column in sample["columns"].values():
            chunks += column["toast_chunks"]
            page_bytes += column["toast_chunk_bytes"]
            values += column["toasted_rows"]
    except SectionSkipped as skipped:
        notes.append(f"no sample ({skipped.reason}); every chunk is assumed full, which under-reports bloat")
    if chunks:
        footprint = page_bytes / chunks
        footprint_source = f"{values} TOASTed values in the sample"
    else:
        footprint = float(chunk_footprint(toast_max_chunk_size(relation.block_size)))
        footprint_source = "full chunks (no TOASTed value in the sample)"

    expected_pages = math.ceil(live_chunks * footprint / (relation.block_size - PAGE_HEADER))
    return {
        **_waste(actual_bytes, expected_pages, relation.block_size),
        "live_chunks": live_chunks,
        "live_chunks_source": chunk_source,
        "chunk_footprint_bytes": round(footprint, 1),
        "chunk_footprint_source": footprint_source,
        "notes": notes,
    }


def _index_estimates(
    run: MonitorRun, relation: RelationInfo, widths: list[dict[str, Any]], live: float
) -> list[dict[str, Any]]:
    width_by_name = {column["name"]: column for column in widths}

    def read(conn: Connection) -> list[dict[str, Any]]:
        rows = conn.execute(
            text(
                """
                SELECT i.indexrelid::bigint AS oid, ic.relname AS name, am.amname AS method,
                       i.indpred IS NOT NULL AS partial, i.indexprs IS NOT NULL AS expression,
                       ic.relpages, ic.reltuples,
                       coalesce((SELECT option_value::int FROM pg_catalog.pg_options_to_table(ic.reloptions)
                                 WHERE option_name = 'fillfactor'), :default_ff) AS fillfactor,
                       ARRAY(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(attnum, position)
                             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                             ORDER BY k.position) AS columns
                FROM pg_catalog.pg_index i
                JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                JOIN pg_catalog.pg_am am ON am.oid = ic.relam
                WHERE i.indrelid = CAST(:oid AS oid)
                ORDER BY ic.relname
                """
            ),
            {"oid": relation.oid, "default_ff": BTREE_DEFAULT_FILLFACTOR},
        ).mappings()
        return [dict(row) for row in rows]

    results = []
    rows = run.section("bloat", read)
    sizes = index_sizes(run, rows, relation.block_size)
    for index in rows:
        entry: dict[str, Any] = {"name": index["name"], "method": index["method"]}
        size, entry["size_source"] = sizes[index["oid"]]
        entry["size_bytes"] = size
        if index["method"] != "btree" or index["expression"]:
            entry.update(estimated=False, reason=f"no width model for {index['method']} or expression indexes")
            results.append(entry)
            continue
        columns = [width_by_name.get(name) for name in index["columns"]]
        if any(column is None or column["avg_width"] is None for column in columns):
            entry.update(estimated=False, reason="no pg_stats for the indexed columns")
            results.append(entry)
            continue
        entries = float(index["reltuples"]) if index["partial"] else live
        data_width = sum((1.0 - float(column["null_frac"])) * column["avg_width"] for column in columns)
        has_nulls = any(float(column["null_frac"]) > 0 for column in columns)
        header = maxalign(INDEX_TUPLE_HEADER + (4 if has_nulls else 0))
        tuple_bytes = maxalign(math.ceil(header + data_width)) + LINE_POINTER
        usable = (relation.block_size - PAGE_HEADER - BTREE_SPECIAL) * index["fillfactor"] / 100.0
        leaf_pages = math.ceil(max(entries, 0) * tuple_bytes / usable)
        # One metapage plus the inner levels, which hold one downlink per page below.
        inner_pages = math.ceil(leaf_pages * tuple_bytes / usable) if leaf_pages > 1 else 0
        expected = (1 + leaf_pages + inner_pages) * relation.block_size
        wasted = max(size - expected, 0)
        entry.update(
            estimated=True,
            expected_bytes=expected,
            wasted_bytes=wasted,
            bloat_percent=_percent(wasted, size) or 0.0,
        )
        results.append(entry)
    return results


def estimate_bloat(run: MonitorRun, relation: RelationInfo) -> dict[str, Any]:
    """Return the scan-free bloat estimate of heap, TOAST table and B-tree indexes.

    `table` combines heap and TOAST (`wasted_bytes`, `bloat_percent` of their
    main forks); parts that cannot be estimated carry `available: False` and
    a reason instead. Cached per run, because the alert rules reuse it.
    """
    if "bloat_estimate" in run.cache:
        return run.cache["bloat_estimate"]
    sizes = relation_sizes(run, relation)
    stats = run.section("bloat", lambda conn: tuple_stats(conn, relation))
    widths = run.section("bloat", lambda conn: _column_widths(conn, relation))
    live = float(stats.get("live_tuples") or 0) or max(relation.reltuples, 0.0)

    parts: dict[str, Any] = {}
    try:
        parts["heap"] = _heap_estimate(relation, widths, live, sizes["heap_main_bytes"])
    except SectionSkipped as skipped:
        parts["heap"] = {"available": False, "reason": skipped.reason, "fix": skipped.fix}
    if relation.toast_oid:
        try:
            parts["toast"] = _toast_estimate(run, relation, stats, sizes["toast_main_bytes"])
        except SectionSkipped as skipped:
            parts["toast"] = {"available": False, "reason": skipped.reason, "fix": skipped.fix}

    estimated = [part for part in parts.values() if "wasted_bytes" in part]
    wasted = sum(part["wasted_bytes"] for part in estimated)
    size = sum(part["size_bytes"] for part in estimated)
    table = {
        **parts,
        "wasted_bytes": wasted if estimated else None,
        "size_bytes": size,
        "bloat_percent": (_percent(wasted, size) or 0.0) if estimated else None,
        "complete": len(estimated) == len(parts),
        "size_source": sizes["size_source"],
    }
    try:
        indexes = _index_estimates(run, relation, widths, live)
    except SectionSkipped as skipped:
        indexes = [{"available": False, "reason": skipped.reason, "fix": skipped.fix}]
    run.cache["bloat_estimate"] = {"table": table, "indexes": indexes}
    return run.cache["bloat_estimate"]


def _exact(run: MonitorRun, relation: RelationInfo) -> dict[str, Any]:
    run.require_unlocked(relation.all_oids)

    def read(conn: Connection) -> dict[str, Any]:
        functions = set(
            conn.execute(
                text(
                    "SELECT proname FROM pg_catalog.pg_proc "
                    "WHERE proname IN ('pgstattuple', 'pgstattuple_approx', 'pgstatindex')"
                )
            ).scalars()
        )
        if "pgstattuple" not in functions:
            raise SectionSkipped(
                "the pgstattuple extension is not installed",
                "CREATE EXTENSION pgstattuple; (serialmon init does this where the role may).",
            )
        result: dict[str, Any] = {}
        if "pgstattuple_approx" in functions:
            heap = conn.execute(
                text(
                    "SELECT table_len, scanned_percent, approx_tuple_count AS tuple_count, approx_tuple_len AS tuple_len, "
                    "dead_tuple_count, dead_tuple_len, approx_free_space AS free_space "
                    "FROM pgstattuple_approx(CAST(:oid AS oid)::regclass)"
                ),
                {"oid": relation.oid},
            ).mappings().one()
            result["heap"] = {**dict(heap), "function": "pgstattuple_approx"}
        else:
            result["heap"] = {**_pgstattuple(conn, relation.oid), "function": "pgstattuple"}
        if relation.toast_oid:
            result["toast"] = {**_pgstattuple(conn, relation.toast_oid), "function": "pgstattuple"}
        indexes = []
        for oid, name in conn.execute(
            text(
                "SELECT i.indexrelid::bigint, ic.relname FROM pg_catalog.pg_index i "
                "JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid JOIN pg_catalog.pg_am am ON am.oid = ic.relam "
                "WHERE i.indrelid = CAST(:oid AS oid) AND am.amname = 'btree' AND i.indisvalid ORDER BY ic.relname"
            ),
            {"oid": relation.oid},
        ).all():
            row = conn.execute(
                text(
                    "SELECT index_size, leaf_pages, avg_leaf_density, leaf_fragmentation "
                    "FROM pgstatindex(CAST(:oid AS oid)::regclass)"
                ),
                {"oid": oid},
            ).mappings().one()
            indexes.append({"name": name, **{key: iso(value) for key, value in row.items()}, "function": "pgstatindex"})
        result["indexes"] = indexes
        return result

    result = run.section("bloat", read, timeout_ms=run.settings.monitor_exact_timeout_ms)
    for part in ("heap", "toast"):
        if part in result:
            measured = {key: iso(value) for key, value in result[part].items()}
            wasted = (measured["dead_tuple_len"] or 0) + (measured["free_space"] or 0)
            measured["wasted_bytes"] = wasted
            measured["bloat_percent"] = _percent(wasted, measured["table_len"]) or 0.0
            result[part] = measured
    measured_parts = [result[part] for part in ("heap", "toast") if part in result]
    wasted = sum(part["wasted_bytes"] for part in measured_parts)
    size = sum(part["table_len"] for part in measured_parts)
    result["table"] = {"wasted_bytes": wasted, "size_bytes": size, "bloat_percent": _percent(wasted, size) or 0.0}
    return result


def bloat(run: MonitorRun, relation: RelationInfo, exact: bool = False) -> dict[str, Any]:
    """Return the `bloat` section: `estimate`, and `exact` when requested (else its cost, to decide).

    Wasted bytes count dead tuples plus free space beyond what the live rows
    need; percentages are of the relation's main fork.
    """
    sizes = relation_sizes(run, relation)
    result: dict[str, Any] = {
        "method": "estimate: live tuples x on-page width (heap), live chunks x chunk footprint (TOAST)",
        "estimate": estimate_bloat(run, relation),
        "exact_cost": (
            f"--exact-bloat reads every page of the table ({sizes['heap_main_bytes']} bytes), "
            f"its TOAST table ({sizes['toast_main_bytes']} bytes) and its B-tree indexes"
        ),
    }
    if exact:
        try:
            result["exact"] = _exact(run, relation)
        except SectionSkipped as skipped:
            run.note_skip("bloat", f"exact measurement: {skipped.reason}", skipped.fix)
            result["exact"] = {"available": False, "reason": skipped.reason, "fix": skipped.fix}
    return result


def _pgstattuple(conn: Connection, oid: int) -> dict[str, Any]:
    row = conn.execute(
        text(
            "SELECT table_len, tuple_count, tuple_len, dead_tuple_count, dead_tuple_len, free_space "
            "FROM pgstattuple(CAST(:oid AS oid)::regclass)"
        ),
        {"oid": oid},
    ).mappings().one()
    return dict(row)
