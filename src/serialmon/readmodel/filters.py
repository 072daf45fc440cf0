"""Filters shared by every read-model query, and the two filtered row sources they read.

Every event query starts with `WITH events AS (<filtered events>)` and every
ledger query with `WITH ledger AS (<filtered ledger>)`, so one filter means the
same thing in every figure. The filter predicates accept NULL parameters ("no
filter") and keep the time bounds as range conditions, so the index on
`serialization_events.occurred_at` serves them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Connection, TextClause, text

from serialmon.config import Settings
from serialmon.db import names

MODEL_TYPES = ("part", "assembly")
_CATEGORY_MAX = 100  # VARCHAR(100) in the monitored table and in the events table
_SEARCH_MAX = 255  # VARCHAR(255) model names

# Events of `serialization_events` that pass the filters. `:since`/`:until` bound
# `occurred_at` as [since, until); NULL means no bound.
_FILTERED_EVENTS = """
    SELECT e.*
    FROM {events} AS e
    WHERE e.occurred_at >= coalesce(CAST(:since AS timestamptz), '-infinity')
      AND e.occurred_at < coalesce(CAST(:until AS timestamptz), 'infinity')
      AND (CAST(:categories AS text[]) IS NULL OR e.category = ANY(CAST(:categories AS text[])))
      AND (CAST(:model_type AS text) IS NULL OR e.model_type = CAST(:model_type AS text))
      AND (CAST(:coverage_min AS float8) IS NULL OR e.element_coverage >= CAST(:coverage_min AS float8))
      AND (CAST(:coverage_max AS float8) IS NULL OR e.element_coverage <= CAST(:coverage_max AS float8))
      AND (CAST(:name_pattern AS text) IS NULL OR e.model_name ILIKE CAST(:name_pattern AS text))
"""

# Ledger rows (one per row of the monitored table) that pass the filters. The
# ledger has no event time, so `since`/`until` do not apply to it.
_FILTERED_LEDGER = """
    SELECT q.*
    FROM {model_quality} AS q
    WHERE (CAST(:categories AS text[]) IS NULL OR q.category = ANY(CAST(:categories AS text[])))
      AND (CAST(:model_type AS text) IS NULL OR q.model_type = CAST(:model_type AS text))
      AND (CAST(:coverage_min AS float8) IS NULL OR q.element_coverage >= CAST(:coverage_min AS float8))
      AND (CAST(:coverage_max AS float8) IS NULL OR q.element_coverage <= CAST(:coverage_max AS float8))
      AND (CAST(:name_pattern AS text) IS NULL OR q.model_name ILIKE CAST(:name_pattern AS text))
"""


@dataclass(frozen=True)
class Filters:
    """Limits of a figure. Every field left at its default means "no filter".

    - `categories`: model categories to keep (any of them); a single string is one category.
    - `model_type`: "part" or "assembly".
    - `coverage_min` / `coverage_max`: element coverage bounds in percent (0-100,
      inclusive). Events and ledger rows without a coverage drop out when either is set.
    - `since` / `until`: event time range [since, until); since == until is an empty
      range. Naive datetimes are taken as UTC. The ledger describes the table as it
      is now and ignores them.
    - `search`: case-insensitive substring of the model name.

    Raises `ValueError` naming the field, the value and the allowed range.
    """

    categories: tuple[str, ...] = field(default=())
    model_type: str | None = None
    coverage_min: float | None = None
    coverage_max: float | None = None
    since: datetime | None = None
    until: datetime | None = None
    search: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", _check_categories(self.categories))
        if self.model_type is not None and self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is invalid: expected one of {', '.join(MODEL_TYPES)}")
        for name in ("coverage_min", "coverage_max"):
            object.__setattr__(self, name, _check_coverage(name, getattr(self, name)))
        if self.coverage_min is not None and self.coverage_max is not None and self.coverage_min > self.coverage_max:
            raise ValueError(
                f"coverage_min {self.coverage_min:g} is greater than coverage_max {self.coverage_max:g}: "
                "expected coverage_min <= coverage_max"
            )
        for name in ("since", "until"):
            object.__setattr__(self, name, _check_time(name, getattr(self, name)))
        if self.since is not None and self.until is not None and self.since > self.until:
            raise ValueError(
                f"since {self.since.isoformat()} is after until {self.until.isoformat()}: "
                "expected since <= until"
            )
        object.__setattr__(self, "search", _check_search(self.search))

    def with_window(self, since: datetime | None, until: datetime | None) -> Filters:
        """Return a copy whose time range is the intersection of this one and [since, until)."""
        since = _check_time("since", since)
        until = _check_time("until", until)
        new_since = max((bound for bound in (self.since, since) if bound is not None), default=None)
        new_until = min((bound for bound in (self.until, until) if bound is not None), default=None)
        if new_since is not None and new_until is not None and new_since > new_until:
            new_since = new_until  # disjoint ranges: an empty range, which matches no event
        return replace(self, since=new_since, until=new_until)

    def params(self) -> dict[str, Any]:
        """Return the bound parameters that the filtered sources expect."""
        return {
            "since": self.since,
            "until": self.until,
            "categories": list(self.categories) or None,
            "model_type": self.model_type,
            "coverage_min": self.coverage_min,
            "coverage_max": self.coverage_max,
            "name_pattern": _like_pattern(self.search),
        }

    def as_dict(self) -> dict[str, Any]:
        """Return the filters as JSON-serialisable values (datetimes as ISO 8601)."""
        return {
            "categories": list(self.categories),
            "model_type": self.model_type,
            "coverage_min": self.coverage_min,
            "coverage_max": self.coverage_max,
            "since": iso(self.since),
            "until": iso(self.until),
            "search": self.search,
        }


def statement(settings: Settings, sql: str) -> TextClause:
    """Return `sql` as a statement, with its `{placeholders}` replaced by quoted identifiers.

    Placeholders: `{events}`, `{batch_jobs}`, `{worker_heartbeats}`,
    `{model_quality}`, `{ledger_state}`, and the filtered sources
    `{filtered_events}` and `{filtered_ledger}`.
    """
    quoted = names(settings)
    # A colon inside a quoted identifier would otherwise read as a bind parameter.
    tables = {
        table: quoted.table(table).replace(":", "\\:")
        for table in ("serialization_events", "batch_jobs", "worker_heartbeats", "model_quality", "ledger_state")
    }
    return text(
        sql.format(
            events=tables["serialization_events"],
            batch_jobs=tables["batch_jobs"],
            worker_heartbeats=tables["worker_heartbeats"],
            model_quality=tables["model_quality"],
            ledger_state=tables["ledger_state"],
            filtered_events=_FILTERED_EVENTS.format(events=tables["serialization_events"]),
            filtered_ledger=_FILTERED_LEDGER.format(model_quality=tables["model_quality"]),
        )
    )


def database_now(conn: Connection) -> datetime:
    """Return the database server's current time; every figure measures ages against it."""
    return conn.execute(text("SELECT clock_timestamp()")).scalar_one()


def iso(value: datetime | None) -> str | None:
    """Return a datetime as ISO 8601 text (UTC when it has a zone), or None."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.isoformat()


def check_positive(name: str, value: float, maximum: float) -> None:
    """Raise `ValueError` unless 0 < value <= maximum."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= maximum:
        raise ValueError(f"{name} {value!r} is out of range: expected a number > 0 and <= {maximum:g}")


def check_limit(name: str, value: int, maximum: int) -> None:
    """Raise `ValueError` unless `value` is an integer from 1 to `maximum`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ValueError(f"{name} {value!r} is out of range: expected an integer from 1 to {maximum}")


def hours_between(start: datetime, end: datetime) -> float:
    return (end - start) / timedelta(hours=1)


def _check_categories(value: Iterable[str] | str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    categories: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip() or len(item) > _CATEGORY_MAX:
            raise ValueError(
                f"category {item!r} is invalid: expected non-empty text of at most {_CATEGORY_MAX} characters"
            )
        if item not in categories:
            categories.append(item)
    return tuple(categories)


def _check_coverage(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} {value!r} is invalid: expected a number from 0 to 100")
    if not 0 <= value <= 100:
        raise ValueError(f"{name} {value:g} is out of range: expected a number from 0 to 100")
    return float(value)


def _check_time(name: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ValueError(f"{name} {value!r} is invalid: expected a datetime")
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _check_search(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"search {value!r} is invalid: expected text")
    value = value.strip()
    if len(value) > _SEARCH_MAX:
        raise ValueError(f"search text of {len(value)} characters is too long: expected at most {_SEARCH_MAX}")
    return value or None


def _like_pattern(search: str | None) -> str | None:
    """Return an ILIKE pattern that matches `search` anywhere, with its wildcards escaped."""
    if search is None:
        return None
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
