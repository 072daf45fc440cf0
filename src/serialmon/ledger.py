"""The model-quality ledger: a narrow copy of each monitored row's quality, refreshed incrementally.

`serialized_content` can be megabytes per row, so dashboards and alerts never
read it. `refresh_ledger()` keeps `model_quality` (one row per row of the
monitored table) up to date and detoasts only the rows that are new or changed
since the last refresh:

- Change detection compares each row's `xmin` (the id of the transaction that
  wrote this row version) with the `row_version` stored in the ledger. It is
  one pass over the heap of the monitored table, which never touches its TOAST
  relation and needs no trigger and no change to the table. The changed rows
  are then read by primary key, in chunks.
- With `ledger_change_check = "statistics"`, a refresh skips that pass while
  the table's cumulative insert, update and delete counters and its file node
  are the ones seen at the last pass, and the last pass is younger than
  `ledger_full_check_sec`. A writing session publishes its counters at most
  once a second, so a change can wait that long. When the session goes idle
  right after its commit, the wait is up to 10 s, and 60 s at most
  (PostgreSQL 15+, pgstat.c: PGSTAT_MIN_INTERVAL, PGSTAT_IDLE_INTERVAL,
  PGSTAT_MAX_INTERVAL). The collector of PostgreSQL 13-14 may drop counts, so
  there a change can wait up to `ledger_full_check_sec`.
- For a changed row, the server sends only the quality part of the content:
  `serialization_quality`, the legacy top-level `element_coverage`, and, when
  coverage is not stored, the `features` array reduced to `type_id`, `type` and
  whether the element tree has elements. `parse_quality()` then reads that small
  document, so the quality rules live in one place.
- The monitored table is read in a READ ONLY, REPEATABLE READ transaction of
  its own; the ledger is written on another connection, one transaction per
  chunk, so a large backlog streams with bounded memory and a refresh that is
  interrupted keeps the chunks it committed.
- Concurrent refreshes of one ledger serialise on an advisory lock: a second
  refresh waits up to `lock_wait_sec`, then returns `skipped=True`.

NOTE: `xmin` is a 32-bit transaction id. A row rewritten exactly 2^32
transactions after its previous version would keep its old ledger entry until
its next change; no other case misses a change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, text
from sqlalchemy.exc import SQLAlchemyError

from serialmon.config import Settings, get_settings
from serialmon.db import Names, connect, names, read_only_connection
from serialmon.errors import MissingTable
from serialmon.quality import Quality, parse_quality

logger = logging.getLogger(__name__)

CHUNK_SIZE = 2_000  # rows per streamed chunk and per ledger write transaction
_CHUNK_MAX = 100_000
_LOCK_WAIT_MAX_SEC = 3_600.0
_LOCK_CLASS = 0x5E41A2  # first key of the ledger's advisory lock; the second is a hash of the ledger's name
_LOCK_POLL_SEC = 0.05

ProgressCallback = Callable[[int, int], None]

# A small value of the same JSON type, so that `parse_quality` gives the same
# reason for a wrong type without the server sending the value itself.
_PLACEHOLDERS: dict[str, Any] = {"object": {}, "array": [], "string": "", "number": 0, "boolean": False, "null": None}


@dataclass
class RefreshResult:
    """Outcome of one `refresh_ledger()` call."""

    relation: str  # the monitored table, as schema.table
    skipped: bool = False  # another refresh held the lock for longer than lock_wait_sec
    rows_read: int = 0  # new or changed rows read from the monitored table
    inserted: int = 0  # ledger rows added
    updated: int = 0  # ledger rows replaced because their row changed
    deleted: int = 0  # ledger rows removed because their row was deleted
    quality_unknown: int = 0  # rows read whose quality could not be read
    ledger_rows: int = 0  # ledger rows after the refresh
    rebuilt: bool = False  # the ledger was emptied first because it described another table
    full_check: bool = False  # the heap pass ran (False when the statistics showed no change)
    refreshed_at: datetime | None = None  # snapshot time of the read; later changes wait for the next refresh
    duration_sec: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return the result as JSON-serialisable values."""
        values = asdict(self)
        values["refreshed_at"] = self.refreshed_at.isoformat() if self.refreshed_at else None
        return values


# SQL. `{models}` and the ledger tables are quoted identifiers from `serialmon.db.names`.

_RELATION_ID_SQL = "SELECT CAST(to_regclass(:relation) AS oid) AS relid"

_STATE_SQL = "SELECT refreshed_at, rows_seen, details FROM {ledger_state} WHERE relation = :relation"

_CLEAR_SQL = "DELETE FROM {model_quality}"

_START_STATE_SQL = """
    INSERT INTO {ledger_state} AS s (relation, refreshed_at, rows_seen, details)
    VALUES (:relation, NULL, 0, CAST(:details AS jsonb))
    ON CONFLICT (relation) DO UPDATE SET refreshed_at = NULL, rows_seen = 0, details = excluded.details
"""

# Runs in the transaction of each chunk, so `rows_seen` stays exact even when a
# refresh stops halfway.
_COUNT_ROWS_SQL = "UPDATE {ledger_state} SET rows_seen = rows_seen + :added WHERE relation = :relation"

_SAVE_STATE_SQL = """
    UPDATE {ledger_state}
    SET refreshed_at = :refreshed_at, details = CAST(:details AS jsonb)
    WHERE relation = :relation
    RETURNING rows_seen
"""

# The table's cumulative statistics: when none of these moved, no row was
# inserted, updated, deleted or truncated (TRUNCATE gives a new file node).
_COUNTERS_SQL = """
    SELECT
        now() AS read_at,
        current_setting('track_counts') = 'on' AS tracked,
        pg_stat_get_tuples_inserted(CAST(:relid AS oid)) AS inserted,
        pg_stat_get_tuples_updated(CAST(:relid AS oid)) AS updated,
        pg_stat_get_tuples_deleted(CAST(:relid AS oid)) AS deleted,
        pg_relation_filenode(CAST(:relid AS oid)) AS filenode
"""

# One pass over the heap of the monitored table and the ledger: the ids of
# rows that are new or changed (model_id) and of ledger rows whose row is gone
# (deleted_id).
_CHANGED_IDS_SQL = """
    SELECT m.id AS model_id, CASE WHEN m.id IS NULL THEN q.model_id END AS deleted_id
    FROM {models} AS m
    FULL JOIN {model_quality} AS q ON q.model_id = m.id
    WHERE m.id IS NULL OR q.model_id IS NULL OR q.row_version <> m.xmin::text
"""

# The rows with the given ids and the quality part of their content. The inner
# query detoasts `serialized_content` once per row (`#> '{{}}'` returns the
# whole document) and OFFSET 0 keeps it a separate step, so the expressions
# outside reuse that value instead of detoasting it again for each of them.
_ROWS_BY_ID_SQL = """
    SELECT
        d.id, d.row_version, d.model_name, d.model_type, d.category, d.feature_count,
        d.created_at, d.updated_at, d.content_bytes,
        jsonb_typeof(d.content) AS content_kind,
        CASE WHEN jsonb_typeof(d.content) = 'string' THEN d.content #>> '{{}}' END AS content_text,
        d.content -> 'serialization_quality' AS serialization_quality,
        CASE WHEN jsonb_typeof(d.content) = 'object' THEN d.content ? 'element_coverage' END
            AS has_element_coverage,
        d.content -> 'element_coverage' AS element_coverage,
        jsonb_typeof(d.content -> 'features') AS features_kind,
        CASE WHEN jsonb_typeof(d.content -> 'features') = 'array'
              AND coalesce(jsonb_typeof(d.content -> 'serialization_quality' -> 'element_coverage'), 'null') = 'null'
        THEN (
            SELECT coalesce(jsonb_agg(
                CASE jsonb_typeof(f.feature)
                    WHEN 'object' THEN jsonb_build_object(
                        'type_id', f.feature -> 'type_id',
                        'type', f.feature -> 'type',
                        'element_tree', CASE WHEN jsonb_typeof(f.feature -> 'element_tree') = 'object'
                            THEN jsonb_build_object(
                                'element_count', f.feature -> 'element_tree' -> 'element_count',
                                'elements', CASE
                                    WHEN jsonb_typeof(f.feature -> 'element_tree' -> 'elements') <> 'array' THEN NULL
                                    WHEN jsonb_array_length(f.feature -> 'element_tree' -> 'elements') > 0
                                        THEN CAST('[true]' AS jsonb)
                                    ELSE CAST('[]' AS jsonb)
                                END)
                        END)
                    WHEN 'array' THEN CAST('[]' AS jsonb)
                    WHEN 'string' THEN CAST('""' AS jsonb)
                    WHEN 'number' THEN CAST('0' AS jsonb)
                    WHEN 'boolean' THEN CAST('false' AS jsonb)
                    ELSE CAST('null' AS jsonb)
                END ORDER BY f.position), CAST('[]' AS jsonb))
            FROM jsonb_array_elements(d.content -> 'features') WITH ORDINALITY AS f(feature, position)
        ) END AS features
    FROM (
        SELECT
            m.id, m.xmin::text AS row_version, m.model_name, m.model_type, m.category, m.feature_count,
            m.created_at, m.updated_at,
            pg_column_size(m.serialized_content) AS content_bytes,
            m.serialized_content #> '{{}}' AS content
        FROM {models} AS m
        WHERE m.id = ANY(CAST(:ids AS integer[]))
        OFFSET 0
    ) AS d
"""

_UPSERT_SQL = """
    INSERT INTO {model_quality} AS q (
        model_id, model_name, model_type, category, feature_count, row_version,
        quality_known, quality_reason, quality_source, total_features, features_with_elements,
        element_coverage, group_features, analysis_features, recoverable_unknown, unrecoverable_unknown,
        content_bytes, model_created_at, model_updated_at, refreshed_at)
    SELECT
        r.model_id, r.model_name, r.model_type, r.category, r.feature_count, r.row_version,
        r.quality_known, r.quality_reason, r.quality_source, r.total_features, r.features_with_elements,
        r.element_coverage, r.group_features, r.analysis_features, r.recoverable_unknown, r.unrecoverable_unknown,
        r.content_bytes, r.model_created_at, r.model_updated_at, now()
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
        model_id integer, model_name varchar(255), model_type varchar(50), category varchar(100),
        feature_count integer, row_version text, quality_known boolean, quality_reason text,
        quality_source varchar(30), total_features integer, features_with_elements integer,
        element_coverage float8, group_features integer, analysis_features integer,
        recoverable_unknown integer, unrecoverable_unknown integer, content_bytes bigint,
        model_created_at timestamp, model_updated_at timestamp)
    ON CONFLICT (model_id) DO UPDATE SET
        model_name = excluded.model_name, model_type = excluded.model_type, category = excluded.category,
        feature_count = excluded.feature_count, row_version = excluded.row_version,
        quality_known = excluded.quality_known, quality_reason = excluded.quality_reason,
        quality_source = excluded.quality_source, total_features = excluded.total_features,
        features_with_elements = excluded.features_with_elements, element_coverage = excluded.element_coverage,
        group_features = excluded.group_features, analysis_features = excluded.analysis_features,
        recoverable_unknown = excluded.recoverable_unknown, unrecoverable_unknown = excluded.unrecoverable_unknown,
        content_bytes = excluded.content_bytes, model_created_at = excluded.model_created_at,
        model_updated_at = excluded.model_updated_at, refreshed_at = excluded.refreshed_at
    RETURNING (xmax = 0) AS inserted
"""

_DELETE_SQL = "DELETE FROM {model_quality} WHERE model_id = ANY(CAST(:ids AS integer[]))"

_TRY_LOCK_SQL = "SELECT pg_try_advisory_lock(CAST(:lock_class AS integer), hashtext(:lock_name))"
_UNLOCK_SQL = "SELECT pg_advisory_unlock(CAST(:lock_class AS integer), hashtext(:lock_name))"


def _sql(statement: str, quoted: Names) -> Any:
    # A colon inside a quoted identifier would otherwise read as a bind parameter.
    return text(
        statement.format(
            models=quoted.models.replace(":", "\\:"),
            model_quality=quoted.table("model_quality").replace(":", "\\:"),
            ledger_state=quoted.table("ledger_state").replace(":", "\\:"),
        )
    )


def relation_name(settings: Settings) -> str:
    """Return the monitored table as `schema.table`, the key of its row in `ledger_state`."""
    return f"{settings.models_schema}.{settings.models_table}"


def refresh_ledger(
    settings: Settings | None = None,
    *,
    progress: ProgressCallback | None = None,
    chunk_size: int = CHUNK_SIZE,
    lock_wait_sec: float = 5.0,
) -> RefreshResult:
    """Bring `model_quality` up to date with the monitored table; blocking, safe to call often.

    Reads only rows that are new or changed since the last refresh (cheap when
    nothing changed) and removes ledger rows whose row was deleted. Calls
    `progress(done, total)` with row counts before the first chunk and after
    each one. A row whose quality cannot be read is stored with
    `quality_known = false` and the reason; it never stops the refresh.

    Returns a `RefreshResult`; `skipped=True` when another refresh held the
    lock for `lock_wait_sec` seconds. Raises `ValueError` for a bad
    `chunk_size` or `lock_wait_sec`, `MissingTable` when the monitored table
    does not exist, `DatabaseUnavailable` when the database cannot be reached,
    and SQLAlchemy errors for other database failures.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 1 <= chunk_size <= _CHUNK_MAX:
        raise ValueError(f"chunk_size {chunk_size!r} is out of range: expected an integer from 1 to {_CHUNK_MAX}")
    if not 0 <= lock_wait_sec <= _LOCK_WAIT_MAX_SEC:
        raise ValueError(f"lock_wait_sec {lock_wait_sec!r} is out of range: expected 0 to {_LOCK_WAIT_MAX_SEC:g}")
    settings = settings or get_settings()
    quoted = names(settings)
    result = RefreshResult(relation=relation_name(settings))
    lock_name = f"{settings.state_schema}/{result.relation}"
    started = time.monotonic()

    with _writer_connection(settings) as writer:
        if not _try_lock(writer, lock_name, lock_wait_sec):
            result.skipped = True
            logger.info("ledger refresh of %s skipped: another refresh has the lock", result.relation)
            return result
        try:
            _refresh_locked(settings, quoted, writer, result, progress, chunk_size)
        finally:
            _unlock(writer, lock_name)

    result.duration_sec = time.monotonic() - started
    if result.rows_read or result.deleted:
        logger.info(
            "ledger of %s refreshed: %d rows read (%d new, %d changed, %d quality unknown), %d deleted, in %.2f s",
            result.relation, result.rows_read, result.inserted, result.updated, result.quality_unknown,
            result.deleted, result.duration_sec,
        )
    return result


def _refresh_locked(
    settings: Settings,
    quoted: Names,
    writer: Connection,
    result: RefreshResult,
    progress: ProgressCallback | None,
    chunk_size: int,
) -> None:
    relid = writer.execute(text(_RELATION_ID_SQL), {"relation": quoted.models}).scalar_one()
    if relid is None:
        raise MissingTable(
            f"The monitored table {result.relation} does not exist.",
            "Set SERIALMON_MODELS_SCHEMA / SERIALMON_MODELS_TABLE, or run `serialmon init --create-models-table`.",
        )
    previous = _load_state(writer, quoted, result, relid)
    # Read before the snapshot of the pass, so that a change counted after this
    # read is either seen by the pass or makes the counters differ next time.
    counters = writer.execute(text(_COUNTERS_SQL), {"relid": relid}).one()
    writer.commit()
    signature = [counters.inserted, counters.updated, counters.deleted, counters.filenode]

    if _unchanged_since_last_pass(settings, previous, counters, signature):
        result.refreshed_at = counters.read_at
        if progress is not None:
            progress(0, 0)
        _save_state(writer, quoted, result, {**previous, "refresh": _summary(result)})
        return

    result.full_check = True
    with read_only_connection(settings) as reader:
        # One snapshot, taken by the first query, for the pass and for reading the rows it found.
        reader.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        result.refreshed_at = reader.execute(text("SELECT now()")).scalar_one()
        changed_ids, deleted_ids = _changed_ids(reader, quoted, result, chunk_size)
        if progress is not None:
            progress(0, len(changed_ids))
        if changed_ids:
            _copy_rows(reader, writer, quoted, result, progress, changed_ids, chunk_size)
    if deleted_ids:
        _delete_rows(writer, quoted, result, deleted_ids, chunk_size)

    details = {
        "relid": relid,
        "counters": signature,
        "checked_at": result.refreshed_at.isoformat(),
        "refresh": _summary(result),
    }
    _save_state(writer, quoted, result, details)


def _summary(result: RefreshResult) -> dict[str, Any]:
    keys = ("rows_read", "inserted", "updated", "deleted", "quality_unknown", "rebuilt", "full_check")
    return {key: getattr(result, key) for key in keys}


def _unchanged_since_last_pass(
    settings: Settings, previous: dict[str, Any], counters: Row, signature: list[Any]
) -> bool:
    if settings.ledger_change_check != "statistics" or not counters.tracked:
        return False
    if previous.get("counters") != signature or not previous.get("checked_at"):
        return False
    checked_at = datetime.fromisoformat(previous["checked_at"])
    return (counters.read_at - checked_at).total_seconds() < settings.ledger_full_check_sec


def _load_state(writer: Connection, quoted: Names, result: RefreshResult, relid: int) -> dict[str, Any]:
    """Return the stored state details, emptying the ledger first when it describes another table.

    Row ids and `xmin` values of another relation (or of a dropped and
    recreated one) mean nothing here, so the ledger is rebuilt from scratch.
    The state row is written before any chunk so that an interrupted first
    refresh is resumed, not restarted.
    """
    state = writer.execute(_sql(_STATE_SQL, quoted), {"relation": result.relation}).first()
    if state is not None and (state.details or {}).get("relid") == relid:
        writer.commit()
        return dict(state.details)
    cleared = writer.execute(_sql(_CLEAR_SQL, quoted)).rowcount
    result.rebuilt = cleared > 0
    details = {"relid": relid}
    writer.execute(_sql(_START_STATE_SQL, quoted), {"relation": result.relation, "details": json.dumps(details)})
    writer.commit()
    if cleared:
        logger.warning("ledger emptied (%d rows): it described another table than %s", cleared, result.relation)
    return details


def _save_state(writer: Connection, quoted: Names, result: RefreshResult, details: dict[str, Any]) -> None:
    params = {"relation": result.relation, "refreshed_at": result.refreshed_at, "details": json.dumps(details)}
    result.ledger_rows = writer.execute(_sql(_SAVE_STATE_SQL, quoted), params).scalar_one()
    writer.commit()


def _changed_ids(
    reader: Connection, quoted: Names, result: RefreshResult, chunk_size: int
) -> tuple[array, array]:
    """Return the ids of new or changed rows and of deleted ones, 8 bytes per id in memory."""
    changed, deleted = array("q"), array("q")
    rows = reader.execute(_sql(_CHANGED_IDS_SQL, quoted), execution_options={"yield_per": chunk_size})
    for chunk in rows.partitions(chunk_size):
        for row in chunk:
            if row.model_id is not None:
                changed.append(row.model_id)
            elif row.deleted_id is not None:
                deleted.append(row.deleted_id)
    return changed, deleted


def _copy_rows(
    reader: Connection,
    writer: Connection,
    quoted: Names,
    result: RefreshResult,
    progress: ProgressCallback | None,
    model_ids: array,
    chunk_size: int,
) -> None:
    select = _sql(_ROWS_BY_ID_SQL, quoted)
    upsert = _sql(_UPSERT_SQL, quoted)
    count = _sql(_COUNT_ROWS_SQL, quoted)
    for start in range(0, len(model_ids), chunk_size):
        ids = model_ids[start:start + chunk_size].tolist()
        ledger_rows = [ledger_row(row) for row in reader.execute(select, {"ids": ids})]
        inserted = writer.execute(upsert, {"rows": json.dumps(ledger_rows)}).scalars().all()
        added = sum(1 for flag in inserted if flag)
        writer.execute(count, {"relation": result.relation, "added": added})
        writer.commit()

        # A row deleted since the pass's snapshot is still read: the snapshot is the same.
        result.rows_read += len(ledger_rows)
        result.inserted += added
        result.updated += len(inserted) - added
        result.quality_unknown += sum(1 for row in ledger_rows if not row["quality_known"])
        if progress is not None:
            progress(result.rows_read, len(model_ids))


def _delete_rows(
    writer: Connection, quoted: Names, result: RefreshResult, model_ids: array, chunk_size: int
) -> None:
    delete = _sql(_DELETE_SQL, quoted)
    count = _sql(_COUNT_ROWS_SQL, quoted)
    for start in range(0, len(model_ids), chunk_size):
        deleted = writer.execute(delete, {"ids": model_ids[start:start + chunk_size].tolist()}).rowcount
        writer.execute(count, {"relation": result.relation, "added": -deleted})
        writer.commit()
        result.deleted += deleted


def ledger_row(row: Row) -> dict[str, Any]:
    """Return the ledger columns for one row of `_ROWS_BY_ID_SQL` (JSON-ready values)."""
    quality = _quality_of(row)
    return {
        "model_id": row.id,
        "model_name": row.model_name,
        "model_type": row.model_type,
        "category": row.category,
        "feature_count": row.feature_count,
        "row_version": row.row_version,
        "quality_known": quality.known,
        "quality_reason": quality.reason,
        "quality_source": quality.source,
        "total_features": quality.total_features,
        "features_with_elements": quality.features_with_elements,
        "element_coverage": quality.element_coverage,
        "group_features": quality.group_features,
        "analysis_features": quality.analysis_features,
        "recoverable_unknown": quality.recoverable_unknown,
        "unrecoverable_unknown": quality.unrecoverable_unknown,
        "content_bytes": row.content_bytes,
        "model_created_at": row.created_at.isoformat() if row.created_at else None,
        "model_updated_at": row.updated_at.isoformat() if row.updated_at else None,
    }


def _quality_of(row: Row) -> Quality:
    try:
        return parse_quality(quality_document(row))
    except Exception as error:  # noqa: BLE001 - one odd row must never stop the refresh
        logger.warning("quality of model id %s unreadable: %s", row.id, type(error).__name__)
        return Quality(known=False, reason=f"unreadable content ({type(error).__name__})")


def quality_document(row: Any) -> Any:
    """Rebuild the small document that `parse_quality` reads from the columns the server sent.

    Keys absent from the row stay absent. A value of the wrong JSON type is
    replaced by an empty value of the same type, so the parser takes the same
    path and gives the same reason as on the full content. A content that is a
    JSON string arrives whole, because it may contain the document encoded twice.
    """
    kind = row.content_kind
    if kind is None:
        return None
    if kind == "string":
        return row.content_text  # possibly JSON encoded twice: the parser decodes it
    if kind != "object":
        return _PLACEHOLDERS.get(kind)

    document: dict[str, Any] = {}
    if row.serialization_quality is not None:
        document["serialization_quality"] = row.serialization_quality
    if row.has_element_coverage:
        document["element_coverage"] = row.element_coverage
    if row.features_kind == "array":
        if row.features is not None:
            document["features"] = row.features
    elif row.features_kind not in (None, "null"):
        document["features"] = _PLACEHOLDERS.get(row.features_kind)
    return document


def _try_lock(writer: Connection, lock_name: str, wait_sec: float) -> bool:
    params = {"lock_class": _LOCK_CLASS, "lock_name": lock_name}
    deadline = time.monotonic() + wait_sec
    while True:
        locked = writer.execute(text(_TRY_LOCK_SQL), params).scalar_one()
        writer.commit()
        if locked:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_LOCK_POLL_SEC)


def _unlock(writer: Connection, lock_name: str) -> None:
    try:
        writer.rollback()
        writer.execute(text(_UNLOCK_SQL), {"lock_class": _LOCK_CLASS, "lock_name": lock_name})
        writer.commit()
    except SQLAlchemyError as error:
        # A broken connection holds no lock any more; never return it to the pool.
        logger.warning("could not release the ledger lock (%s); discarding the connection", type(error).__name__)
        writer.invalidate()


@contextlib.contextmanager
def _writer_connection(settings: Settings) -> Iterator[Connection]:
    conn = connect(settings)
    try:
        yield conn
    finally:
        conn.close()


def ledger_state(conn: Connection, settings: Settings) -> dict[str, Any]:
    """Return when the ledger was last refreshed and its size: {relation, refreshed_at, rows, details}."""
    quoted = names(settings)
    relation = relation_name(settings)
    state = conn.execute(_sql(_STATE_SQL, quoted), {"relation": relation}).first()
    if state is None:
        return {"relation": relation, "refreshed_at": None, "rows": 0, "details": {}}
    return {
        "relation": relation,
        "refreshed_at": state.refreshed_at.isoformat() if state.refreshed_at else None,
        "rows": state.rows_seen or 0,
        "details": state.details or {},
    }
