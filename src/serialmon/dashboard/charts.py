"""Plotly figures of the dashboard, each built from read-model or monitor dicts as they come.

The builders take plain lists and dicts and return a `plotly.graph_objects.Figure`;
they do no I/O, so they can be tested and reused outside Streamlit.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from serialmon.dashboard.formatting import MB, category_name, timestamp

GREEN = "#2e9e5b"
AMBER = "#f0a202"
RED = "#d64545"
BLUE = "#3b75af"
GREY = "#8c8c8c"
PURPLE = "#7b5ea7"
_HEIGHT = 320


def _layout(figure: go.Figure, title: str, *, y_title: str | None = None, height: int = _HEIGHT) -> go.Figure:
    figure.update_layout(
        title={"text": title, "x": 0, "xanchor": "left"},
        height=height,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1},
        bargap=0.15,
    )
    if y_title:
        figure.update_yaxes(title_text=y_title)
    return figure


def percent_axis(top: float) -> dict[str, Any]:
    """Return y-axis settings from 0 to `top` percent with round tick steps.

    With automatic ticks, the second y axis showed values such as 18.62 %
    under Streamlit 1.67's Plotly theme, so the step is set here.
    """
    step = next((step for step in (0.5, 1, 2, 5, 10, 20, 25, 50) if top / step <= 6), 100)
    return {"range": [0, top], "tickmode": "linear", "tick0": 0, "dtick": step, "ticksuffix": " %"}


def coverage_level_color(coverage: float | None, warning: float, critical: float) -> str:
    """Return red below `critical`, amber below `warning`, green otherwise (grey without a value)."""
    if coverage is None:
        return GREY
    if coverage < critical:
        return RED
    return AMBER if coverage < warning else GREEN


def coverage_histogram(histogram: list[dict[str, Any]], warning: float, critical: float) -> go.Figure:
    """Build a bar chart of models per element-coverage bucket (`quality_summary()["coverage_histogram"]`)."""
    labels = [f"{bucket['bucket_start']}–{bucket['bucket_end']} %" for bucket in histogram]
    # A bucket takes the colour of its lower bound: [40, 50) is critical with the default 50 % threshold.
    colors = [coverage_level_color(bucket["bucket_start"], warning, critical) for bucket in histogram]
    figure = go.Figure(
        go.Bar(
            x=labels,
            y=[bucket["models"] for bucket in histogram],
            marker_color=colors,
            hovertemplate="%{x}: %{y:,} models<extra></extra>",
            name="models",
        )
    )
    return _layout(figure, "Element coverage distribution (models in the table)", y_title="models")


def throughput_chart(buckets: list[dict[str, Any]]) -> go.Figure:
    """Build stacked bars of successes and failures per hour of each trend bucket (`trends()`)."""
    times = [timestamp(bucket["bucket_start"]) for bucket in buckets]
    figure = go.Figure()
    for key, name, color in (("success", "serialized", GREEN), ("failure", "failed", RED)):
        figure.add_trace(
            go.Bar(
                x=times,
                y=[_hourly(bucket, key) for bucket in buckets],
                name=name,
                marker_color=color,
                hovertemplate="%{x|%Y-%m-%d %H:%M} UTC: %{y:,.1f} /h<extra>" + name + "</extra>",
            )
        )
    figure.update_layout(barmode="stack")
    return _layout(figure, "Models per hour", y_title="models / hour")


def _hourly(bucket: dict[str, Any], key: str) -> float | None:
    """Return the bucket's count of `key` per hour of the bucket's time inside the range."""
    processed = bucket["success"] + bucket["failure"]
    rate = bucket["throughput_per_hour"]
    if rate is None or processed == 0:
        return 0.0
    return rate * bucket[key] / processed


def failures_chart(buckets: list[dict[str, Any]], warning: float, critical: float) -> go.Figure:
    """Build a chart of failed attempts per trend bucket (bars) and the failure rate (line, right axis, percent)."""
    times = [timestamp(bucket["bucket_start"]) for bucket in buckets]
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(
        go.Bar(
            x=times, y=[bucket["failure"] for bucket in buckets], name="failures", marker_color=RED,
            hovertemplate="%{x|%Y-%m-%d %H:%M} UTC: %{y:,} failures<extra></extra>",
        ),
        secondary_y=False,
    )
    figure.add_trace(
        go.Scatter(
            x=times,
            y=[None if bucket["failure_rate"] is None else 100.0 * bucket["failure_rate"] for bucket in buckets],
            name="failure rate", mode="lines+markers", line={"color": PURPLE}, connectgaps=False,
            hovertemplate="%{x|%Y-%m-%d %H:%M} UTC: %{y:.1f} %<extra></extra>",
        ),
        secondary_y=True,
    )
    for threshold, color in ((warning, AMBER), (critical, RED)):
        figure.add_hline(
            y=100.0 * threshold, line_dash="dot", line_color=color, secondary_y=True, opacity=0.7,
        )
    rates = [100.0 * bucket["failure_rate"] for bucket in buckets if bucket["failure_rate"] is not None]
    top = max([100.0 * critical * 1.15, *(rate * 1.1 for rate in rates)])
    figure.update_yaxes(title_text="failed attempts", secondary_y=False, rangemode="tozero")
    figure.update_yaxes(title_text="failure rate", secondary_y=True, showgrid=False, **percent_axis(top))
    return _layout(figure, "Failures (dotted: failure-rate warning and critical thresholds)")


def processing_time_chart(buckets: list[dict[str, Any]]) -> go.Figure:
    """Build lines of the p50 and p95 processing time per trend bucket, in seconds."""
    times = [timestamp(bucket["bucket_start"]) for bucket in buckets]
    figure = go.Figure()
    for key, name, color in (("p50_processing_time_sec", "p50", BLUE), ("p95_processing_time_sec", "p95", AMBER)):
        figure.add_trace(
            go.Scatter(
                x=times, y=[bucket[key] for bucket in buckets], name=name, mode="lines+markers",
                line={"color": color}, connectgaps=False,
                hovertemplate="%{x|%Y-%m-%d %H:%M} UTC: %{y:,.1f} s<extra>" + name + "</extra>",
            )
        )
    figure.update_yaxes(rangemode="tozero")
    return _layout(figure, "Processing time", y_title="seconds")


def category_chart(rows: list[dict[str, Any]], warning: float, critical: float) -> go.Figure:
    """Build a chart of attempts per category (bars) with the failure rate (markers, right axis, percent)."""
    names = [category_name(row["category"]) for row in rows]
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(
        go.Bar(
            x=names, y=[row["attempts"] for row in rows], name="attempts", marker_color=BLUE,
            hovertemplate="%{x}: %{y:,} attempts<extra></extra>",
        ),
        secondary_y=False,
    )
    rates = [None if row["failure_rate"] is None else 100.0 * row["failure_rate"] for row in rows]
    colors = [_rate_color(rate, 100 * warning, 100 * critical) for rate in rates]
    figure.add_trace(
        go.Scatter(
            x=names, y=rates, name="failure rate", mode="markers", marker={"size": 12, "color": colors},
            hovertemplate="%{x}: %{y:.1f} % failed<extra></extra>",
        ),
        secondary_y=True,
    )
    figure.update_yaxes(title_text="attempts", secondary_y=False)
    top = max([100.0 * critical * 1.15, *(rate * 1.1 for rate in rates if rate is not None)])
    figure.update_yaxes(title_text="failure rate", secondary_y=True, showgrid=False, **percent_axis(top))
    return _layout(figure, "Attempts and failure rate per category")


def _rate_color(rate: float | None, warning: float, critical: float) -> str:
    """Return red above `critical`, amber above `warning`, green otherwise (grey without a value)."""
    if rate is None:
        return GREY
    if rate > critical:
        return RED
    return AMBER if rate > warning else GREEN


def failure_groups_chart(groups: list[dict[str, Any]]) -> go.Figure:
    """Build horizontal bars of failed attempts per error type, most frequent on top."""
    ordered = list(reversed(groups))
    figure = go.Figure(
        go.Bar(
            x=[group["failures"] for group in ordered],
            y=[group["error_type"] or "(no error type)" for group in ordered],
            orientation="h",
            marker_color=RED,
            hovertemplate="%{y}: %{x:,} failures<extra></extra>",
        )
    )
    return _layout(figure, "Failed attempts by error type", height=max(220, 60 + 32 * len(groups)))


def size_history_chart(history: list[dict[str, Any]]) -> go.Figure:
    """Build stacked areas of heap, TOAST and index size over time, in MB (`size_history()`)."""
    times = [timestamp(point["sampled_at"]) for point in history]
    figure = go.Figure()
    for key, name, color in (("heap_bytes", "heap", BLUE), ("toast_bytes", "TOAST", PURPLE),
                             ("index_bytes", "indexes", AMBER)):
        figure.add_trace(
            go.Scatter(
                x=times, y=[point[key] / MB for point in history], name=name, stackgroup="size",
                mode="lines", line={"color": color},
                hovertemplate="%{x|%Y-%m-%d %H:%M} UTC: %{y:,.1f} MB<extra>" + name + "</extra>",
            )
        )
    return _layout(figure, "Size of the monitored table over time", y_title="MB")


def size_breakdown_chart(table: dict[str, Any]) -> go.Figure:
    """Build a donut of the table's heap, TOAST and index bytes (`get_table_stats()`)."""
    parts = (
        ("heap", table.get("heap_bytes")), ("TOAST", table.get("toast_bytes")), ("indexes", table.get("index_bytes"))
    )
    figure = go.Figure(
        go.Pie(
            labels=[name for name, _ in parts],
            values=[(value or 0) / MB for _, value in parts],
            hole=0.55,
            marker={"colors": [BLUE, PURPLE, AMBER]},
            sort=False,
            textinfo="label+percent",
            hovertemplate="%{label}: %{value:,.1f} MB (%{percent})<extra></extra>",
        )
    )
    figure.update_layout(showlegend=False)
    return _layout(figure, "Where the bytes are")
