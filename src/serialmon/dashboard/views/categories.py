"""Categories: count, failure rate, average coverage and p95 processing time per model category."""

from __future__ import annotations

import streamlit as st

from serialmon.dashboard import charts
from serialmon.dashboard import formatting as fmt
from serialmon.dashboard.data import Source, ViewFilters, load_snapshot
from serialmon.dashboard.styles import coverage_css, failure_rate_css, styler

LABEL = "Categories"

COLUMNS = {
    "category": "category",
    "models": "models",
    "attempts": "attempts",
    "failure": "failures",
    "failure_rate_percent": "failure rate %",
    "avg_element_coverage": "avg coverage %",
    "p95_processing_time_sec": "p95 time s",
    "table_models": "in table",
    "below_warning": "below warning",
    "quality_unknown": "quality unknown",
}


def render(source: Source, view: ViewFilters) -> None:
    """Draw `get_snapshot()["by_category"]` (`category_breakdown()`) as a table and a chart."""
    snapshot = load_snapshot(source.fingerprint, source.settings, view)
    rows = snapshot["by_category"]
    thresholds = snapshot["thresholds"]
    if not rows:
        st.info("No category has events in this range or models in the table with these filters.")
        return

    st.caption(
        "Models, attempts, failures and p95 processing time count the events in the time range; "
        "'in table', average coverage and 'below warning' come from the ledger (the table as it is now)."
    )
    prepared = [
        {
            **row,
            "category": fmt.category_name(row["category"]),
            "failure_rate_percent": None if row["failure_rate"] is None else 100.0 * row["failure_rate"],
        }
        for row in rows
    ]
    frame = fmt.table(prepared, COLUMNS)
    warning_rate = 100.0 * thresholds["failure_rate_warning"]
    critical_rate = 100.0 * thresholds["failure_rate_critical"]
    styled = (
        styler(frame)
        .map(lambda value: failure_rate_css(value, warning_rate, critical_rate), subset=["failure rate %"])
        .map(
            lambda value: coverage_css(value, thresholds["coverage_warning"], thresholds["coverage_critical"]),
            subset=["avg coverage %"],
        )
    )
    st.dataframe(styled, hide_index=True, key="categories_table")
    st.plotly_chart(
        charts.category_chart(rows, thresholds["failure_rate_warning"], thresholds["failure_rate_critical"]),
        key="categories_chart",
    )
