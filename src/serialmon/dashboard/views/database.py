"""Database: size and growth of the monitored table, TOAST share, JSONB sizes, indexes, queries, bloat, alerts."""

from __future__ import annotations

from typing import Any

import streamlit as st

from serialmon.dashboard import charts
from serialmon.dashboard import formatting as fmt
from serialmon.dashboard.data import Source, ViewFilters, load_database
from serialmon.dashboard.styles import state_css, styler

LABEL = "Database"
QUERY_TEXT_MAX = 160  # characters of a statement shown in the table; `serialmon db-report` prints it whole


def render(source: Source, view: ViewFilters) -> None:
    """Draw the database monitor's full report and the size history of the sidebar's time range."""
    loaded = load_database(source.fingerprint, source.settings, view)
    report, history = loaded["report"], loaded["history"]
    st.caption(
        f"{report['relation']} on PostgreSQL {report['server_version']}, report of "
        f"{fmt.utc_time(report['generated_at'])}. The category, type and coverage filters do not apply: "
        "these figures describe the whole table; the time range limits the growth chart."
    )

    _sizes(report["table"], report["growth"])
    _growth(history, report["growth"], report["table"])
    _database_alerts(report["alerts"])

    st.subheader("JSONB columns")
    _jsonb(report["jsonb"])
    st.subheader("Indexes")
    _indexes(report["indexes"])
    st.subheader("Top queries on the table")
    _queries(report["queries"])
    st.subheader("Bloat")
    _bloat(report["bloat"])

    if report["skipped"]:
        with st.expander(f"{len(report['skipped'])} part(s) of the report were skipped"):
            for skipped in report["skipped"]:
                st.markdown(f"- **{skipped['section']}**: {skipped['reason']}" + (
                    f" Fix: {skipped['fix']}" if skipped.get("fix") else ""
                ))


def _unavailable(section: dict[str, Any]) -> bool:
    """Show why a section is missing and return True, or return False when it is there."""
    if section.get("available") is False:
        st.info(f"Not available: {section.get('reason')}" + (f" Fix: {section['fix']}" if section.get("fix") else ""))
        return True
    return False


def _sizes(table: dict[str, Any], growth: dict[str, Any]) -> None:
    if _unavailable(table):
        return
    first, second = st.columns(4), st.columns(4)
    first[0].metric("Total size", fmt.size(table["total_bytes"]), border=True,
                    help=f"Source: {table['size_source']}.")
    first[1].metric("Heap", fmt.size(table["heap_bytes"]), border=True)
    first[2].metric("TOAST", fmt.size(table["toast_bytes"]), border=True)
    first[3].metric("Indexes", fmt.size(table["index_bytes"]), border=True)
    second[0].metric(
        "TOAST share", fmt.ratio_percent(table["toast_share"]), border=True,
        help="TOAST bytes / total bytes: large serialized_content values live out of line in TOAST.",
    )
    second[1].metric(
        "Live rows", fmt.count(table.get("live_tuples")), border=True,
        help=f"Dead rows: {fmt.count(table.get('dead_tuples'))} ({fmt.ratio_percent(table.get('dead_tuple_ratio'))}).",
    )
    growth_ok = growth.get("available") is not False
    second[2].metric(
        "Growth (last day)", _mb_per_hour(growth.get("mb_per_hour_last_day")) if growth_ok else fmt.MISSING,
        border=True, help="Least-squares slope of the total size over the day's size samples; 1 MB = 10^6 bytes.",
    )
    days = growth.get("days_until_limit") if growth_ok else None
    second[3].metric(
        "Days until the size limit", fmt.MISSING if days is None else f"{days:,.1f}", border=True,
        help="Needs SERIALMON_TABLE_SIZE_LIMIT_BYTES and growth.",
    )


def _mb_per_hour(value: float | None) -> str:
    return fmt.MISSING if value is None else f"{value:,.2f} MB/h"


def _growth(history: list[dict[str, Any]], growth: dict[str, Any], table: dict[str, Any]) -> None:
    left, right = st.columns([2, 1])
    with left:
        if len(history) >= 2:
            st.plotly_chart(charts.size_history_chart(history), key="size_history")
        else:
            st.info(
                f"{len(history)} size sample(s) in this time range: the growth chart needs two. The dashboard and "
                "`serialmon db-report` record one every SERIALMON_SIZE_SAMPLE_INTERVAL_SEC seconds (300 by default)."
            )
        if growth.get("available") is not False:
            cache = growth.get("cache_hit", {})
            st.caption(
                f"Growth: {_mb_per_hour(growth.get('mb_per_hour_last_hour'))} over the last hour, "
                f"{_mb_per_hour(growth.get('mb_per_hour_last_day'))} over the last day; "
                f"cache hit ratio between the last two samples {fmt.ratio_percent(cache.get('overall'))}."
            )
    with right:
        if table.get("available") is not False:
            st.plotly_chart(charts.size_breakdown_chart(table), key="size_breakdown")


def _database_alerts(conditions: list[dict[str, Any]]) -> None:
    st.subheader("Database alerts")
    if not conditions:
        st.success("No database condition holds (size, bloat, dead tuples, cache hits, long transactions).")
        return
    frame = fmt.table(conditions, {
        "severity": "severity", "rule": "rule", "scope": "scope", "value": "value", "threshold": "threshold",
        "message": "message", "fix": "fix",
    })
    st.dataframe(
        styler(frame, precision=3).map(state_css, subset=["severity"]), hide_index=True, key="database_alerts"
    )


def _jsonb(jsonb: dict[str, Any]) -> None:
    if _unavailable(jsonb):
        return
    content = jsonb["serialized_content"]
    if content.get("available") is False:
        st.info(f"serialized_content sizes not available: {content.get('reason')}")
    else:
        columns = st.columns(4)
        columns[0].metric("serialized_content, average", fmt.size(content.get("avg_bytes")), border=True,
                          help=f"Stored (compressed) size; source: {content.get('source')}.")
        columns[1].metric("Largest", fmt.size(content.get("max_bytes")), border=True)
        columns[2].metric(
            "Total" + (" (estimate)" if content.get("total_is_estimate") else ""),
            fmt.size(content.get("total_bytes")), border=True,
        )
        columns[3].metric("Rows read", fmt.count(content.get("rows")), border=True)

    rows = [
        {"column": name, **stats, "total_bytes": stats.get("total_bytes")}
        for name, stats in jsonb.get("columns", {}).items()
    ]
    left, right = st.columns(2)
    with left:
        if rows:
            frame = fmt.table(rows, {
                "column": "column", "rows": "rows", "null_rows": "null", "avg_bytes": "avg bytes",
                "max_bytes": "max bytes", "total_bytes": "total bytes (est.)", "toasted_rows": "TOASTed",
            })
            st.dataframe(styler(frame).format({"avg bytes": "{:,.0f}"}, na_rep=fmt.MISSING), hide_index=True)
    with right:
        largest = jsonb.get("largest_models", [])
        if largest:
            frame = fmt.table(largest, {"model_name": "largest models", "content_bytes": "stored bytes"})
            st.dataframe(styler(frame), hide_index=True)
    for note in jsonb.get("notes", []):
        st.caption(note)


def _indexes(indexes: dict[str, Any]) -> None:
    if _unavailable(indexes):
        return
    unused = {entry["name"] for entry in indexes.get("unused", [])}
    rows = [{**index, "unused": index["name"] in unused} for index in indexes.get("indexes", [])]
    frame = fmt.table(rows, {
        "name": "index", "method": "method", "size_bytes": "bytes", "scans": "scans",
        "cache_hit_ratio": "cache hit", "is_valid": "valid", "unused": "unused", "last_scan": "last scan",
    })
    st.dataframe(
        styler(frame).format({"cache hit": "{:.2%}"}, na_rep=fmt.MISSING), hide_index=True, key="index_table"
    )
    gin = indexes.get("gin", {})
    if gin.get("present"):
        pending = gin.get("pending_list", {})
        pending_text = (
            f"{fmt.count(pending.get('pending_tuples'))} entries in its pending list "
            f"({fmt.count(pending.get('pending_pages'))} pages)"
            if pending.get("available") else f"pending list not read: {pending.get('reason')}"
        )
        st.caption(
            f"GIN index on {gin['column']}: {'valid' if gin['is_valid'] else 'INVALID'}, "
            f"{fmt.count(gin['scans'])} scans, {fmt.size(gin['size_bytes'])}, {pending_text}."
        )
    else:
        st.warning(f"No GIN index on {gin.get('column', 'feature_types')}.")
    if unused:
        st.caption(f"Unused: {', '.join(sorted(unused))}. Rule: {indexes.get('unused_rule', '')}.")


def _queries(queries: dict[str, Any]) -> None:
    if _unavailable(queries):
        return
    rows = [
        {**entry, "query": _shorten(entry["query"])}
        for entry in queries.get("by_total_time", [])
    ]
    if not rows:
        st.caption("No statement on the table in pg_stat_statements yet.")
        return
    frame = fmt.table(rows, {
        "query": "statement", "calls": "calls", "total_time_ms": "total ms", "mean_time_ms": "mean ms",
        "rows": "rows", "buffer_hit_ratio": "buffer hit",
    })
    st.dataframe(
        styler(frame).format(
            {"total ms": "{:,.1f}", "mean ms": "{:,.2f}", "buffer hit": "{:.2%}"}, na_rep=fmt.MISSING
        ),
        hide_index=True, key="query_table",
    )
    if queries.get("hidden_statements"):
        st.caption(f"{queries['hidden_statements']} statement(s) of other roles are hidden from this role.")


def _shorten(query: str | None) -> str:
    if not query:
        return fmt.MISSING
    flat = " ".join(query.split())
    return flat if len(flat) <= QUERY_TEXT_MAX else flat[: QUERY_TEXT_MAX - 1] + "…"


def _bloat(bloat: dict[str, Any]) -> None:
    if _unavailable(bloat):
        return
    estimate = bloat.get("estimate", {})
    table = estimate.get("table", {})
    rows = []
    for part in ("heap", "toast"):
        entry = table.get(part)
        if not entry:
            continue
        if entry.get("available") is False:
            rows.append({"part": part, "note": entry.get("reason")})
            continue
        rows.append({
            "part": part, "size_bytes": entry.get("size_bytes"), "wasted_bytes": entry.get("wasted_bytes"),
            "bloat_percent": entry.get("bloat_percent"), "note": "",
        })
    for index in estimate.get("indexes", []):
        if index.get("available") is False:
            rows.append({"part": "indexes", "note": index.get("reason")})
            continue
        rows.append({
            "part": f"index {index.get('name')}", "size_bytes": index.get("size_bytes"),
            "wasted_bytes": index.get("wasted_bytes"), "bloat_percent": index.get("bloat_percent"),
            "note": index.get("reason", ""),
        })
    if rows:
        frame = fmt.table(rows, {
            "part": "part", "size_bytes": "bytes", "wasted_bytes": "wasted bytes", "bloat_percent": "bloat %",
            "note": "note",
        })
        st.dataframe(styler(frame).format({"bloat %": "{:.1f}"}, na_rep=fmt.MISSING), hide_index=True, key="bloat")
    st.caption(f"Method: {bloat.get('method', '')}. {bloat.get('exact_cost', '')}.")
