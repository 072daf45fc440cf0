"""Trends: models per hour, failures, p50 and p95 processing time over the selected time range."""

from __future__ import annotations

import streamlit as st

from serialmon.dashboard import charts
from serialmon.dashboard import formatting as fmt
from serialmon.dashboard.data import Source, ViewFilters, load_snapshot, load_trends

LABEL = "Trends"


def render(source: Source, view: ViewFilters) -> None:
    """Draw `trends()` over the sidebar's time range, with the range's totals from `get_snapshot()`."""
    snapshot = load_snapshot(source.fingerprint, source.settings, view)
    buckets = load_trends(source.fingerprint, source.settings, view)
    thresholds = snapshot["thresholds"]
    timing = snapshot["processing_time_sec"]

    columns = st.columns(4)
    columns[0].metric("Attempts in range", fmt.count(snapshot["attempts"]), border=True)
    columns[1].metric("Throughput over the range", fmt.per_hour(snapshot["throughput_per_hour"]["window"]), border=True)
    columns[2].metric("p50 processing time", fmt.seconds(timing["p50"]), border=True)
    columns[3].metric("p95 processing time", fmt.seconds(timing["p95"]), border=True)
    st.caption(
        f"{len(buckets)} buckets of {fmt.bucket_length(view.bucket_minutes)}, aligned to the clock (UTC). "
        "Change the range in the sidebar."
    )
    if snapshot["attempts"] == 0:
        st.info("No serialization events in this time range with these filters.")

    st.plotly_chart(charts.throughput_chart(buckets), key="trend_throughput")
    st.plotly_chart(
        charts.failures_chart(buckets, thresholds["failure_rate_warning"], thresholds["failure_rate_critical"]),
        key="trend_failures",
    )
    st.plotly_chart(charts.processing_time_chart(buckets), key="trend_processing_time")
