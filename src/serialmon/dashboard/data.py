"""The dashboard's data layer: read-model, monitor and alert calls, cached briefly and keyed by the filters.

Nothing here writes SQL; every figure comes from `serialmon.readmodel`,
`serialmon.monitor` or `serialmon.alerts`. Results are cached with
`st.cache_data` for `CACHE_TTL_SEC` seconds per (database, filters), so
switching views and reruns within that time cost nothing. Errors are never
cached: a failed call raises, the page shows the problem, and the next run
tries again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import streamlit as st
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from serialmon.config import Settings
from serialmon.db import database_url, describe_url, dispose_engines, run_sync
from serialmon.errors import DatabaseUnavailable, EmbeddedServerError, MissingTable, SerialmonError, SettingsError
from serialmon.readmodel import (
    Filters,
    data_extent,
    failure_examples,
    filter_options,
    get_snapshot,
    recent_models,
    size_history,
    trends,
    window_filters,
    worst_models,
)

logger = logging.getLogger(__name__)

CACHE_TTL_SEC = 10  # shorter than the shortest auto-refresh interval, so every refresh reads new figures
OPTIONS_TTL_SEC = 60  # categories change rarely, and reading them scans every event
DATABASE_TTL_SEC = 30  # the database report reads catalog statistics and a TABLESAMPLE of the table
RECENT_LIMIT = 500
WORST_LIMIT = 25
ALERT_HISTORY_LIMIT = 500
TREND_POINTS_TARGET = 48  # trends aim at about this many buckets, whatever the range

# Relative time ranges offered in the sidebar, in minutes; None means a custom date range.
TIME_RANGES: dict[str, float | None] = {
    "Last hour": 60,
    "Last 6 hours": 6 * 60,
    "Last 24 hours": 24 * 60,
    "Last 7 days": 7 * 24 * 60,
    "Last 30 days": 30 * 24 * 60,
    "Last 90 days": 90 * 24 * 60,
    "Custom dates": None,
}
DEFAULT_TIME_RANGE = "Last 24 hours"
_BUCKET_CHOICES_MIN = (1, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)

# Errors a data call can raise that the page turns into a message.
DATA_ERRORS = (SerialmonError, SQLAlchemyError, OSError)


@dataclass(frozen=True)
class ViewFilters:
    """The sidebar's choices; every view reads through them.

    A relative range (`range_minutes`) ends at the database's now; a custom
    range is [`since`, `until`) in UTC. Category, type and coverage limit
    every figure. The time range limits event figures only, because the
    ledger figures (quality, worst models) describe the table as it is now.
    """

    categories: tuple[str, ...] = ()
    model_type: str | None = None
    coverage_min: float | None = None
    coverage_max: float | None = None
    range_minutes: float | None = 24 * 60
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.range_minutes is None and (self.since is None or self.until is None):
            raise ValueError("a custom range needs both since and until: pick two dates")
        self.read_model_filters()  # raises ValueError naming a bad field

    @classmethod
    def from_dates(cls, first: date, last: date, **choices: Any) -> ViewFilters:
        """Return filters for the whole UTC days from `first` to `last`, both included."""
        since = datetime.combine(first, time.min, tzinfo=timezone.utc)
        until = datetime.combine(last, time.min, tzinfo=timezone.utc) + timedelta(days=1)
        return cls(range_minutes=None, since=since, until=until, **choices)

    def read_model_filters(self) -> Filters:
        """Return the read model's `Filters`; a relative range is applied later, against the database's now."""
        return Filters(
            categories=self.categories,
            model_type=self.model_type,
            coverage_min=self.coverage_min,
            coverage_max=self.coverage_max,
            since=self.since if self.range_minutes is None else None,
            until=self.until if self.range_minutes is None else None,
        )

    @property
    def hours(self) -> float:
        """Length of the time range in hours."""
        if self.range_minutes is not None:
            return self.range_minutes / 60
        return (self.until - self.since) / timedelta(hours=1)

    @property
    def bucket_minutes(self) -> int:
        """Trend bucket length: the smallest usual length that gives at most about 48 buckets."""
        wanted = self.hours * 60 / TREND_POINTS_TARGET
        return next((minutes for minutes in _BUCKET_CHOICES_MIN if minutes >= wanted), _BUCKET_CHOICES_MIN[-1])

    @property
    def active(self) -> dict[str, Any]:
        """The category, type and coverage filters that are set, for captions."""
        chosen = {
            "category": ", ".join(self.categories) or None,
            "type": self.model_type,
            "coverage": _coverage_text(self.coverage_min, self.coverage_max),
        }
        return {name: value for name, value in chosen.items() if value is not None}


def _coverage_text(low: float | None, high: float | None) -> str | None:
    if low is None and high is None:
        return None
    return f"{low if low is not None else 0:g}-{high if high is not None else 100:g} %"


@dataclass(frozen=True)
class Source:
    """The settings the page reads with, and a fingerprint that keys the cache by database and settings."""

    settings: Settings = field(compare=False)
    fingerprint: str


def source_for(settings: Settings) -> Source:
    """Return the `Source` of `settings`; the fingerprint is a hash, so no secret enters a cache key."""
    url = settings.database_url.get_secret_value() if settings.database_url is not None else ""
    digest = hashlib.sha256()
    digest.update(url.encode())
    digest.update(settings.model_dump_json().encode())
    return Source(settings=settings, fingerprint=digest.hexdigest())


def describe_database(settings: Settings) -> str:
    """Return the database the dashboard reads, as a URL with the password masked."""
    try:
        return describe_url(database_url(settings, start_embedded=False))
    except DATA_ERRORS:
        return "the embedded PostgreSQL (not running)"


# Problems


@dataclass(frozen=True)
class Problem:
    """A reason the page cannot show figures, with its fix."""

    kind: str  # "unavailable", "schema", "table", "settings" or "error"
    title: str
    cause: str
    fix: str


def describe_problem(error: BaseException, settings: Settings | None) -> Problem:
    """Return the `Problem` behind a data call's error, with secrets masked; logs it once per call.

    After a connection failure every pooled connection is dropped, so the
    next run connects afresh and the page recovers as soon as the database
    is back.
    """
    cause = _mask_secrets(_first_line(error), settings)
    if isinstance(error, SettingsError):
        return Problem("settings", "A setting is invalid", cause, "Fix the variable named above and reload the page.")
    if isinstance(error, (DatabaseUnavailable, EmbeddedServerError)) or _is_connection_error(error):
        dispose_engines()
        logger.warning("dashboard: the database is unavailable: %s", cause)
        fix = getattr(error, "fix", None) or (
            "Check MODEL_DATA_DB_URL / DATABASE_URL and that the server is running (`serialmon doctor`)."
        )
        return Problem("unavailable", "The database cannot be reached", cause, _mask_secrets(fix, settings))
    if isinstance(error, MissingTable):
        return Problem("table", "A table is missing", cause, _mask_secrets(error.fix or "", settings))
    if _is_undefined_table(error):
        return Problem(
            "schema",
            "serialmon's tables are missing in this database",
            cause,
            "Run `serialmon init` (add `--create-models-table` for a new database), then reload.",
        )
    logger.warning("dashboard: a data call failed: %s", cause, exc_info=error)
    return Problem(
        "error", "A query failed", cause, "Reload the page; run `serialmon doctor` if the error stays."
    )


def _first_line(error: BaseException) -> str:
    if isinstance(error, SerialmonError) and error.args:
        text = str(error.args[0]).strip()  # the message without the fix, which the page shows apart
    else:
        text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _is_connection_error(error: BaseException) -> bool:
    from sqlalchemy.exc import OperationalError

    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, (OperationalError, ConnectionError)) and "connect" in str(error).lower()


def _is_undefined_table(error: BaseException) -> bool:
    original = getattr(error, "orig", None)
    return getattr(original, "sqlstate", None) in ("42P01", "3F000")  # undefined_table, invalid_schema_name


def _mask_secrets(text: str, settings: Settings | None) -> str:
    """Replace every configured secret (database password, SMTP password, webhook URL) found in `text`."""
    if settings is None:
        return text
    from sqlalchemy.engine import make_url

    from serialmon.config import normalize_url

    secrets: list[str] = []
    if settings.database_url is not None:
        raw = settings.database_url.get_secret_value()
        secrets.append(raw)
        try:
            password = make_url(normalize_url(raw)).password
        except Exception:  # noqa: BLE001 - an unparsable URL is masked whole above
            password = None
        if password:
            secrets.append(str(password))
    for secret in (settings.smtp_password, settings.webhook_url):
        if secret is not None:
            secrets.append(secret.get_secret_value())
    for secret in sorted((value for value in secrets if value), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


# Cached loaders. Arguments whose names start with "_" are not part of the cache key.


@st.cache_data(ttl=OPTIONS_TTL_SEC, show_spinner=False)
def load_options(fingerprint: str, _settings: Settings) -> dict[str, Any]:
    """Return `filter_options()`: the categories the sidebar offers."""
    return run_sync(None, lambda conn: filter_options(conn, _settings), _settings)


@st.cache_data(ttl=CACHE_TTL_SEC, show_spinner=False)
def load_extent(fingerprint: str, _settings: Settings) -> dict[str, Any]:
    """Return `data_extent()`: the first and last event times and the ledger's row count."""
    return run_sync(None, lambda conn: data_extent(conn, _settings), _settings)


@st.cache_data(ttl=CACHE_TTL_SEC, show_spinner="Reading the read model…")
def load_snapshot(fingerprint: str, _settings: Settings, view: ViewFilters) -> dict[str, Any]:
    """Return `get_snapshot()` for the view's filters; the same call and window as `serialmon status --json`.

    Refreshes the ledger first (only changed rows are read), as the CLI does.
    """
    return run_sync(
        None,
        lambda conn: get_snapshot(
            conn, _settings, minutes=view.range_minutes, filters=view.read_model_filters(), refresh=True,
        ),
        _settings,
    )


@st.cache_data(ttl=CACHE_TTL_SEC, show_spinner=False)
def load_trends(fingerprint: str, _settings: Settings, view: ViewFilters) -> list[dict[str, Any]]:
    """Return `trends()` over the view's range, in buckets of `view.bucket_minutes`."""
    return run_sync(
        None,
        lambda conn: trends(
            conn, _settings, view.read_model_filters(), hours=view.hours, bucket_minutes=view.bucket_minutes
        ),
        _settings,
    )


@st.cache_data(ttl=CACHE_TTL_SEC, show_spinner=False)
def load_recent(
    fingerprint: str, _settings: Settings, view: ViewFilters, search: str | None, limit: int = RECENT_LIMIT
) -> list[dict[str, Any]]:
    """Return `recent_models()` in the view's window, narrowed to names containing `search`."""

    def read(conn: Any) -> list[dict[str, Any]]:
        filters = window_filters(conn, view.read_model_filters(), view.range_minutes)
        return recent_models(conn, _settings, filters, search=search, limit=limit)

    return run_sync(None, read, _settings)


@st.cache_data(ttl=CACHE_TTL_SEC, show_spinner=False)
def load_worst_models(
    fingerprint: str, _settings: Settings, view: ViewFilters, limit: int = WORST_LIMIT
) -> list[dict[str, Any]]:
    """Return `worst_models()` of the ledger under the view's category, type and coverage filters."""
    return run_sync(None, lambda conn: worst_models(conn, _settings, view.read_model_filters(), limit=limit), _settings)


@st.cache_data(ttl=CACHE_TTL_SEC, show_spinner=False)
def load_failure_examples(fingerprint: str, _settings: Settings, view: ViewFilters) -> dict[str | None, list[str]]:
    """Return {error_type: example model names} of the failures in the view's window."""

    def read(conn: Any) -> list[dict[str, Any]]:
        filters = window_filters(conn, view.read_model_filters(), view.range_minutes)
        return failure_examples(conn, _settings, filters)

    return {group["error_type"]: group["example_models"] for group in run_sync(None, read, _settings)}


@st.cache_data(ttl=DATABASE_TTL_SEC, show_spinner="Reading the database report…")
def load_database(fingerprint: str, _settings: Settings, view: ViewFilters) -> dict[str, Any]:
    """Return {"report": the database monitor's full report, "history": size samples in the view's range}.

    The report records a size sample first (at most one per
    `size_sample_interval_sec`), as `serialmon db-report` does, so an open
    dashboard keeps the growth chart going.
    """
    from serialmon.monitor import DatabaseMonitor

    report = asyncio.run(DatabaseMonitor(_settings).get_full_report())

    def read(conn: Any) -> list[dict[str, Any]]:
        filters = window_filters(conn, view.read_model_filters(), view.range_minutes)
        return size_history(conn, _settings, since=filters.since, until=filters.until)

    return {"report": report, "history": run_sync(None, read, _settings)}


@st.cache_data(ttl=CACHE_TTL_SEC, show_spinner=False)
def load_alerts(fingerprint: str, _settings: Settings, history_limit: int = ALERT_HISTORY_LIMIT) -> dict[str, Any]:
    """Return {"active", "history", "silences"} from the alert manager (silences in force or still to start)."""
    from serialmon.alerts import AlertManager

    manager = AlertManager(_settings)

    async def read() -> tuple[Any, Any, Any]:
        return (
            await manager.get_active_alerts(),
            await manager.get_alert_history(limit=history_limit),
            await manager.list_silences(),
        )

    active, history, silences = asyncio.run(read())
    return {"active": active, "history": history, "silences": silences}


def clear_cache() -> None:
    """Forget every cached result, so the next run reads everything afresh."""
    for loader in (
        load_options, load_extent, load_snapshot, load_trends, load_recent, load_worst_models, load_failure_examples,
        load_database, load_alerts,
    ):
        loader.clear()

