"""Cell styles that mark thresholds in the dashboard's tables (pandas Styler CSS)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from pandas.io.formats.style import Styler

from serialmon.dashboard.formatting import MISSING

CRITICAL_CSS = "background-color: #f8d7da; color: #842029; font-weight: 600"
WARNING_CSS = "background-color: #fff3cd; color: #664d03"
OK_CSS = ""


def coverage_css(value: Any, warning: float, critical: float) -> str:
    """Return red below `critical` and amber below `warning` (percent); nothing for a missing value."""
    if value is None or pd.isna(value):
        return OK_CSS
    if value < critical:
        return CRITICAL_CSS
    return WARNING_CSS if value < warning else OK_CSS


def failure_rate_css(value: Any, warning: float, critical: float) -> str:
    """Return red above `critical` and amber above `warning`; `value` and thresholds in percent."""
    if value is None or pd.isna(value):
        return OK_CSS
    if value > critical:
        return CRITICAL_CSS
    return WARNING_CSS if value > warning else OK_CSS


def state_css(value: Any) -> str:
    """Return the style of a worker, batch or alert state: red for bad states, amber for waiting ones."""
    if value in ("silent", "abandoned", "failed", "firing", "critical", "failure"):
        return CRITICAL_CSS
    if value in ("pending", "warning"):
        return WARNING_CSS
    return OK_CSS


def styler(frame: pd.DataFrame, precision: int = 1) -> Styler:
    """Return the Styler every table starts from: floats with `precision` decimals, "–" for missing values."""
    return frame.style.format(precision=precision, na_rep=MISSING)


def style_coverage(frame: pd.DataFrame, columns: list[str], warning: float, critical: float) -> Styler:
    """Return a Styler of `frame` with `columns` (percent) coloured by the coverage thresholds."""
    present = [column for column in columns if column in frame.columns]
    return styler(frame).map(lambda value: coverage_css(value, warning, critical), subset=present)
