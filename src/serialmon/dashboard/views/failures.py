"""Failures: failed attempts grouped by error type, with counts, first and last seen, and example models."""

from __future__ import annotations

import streamlit as st

from serialmon.dashboard import charts
from serialmon.dashboard import formatting as fmt
from serialmon.dashboard.data import Source, ViewFilters, load_failure_examples, load_snapshot
from serialmon.dashboard.styles import styler

LABEL = "Failures"


def render(source: Source, view: ViewFilters) -> None:
    """Draw `get_snapshot()["failure_reasons"]` (`failure_groups()`) with `failure_examples()`."""
    snapshot = load_snapshot(source.fingerprint, source.settings, view)
    groups = snapshot["failure_reasons"]

    columns = st.columns(3)
    columns[0].metric("Failed attempts", fmt.count(snapshot["by_status"]["failure"]), border=True)
    columns[1].metric("Failure rate", fmt.ratio_percent(snapshot["failure_rate"]), border=True)
    columns[2].metric("Error types", fmt.count(len(groups)), border=True)
    if not groups:
        st.success("No failed attempt in this time range with these filters.")
        return

    examples = load_failure_examples(source.fingerprint, source.settings, view)
    rows = [
        {
            **group,
            "error_type": group["error_type"] or "(no error type)",
            "examples": ", ".join(examples.get(group["error_type"], [])),
        }
        for group in groups
    ]
    frame = fmt.table(rows, {
        "error_type": "error type", "failures": "failures", "models": "models",
        "first_seen": "first seen", "last_seen": "last seen", "examples": "example models",
        "latest_message": "latest message",
    })
    st.dataframe(styler(frame), hide_index=True, key="failure_groups")
    st.caption("Example models: the latest distinct models that failed with that error type.")
    st.plotly_chart(charts.failure_groups_chart(groups), key="failures_chart")
