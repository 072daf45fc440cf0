"""Background event writer of the metrics collector: batches, local journal, heartbeats.

Recording threads call `EventWriter.submit()`, which puts the event on a
bounded `queue.Queue` and returns at once. One daemon thread drains the queue
in batches (`writer_batch_size` items, or whatever arrived within
`writer_flush_interval_sec`) and writes each batch in one transaction:

- events go into `serialization_events` with
  `INSERT ... ON CONFLICT (event_id) DO NOTHING RETURNING batch_id, status`,
  and only the rows that this statement inserted are added to the progress
  counters of `batch_jobs`, in the same transaction; a replayed event is
  therefore never counted twice;
- batch starts, updates and finishes are upserts, so they may arrive in any
  order and any number of times.

When the queue is full or the database cannot be written (down, timed out, or
serialmon's schema missing), items go to an append-only journal of JSON lines
instead. The journal lines do not name their database, so each destination
(database and state schema) has its own subfolder of `resolved_journal_dir`,
see `journal_folder()`. Once the database accepts writes again the writer
replays every file it can claim in its destination's folder, including files
left by dead processes of earlier runs on this host, and deletes a file only
after its events are committed. `flush()` and `close()` skip the retry backoff
and make one attempt at once. Every `heartbeat_interval_sec` the writer
upserts this process's row in `worker_heartbeats` and refreshes `heartbeat_at`
of the batches this process started and has not finished.

No writer error reaches the pipeline. `submit()` counts and logs a failed
journal write instead of raising, and the thread logs every error it catches
(repeats are rate-limited) and journals the items concerned.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import queue
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import psycopg.errors
import psycopg.types.json
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from serialmon.config import Settings, mask_url
from serialmon.db import Names, database_url, get_engine, names
from serialmon.errors import SerialmonError, first_line

logger = logging.getLogger(__name__)

_INITIAL_BACKOFF_SEC = 0.5
_POLL_SEC = 0.05  # how often the writer thread looks at the queue while it waits
_MIN_WAIT_SEC = 0.001
_SCAN_INTERVAL_SEC = 60.0  # how often the journal folder is searched for files of dead processes
_LOG_INTERVAL_SEC = 60.0  # repeats of one log message are summed up and logged at most this often
_ERROR_MESSAGE_MAX = 4000
_JOURNAL_VERSION = 1


class Origin(NamedTuple):
    """The process that recorded an item: stored with each event and in `worker_heartbeats`."""

    host: str
    pid: int
    worker_id: str  # host:pid:collector start in milliseconds since the epoch


class Event(NamedTuple):
    """One validated serialization event, as queued, journaled and inserted."""

    event_id: uuid.UUID
    occurred_at: float  # seconds since the epoch (UTC)
    model_name: str
    model_type: str
    status: str
    processing_time_sec: float
    element_coverage: float | None
    unrecoverable_unknown: int | None
    feature_count: int | None
    category: str | None
    batch_id: str | None
    error_type: str | None
    error_message: str | None
    tags: list[str] | None
    origin: Origin


class BatchOp(NamedTuple):
    """A change to one `batch_jobs` row: `op` is "start", "update" or "finish"."""

    op: str
    batch_id: str
    at: float  # seconds since the epoch (UTC) when the caller made the change
    name: str | None
    total_models: int | None
    status: str | None  # for "finish": "completed" or "failed"
    details: dict[str, Any] | None
    heartbeat: bool
    origin: Origin


@dataclass
class HeartbeatInfo:
    """Figures the collector reports in its heartbeat row."""

    current_model: str | None
    batch_id: str | None
    events_recorded: int
    running_batches: list[str] = field(default_factory=list)


class _FlushRequest:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


# SQL


class Statements:
    """Every statement the writer runs, with its tables quoted from the settings."""

    # PostgreSQL types of EVENT_COLUMNS for binary COPY (varchar columns take text's binary form).
    EVENT_TYPES = (
        "uuid", "timestamptz", "text", "text", "text", "float8", "float8", "int4", "int4", "text", "text",
        "text", "text", "text[]", "text", "int4", "text",
    )
    EVENT_COLUMNS = (
        "event_id", "occurred_at", "model_name", "model_type", "status", "processing_time_sec",
        "element_coverage", "unrecoverable_unknown", "feature_count", "category", "batch_id",
        "error_type", "error_message", "tags", "host", "pid", "worker_id",
    )

    def __init__(self, quoted: Names) -> None:
        events = quoted.table("serialization_events")
        batches = quoted.table("batch_jobs")
        heartbeats = quoted.table("worker_heartbeats")
        columns = ", ".join(self.EVENT_COLUMNS)

        # Tags are sent as JSON text because unnest() cannot take a ragged text[][].
        self.insert_events_unnest = f"""
            INSERT INTO {events} ({columns})
            SELECT e.event_id, e.occurred_at, e.model_name, e.model_type, e.status, e.processing_time_sec,
                   e.element_coverage, e.unrecoverable_unknown, e.feature_count, e.category, e.batch_id,
                   e.error_type, e.error_message,
                   CASE WHEN e.tags IS NULL THEN NULL
                        ELSE ARRAY(SELECT jsonb_array_elements_text(e.tags::jsonb)) END,
                   e.host, e.pid, e.worker_id
            FROM unnest(%s::uuid[], %s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::float8[],
                        %s::float8[], %s::int[], %s::int[], %s::text[], %s::text[],
                        %s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[])
                 AS e({columns})
            ON CONFLICT (event_id) DO NOTHING
            RETURNING batch_id, status
        """
        self.create_stage = f"""
            CREATE TEMPORARY TABLE IF NOT EXISTS serialmon_event_stage
            (LIKE {events} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS
        """
        self.copy_stage = f"COPY serialmon_event_stage ({columns}) FROM STDIN (FORMAT BINARY)"
        self.insert_events_from_stage = f"""
            INSERT INTO {events} ({columns})
            SELECT {columns} FROM serialmon_event_stage
            ON CONFLICT (event_id) DO NOTHING
            RETURNING batch_id, status
        """

        # Rows inserted only by these counters (no start seen yet) get the defaults:
        # status running, started_at and heartbeat_at now(). A later start fills in the rest.
        self.add_batch_counts = f"""
            INSERT INTO {batches} AS b (batch_id, processed, succeeded, failed, skipped)
            SELECT u.batch_id, u.processed, u.succeeded, u.failed, u.skipped
            FROM unnest(%s::text[], %s::int[], %s::int[], %s::int[], %s::int[])
                 AS u(batch_id, processed, succeeded, failed, skipped)
            ORDER BY u.batch_id
            ON CONFLICT (batch_id) DO UPDATE SET
                processed = b.processed + EXCLUDED.processed,
                succeeded = b.succeeded + EXCLUDED.succeeded,
                failed = b.failed + EXCLUDED.failed,
                skipped = b.skipped + EXCLUDED.skipped,
                updated_at = now()
        """
        self.start_batch = f"""
            INSERT INTO {batches} AS b
                (batch_id, name, status, total_models, started_at, updated_at, heartbeat_at, host, pid, details)
            VALUES (%(batch_id)s, %(name)s, 'running', %(total_models)s, %(at)s, %(at)s, %(at)s,
                    %(host)s, %(pid)s, %(details)s)
            ON CONFLICT (batch_id) DO UPDATE SET
                name = COALESCE(EXCLUDED.name, b.name),
                total_models = COALESCE(EXCLUDED.total_models, b.total_models),
                started_at = LEAST(b.started_at, EXCLUDED.started_at),
                heartbeat_at = GREATEST(b.heartbeat_at, EXCLUDED.heartbeat_at),
                updated_at = GREATEST(b.updated_at, EXCLUDED.updated_at),
                host = EXCLUDED.host,
                pid = EXCLUDED.pid,
                details = CASE WHEN EXCLUDED.details IS NULL THEN b.details
                               ELSE COALESCE(b.details, '{{}}'::jsonb) || EXCLUDED.details END
        """
        self.update_batch = f"""
            INSERT INTO {batches} AS b (batch_id, name, total_models, started_at, updated_at, heartbeat_at, details)
            VALUES (%(batch_id)s, %(name)s, %(total_models)s, %(at)s, %(at)s, %(at)s, %(details)s)
            ON CONFLICT (batch_id) DO UPDATE SET
                name = COALESCE(EXCLUDED.name, b.name),
                total_models = COALESCE(EXCLUDED.total_models, b.total_models),
                heartbeat_at = CASE WHEN %(heartbeat)s THEN GREATEST(b.heartbeat_at, EXCLUDED.heartbeat_at)
                                    ELSE b.heartbeat_at END,
                updated_at = GREATEST(b.updated_at, EXCLUDED.updated_at),
                details = CASE WHEN EXCLUDED.details IS NULL THEN b.details
                               ELSE COALESCE(b.details, '{{}}'::jsonb) || EXCLUDED.details END
        """
        self.finish_batch = f"""
            INSERT INTO {batches} AS b (batch_id, status, started_at, updated_at, heartbeat_at, finished_at)
            VALUES (%(batch_id)s, %(status)s, %(at)s, %(at)s, %(at)s, %(at)s)
            ON CONFLICT (batch_id) DO UPDATE SET
                status = EXCLUDED.status,
                finished_at = EXCLUDED.finished_at,
                heartbeat_at = GREATEST(b.heartbeat_at, EXCLUDED.heartbeat_at),
                updated_at = GREATEST(b.updated_at, EXCLUDED.updated_at)
        """
        self.heartbeat = f"""
            INSERT INTO {heartbeats} AS h
                (worker_id, host, pid, started_at, heartbeat_at, current_model, batch_id, events_recorded, stopped_at)
            VALUES (%(worker_id)s, %(host)s, %(pid)s, %(started_at)s, now(), %(current_model)s, %(batch_id)s,
                    %(events_recorded)s, CASE WHEN %(stopped)s THEN now() END)
            ON CONFLICT (worker_id) DO UPDATE SET
                heartbeat_at = now(),
                current_model = EXCLUDED.current_model,
                batch_id = EXCLUDED.batch_id,
                events_recorded = EXCLUDED.events_recorded,
                stopped_at = EXCLUDED.stopped_at
        """
        self.refresh_batches = f"""
            UPDATE {batches} SET heartbeat_at = now()
            WHERE batch_id = ANY(%s::text[]) AND status = 'running'
        """


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _event_row(event: Event) -> tuple:
    origin = event.origin
    return (
        event.event_id, _utc(event.occurred_at), event.model_name, event.model_type, event.status,
        event.processing_time_sec, event.element_coverage, event.unrecoverable_unknown, event.feature_count,
        event.category, event.batch_id, event.error_type, event.error_message, event.tags,
        origin.host, origin.pid, origin.worker_id,
    )


def insert_events_unnest(cursor: psycopg.Cursor, statements: Statements, events: Sequence[Event]) -> list[tuple]:
    """Insert events with one `INSERT ... SELECT FROM unnest(arrays)`; returns (batch_id, status) of new rows."""
    rows = [_event_row(event) for event in events]
    columns = [list(column) for column in zip(*rows)]
    columns[13] = [None if tags is None else json.dumps(tags) for tags in columns[13]]
    cursor.execute(statements.insert_events_unnest, columns)
    return cursor.fetchall()


def insert_events_copy(cursor: psycopg.Cursor, statements: Statements, events: Sequence[Event]) -> list[tuple]:
    """Insert events by binary COPY into a temporary table, then `INSERT ... SELECT`; returns as the unnest variant."""
    cursor.execute(statements.create_stage)
    with cursor.copy(statements.copy_stage) as copy:
        copy.set_types(statements.EVENT_TYPES)
        for event in events:
            copy.write_row(_event_row(event))
    cursor.execute(statements.insert_events_from_stage)
    return cursor.fetchall()


# `bench/bench_collector.py` measures both: binary COPY into the temporary
# table was about twice as fast as unnest() at batches of 500 to 5,000 events
# (docs/benchmarks.md). The first batch on each connection creates the
# temporary table, and every commit empties it.
insert_events = insert_events_copy


def _batch_counts(inserted: Iterable[tuple]) -> list[list]:
    """Return [batch_ids, processed, succeeded, failed, skipped] arrays from (batch_id, status) rows."""
    counts: dict[str, list[int]] = {}
    for batch_id, status in inserted:
        if batch_id is None:
            continue
        row = counts.setdefault(batch_id, [0, 0, 0, 0])
        row[0] += 1
        row[{"success": 1, "failure": 2, "skipped": 3}[status]] += 1
    ordered = sorted(counts.items())
    return [[batch_id for batch_id, _ in ordered]] + [[row[i] for _, row in ordered] for i in range(4)]


def _batch_params(op: BatchOp) -> dict[str, Any]:
    return {
        "batch_id": op.batch_id,
        "name": op.name,
        "total_models": op.total_models,
        "status": op.status,
        "at": _utc(op.at),
        "details": None if op.details is None else psycopg.types.json.Jsonb(op.details),
        "heartbeat": op.heartbeat,
        "host": op.origin.host,
        "pid": op.origin.pid,
    }


# Journal lines


def encode(item: Event | BatchOp) -> bytes:
    """Return one journal line (JSON, ending in a newline) for an event or a batch change."""
    origin = item.origin
    if type(item) is Event:
        record: dict[str, Any] = {
            "v": _JOURNAL_VERSION, "kind": "event", "event_id": str(item.event_id),
            "occurred_at": _utc(item.occurred_at).isoformat(), "model_name": item.model_name,
            "model_type": item.model_type, "status": item.status,
            "processing_time_sec": item.processing_time_sec, "element_coverage": item.element_coverage,
            "unrecoverable_unknown": item.unrecoverable_unknown, "feature_count": item.feature_count,
            "category": item.category, "batch_id": item.batch_id, "error_type": item.error_type,
            "error_message": item.error_message, "tags": item.tags,
        }
    else:
        record = {
            "v": _JOURNAL_VERSION, "kind": "batch", "op": item.op, "batch_id": item.batch_id,
            "at": _utc(item.at).isoformat(), "name": item.name, "total_models": item.total_models,
            "status": item.status, "details": item.details, "heartbeat": item.heartbeat,
        }
    record.update(host=origin.host, pid=origin.pid, worker_id=origin.worker_id)
    return (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")


def decode(line: bytes) -> Event | BatchOp:
    """Return the item of one journal line; raises ValueError, KeyError or TypeError for a damaged line."""
    record = json.loads(line)
    origin = Origin(str(record["host"]), int(record["pid"]), str(record["worker_id"]))
    if record["kind"] == "event":
        tags = record["tags"]
        return Event(
            uuid.UUID(record["event_id"]), datetime.fromisoformat(record["occurred_at"]).timestamp(),
            record["model_name"], record["model_type"], record["status"], float(record["processing_time_sec"]),
            record["element_coverage"], record["unrecoverable_unknown"], record["feature_count"],
            record["category"], record["batch_id"], record["error_type"], record["error_message"],
            None if tags is None else [str(tag) for tag in tags], origin,
        )
    if record["kind"] == "batch" and record["op"] in ("start", "update", "finish"):
        return BatchOp(
            record["op"], str(record["batch_id"]), datetime.fromisoformat(record["at"]).timestamp(),
            record["name"], record["total_models"], record["status"], record["details"],
            bool(record["heartbeat"]), origin,
        )
    raise ValueError(f"unknown journal record kind {record.get('kind')!r}")


# Journal files

_FILE_NAME = re.compile(
    r"^(?P<state>active|ready|replay)_(?P<pid>\d+)_(?P<start>\d+)_(?P<token>[0-9a-f]+)_(?P<seq>\d+)_(?P<host>.*)\.jsonl$"
)


def _safe_host(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", host)[:100] or "host"


def _destination(settings: Settings) -> tuple[str, str]:
    """Return (database name, identity text) of where these settings write events; the text contains no secret.

    The identity is host, port, database name and state schema of the engine
    URL. User name and password are left out, so collectors that reach the
    same database with other accounts share one journal folder.
    """
    try:
        url = make_url(database_url(settings, start_embedded=False))
    except Exception as error:  # e.g. the embedded server's port file cannot be written yet (Windows)
        # Broad, because this runs on the recording thread, which no writer error may reach.
        # NOTE: a URL that cannot be resolved gets a folder of its own, which a
        # collector replays only while the URL still cannot be resolved.
        logger.warning("cannot resolve the database URL for the journal folder: %s", first_line(error))
        raw = None if settings.database_url is None else settings.database_url.get_secret_value()
        return "unresolved", f"unresolved\n{mask_url(raw) or settings.data_dir}\n{settings.state_schema}"
    # A Unix-socket directory or a host list may come in the query instead of the URL's host.
    host = url.query.get("host") or url.host or ""
    port = url.query.get("port") or url.port or 5432
    database = url.database or ""
    return database, "\n".join(str(part) for part in (host, port, database, settings.state_schema))


def journal_folder(settings: Settings) -> Path:
    """Return the journal folder of the database and schema these settings write to.

    It is a subfolder of `resolved_journal_dir` named by the database name and
    the first 16 hex digits of a SHA-256 over host, port, database name and
    `state_schema`, for example `journal/serialmon-3f0c9a1e5d2b7c48`. Does not
    start the embedded server and does not create the folder.

    NOTE: the identity is the URL's text, so two spellings of one server
    (`localhost` and `127.0.0.1`) get two folders, and neither replays the other's files.
    """
    database, identity = _destination(settings)
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
    label = re.sub(r"[^A-Za-z0-9.-]", "-", database)[:40] or "database"
    return settings.resolved_journal_dir / f"{label}-{digest}"


class Journal:
    """Append-only JSON-lines files of one writer, in its database's folder shared by every process of the host.

    File names carry their state and owner, `<state>_<pid>_<start ms>_<token>_<seq>_<host>.jsonl`:
    `active` is being appended by its owner, `ready` is complete (closed and
    fsynced), `replay` has been claimed for replay by the owner in its name.
    A file changes state only by an atomic rename, so two processes never
    claim the same file. `rejected_*` files hold lines the database refused;
    they are kept for a person and never replayed.
    """

    def __init__(self, folder: Path, origin: Origin, token: str, started_ms: int, rotate_bytes: int) -> None:
        self.folder = Path(folder)
        self._host = _safe_host(origin.host)
        self._pid = origin.pid
        self._token = token
        self._stem = f"{origin.pid}_{started_ms}_{token}"
        self._rotate_bytes = rotate_bytes
        self._lock = threading.Lock()
        self._file: io.FileIO | None = None
        self._path: Path | None = None
        self._active_seq = 0
        self._next_seq = 0  # one sequence for active and claimed files, so no two names collide
        self._size = 0
        self._dirty = False

    def _name(self, state: str, seq: int) -> str:
        return f"{state}_{self._stem}_{seq:06d}_{self._host}.jsonl"

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def append(self, lines: Sequence[bytes]) -> None:
        """Append lines with one unbuffered write; raises OSError when the folder cannot be written.

        Unbuffered, so a process that dies loses nothing that this call
        returned for, and a forked child never writes its parent's buffer
        again. Durability against an operating-system crash comes from
        `sync()` (called by `flush()`), rotation and close.
        """
        data = b"".join(lines)
        with self._lock:
            if self._file is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._active_seq = self._take_seq()
                self._path = self.folder / self._name("active", self._active_seq)
                self._file = io.FileIO(self._path, "ab")
                self._size = 0
            view = memoryview(data)
            while view:
                written = self._file.write(view)
                view = view[written:]
            self._size += len(data)
            self._dirty = True
            if self._size >= self._rotate_bytes:
                self._rotate_locked()

    @property
    def has_data(self) -> bool:
        """Whether the active file contains lines not yet rotated."""
        return self._size > 0

    def sync(self) -> None:
        """fsync the active file if anything was appended since the last sync."""
        with self._lock:
            if self._file is not None and self._dirty:
                os.fsync(self._file.fileno())
                self._dirty = False

    def rotate(self) -> Path | None:
        """Close the active file (fsynced) and rename it to `ready_`; returns the new path, or None."""
        with self._lock:
            return self._rotate_locked()

    def _rotate_locked(self) -> Path | None:
        if self._file is None or self._path is None:
            return None
        # Forget the file before the calls that may fail, so that a failed
        # fsync or rename is not retried forever. An unrenamed file stays
        # `active_` and is claimed once this process has ended.
        file, self._file = self._file, None
        path, self._path = self._path, None
        size, self._size = self._size, 0
        self._dirty = False
        try:
            os.fsync(file.fileno())
        finally:
            file.close()
        if size == 0:
            path.unlink(missing_ok=True)
            return None
        ready = path.with_name(self._name("ready", self._active_seq))
        os.replace(path, ready)
        return ready

    def close(self) -> None:
        """Rotate the active file so that this or another process can replay it."""
        self.rotate()

    def release(self, paths: Iterable[Path]) -> None:
        """Rename claimed files back to `ready_`, for another process to replay them."""
        for path in paths:
            match = _FILE_NAME.match(path.name)
            if match is None:
                continue
            with contextlib.suppress(OSError):
                os.replace(path, path.with_name(f"ready_{path.name[len('replay_'):]}"))

    def claim(self, *, own_only: bool = False) -> list[Path]:
        """Claim the files that this writer may replay, by renaming them to its own `replay_` names.

        Claims every `ready_` file, and `active_` or `replay_` files whose owner
        process on this host is gone. With `own_only`, claims only this
        writer's files. A file that another process renames first, or that
        Windows keeps locked, is left alone.
        """
        if not self.folder.is_dir():
            return []
        candidates = []
        for path in sorted(self.folder.iterdir()):
            match = _FILE_NAME.match(path.name)
            if match is None:
                continue
            mine = match["token"] == self._token and int(match["pid"]) == self._pid
            if match["state"] == "replay" and mine:
                continue
            if own_only and not mine:
                continue
            if match["state"] != "ready" and self._owner_alive(match):
                continue
            candidates.append(path)
        return self.claim_paths(candidates)

    def claim_paths(self, paths: Iterable[Path]) -> list[Path]:
        """Rename each file to a `replay_` name of this writer; returns the new paths of those renamed."""
        claimed = []
        for path in paths:
            with self._lock:
                target = path.with_name(self._name("replay", self._take_seq()))
            try:
                os.rename(path, target)
            except OSError:  # another process claimed it first, or Windows keeps it open
                continue
            claimed.append(target)
        return claimed

    def _owner_alive(self, match: re.Match) -> bool:
        """Return whether the process that owns an `active_` or `replay_` file may still use it."""
        if match["host"] != self._host:
            return True  # NOTE: a process on another host cannot be checked, so its open files wait
        pid = int(match["pid"])
        if pid == self._pid:
            return True
        import psutil

        try:
            created = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:
            return True
        # The pid may have been reused by a process that started after the owner.
        return created <= int(match["start"]) / 1000 + 1.0

    def reject(self, lines: Sequence[bytes]) -> Path:
        """Append lines that the database refused to a `rejected_` file, which is never replayed."""
        path = self.folder / f"rejected_{self._stem}_{self._host}.jsonl"
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as handle:
            handle.write(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())
        return path


# Logging


class _RateLimitedLog:
    """Log a repeated condition at once, then at most every `_LOG_INTERVAL_SEC` with the counts summed."""

    def __init__(self, level: int, message: str) -> None:
        self._level = level
        self._message = message  # "%d" for the count, then "%s" for the latest detail
        self._lock = threading.Lock()
        self._last = -_LOG_INTERVAL_SEC
        self._pending = 0
        self._detail = ""

    def add(self, count: int, detail: str) -> None:
        with self._lock:
            self._pending += count
            self._detail = detail
            now = time.monotonic()
            if now - self._last < _LOG_INTERVAL_SEC:
                return
            self._last = now
            count, self._pending = self._pending, 0
        logger.log(self._level, self._message, count, detail)

    def flush(self) -> None:
        with self._lock:
            count, self._pending = self._pending, 0
        if count:
            logger.log(self._level, self._message, count, self._detail)


_SCHEMA_ERRORS = (
    psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedColumn,
)


# Errors of an unreachable or failing database; anything else is also retried, but logged as a bug.
_EXPECTED_ERRORS = (psycopg.Error, OSError, SerialmonError, SQLAlchemyError)


def _classify(error: BaseException) -> str:
    """Return "schema", "data" (a row the database refuses) or "unavailable" (retry later)."""
    if isinstance(error, _SCHEMA_ERRORS):
        return "schema"
    if isinstance(error, (psycopg.DataError, psycopg.IntegrityError, UnicodeError)):
        return "data"
    return "unavailable"


# The writer


class EventWriter:
    """One daemon thread that persists what the collector submits; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        origin: Origin,
        heartbeat_info: Callable[[], HeartbeatInfo],
        *,
        started_at: float,
        token: str,
    ) -> None:
        self._settings = settings
        self._origin = origin
        self._heartbeat_info = heartbeat_info
        self._started_at = started_at
        self.queue: queue.Queue = queue.Queue(maxsize=settings.queue_size)
        self.journal = Journal(
            journal_folder(settings), origin, token, int(started_at * 1000), settings.journal_rotate_bytes
        )
        self._statements = Statements(names(settings))
        self._conn: psycopg.Connection | None = None

        self.state = "connecting"  # "ok", "unavailable" or "schema_missing" once tried
        self.last_error: str | None = None
        self._down_since: float | None = None
        self._backoff = _INITIAL_BACKOFF_SEC
        self._next_attempt = 0.0
        self._next_heartbeat = 0.0
        self._next_scan = 0.0
        self._claimed: list[Path] = []
        self._inflight: list = []
        # counts["spilled"] when the last replay of this writer's whole journal began;
        # a higher count means some of this writer's items are only in the journal.
        self._spilled_at_replay = 0

        self._counts_lock = threading.Lock()
        self.counts = dict.fromkeys(("persisted", "duplicates", "spilled", "replayed", "rejected", "dropped"), 0)
        self._spill_log = _RateLimitedLog(
            logging.WARNING, "%d items written to the local journal instead of the database: %s"
        )
        self._replay_log = _RateLimitedLog(logging.INFO, "%d journaled items replayed into the database (%s)")
        self._reject_log = _RateLimitedLog(
            logging.ERROR, "gave up on %d journaled items the database refused; they are kept in %s"
        )
        self._drop_log = _RateLimitedLog(logging.ERROR, "lost %d events: the journal cannot be written (%s)")
        self._error_log = _RateLimitedLog(logging.ERROR, "event writer error (%d so far): %s")

        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"serialmon-writer-{origin.pid}", daemon=True)

    # Called by recording threads

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, item: Event | BatchOp) -> None:
        """Queue one item without waiting; when the queue is full, append it to the journal."""
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self._spill([item], "the writer queue is full")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is committed, or journaled and fsynced after one failed attempt.

        The writer thread skips its retry backoff for a flush: it writes what
        is queued, and when items of this writer are in the journal it
        replays this writer's journal files at once. True therefore means
        that every item submitted before the call is committed, or is in the
        fsynced journal because the database failed during this flush (or
        earlier, for items the flush found journaled). Each flush during an
        outage makes at most one connection attempt, which `connect_timeout_sec` bounds,
        after waiting for an attempt already in progress: up to twice that in all.

        Returns False when `timeout` seconds pass first, or when the writer
        thread is not running and items are still queued.
        """
        if not self._thread.is_alive():
            return self.queue.empty()
        deadline = None if timeout is None else time.monotonic() + timeout
        request = _FlushRequest()
        try:
            self.queue.put(request, timeout=timeout)
        except queue.Full:
            return False
        self._wake.set()
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        return request.done.wait(remaining)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop the thread after a final attempt at the database; returns False on timeout.

        The thread skips its retry backoff and tries once: it writes what is
        queued, then the last heartbeat (with `stopped_at`), then replays this
        writer's journal files. If that attempt fails, the thread journals the
        rest and logs one warning. Whatever is still queued when the timeout
        passes is journaled by the calling thread, so nothing submitted before
        `close()` is lost. If the stuck thread commits one of those items
        later, its replay is a duplicate that the event id makes harmless.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread.is_alive():
            try:
                self.queue.put(_STOP, timeout=timeout)
            except queue.Full:
                pass
            self._wake.set()
            self._thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        stopped = not self._thread.is_alive()

        leftovers = [] if stopped else list(self._inflight)
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if type(item) is _FlushRequest:
                item.done.set()
            elif item is not _STOP:
                leftovers.append(item)
        if leftovers:
            self._spill(leftovers, "the writer stopped before writing them")
        if not stopped:
            logger.warning(
                "event writer %s did not stop within %s s; %d queued items were journaled",
                self._origin.worker_id, timeout, len(leftovers),
            )
            with contextlib.suppress(OSError):
                self.journal.sync()
            return False
        with contextlib.suppress(OSError):
            self.journal.close()
        return True

    def abandon(self) -> None:
        """Forget the connection without closing it: for a forked child, whose copy belongs to the parent."""
        self._conn = None

    def stats(self) -> dict[str, Any]:
        with self._counts_lock:
            counts = dict(self.counts)
        return {
            "database": self.state,
            "last_error": self.last_error,
            "queued": self.queue.qsize(),
            **counts,
            "journal_dir": str(self.journal.folder),
        }

    # Journal

    def _spill(self, items: Sequence[Event | BatchOp], reason: str) -> None:
        """Append items to the journal; a failed write is counted and logged as lost instead of raised."""
        try:
            self.journal.append([encode(item) for item in items])
        except Exception as error:  # the pipeline's thread may be the caller: nothing may escape
            with self._counts_lock:
                self.counts["dropped"] += len(items)
            self._drop_log.add(len(items), f"{self.journal.folder}: {first_line(error)}")
            return
        with self._counts_lock:
            self.counts["spilled"] += len(items)
        self._spill_log.add(len(items), f"{reason}; journal folder {self.journal.folder}")

    # The thread

    def _run(self) -> None:
        logger.info("event writer %s started; journal folder %s", self._origin.worker_id, self.journal.folder)
        self._warn_unscoped_files()
        stop = False
        while not stop:
            requests: list[_FlushRequest] = []
            try:
                items, requests, stop = self._collect()
                if stop or requests:
                    # flush() and close() wait for an attempt now, not for the end of the backoff.
                    self._next_attempt = 0.0
                self._inflight = items
                self._write_or_spill(items)
                self._inflight = []
                if requests:
                    self.journal.sync()
                    self._replay_own_journal()
                if not stop:
                    self._maintain()
            except Exception as error:  # a bug must not stop the writer: log it, journal the items
                self._error_log.add(1, f"{type(error).__name__}: {first_line(error)}")
                logger.debug("event writer error", exc_info=True)
                if self._inflight:
                    self._spill(self._inflight, "the event writer failed")
                    self._inflight = []
                time.sleep(0.1)
            finally:
                for request in requests:
                    request.done.set()
        self._shutdown()

    def _collect(self) -> tuple[list, list[_FlushRequest], bool]:
        """Take up to `writer_batch_size` items, waiting at most `writer_flush_interval_sec` after the first.

        Returns early for a flush request, for the stop item, or with no items
        when maintenance is due. The thread polls the queue every `_POLL_SEC`
        instead of blocking in `Queue.get()`: a blocked reader would be woken
        by every `put()`, and that hand-off would cost each recording call
        several microseconds. `flush()` and `close()` wake it at once.
        """
        items: list = []
        requests: list[_FlushRequest] = []
        limit = self._settings.writer_batch_size
        deadline = None
        while True:
            for item in self._take(limit - len(items)):
                if item is _STOP:
                    return items, requests, True
                if type(item) is _FlushRequest:
                    requests.append(item)
                    return items, requests, False
                items.append(item)
                if deadline is None:
                    deadline = time.monotonic() + self._settings.writer_flush_interval_sec
            if len(items) >= limit:
                return items, requests, False

            now = time.monotonic()
            wait = self._idle_timeout(now) if deadline is None else deadline - now
            if wait <= 0 or (deadline is None and wait <= _MIN_WAIT_SEC):
                return items, requests, False
            self._wake.wait(min(wait, _POLL_SEC))
            self._wake.clear()

    def _take(self, limit: int) -> list:
        """Remove up to `limit` items from the queue under one lock, stopping after a control item.

        `Queue.get_nowait()` per item would take the queue's lock once per
        event, and every take would contend with the recording threads.
        """
        taken: list = []
        pending = self.queue.queue  # the deque inside queue.Queue, guarded by its mutex
        with self.queue.mutex:
            while pending and len(taken) < limit:
                item = pending.popleft()
                taken.append(item)
                if item is _STOP or type(item) is _FlushRequest:
                    break
            if taken:
                self.queue.not_full.notify_all()
        return taken

    def _idle_timeout(self, now: float) -> float:
        """Return how long an idle writer may wait before maintenance (heartbeat, retry, journal scan) is due."""
        if self._blocked(now):
            wake = self._next_attempt
        elif self.state != "ok" or self.journal.has_data:
            wake = now  # a retry is due, or recording threads spilled: act at once
        else:
            wake = min(self._next_heartbeat, self._next_scan)
        return wake - now

    def _blocked(self, now: float) -> bool:
        return self.state != "ok" and now < self._next_attempt

    def _write_or_spill(self, items: list) -> None:
        if not items:
            return
        if self._blocked(time.monotonic()):
            self._spill(items, f"database {self.state.replace('_', ' ')}: {self.last_error}")
            return
        try:
            self._write(items, replay=False)
        except Exception as error:
            kind = _classify(error)
            if kind == "data":
                self._write_each(items, replay=False)
                return
            self._on_failure(error, kind)
            self._spill(items, f"database {self.state.replace('_', ' ')}: {self.last_error}")

    def _maintain(self) -> None:
        """Send the heartbeat when due (also the probe after an outage), then replay the journal."""
        now = time.monotonic()
        if self._blocked(now):
            return
        if self.state != "ok" or now >= self._next_heartbeat:
            try:
                self._write_heartbeat(stopped=False)
            except Exception as error:
                self._on_failure(error, _classify(error))
                return
            self._next_heartbeat = now + self._settings.heartbeat_interval_sec
        if self.journal.has_data or self._claimed or now >= self._next_scan:
            self._replay_journal(own_only=False)

    def _replay_own_journal(self) -> None:
        """Replay this writer's journal for `flush()`, probing with a heartbeat first while the database was down.

        The probe keeps a flush during an outage from rotating the active
        file, so that repeated flushes do not leave one small file each.
        """
        if not self._own_items_journaled() or self._blocked(time.monotonic()):
            return
        if self.state != "ok":
            try:
                self._write_heartbeat(stopped=False)
            except Exception as error:
                self._on_failure(error, _classify(error))
                return
            self._next_heartbeat = time.monotonic() + self._settings.heartbeat_interval_sec
        self._replay_journal(own_only=True)

    def _shutdown(self) -> None:
        """Write the last heartbeat (with `stopped_at`) and replay this writer's journal, then log the totals.

        `_run` cleared the backoff on the stop item, so this is one attempt
        unless the final write of queued items has just failed.
        """
        stopped_written = False
        replayed = not self._own_items_journaled()
        try:
            for attempt in range(2):
                if attempt == 0 and self._blocked(time.monotonic()):
                    break
                reused = self._conn is not None and not self._conn.closed
                try:
                    if not stopped_written:
                        self._write_heartbeat(stopped=True)
                        stopped_written = True
                    if not replayed:
                        replayed = self._replay_journal(own_only=True)
                    break
                except Exception as error:
                    kind = _classify(error)
                    self._on_failure(error, kind)
                    if kind != "unavailable" or not reused:
                        break  # a failed connect was the one attempt: close() must not wait for a second
                    # The server may have closed this one connection (a restart, an idle timeout):
                    # one fresh connection is worth a try before the heartbeat is given up.
                    self._close_connection()
        finally:
            with contextlib.suppress(OSError):
                self.journal.close()
            self.journal.release(self._claimed)
            self._claimed = []
            self._close_connection()
            self._log_stop(stopped_written=stopped_written, replayed=replayed)

    def _log_stop(self, *, stopped_written: bool, replayed: bool) -> None:
        # Pending spill and replay messages are not flushed: by now the spilled
        # items may be replayed, and the totals below give both counts.
        for log in (self._reject_log, self._drop_log, self._error_log):
            log.flush()
        with self._counts_lock:
            counts = dict(self.counts)
        left = 0 if replayed else counts["spilled"] - self._spilled_at_replay
        if not (stopped_written and replayed):
            logger.warning(
                "event writer %s gave up on the database at stop (%s: %s), and %s. %d items of this writer "
                "stay in the journal in %s for the next collector of this database.",
                self._origin.worker_id, self.state, self.last_error,
                "stopped_at was written" if stopped_written else "stopped_at is not set",
                left, self.journal.folder,
            )
        logger.info(
            "event writer %s stopped: %s; %d items of this writer left in the journal", self._origin.worker_id,
            ", ".join(f"{name} {value}" for name, value in counts.items()), left,
        )

    def _own_items_journaled(self) -> bool:
        """Return whether items of this writer may be in the journal and not yet replayed."""
        with self._counts_lock:
            spilled = self.counts["spilled"]
        return self.journal.has_data or bool(self._claimed) or spilled > self._spilled_at_replay

    def _warn_unscoped_files(self) -> None:
        """Log once when journal files lie directly in `resolved_journal_dir`, where no collector replays them."""
        parent = self.journal.folder.parent
        try:
            count = sum(1 for path in parent.glob("*.jsonl") if _FILE_NAME.match(path.name))
        except OSError:
            return
        if count:
            logger.warning(
                "%d journal files in %s name no database, so no collector replays them. Move each into the "
                "subfolder of the database it was written for (this collector's is %s).",
                count, parent, self.journal.folder.name,
            )

    # Database

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._close_connection()
        raw = get_engine(self._settings).raw_connection()
        conn = raw.driver_connection
        # Detached from the pool: the writer keeps this connection for its
        # lifetime, and a forked child can drop it without the pool closing
        # the parent's session (psycopg itself never closes it in a child).
        raw.detach()
        self._conn = conn
        return conn

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _rollback(self) -> None:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._close_connection()
            return
        try:
            conn.rollback()
        except Exception:
            self._close_connection()

    def _write(self, items: Sequence[Event | BatchOp], *, replay: bool) -> None:
        """Write items in one transaction: batch changes first, then events and their batch counters."""
        conn = self._connection()
        events = [item for item in items if type(item) is Event]
        statements = self._statements
        try:
            with conn.cursor() as cursor:
                for item in items:
                    if type(item) is BatchOp:
                        cursor.execute(getattr(statements, f"{item.op}_batch"), _batch_params(item))
                inserted = insert_events(cursor, statements, events) if events else []
                counts = _batch_counts(inserted)
                if counts[0]:
                    cursor.execute(statements.add_batch_counts, counts)
            conn.commit()
        except BaseException:
            self._rollback()
            raise

        with self._counts_lock:
            self.counts["replayed" if replay else "persisted"] += len(items)
            self.counts["duplicates"] += len(events) - len(inserted)
        self._on_success()

    def _write_each(self, items: Sequence[Event | BatchOp], *, replay: bool) -> None:
        """Write items one by one after a batch was refused, rejecting those the database refuses alone."""
        rejected = []
        for index, item in enumerate(items):
            try:
                self._write([item], replay=replay)
            except Exception as error:
                kind = _classify(error)
                if kind != "data":
                    if replay:
                        raise
                    self._on_failure(error, kind)
                    self._spill(items[index:], f"database {self.state.replace('_', ' ')}: {self.last_error}")
                    break
                rejected.append((item, error))
        if rejected:
            self._reject([encode(item) for item, _ in rejected], first_line(rejected[-1][1]))

    def _reject(self, lines: Sequence[bytes], reason: str) -> None:
        try:
            path = self.journal.reject(lines)
        except OSError as error:
            path = f"nowhere ({first_line(error)})"
        with self._counts_lock:
            self.counts["rejected"] += len(lines)
        self._reject_log.add(len(lines), f"{path}; last reason: {reason}")

    def _write_heartbeat(self, *, stopped: bool) -> None:
        info = self._heartbeat_info()
        conn = self._connection()
        statements = self._statements
        try:
            with conn.cursor() as cursor:
                cursor.execute(statements.heartbeat, {
                    "worker_id": self._origin.worker_id,
                    "host": self._origin.host,
                    "pid": self._origin.pid,
                    "started_at": _utc(self._started_at),
                    "current_model": None if info.current_model is None else info.current_model[:255],
                    "batch_id": info.batch_id,
                    "events_recorded": info.events_recorded,
                    "stopped": stopped,
                })
                if info.running_batches:
                    cursor.execute(statements.refresh_batches, (info.running_batches,))
            conn.commit()
        except BaseException:
            self._rollback()
            raise
        self._on_success()

    def _on_success(self) -> None:
        if self.state == "ok":
            return
        if self._down_since is not None:
            logger.warning(
                "database writable again after %.0f s; replaying the journal in %s",
                time.monotonic() - self._down_since, self.journal.folder,
            )
        self.state = "ok"
        self.last_error = None
        self._down_since = None
        self._backoff = _INITIAL_BACKOFF_SEC
        self._next_scan = 0.0

    def _on_failure(self, error: BaseException, kind: str) -> None:
        """Remember the outage, schedule the next attempt with backoff, and log the first failure."""
        if kind == "unavailable" or (self._conn is not None and self._conn.broken):
            self._close_connection()
        state = "schema_missing" if kind == "schema" else "unavailable"
        message = first_line(error)
        # Jitter, so that the workers of a run do not all retry at the same moment.
        delay = self._backoff * random.uniform(0.5, 1.0)
        self._backoff = min(self._backoff * 2, self._settings.writer_retry_max_sec)
        self._next_attempt = time.monotonic() + delay

        first = self.state != state
        self.state = state
        self.last_error = message
        if self._down_since is None:
            self._down_since = time.monotonic()
        if not isinstance(error, _EXPECTED_ERRORS):
            self._error_log.add(1, f"{type(error).__name__}: {message}")
            logger.debug("unexpected event writer error", exc_info=error)
        if not first:
            logger.debug("database still %s (%s); next attempt in %.1f s", state, message, delay)
            return
        if state == "schema_missing":
            logger.warning(
                "serialmon's tables are missing in the database (%s); events go to the journal in %s "
                "until they exist. Run `serialmon init` to create them.",
                message, self.journal.folder,
            )
        else:
            logger.warning(
                "database unavailable (%s: %s); events go to the journal in %s and are replayed once it is back",
                type(error).__name__, message, self.journal.folder,
            )

    def _replay_journal(self, *, own_only: bool) -> bool:
        """Replay claimable journal files; returns False when a failure left any of them unreplayed.

        A database failure leaves the rest claimed by this writer for the next attempt.
        """
        with self._counts_lock:
            spilled = self.counts["spilled"]  # read before the rotation, so every item counted here is in a file
        whole = own_only or time.monotonic() >= self._next_scan  # every file of this writer gets claimed
        try:
            ready = self.journal.rotate()
            if own_only:
                self._claimed.extend(self.journal.claim(own_only=True))
            elif whole:
                self._claimed.extend(self.journal.claim())
                self._next_scan = time.monotonic() + _SCAN_INTERVAL_SEC
            elif ready is not None:
                self._claimed.extend(self.journal.claim_paths([ready]))
        except OSError as error:
            self._error_log.add(1, f"cannot read the journal folder {self.journal.folder}: {first_line(error)}")
            return False
        complete = True
        while self._claimed:
            path = self._claimed[0]
            try:
                self._replay_file(path)
            except Exception as error:
                kind = _classify(error)
                if isinstance(error, OSError) and kind == "unavailable":
                    self._error_log.add(1, f"cannot replay {path}: {first_line(error)}")
                    self._claimed.pop(0)
                    complete = False
                    continue
                self._on_failure(error, kind)
                return False
            self._claimed.pop(0)
        if whole and complete:
            self._spilled_at_replay = max(self._spilled_at_replay, spilled)
        return complete

    def _replay_file(self, path: Path) -> None:
        """Write every line of one claimed file in batches, then delete the file."""
        limit = self._settings.writer_batch_size
        chunk: list = []
        damaged: list[bytes] = []
        total = 0
        with open(path, "rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    chunk.append(decode(line))
                except (ValueError, KeyError, TypeError):
                    damaged.append(line)
                    continue
                if len(chunk) >= limit:
                    self._write_replayed(chunk)
                    total += len(chunk)
                    chunk = []
        if chunk:
            self._write_replayed(chunk)
            total += len(chunk)
        if damaged:
            self._reject(damaged, f"unreadable lines in {path.name}")
        path.unlink()
        self._replay_log.add(total, f"last file {path.name}")

    def _write_replayed(self, chunk: list) -> None:
        try:
            self._write(chunk, replay=True)
        except Exception as error:
            if _classify(error) != "data":
                raise
            self._write_each(chunk, replay=True)
