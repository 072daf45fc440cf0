"""JSONB: stored sizes of `serialized_content` and the other JSONB columns, and the largest models.

Sizes are `pg_column_size()`: bytes as stored, after compression, read from
the TOAST pointer without detoasting the value. `serialized_content` sizes
come from the model-quality ledger (`content_bytes`, one row per model) when
it was refreshed recently and covers at least 95 % of the table. Its
`ledger_state` row is keyed `schema.table`, unquoted, as the ledger writes it.
Otherwise, and for every other JSONB column, sizes come from a
`TABLESAMPLE SYSTEM` of a bounded number of heap pages, and the result states
the sampled fraction.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.dialects import postgresql

from serialmon.db import names
from serialmon.monitor.sections import MonitorRun, SectionSkipped, iso
from serialmon.monitor.space import (
    RelationInfo,
    chunk_footprint,
    relation_sizes,
    toast_max_chunk_size,
    toast_tuple_target,
)

CONTENT_COLUMN = "serialized_content"
LEDGER_MIN_COVERAGE = 0.95  # share of the table's rows the ledger must hold to be used
LARGEST_MODELS = 10

_quote = postgresql.dialect().identifier_preparer.quote_identifier


def varlena_columns(conn: Connection, relation: RelationInfo) -> list[dict[str, Any]]:
    """Return the table's variable-length columns: name, type, whether JSONB, and whether TOAST may move them."""
    rows = conn.execute(
        text(
            """
            SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
                   a.atttypid = 'pg_catalog.jsonb'::regtype AS is_jsonb,
                   a.attstorage IN ('x', 'e') AS toastable
            FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = CAST(:oid AS oid) AND a.attnum > 0 AND NOT a.attisdropped AND a.attlen = -1
            ORDER BY a.attnum
            """
        ),
        {"oid": relation.oid},
    ).mappings()
    return [dict(row) for row in rows]


def _has_chunk_id_function(conn: Connection) -> bool:
    # pg_column_toast_chunk_id() exists from PostgreSQL 17 on.
    return bool(
        conn.execute(
            text("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE proname = 'pg_column_toast_chunk_id')")
        ).scalar_one()
    )


def _has_model_name(conn: Connection, relation: RelationInfo) -> bool:
    return bool(
        conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = CAST(:oid AS oid) "
                "AND attname = 'model_name' AND NOT attisdropped)"
            ),
            {"oid": relation.oid},
        ).scalar_one()
    )


def _sample_sql(relation: RelationInfo, columns: list[dict[str, Any]], chunk_id: bool, has_name: bool) -> str:
    """Build the sampling statement: one pass over the sampled pages, aggregated in the server.

    Column names come from the catalog and enter the text only as quoted
    identifiers; every value is a bound parameter. For each TOASTed value the
    statement adds up its chunks, `ceil(size / chunk)`, and the page bytes
    they take: full chunks of `:full_chunk_bytes` each plus one last chunk of
    `size - (chunks - 1) * chunk` data bytes (tuple header 24, chunk_id and
    chunk_seq 8, a 1- or 4-byte varlena header, aligned to 8, plus a 4-byte
    line pointer).
    """
    inner = ["(ctid::text::point)[0]::bigint AS page"]
    if has_name:
        inner.append('"model_name"::text AS model_name')
    outer = ["count(*) AS rows", "count(DISTINCT page) AS pages"]
    for index, column in enumerate(columns):
        quoted = _quote(column["name"])
        inner.append(f"pg_column_size({quoted}) AS size_{index}")
        if chunk_id:
            external = f"pg_column_toast_chunk_id({quoted}) IS NOT NULL"
        else:
            external = f"pg_column_size({quoted}) > :inline_max"
        inner.append(f"({external}) AS external_{index}")
        chunks = f"((size_{index} + :chunk - 1) / :chunk)"
        last = f"(size_{index} - ({chunks} - 1) * :chunk)"
        footprint = (
            f"({chunks} - 1) * :full_chunk_bytes "
            f"+ ((32 + CASE WHEN {last} + 1 <= 127 THEN 1 ELSE 4 END + {last} + 7) / 8) * 8 + 4"
        )
        outer += [
            f"count(size_{index}) AS count_{index}",
            f"avg(size_{index}) AS avg_{index}",
            f"min(size_{index}) AS min_{index}",
            f"max(size_{index}) AS max_{index}",
            f"count(*) FILTER (WHERE external_{index}) AS toasted_{index}",
            f"sum({chunks}) FILTER (WHERE external_{index}) AS chunks_{index}",
            f"sum({footprint}) FILTER (WHERE external_{index}) AS chunk_bytes_{index}",
        ]
    names = [column["name"] for column in columns]
    if has_name and CONTENT_COLUMN in names:
        content = f"size_{names.index(CONTENT_COLUMN)}"
        outer.append(
            f"(SELECT json_agg(top) FROM (SELECT model_name, {content} AS content_bytes FROM sampled "
            f"WHERE {content} IS NOT NULL ORDER BY {content} DESC LIMIT :largest) top) AS largest"
        )
    else:
        outer.append("NULL::json AS largest")
    return (
        f"WITH sampled AS MATERIALIZED (SELECT {', '.join(inner)} "
        f"FROM {relation.quoted} TABLESAMPLE SYSTEM (:percent)) "
        f"SELECT {', '.join(outer)} FROM sampled"
    )


def sample_column_sizes(run: MonitorRun, relation: RelationInfo) -> dict[str, Any]:
    """Aggregate stored sizes of every variable-length column over a `TABLESAMPLE SYSTEM` (cached per run).

    Reads about `monitor_sample_pages` heap pages chosen at random, never
    detoasts a value, and aggregates in the server, so the cost does not
    grow with the rows those pages hold. Returns the sampled percent, pages
    and rows; per column the count, average, minimum and maximum stored size
    and the TOASTed values' chunk count and page bytes; and the largest
    sampled models. Raises `SectionSkipped` when the role lacks SELECT or the
    table is locked.
    """
    if "sample" in run.cache:
        return run.cache["sample"]
    if not relation.can_select:
        raise SectionSkipped(
            f"the role may not SELECT from {relation.quoted}, so no sample can be read",
            f"GRANT SELECT ON {relation.quoted} TO <role>.",
        )
    run.require_unlocked([relation.oid])

    sizes = relation_sizes(run, relation)
    heap_pages = max(relation.relpages, sizes["heap_main_bytes"] // relation.block_size, 1)
    percent = min(100.0, 100.0 * run.settings.monitor_sample_pages / heap_pages)
    # NOTE: without pg_column_toast_chunk_id() (before PostgreSQL 17), a value counts as
    # TOASTed when its stored size exceeds TOAST_TUPLE_TARGET; a smaller value that TOAST
    # moved out because several wide columns shared its row is then counted as inline.
    inline_max = toast_tuple_target(relation.block_size)
    chunk = toast_max_chunk_size(relation.block_size)

    def read(conn: Connection) -> dict[str, Any]:
        columns = varlena_columns(conn, relation)
        chunk_id = _has_chunk_id_function(conn)
        statement = _sample_sql(relation, columns, chunk_id, _has_model_name(conn, relation))
        row = conn.execute(
            text(statement),
            {
                "percent": percent,
                "inline_max": inline_max,
                "chunk": chunk,
                "full_chunk_bytes": chunk_footprint(chunk),
                "largest": LARGEST_MODELS,
            },
        ).mappings().one()
        return {"columns": columns, "row": dict(row), "chunk_id": chunk_id}

    raw = run.section("jsonb", read)
    row = raw["row"]
    columns: dict[str, dict[str, Any]] = {}
    for index, column in enumerate(raw["columns"]):
        columns[column["name"]] = {
            "type": column["type"],
            "is_jsonb": column["is_jsonb"],
            "rows": row[f"count_{index}"],
            "null_rows": row["rows"] - row[f"count_{index}"],
            "avg_bytes": iso(row[f"avg_{index}"]),
            "min_bytes": row[f"min_{index}"],
            "max_bytes": row[f"max_{index}"],
            "toasted_rows": row[f"toasted_{index}"],
            "toast_chunks": iso(row[f"chunks_{index}"]) or 0,
            "toast_chunk_bytes": iso(row[f"chunk_bytes_{index}"]) or 0,
        }
    sample = {
        "percent": percent,
        "rows": row["rows"],
        "pages": row["pages"],
        "external_detection": "pg_column_toast_chunk_id" if raw["chunk_id"] else f"stored size > {inline_max} bytes",
        "columns": columns,
        "largest": row["largest"] or [],
    }
    run.cache["sample"] = sample
    return sample


def ledger_content_stats(run: MonitorRun, relation: RelationInfo, table_rows: float) -> dict[str, Any]:
    """Return `serialized_content` sizes from the ledger, or raise `SectionSkipped` saying why it is not used."""
    quoted = names(run.settings)

    def read(conn: Connection) -> dict[str, Any] | None:
        state = conn.execute(
            text(
                f"SELECT refreshed_at, rows_seen, now() - refreshed_at <= make_interval(secs => :fresh_sec) AS fresh "
                f"FROM {quoted.table('ledger_state')} WHERE relation IN (:relation, :quoted) "
                f"ORDER BY refreshed_at DESC NULLS LAST LIMIT 1"
            ),
            {
                "relation": f"{relation.schema}.{relation.name}",
                "quoted": relation.quoted,
                "fresh_sec": run.settings.ledger_fresh_minutes * 60,
            },
        ).mappings().first()
        if state is None or state["refreshed_at"] is None:
            return None
        totals = conn.execute(
            text(
                f"SELECT count(*) AS rows, count(content_bytes) AS sized_rows, avg(content_bytes) AS avg_bytes, "
                f"min(content_bytes) AS min_bytes, max(content_bytes) AS max_bytes, sum(content_bytes) AS total_bytes "
                f"FROM {quoted.table('model_quality')}"
            )
        ).mappings().one()
        largest = conn.execute(
            text(
                f"SELECT model_name, content_bytes FROM {quoted.table('model_quality')} "
                f"WHERE content_bytes IS NOT NULL ORDER BY content_bytes DESC LIMIT :limit"
            ),
            {"limit": LARGEST_MODELS},
        ).mappings().all()
        return {"state": dict(state), "totals": dict(totals), "largest": [dict(row) for row in largest]}

    ledger = run.section("jsonb", read)
    if ledger is None:
        raise SectionSkipped(
            f"the model-quality ledger has never been refreshed for {relation.quoted}",
            "Run the ledger refresh so that sizes come from every row instead of a sample.",
        )
    state, totals = ledger["state"], ledger["totals"]
    coverage = totals["rows"] / table_rows if table_rows > 0 else 1.0
    if not state["fresh"]:
        raise SectionSkipped(
            f"the ledger was last refreshed at {iso(state['refreshed_at'])}, "
            f"more than {run.settings.ledger_fresh_minutes:g} minutes ago"
        )
    if coverage < LEDGER_MIN_COVERAGE:
        raise SectionSkipped(f"the ledger covers {coverage:.0%} of the table's rows, under {LEDGER_MIN_COVERAGE:.0%}")
    return {
        "source": "ledger",
        "rows": totals["sized_rows"],
        "coverage": coverage,
        "refreshed_at": iso(state["refreshed_at"]),
        "avg_bytes": iso(totals["avg_bytes"]),
        "min_bytes": iso(totals["min_bytes"]),
        "max_bytes": iso(totals["max_bytes"]),
        "total_bytes": iso(totals["total_bytes"]),
        "largest_models": [{key: iso(value) for key, value in row.items()} for row in ledger["largest"]],
    }


def jsonb_stats(run: MonitorRun, relation: RelationInfo, table_rows: float) -> dict[str, Any]:
    """Return the `jsonb` section.

    Keys: `serialized_content` (source `ledger` or `sample`, with avg/min/max
    and total stored bytes), `columns` (the other JSONB columns, from the
    sample), `largest_models`, `sample` (percent, pages and rows read, or why
    no sample was taken) and `notes` (why the ledger was not used).
    """
    notes: list[str] = []
    content: dict[str, Any] | None = None
    try:
        content = ledger_content_stats(run, relation, table_rows)
    except SectionSkipped as skipped:
        notes.append(f"ledger not used: {skipped.reason}")

    sample: dict[str, Any] | None = None
    sample_info: dict[str, Any]
    try:
        sample = sample_column_sizes(run, relation)
        sample_info = {"percent": sample["percent"], "pages": sample["pages"], "rows": sample["rows"]}
    except SectionSkipped as skipped:
        run.note_skip("jsonb", f"sample not taken: {skipped.reason}", skipped.fix)
        sample_info = {"available": False, "reason": skipped.reason, "fix": skipped.fix}

    columns: dict[str, Any] = {}
    if sample is not None:
        for name, column in sample["columns"].items():
            if not column["is_jsonb"]:
                continue
            non_null_share = column["rows"] / sample["rows"] if sample["rows"] else 0.0
            estimated_total = (
                column["avg_bytes"] * non_null_share * table_rows if column["avg_bytes"] is not None else None
            )
            columns[name] = {
                "source": "sample",
                "rows": column["rows"],
                "null_rows": column["null_rows"],
                "avg_bytes": column["avg_bytes"],
                "min_bytes": column["min_bytes"],
                "max_bytes": column["max_bytes"],
                "total_bytes": round(estimated_total) if estimated_total is not None else None,
                "total_is_estimate": True,
                "toasted_rows": column["toasted_rows"],
            }

    if content is None and CONTENT_COLUMN in columns:
        content = {**columns[CONTENT_COLUMN], "largest_models": sample["largest"] if sample else []}
    columns.pop(CONTENT_COLUMN, None)
    if content is None:
        content = {"available": False, "reason": "; ".join(notes + [sample_info.get("reason", "")]).strip("; ")}

    return {
        CONTENT_COLUMN: content,
        "columns": columns,
        "largest_models": content.get("largest_models", []),
        "sample": sample_info,
        "notes": notes,
    }


def estimated_rows(relation: RelationInfo, live_tuples: int | None) -> float:
    """Return the best row count without a scan: live tuples from statistics, else `reltuples`."""
    if live_tuples:
        return float(live_tuples)
    return relation.reltuples if relation.reltuples > 0 and not math.isnan(relation.reltuples) else 0.0
