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
TAGS_MAX = 100
TAG_MAX = 255
DETAILS_MAX_BYTES = 64 * 1024  # max size of a batch's `details` in one call, as compact UTF-8 JSON
ERROR_MESSAGE_MAX = 4000  # longer messages are cut, with "..." at the end
# 31 days: no model takes longer, and a bound keeps sums and means of the column finite in SQL.
PROCESSING_TIME_MAX_SEC = 31 * 24 * 3600
OCCURRED_AT_MAX_AHEAD_SEC = 24 * 3600
# A time before 1970 is a default such as `datetime.min`, not the time of a serialization.
OCCURRED_AT_MIN = datetime(1970, 1, 1, tzinfo=timezone.utc)

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
    """Return `repr(value)` shortened for messages, or a placeholder when repr() fails."""
    try:
        text = repr(value)
    except Exception:  # an int beyond sys.get_int_max_str_digits(), or a broken __repr__
        if isinstance(value, int):
            return f"<int of {value.bit_length():,} bits>"
        return f"<{type(value).__name__} without a printable repr>"
    if len(text) <= 60:
        return text
    if isinstance(value, str):
        length = f" ({len(value)} characters)"
    elif isinstance(value, int):
        length = f" ({len(text.lstrip('-'))} digits)"
    else:
        length = ""
    return f"{text[:50]}...{length}"


def _plain(value: Any) -> Any:
    """Return an instance of a `str` subclass (such as `numpy.str_`) as a plain `str`, and other values unchanged."""
    if isinstance(value, str) and type(value) is not str:
        # str.__str__ copies the characters, whatever the subclass's own __str__ returns.
        return str.__str__(value)
    return value


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
    if type(value) is not str:
        value = _plain(value)
    if type(value) is str and value in choices:
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
    if type(value) is not str:
        value = _plain(value)
    if type(value) is str and 0 < len(value) <= max_length and not value.isspace() and _storable(value):
        return value
    expected = (
        f"{'None or ' if optional else ''}a non-blank string of at most {max_length} characters "
        "without NUL or unpaired surrogates"
    )
    raise ValueError(f"Invalid {field}={_show(value)}: expected {expected}.")


def _finite_float(value: Any) -> float | None:
    """Return a real number (not `bool`) as a finite float, or None when it is not one or does not fit a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):  # 10**400, for example
        return None
    return number if math.isfinite(number) else None


def _seconds(value: Any) -> float:
    kind = type(value)
    if (kind is float or kind is int) and 0 <= value <= PROCESSING_TIME_MAX_SEC:
        return float(value)
    number = _finite_float(value)
    if number is not None and 0 <= number <= PROCESSING_TIME_MAX_SEC:
        return number
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
    number = _finite_float(value)
    if number is not None and 0 <= number <= 100:
        return number
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
    expected = (
        f"None or a list of at most {TAGS_MAX} strings of 1 to {TAG_MAX} characters "
        "without NUL or unpaired surrogates"
    )
    if not isinstance(value, (list, tuple)):
        hint = " Wrap a single tag in a list." if isinstance(value, str) else ""
        raise ValueError(f"Invalid tags={_show(value)}: expected {expected}.{hint}")
    if len(value) > TAGS_MAX:
        raise ValueError(f"Invalid tags={_show(value)}: expected {expected}, but it has {len(value)} items.")

    tags = []
    for index, tag in enumerate(value):
        tag = _plain(tag)
        # The length check comes first, so that a huge tag is not encoded to find out.
        if type(tag) is not str or not 0 < len(tag) <= TAG_MAX or not _storable(tag):
            raise ValueError(f"Invalid tags={_show(value)}: expected {expected}, but item {index} is {_show(tag)}.")
        tags.append(tag)
    return tags


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
        # An event far in the future would sit in every "last N minutes" window until then.
        if not OCCURRED_AT_MIN.timestamp() <= timestamp <= now + OCCURRED_AT_MAX_AHEAD_SEC:
            raise ValueError(
                f"Invalid occurred_at={_show(value)}: expected a time from 1970-01-01 00:00 UTC to "
                f"{OCCURRED_AT_MAX_AHEAD_SEC // 3600} hours from now (the margin allows for clock skew between hosts)."
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
        try:
            message = str(value)
        except Exception:  # a broken __str__ must not replace the outcome being recorded
            message = f"<unprintable {error_type}>"
    elif isinstance(value, str):
        error_type, message = None, _plain(value)
    else:
        raise ValueError(f"Invalid error={_show(value)}: expected None, a string or an exception.")
    # Exception texts come from anywhere: replace what PostgreSQL cannot store rather than reject the outcome.
    message = message.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if len(message) > ERROR_MESSAGE_MAX:
        message = message[: ERROR_MESSAGE_MAX - 3] + "..."
    return error_type, message or None


def _details(value: Any) -> dict[str, Any] | None:
    """Return a plain JSON copy of a batch's `details`, or raise if PostgreSQL's `jsonb` would reject it."""
    if value is None:
        return None
    expected = (
        "None or a JSON-serializable dict without NaN, Infinity, NUL or unpaired surrogates, "
        f"at most {DETAILS_MAX_BYTES:,} bytes as compact JSON"
    )
    if not isinstance(value, dict):
        raise ValueError(f"Invalid details={_show(value)}: expected {expected}.")
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError) as error:  # unserializable, circular or too deeply nested
        raise ValueError(f"Invalid details={_show(value)}: expected {expected} ({error}).") from None

    # PostgreSQL would reject the whole batch row when the writer stores it, long after this call returned.
    problem = _jsonb_problem(value)
    if problem is None and len(text.encode("utf-8")) > DETAILS_MAX_BYTES:
        problem = f"it is {len(text.encode('utf-8')):,} bytes"
    if problem is not None:
        raise ValueError(f"Invalid details={_show(value)}: expected {expected}, but {problem}.")
    return json.loads(text)


def _jsonb_problem(value: Any) -> str | None:
    """Return where JSON that `json.dumps` accepted has a value `jsonb` cannot store, or None.

    `jsonb` has no NaN or Infinity and stores no NUL or unpaired surrogate in
    strings. The walk uses a stack, not recursion, because the nesting depth
    is the caller's.
    """
    stack: list[tuple[str, Any]] = [("details", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and not _storable(key):
                    return f"the key {_show(key)} in {_short_path(path)} contains NUL or an unpaired surrogate"
                if isinstance(key, float) and not math.isfinite(key):
                    return f"{_short_path(path)} has the key {_json_float(key)}"
                stack.append((f"{path}[{_show(key)}]", child))
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{path}[{index}]", child) for index, child in enumerate(item))
        elif isinstance(item, str) and not _storable(item):
            return f"{_short_path(path)} contains NUL or an unpaired surrogate"
        elif isinstance(item, float) and not math.isfinite(item):
            return f"{_short_path(path)} is {_json_float(item)}"
    return None


def _short_path(path: str) -> str:
    """Return a path such as `details['a'][0]`, with the middle cut out when it is long (deep nesting)."""
    return path if len(path) <= 120 else f"{path[:60]}...{path[-60:]}"


def _json_float(value: float) -> str:
    """Return the name that `json.dumps` gives a non-finite float: NaN, Infinity or -Infinity."""
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


# The collector


_live_collectors: weakref.WeakSet[SerializeMetricsCollector] = weakref.WeakSet()
# get_stats()["writer"] before the first record: the keys of EventWriter.stats(), in its order.
_WRITER_NOT_STARTED: dict[str, Any] = {
    "database": "not started", "last_error": None, "queued": 0, "persisted": 0, "duplicates": 0, "spilled": 0,
    "replayed": 0, "rejected": 0, "dropped": 0, "journal_dir": None,
}
# Without os.register_at_fork (Windows), a changed pid is the only sign of a new process.
_HAS_FORK_HOOK = hasattr(os, "register_at_fork")
# Numbers of track() blocks; module-wide, so that a block open across a fork keeps a number the child never reuses.
_block_numbers = itertools.count()


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
        # The track() blocks running now, in entry order (block number -> model name). The latest of
        # them, or else the last recorded model, is `current_model`.
        self._open_blocks: dict[int, str] = {}
        self._open_blocks_lock = threading.Lock()
        self._last_model: str | None = None
        self._last_batch: str | None = None
        self._running_batches: dict[str, None] = {}  # started here and not finished, in start order
        self._writer: EventWriter | None = None
        self._closed_writer_stats: dict[str, Any] | None = None  # what get_stats() shows after close()
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

    def _current_model(self) -> str | None:
        """Return the model of the latest `track()` block still open, or else the last recorded model."""
        with self._open_blocks_lock:
            if self._open_blocks:
                return next(reversed(self._open_blocks.values()))
        return self._last_model

    def _open_block(self, model_name: str) -> int:
        """Register a `track()` block that starts now and return its number for `_close_block()`."""
        number = next(_block_numbers)
        with self._open_blocks_lock:
            self._open_blocks[number] = model_name
        return number

    def _close_block(self, number: int) -> None:
        with self._open_blocks_lock:
            self._open_blocks.pop(number, None)

    def _heartbeat_info(self) -> HeartbeatInfo:
        running = list(self._running_batches)
        return HeartbeatInfo(
            current_model=self._current_model(),
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
        not finished. Strings may be `str` subclasses such as `numpy.str_`;
        they are stored as plain `str`. docs/collector.md lists every bound.
        Raises `ValueError` naming the field, the value and what is allowed;
        then nothing is recorded.
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
        self._last_model = event.model_name
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
        and message, and re-raises it unchanged, even when recording fails or
        its `__str__` raises. `KeyboardInterrupt`, `SystemExit` and task
        cancellation record nothing, and that includes an `asyncio.timeout()`
        or `wait_for()` around the block: put the timeout inside the block to
        record it as a failure. Arguments are validated here, as in
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
        database is down the row is written later, as events are. `details`
        is a JSON-serializable dict without NaN, Infinity, NUL or unpaired
        surrogates, of at most `DETAILS_MAX_BYTES` as compact UTF-8 JSON.
        Raises `ValueError` naming the field, the value and what is allowed;
        then nothing is queued.
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
        stores. Arguments are validated as in `start_batch_job()`.
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
        `unrecoverable_unknown`, `window` and `writer` (every key of it also
        before the writer starts); docs/collector.md describes each.
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
            "current_model": self._current_model(),
            "batch_id": self._default_batch,
            "running_batches": list(self._running_batches),
            **snapshot,
            "writer": writer.stats() if writer is not None else dict(self._closed_writer_stats or _WRITER_NOT_STARTED),
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
        what it had not written is then journaled. Afterwards `get_stats()["writer"]`
        keeps the closed writer's final counts. Recording after `close()`
        starts a new writer. Runs for every open collector at interpreter exit.
        """
        with self._lock:
            writer, self._writer = self._writer, None
            self._closed = True
        if writer is None:
            return True
        closed = writer.close(timeout)
        self._closed_writer_stats = writer.stats()
        return closed

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
        self._block: int | None = None

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
        self._block = self._collector._open_block(self.model_name)
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        """Record the block's outcome; never suppresses, replaces or masks the block's exception."""
        try:
            self._record_outcome(exc)
        finally:
            # However the block ended, it no longer names `current_model`.
            if self._block is not None:
                self._collector._close_block(self._block)
        return False

    def _record_outcome(self, exc: BaseException | None) -> None:
        elapsed = time.perf_counter() - (self._started or time.perf_counter())
        self.processing_time_sec = elapsed
        if exc is not None and not isinstance(exc, Exception):
            return  # interrupted or cancelled: not an outcome of the model
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
        except Exception:
            if exc is None:
                raise
            # Broad, because the pipeline's exception propagates next and nothing may take its place.
            logger.exception("could not record the failure of %s", self.model_name)
            return
        self.status = status

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
