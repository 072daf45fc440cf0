"""The metrics collector that the pipeline calls: one per process, from `get_serialize_metrics_collector()`.

    from serialmon import get_serialize_metrics_collector

    collector = get_serialize_metrics_collector()
    batch_id = collector.start_batch_job(total_models=len(paths), name="nightly")
    for path in paths:
        with collector.track(path.name, "part", category="brackets") as tracker:
            content = serialize(path)
            tracker.set_quality(content["serialization_quality"])
    collector.finish_batch_job(batch_id)

Recording validates its arguments: a `ValueError` names the field, the value
and what is allowed, and then nothing is recorded. A valid event updates this
process's live figures (`get_stats()`) and goes on a queue for the background
writer (`serialmon.writer`), so recording never waits on the database.
"""

from __future__ import annotations

import atexit
import difflib
import itertools
import json
import logging
import math
import numbers
import os
import secrets
import socket
import threading
import time
import uuid
import weakref
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from serialmon.config import Settings, get_settings
from serialmon.livestats import RING_MINUTES, LiveStats
from serialmon.writer import BatchOp, Event, EventWriter, HeartbeatInfo, Origin

logger = logging.getLogger(__name__)

STATUSES = ("success", "failure", "skipped")
MODEL_TYPES = ("part", "assembly")
BATCH_END_STATUSES = ("completed", "failed")
MODEL_NAME_MAX = 255
CATEGORY_MAX = 100
BATCH_ID_MAX = 64
BATCH_NAME_MAX = 255
INT_MAX = 2_147_483_647  # the columns are PostgreSQL `integer`
ERROR_MESSAGE_MAX = 4000  # longer messages are cut, with "..." at the end
# 31 days: no model takes longer, and a bound keeps sums and means of the column finite in SQL.
PROCESSING_TIME_MAX_SEC = 31 * 24 * 3600
OCCURRED_AT_MAX_AHEAD_SEC = 24 * 3600

_HOST = socket.gethostname()

# Near misses that get a "Did you mean ...?" hint, besides difflib's close matches.
_STATUS_ALIASES = {
    "failed": "failure", "fail": "failure", "fails": "failure", "error": "failure", "errored": "failure",
    "err": "failure", "ok": "success", "succeeded": "success", "successful": "success", "succeed": "success",
    "done": "success", "completed": "success", "complete": "success", "passed": "success", "pass": "success",
    "skip": "skipped", "ignored": "skipped",
}
_MODEL_TYPE_ALIASES = {
    "prt": "part", "parts": "part", "p": "part", "asm": "assembly", "assy": "assembly", "assem": "assembly",
    "assemblies": "assembly", "a": "assembly",
}
_BATCH_STATUS_ALIASES = {
    "complete": "completed", "done": "completed", "success": "completed", "succeeded": "completed",
    "ok": "completed", "failure": "failed", "fail": "failed", "error": "failed",
}


# Validation


def _show(value: Any) -> str:
    """Return `repr(value)`, shortened for long strings so that messages stay readable."""
    text = repr(value)
    if len(text) <= 60:
        return text
    length = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[:50]}...{length}"


def _suggest(value: Any, choices: tuple[str, ...], aliases: dict[str, str]) -> str | None:
    if not isinstance(value, str):
        return None
    key = value.strip().lower().lstrip(".")
    if key in choices:
        return key
    if key in aliases:
        return aliases[key]
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _choice(field: str, value: Any, choices: tuple[str, ...], aliases: dict[str, str]) -> str:
    if value in choices and type(value) is str:
        return value
    allowed = ", ".join(repr(choice) for choice in choices)
    message = f"Invalid {field}={_show(value)}: expected one of {allowed}."
    suggestion = _suggest(value, choices, aliases)
    if suggestion is not None:
        message += f" Did you mean {suggestion!r}?"
    raise ValueError(message)


def _storable(text: str) -> bool:
    """Return whether PostgreSQL can store `text`: no NUL and valid UTF-8 (no lone surrogates)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(field: str, value: Any, max_length: int, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if type(value) is str and 0 < len(value) <= max_length and not value.isspace() and _storable(value):
        return value
    expected = (
        f"{'None or ' if optional else ''}a non-blank string of at most {max_length} characters "
        "without NUL or unpaired surrogates"
    )
    raise ValueError(f"Invalid {field}={_show(value)}: expected {expected}.")


def _seconds(value: Any) -> float:
    kind = type(value)
    if (kind is float or kind is int) and 0 <= value <= PROCESSING_TIME_MAX_SEC:
        return float(value)
    if (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            and 0 <= value <= PROCESSING_TIME_MAX_SEC):
        return float(value)
    hint = " Pass seconds as a number, for example 42.5." if isinstance(value, str) else ""
    raise ValueError(
        f"Invalid processing_time_sec={_show(value)}: expected a finite number of seconds "
        f"from 0 to {PROCESSING_TIME_MAX_SEC:,}.{hint}"
    )


def _coverage(value: Any) -> float | None:
    if value is None:
        return None
    if type(value) is float and 0 <= value <= 100:
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 100:
        return float(value)
    raise ValueError(
        f"Invalid element_coverage={_show(value)}: expected None or a finite percentage from 0 to 100."
    )


def _count(field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= value <= INT_MAX:
        return int(value)
    hint = " Pass a whole number." if isinstance(value, float) and math.isfinite(value) else ""
    raise ValueError(f"Invalid {field}={_show(value)}: expected None or an integer from 0 to {INT_MAX}.{hint}")


def _tags(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        for index, tag in enumerate(value):
            if type(tag) is not str or not _storable(tag):
                raise ValueError(
                    f"Invalid tags={_show(value)}: expected None or a list of strings, "
                    f"but item {index} is {_show(tag)}."
                )
        return list(value)
    hint = " Wrap a single tag in a list." if isinstance(value, str) else ""
    raise ValueError(f"Invalid tags={_show(value)}: expected None or a list of strings.{hint}")


def _occurred_at(value: Any, now: float) -> float:
    """Return seconds since the epoch; a naive datetime is taken as UTC."""
    if value is None:
        return now
    if isinstance(value, datetime):
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            value = value.replace(tzinfo=timezone.utc)
        try:
            timestamp = value.timestamp()
        except (OverflowError, ValueError, OSError) as error:
            raise ValueError(f"Invalid occurred_at={_show(value)}: {error}.") from None
        if timestamp > now + OCCURRED_AT_MAX_AHEAD_SEC:
            # An event far in the future would sit in every "last N minutes" window until then.
            raise ValueError(
                f"Invalid occurred_at={_show(value)}: expected a time no later than "
                f"{OCCURRED_AT_MAX_AHEAD_SEC // 3600} hours from now (clock skew between hosts allowed)."
            )
        return timestamp
    raise ValueError(
        f"Invalid occurred_at={_show(value)}: expected None or a datetime (a naive datetime is taken as UTC)."
    )


def _error(value: Any) -> tuple[str | None, str | None]:
    """Return (error_type, error_message) for a string or an exception."""
    if value is None:
        return None, None
    if isinstance(value, BaseException):
        error_type: str | None = type(value).__name__
        message = str(value)
    elif isinstance(value, str):
        error_type, message = None, value
    else:
        raise ValueError(f"Invalid error={_show(value)}: expected None, a string or an exception.")
    # Exception texts come from anywhere: replace what PostgreSQL cannot store rather than reject the outcome.
    message = message.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if len(message) > ERROR_MESSAGE_MAX:
        message = message[: ERROR_MESSAGE_MAX - 3] + "..."
    return error_type, message or None


def _details(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        try:
            return json.loads(json.dumps(value))
        except (TypeError, ValueError) as error:
            raise ValueError(f"Invalid details={_show(value)}: expected a JSON-serializable dict ({error}).") from None
    raise ValueError(f"Invalid details={_show(value)}: expected None or a JSON-serializable dict.")


# The collector


_live_collectors: weakref.WeakSet[SerializeMetricsCollector] = weakref.WeakSet()
# Without os.register_at_fork (Windows), a changed pid is the only sign of a new process.
_HAS_FORK_HOOK = hasattr(os, "register_at_fork")


class SerializeMetricsCollector:
    """Records serialization events of one process: live figures in memory, events to PostgreSQL.

    Thread-safe. Every recording method returns without waiting on the
    database. A background writer thread, started on first use, persists
    events in batches and journals them locally while the database cannot be
    written. Tests construct one with explicit settings and close it, and
    applications call `get_serialize_metrics_collector()`.

    After `os.fork()` the child's copy starts afresh: empty live figures, its
    own writer thread and heartbeat worker id, and the parent's queue left
    behind (the parent writes it). It keeps the default batch id.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings or get_settings()
        self._default_batch: str | None = None
        self._setup()
        _live_collectors.add(self)

    def _setup(self) -> None:
        """Create the per-process state: identity, live figures, id source and the (not yet started) writer."""
        self._pid = os.getpid()
        self._started_at = time.time()
        self._token = secrets.token_hex(4)
        self.worker_id = f"{_HOST}:{self._pid}:{int(self._started_at * 1000)}"
        self._origin = Origin(_HOST, self._pid, self.worker_id)
        self._lock = threading.Lock()
        self._stats = LiveStats(
            coverage_warning=self._settings.coverage_warning,
            coverage_critical=self._settings.coverage_critical,
        )
        # Event ids are version-4 UUIDs made of 60 random bits fixed per collector
        # and a counter: cheaper than uuid4(), and two collectors produce the
        # same id only if their random bits match (odds of 2**-60 per pair).
        self._id_prefix = int.from_bytes(os.urandom(8), "big") << 64
        self._id_counter = itertools.count()
        self._current_model: str | None = None
        self._last_batch: str | None = None
        self._running_batches: dict[str, None] = {}  # started here and not finished, in start order
        self._writer: EventWriter | None = None
        self._closed = False

    def _after_fork_in_child(self) -> None:
        writer = self._writer
        if writer is not None:
            writer.abandon()  # its thread did not survive the fork and its connection is the parent's
        self._setup()

    # Writer

    def _ensure_writer(self) -> EventWriter:
        if not _HAS_FORK_HOOK and os.getpid() != self._pid:
            self._after_fork_in_child()
        writer = self._writer
        if writer is not None:
            return writer
        with self._lock:
            if self._writer is None:
                writer = EventWriter(
                    self._settings, self._origin, self._heartbeat_info, started_at=self._started_at, token=self._token
                )
                writer.start()
                _close_in_multiprocessing_child()
                if self._closed:
                    logger.info("collector %s used again after close(); starting a new writer", self.worker_id)
                self._closed = False
                self._writer = writer
            return self._writer

    def _heartbeat_info(self) -> HeartbeatInfo:
        running = list(self._running_batches)
        return HeartbeatInfo(
            current_model=self._current_model,
            batch_id=self._last_batch or (running[-1] if running else None),
            events_recorded=self._stats.recorded,
            running_batches=running,
        )

    # Recording

    def record_serialization_sync(
        self,
        model_name: str,
        model_type: str,
        status: str,
        processing_time_sec: float,
        element_coverage: float | None = None,
        category: str | None = None,
        *,
        unrecoverable_unknown: int | None = None,
        feature_count: int | None = None,
        batch_id: str | None = None,
        error: str | BaseException | None = None,
        tags: list[str] | None = None,
        occurred_at: datetime | None = None,
    ) -> uuid.UUID:
        """Record one model's outcome and return the event id; never waits on the database.

        `status` is "success", "failure" or "skipped"; `model_type` "part" or
        "assembly"; `processing_time_sec` seconds (finite, >= 0);
        `element_coverage` a percentage (0-100) or None; `error` a message or
        an exception (its type name and message are stored apart);
        `occurred_at` defaults to now, and a naive datetime is taken as UTC.
        `batch_id` defaults to the latest batch this process started and has
        not finished. Raises `ValueError` naming the field, the value and what
        is allowed; then nothing is recorded.
        """
        if not _HAS_FORK_HOOK and self._pid != os.getpid():
            self._after_fork_in_child()
        now = time.time()
        model_type = _choice("model_type", model_type, MODEL_TYPES, _MODEL_TYPE_ALIASES)
        status = _choice("status", status, STATUSES, _STATUS_ALIASES)
        event = Event(
            uuid.UUID(int=self._id_prefix | next(self._id_counter), version=4),
            _occurred_at(occurred_at, now),
            _text("model_name", model_name, MODEL_NAME_MAX, optional=False),
            model_type,
            status,
            _seconds(processing_time_sec),
            _coverage(element_coverage),
            _count("unrecoverable_unknown", unrecoverable_unknown),
            _count("feature_count", feature_count),
            _text("category", category, CATEGORY_MAX, optional=True),
            _text("batch_id", batch_id, BATCH_ID_MAX, optional=True) or self._default_batch,
            *_error(error),
            _tags(tags),
            self._origin,
        )
        writer = self._writer or self._ensure_writer()

        self._stats.add(
            model_type, status, event.processing_time_sec, event.element_coverage, event.category,
            event.unrecoverable_unknown, now,
        )
        self._current_model = event.model_name
        self._last_batch = event.batch_id
        writer.submit(event)
        return event.event_id

    async def record_serialization(
        self,
        model_name: str,
        model_type: str,
        status: str,
        processing_time_sec: float,
        element_coverage: float | None = None,
        category: str | None = None,
        *,
        unrecoverable_unknown: int | None = None,
        feature_count: int | None = None,
        batch_id: str | None = None,
        error: str | BaseException | None = None,
        tags: list[str] | None = None,
        occurred_at: datetime | None = None,
    ) -> uuid.UUID:
        """Async twin of `record_serialization_sync()`, with the same arguments, result and errors.

        It does not block the event loop: recording only queues the event
        (or, with the queue full, appends one line to the local journal).
        """
        return self.record_serialization_sync(
            model_name, model_type, status, processing_time_sec, element_coverage, category,
            unrecoverable_unknown=unrecoverable_unknown, feature_count=feature_count, batch_id=batch_id,
            error=error, tags=tags, occurred_at=occurred_at,
        )

    def track(
        self,
        model_name: str,
        model_type: str,
        category: str | None = None,
        *,
        batch_id: str | None = None,
        tags: list[str] | None = None,
        element_coverage: float | None = None,
        unrecoverable_unknown: int | None = None,
        feature_count: int | None = None,
    ) -> ModelTracker:
        """Return a context manager (`with` or `async with`) that times a block and records its outcome.

        The block succeeds: records "success" (or "skipped" after
        `tracker.skip()`) with the figures attached to the tracker. The block
        raises an `Exception`: records "failure" with the exception's type name
        and message, and re-raises it. `KeyboardInterrupt`, `SystemExit` and
        task cancellation record nothing. Arguments are validated here, as in
        `record_serialization_sync()`.

            with collector.track("bracket.prt", "part", category="brackets") as tracker:
                content = serialize("bracket.prt")
                tracker.set_quality(content["serialization_quality"])
        """
        return ModelTracker(
            self, model_name, model_type, category, batch_id=batch_id, tags=tags,
            element_coverage=element_coverage, unrecoverable_unknown=unrecoverable_unknown,
            feature_count=feature_count,
        )

    # Batch jobs

    def start_batch_job(
        self,
        total_models: int | None = None,
        name: str | None = None,
        batch_id: str | None = None,
        *,
        details: dict[str, Any] | None = None,
    ) -> str:
        """Start a batch and return its id (a new UUID string unless given); never waits on the database.

        Events recorded without a `batch_id` count towards the latest batch
        this process started and has not finished. While the batch runs, the
        writer refreshes its `heartbeat_at` with each heartbeat. When the
        database is down the row is written later, as events are.
        """
        total_models = _count("total_models", total_models)
        name = _text("name", name, BATCH_NAME_MAX, optional=True)
        batch_id = _text("batch_id", batch_id, BATCH_ID_MAX, optional=True) or str(uuid.uuid4())
        details = _details(details)
        writer = self._ensure_writer()
        with self._lock:
            self._running_batches.pop(batch_id, None)
            self._running_batches[batch_id] = None
            self._default_batch = batch_id
        writer.submit(BatchOp("start", batch_id, time.time(), name, total_models, None, details, True, self._origin))
        return batch_id

    def update_batch_job(
        self,
        batch_id: str,
        *,
        total_models: int | None = None,
        heartbeat: bool = True,
        name: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Change a batch's total, name or details (merged into the stored JSON); never waits on the database.

        With `heartbeat` (the default) the batch's `heartbeat_at` moves to now.
        Progress counters are not set here: the writer counts the events it
        stores.
        """
        batch_id = _text("batch_id", batch_id, BATCH_ID_MAX, optional=False)
        total_models = _count("total_models", total_models)
        name = _text("name", name, BATCH_NAME_MAX, optional=True)
        details = _details(details)
        if not isinstance(heartbeat, bool):
            raise ValueError(f"Invalid heartbeat={_show(heartbeat)}: expected True or False.")
        self._ensure_writer().submit(
            BatchOp("update", batch_id, time.time(), name, total_models, None, details, heartbeat, self._origin)
        )

    def finish_batch_job(self, batch_id: str, status: str = "completed") -> None:
        """Mark a batch "completed" or "failed"; never waits on the database."""
        batch_id = _text("batch_id", batch_id, BATCH_ID_MAX, optional=False)
        status = _choice("status", status, BATCH_END_STATUSES, _BATCH_STATUS_ALIASES)
        writer = self._ensure_writer()
        with self._lock:
            self._running_batches.pop(batch_id, None)
            if self._default_batch == batch_id:
                running = list(self._running_batches)
                self._default_batch = running[-1] if running else None
        writer.submit(BatchOp("finish", batch_id, time.time(), None, None, status, None, False, self._origin))

    # Reading

    def get_stats(self, minutes: int = 60) -> dict[str, Any]:
        """Return this process's live figures: whole run, and the last `minutes` minutes under "window".

        `minutes` is 1 to 360. Keys: identity (`worker_id`, `host`, `pid`,
        `started_at`, `generated_at`, `current_model`, `batch_id`,
        `running_batches`), `totals`, `success_rate`, `failure_rate`,
        `processing_time_sec`, `throughput_per_hour`, `coverage`,
        `unrecoverable_unknown`, `window` and `writer`; docs/collector.md
        describes each.
        """
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= RING_MINUTES:
            raise ValueError(f"Invalid minutes={_show(minutes)}: expected an integer from 1 to {RING_MINUTES}.")
        snapshot = self._stats.snapshot(minutes)
        started = snapshot.pop("started_at")
        writer = self._writer
        return {
            "worker_id": self.worker_id,
            "host": _HOST,
            "pid": self._pid,
            "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(),
            "generated_at": datetime.now(timezone.utc).isoformat(),
            "current_model": self._current_model,
            "batch_id": self._default_batch,
            "running_batches": list(self._running_batches),
            **snapshot,
            "writer": writer.stats() if writer is not None else {"database": "not started", "queued": 0},
        }

    def export_json(self, minutes: int = 60) -> str:
        """Return `get_stats(minutes)` as indented JSON text."""
        return json.dumps(self.get_stats(minutes), indent=2)

    async def get_db_snapshot(self, session: Any = None, *, minutes: int | None = None) -> dict[str, Any]:
        """Return the fleet-wide state read from the database (every process, every host).

        `session` may be an `AsyncSession`, `AsyncConnection`, `Session`,
        `Connection` or None (serialmon's own engine); the query runs through
        `serialmon.db.arun`, so the event loop is not blocked. Events this
        process recorded in the last `writer_flush_interval_sec` may not be
        written yet; call `flush()` first when they must be included.
        """
        from serialmon.db import arun
        from serialmon.readmodel import get_snapshot

        settings = self._settings
        return await arun(session, lambda conn: get_snapshot(conn, settings, minutes=minutes), settings)

    # Lifecycle

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event recorded so far is in the database or in the fsynced journal.

        Blocks the calling thread up to `timeout` seconds (None: no limit);
        returns False on timeout. When this process has journaled events and
        the database is reachable again, the flush replays them first. Events that
        stay journaled because the database is still down reach it later,
        when the writer replays the journal.
        """
        writer = self._writer
        if writer is None:
            return True
        return writer.flush(timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Write what is queued, send the last heartbeat (`stopped_at`) and stop the writer thread.

        Returns False when the writer did not finish within `timeout` seconds;
        what it had not written is then journaled. Recording after `close()`
        starts a new writer. Runs for every open collector at interpreter exit.
        """
        with self._lock:
            writer, self._writer = self._writer, None
            self._closed = True
        if writer is None:
            return True
        return writer.close(timeout)

    def __enter__(self) -> SerializeMetricsCollector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ModelTracker:
    """Handle that a `track()` block receives, to attach figures or mark the model skipped.

    Attributes `element_coverage`, `unrecoverable_unknown` and `feature_count`
    are validated when set (a `ValueError` at the assignment). After the
    block, `event_id`, `status` and `processing_time_sec` hold what was
    recorded.
    """

    def __init__(
        self,
        collector: SerializeMetricsCollector,
        model_name: str,
        model_type: str,
        category: str | None,
        *,
        batch_id: str | None,
        tags: list[str] | None,
        element_coverage: float | None,
        unrecoverable_unknown: int | None,
        feature_count: int | None,
    ) -> None:
        self._collector = collector
        self.model_name = _text("model_name", model_name, MODEL_NAME_MAX, optional=False)
        self.model_type = _choice("model_type", model_type, MODEL_TYPES, _MODEL_TYPE_ALIASES)
        self.category = _text("category", category, CATEGORY_MAX, optional=True)
        self.batch_id = _text("batch_id", batch_id, BATCH_ID_MAX, optional=True)
        self.tags = _tags(tags)
        self._element_coverage = _coverage(element_coverage)
        self._unrecoverable_unknown = _count("unrecoverable_unknown", unrecoverable_unknown)
        self._feature_count = _count("feature_count", feature_count)
        self.skipped = False
        self.skip_reason: str | None = None
        self.event_id: uuid.UUID | None = None
        self.status: str | None = None
        self.processing_time_sec: float | None = None
        self._started: float | None = None

    @property
    def element_coverage(self) -> float | None:
        return self._element_coverage

    @element_coverage.setter
    def element_coverage(self, value: float | None) -> None:
        self._element_coverage = _coverage(value)

    @property
    def unrecoverable_unknown(self) -> int | None:
        return self._unrecoverable_unknown

    @unrecoverable_unknown.setter
    def unrecoverable_unknown(self, value: int | None) -> None:
        self._unrecoverable_unknown = _count("unrecoverable_unknown", value)

    @property
    def feature_count(self) -> int | None:
        return self._feature_count

    @feature_count.setter
    def feature_count(self, value: int | None) -> None:
        self._feature_count = _count("feature_count", value)

    def set_quality(self, quality: Any) -> None:
        """Take coverage, unrecoverable unknowns and feature count from a `serialization_quality` dict.

        Also accepts a whole `serialized_content` dict (or its JSON text) or a
        `serialmon.quality.Quality`, read as `parse_quality()` reads them.
        Quality that cannot be read leaves the figures unknown (None) and logs
        the reason at debug level; it never raises.
        """
        from serialmon.quality import Quality, parse_quality

        if isinstance(quality, Quality):
            parsed = quality
        elif isinstance(quality, dict) and "serialization_quality" not in quality and "features" not in quality:
            parsed = parse_quality({"serialization_quality": quality})
        else:
            parsed = parse_quality(quality)
        if not parsed.known:
            logger.debug("quality of %s is unknown: %s", self.model_name, parsed.reason)
            return
        try:
            coverage = _coverage(parsed.element_coverage)
            unrecoverable = _count("unrecoverable_unknown", parsed.unrecoverable_unknown)
            features = _count("feature_count", parsed.total_features)
        except ValueError as error:  # a count beyond the integer column, for example
            logger.debug("quality of %s is not usable: %s", self.model_name, error)
            return
        self._element_coverage = coverage
        self._unrecoverable_unknown = unrecoverable
        if features is not None:
            self._feature_count = features

    def skip(self, reason: str | None = None) -> None:
        """Record the model as "skipped" when the block ends; `reason` is stored as the error message."""
        self.skipped = True
        self.skip_reason = reason

    # Context manager protocol

    def __enter__(self) -> ModelTracker:
        self._collector._current_model = self.model_name
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        elapsed = time.perf_counter() - (self._started or time.perf_counter())
        self.processing_time_sec = elapsed
        if exc is not None and not isinstance(exc, Exception):
            return False  # interrupted or cancelled: not an outcome of the model
        if exc is None:
            status = "skipped" if self.skipped else "success"
            error: str | BaseException | None = self.skip_reason if self.skipped else None
        else:
            status, error = "failure", exc
        try:
            self.event_id = self._collector.record_serialization_sync(
                self.model_name, self.model_type, status, elapsed, self._element_coverage, self.category,
                unrecoverable_unknown=self._unrecoverable_unknown, feature_count=self._feature_count,
                batch_id=self.batch_id, error=error, tags=self.tags,
            )
        except ValueError:
            if exc is None:
                raise
            logger.exception("could not record the failure of %s", self.model_name)
        self.status = status
        return False

    async def __aenter__(self) -> ModelTracker:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        return self.__exit__(exc_type, exc, traceback)


# The process-wide collector

_collector: SerializeMetricsCollector | None = None
_collector_lock = threading.Lock()


def get_serialize_metrics_collector() -> SerializeMetricsCollector:
    """Return this process's collector, created from `get_settings()` on first use; thread-safe.

    A forked child gets a fresh one (own writer thread and worker id). The
    settings are read once: call `reset_serialize_metrics_collector()` after
    changing them.
    """
    global _collector
    collector = _collector
    if collector is not None and (_HAS_FORK_HOOK or collector._pid == os.getpid()):
        return collector
    with _collector_lock:
        if _collector is None or (not _HAS_FORK_HOOK and _collector._pid != os.getpid()):
            _collector = SerializeMetricsCollector(get_settings())
        return _collector


def reset_serialize_metrics_collector(*, close: bool = True, timeout: float | None = 10.0) -> None:
    """Forget the process-wide collector (closing it unless `close=False`); for tests and new settings."""
    global _collector
    with _collector_lock:
        collector, _collector = _collector, None
    if collector is not None and close:
        collector.close(timeout)


def _after_fork_in_child() -> None:
    global _collector_lock
    _collector_lock = threading.Lock()
    for collector in list(_live_collectors):
        collector._after_fork_in_child()


def _close_at_exit() -> None:
    """Flush and stop every collector of this process when the interpreter exits."""
    for collector in list(_live_collectors):
        if collector._pid != os.getpid():
            continue
        try:
            collector.close(timeout=10.0)
        except Exception:  # exit must go on; the journal keeps what was not written
            logger.exception("closing collector %s at exit failed", collector.worker_id)


_finalizer_pid: int | None = None


def _close_in_multiprocessing_child() -> None:
    """Close the collectors when a `multiprocessing` child ends, which skips `atexit` (it calls `os._exit`).

    `multiprocessing` runs its own finalizers when a child's target returns,
    so events queued in a worker are written before it exits. A child
    killed by `Pool.terminate()` runs no finalizer: call `flush()` at the end
    of each task there.
    """
    global _finalizer_pid
    import sys

    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None or _finalizer_pid == os.getpid() or multiprocessing.parent_process() is None:
        return
    _finalizer_pid = os.getpid()
    from multiprocessing.util import Finalize

    Finalize(None, _close_at_exit, exitpriority=100)


if _HAS_FORK_HOOK:
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_at_exit)
