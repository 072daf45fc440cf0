"""The sidebar: filters that apply to every view, auto-refresh, and which database the page reads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import streamlit as st

from serialmon.dashboard.data import DEFAULT_TIME_RANGE, TIME_RANGES, ViewFilters
from serialmon.readmodel import MODEL_TYPES

ALL_TYPES = "All types"
DEFAULT_REFRESH_SEC = 30
MIN_REFRESH_SEC = 10  # the cache keeps figures 10 s; a shorter interval would redraw the same figures
MAX_REFRESH_SEC = 3600
CUSTOM_DAYS_DEFAULT = 7

# Widget keys: tests and `st.session_state` address the widgets by these.
TIME_RANGE_KEY = "time_range"
DATES_KEY = "custom_dates"
CATEGORIES_KEY = "categories"
MODEL_TYPE_KEY = "model_type"
COVERAGE_KEY = "coverage"
AUTO_REFRESH_KEY = "auto_refresh"
REFRESH_SEC_KEY = "refresh_sec"
REFRESH_NOW_KEY = "refresh_now"
_KNOWN_CATEGORIES_KEY = "known_categories"


@dataclass(frozen=True)
class Refresh:
    """The refresh choice: `interval_sec` is None when auto-refresh is off, and `now` is True after the button."""

    interval_sec: int | None
    now: bool


def render(categories: list[str] | None, database: str) -> tuple[ViewFilters, Refresh]:
    """Draw the sidebar and return the filters and refresh choice.

    `categories` are the choices of the category filter; None when they
    could not be read, and then the last ones read in this session are
    offered. `database` is the masked URL shown at the bottom.
    """
    sidebar = st.sidebar
    sidebar.title("serialmon")

    range_name = sidebar.selectbox(
        "Time range", list(TIME_RANGES), index=list(TIME_RANGES).index(DEFAULT_TIME_RANGE), key=TIME_RANGE_KEY,
        help="Limits every event figure: models, rates, throughput, trends, failures, recent models.",
    )
    first_day, last_day = None, None
    if TIME_RANGES[range_name] is None:
        today = datetime.now(timezone.utc).date()
        picked = sidebar.date_input(
            "Dates (UTC)", value=(today - timedelta(days=CUSTOM_DAYS_DEFAULT - 1), today), max_value=today,
            key=DATES_KEY,
        )
        first_day, last_day = _date_pair(picked, today)

    if categories is not None:
        st.session_state[_KNOWN_CATEGORIES_KEY] = categories
    offered = list(st.session_state.get(_KNOWN_CATEGORIES_KEY, []))
    for chosen in st.session_state.get(CATEGORIES_KEY, []):
        if chosen not in offered:
            offered.append(chosen)  # keep a selection whose category has no row left
    chosen_categories = sidebar.multiselect(
        "Category", offered, key=CATEGORIES_KEY, placeholder="All categories",
    )
    model_type = sidebar.selectbox("Model type", [ALL_TYPES, *MODEL_TYPES], key=MODEL_TYPE_KEY)
    low, high = sidebar.slider(
        "Element coverage %", min_value=0.0, max_value=100.0, value=(0.0, 100.0), step=1.0, format="%.0f",
        key=COVERAGE_KEY,
        help="Models (and events) without a known coverage drop out once the range is narrowed.",
    )

    sidebar.divider()
    auto = sidebar.toggle("Auto-refresh", value=False, key=AUTO_REFRESH_KEY)
    interval = None
    if auto:
        interval = int(sidebar.number_input(
            "Every (seconds)", min_value=MIN_REFRESH_SEC, max_value=MAX_REFRESH_SEC, value=DEFAULT_REFRESH_SEC,
            step=5, key=REFRESH_SEC_KEY,
        ))
    now = sidebar.button("Refresh now", key=REFRESH_NOW_KEY, help="Read every figure again, skipping the cache.")
    sidebar.caption(f"Database: `{database}`")

    choices = {
        "categories": tuple(chosen_categories),
        "model_type": None if model_type == ALL_TYPES else model_type,
        "coverage_min": low if low > 0 else None,
        "coverage_max": high if high < 100 else None,
    }
    if first_day is not None:
        view = ViewFilters.from_dates(first_day, last_day, **choices)
    else:
        view = ViewFilters(range_minutes=TIME_RANGES[range_name], **choices)
    return view, Refresh(interval_sec=interval, now=now)


def _date_pair(picked: object, today: date) -> tuple[date, date]:
    """Return (first, last) from a date input that may hold one date while the user is still picking."""
    if isinstance(picked, (tuple, list)):
        days = [day for day in picked if day is not None]
        if len(days) >= 2:
            return min(days[0], days[1]), max(days[0], days[1])
        if days:
            return days[0], days[0]
        return today, today
    if isinstance(picked, date):
        return picked, picked
    return today, today
