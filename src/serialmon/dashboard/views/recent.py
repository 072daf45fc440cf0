"""Recent models: the latest serialization events, searchable by model name, coverage highlighted."""

from __future__ import annotations

from typing import Any

import streamlit as st

from serialmon.dashboard import formatting as fmt
from serialmon.dashboard.data import RECENT_LIMIT, Source, ViewFilters, load_recent
from serialmon.dashboard.styles import state_css, style_coverage

LABEL = "Recent models"
SEARCH_KEY = "recent_search"

COLUMNS = {
    "occurred_at": "time",
    "model_name": "model",
    "model_type": "type",
    "category": "category",
    "status": "status",
    "processing_time_sec": "time s",
    "coverage": "coverage %",
    "unrecoverable_unknown": "unrecoverable unknown",
    "worker_id": "worker",
    "error_type": "error type",
    "error_message": "error",
}


def shown_coverage(row: dict[str, Any]) -> float | None:
    """Return the coverage recorded with the event, else the model's coverage in the ledger."""
    return row["element_coverage"] if row["element_coverage"] is not None else row["ledger_element_coverage"]


def render(source: Source, view: ViewFilters) -> None:
    """Draw `recent_models()` in the sidebar's range, narrowed by the search box."""
    settings = source.settings
    search = st.text_input(
        "Search model names", key=SEARCH_KEY, placeholder="part of a model name, e.g. emjac-00012", max_chars=255,
        help="Case-insensitive; matches anywhere in the name.",
    )
    search = search.strip() or None
    try:
        rows = load_recent(source.fingerprint, settings, view, search)
    except ValueError as error:  # the read model rejects the search text; the box already caps its length
        st.error(str(error))
        return

    if not rows:
        st.info("No model matches in this time range." if search else "No serialization events in this time range.")
        return
    shown = [{**row, "coverage": shown_coverage(row)} for row in rows]
    frame = fmt.table(shown, COLUMNS)
    styled = (
        style_coverage(frame, ["coverage %"], settings.coverage_warning, settings.coverage_critical)
        .map(state_css, subset=["status"])
    )
    st.dataframe(styled, hide_index=True, key="recent_models")
    more = " (the latest ones; narrow the search to see older ones)" if len(rows) == RECENT_LIMIT else ""
    st.caption(
        f"{fmt.count(len(rows))} events{more}. Coverage: red below {settings.coverage_critical:g} %, "
        f"amber below {settings.coverage_warning:g} %; recorded with the event, else from the table."
    )
