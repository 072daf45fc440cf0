"""Text forms of the dashboard's figures: counts, percentages, durations, sizes, times.

Each function takes None for a missing figure and returns "–" for it, so a
view never has to test for None before showing a value.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pandas as pd

MISSING = "–"
MB = 1_000_000  # decimal megabytes, as the database monitor reports growth


def count(value: int | float | None) -> str:
    """Return a whole number with thousands separators: 12,345."""
    return MISSING if value is None else f"{value:,.0f}"


def ratio_percent(value: float | None, digits: int = 1) -> str:
    """Return a ratio (0-1) as a percentage: 0.123 -> "12.3 %"."""
    return MISSING if value is None else f"{100.0 * value:.{digits}f} %"


def percent(value: float | None, digits: int = 1) -> str:
    """Return a value that is already in percent: 85.2 -> "85.2 %"."""
    return MISSING if value is None else f"{value:.{digits}f} %"


def seconds(value: float | None) -> str:
    """Return seconds with one decimal: "41.2 s"."""
    return MISSING if value is None else f"{value:,.1f} s"


def per_hour(value: float | None) -> str:
    """Return a rate in models per hour: "123.4 /h"."""
    return MISSING if value is None else f"{value:,.1f} /h"


def duration(value: float | None) -> str:
    """Return a duration in seconds as "2d 03h", "1h 05m", "3m 02s" or "12s"."""
    if value is None:
        return MISSING
    total = int(round(value))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def size(value: int | float | None) -> str:
    """Return bytes in decimal units: "950 B", "14.4 MB", "2.31 GB"."""
    if value is None:
        return MISSING
    for unit, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= factor:
            return f"{value / factor:,.{2 if unit in ('GB', 'TB') else 1}f} {unit}"
    return f"{value:,.0f} B"


def utc_time(iso_text: str | datetime | None) -> str:
    """Return a time as "YYYY-MM-DD HH:MM:SS UTC"."""
    moment = timestamp(iso_text)
    return MISSING if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def timestamp(value: str | datetime | None) -> datetime | None:
    """Return an ISO 8601 text or a datetime as an aware datetime in UTC (naive values are taken as UTC)."""
    if value is None or value == "":
        return None
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def bucket_length(minutes: int) -> str:
    """Return a trend bucket length: "5 min", "1 h", "6 h", "1 day"."""
    if minutes % 1440 == 0:
        days = minutes // 1440
        return f"{days} day" + ("s" if days > 1 else "")
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


def category_name(value: str | None) -> str:
    """Return a category for display; models without one show as "(none)"."""
    return "(none)" if value is None else value


def table(rows: list[dict[str, Any]], columns: dict[str, str]) -> pd.DataFrame:
    """Return a DataFrame of `rows` with the keys of `columns`, renamed to its values, in that order.

    Times (keys ending in `_at`, and `at`, `first_seen`, `last_seen`) become
    "YYYY-MM-DD HH:MM:SS" text in UTC, which sorts in time order. Columns of
    whole numbers with gaps become pandas' nullable `Int64`, so they show as
    whole numbers instead of floats, and missing text shows as "–".
    """
    frame = pd.DataFrame([{key: row.get(key) for key in columns} for row in rows], columns=list(columns))
    for key in columns:
        if key.endswith("_at") or key in ("at", "first_seen", "last_seen"):
            frame[key] = [_table_time(value) for value in frame[key]]
        elif _whole_numbers([row.get(key) for row in rows]):
            frame[key] = pd.array([row.get(key) for row in rows], dtype="Int64")
        elif _texts([row.get(key) for row in rows]):
            frame[key] = [MISSING if row.get(key) is None else row.get(key) for row in rows]
    return frame.rename(columns=columns)


def _table_time(value: Any) -> str | None:
    moment = timestamp(value) if isinstance(value, (str, datetime)) else None
    return None if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _whole_numbers(values: list[Any]) -> bool:
    present = [value for value in values if value is not None]
    return bool(present) and all(isinstance(value, int) and not isinstance(value, bool) for value in present)


def _texts(values: list[Any]) -> bool:
    present = [value for value in values if value is not None]
    return bool(present) and all(isinstance(value, str) for value in present)
