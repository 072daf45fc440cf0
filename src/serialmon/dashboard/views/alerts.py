"""Alerts: active alerts, silences and the history of alert transitions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import streamlit as st

from serialmon.dashboard import formatting as fmt
from serialmon.dashboard.data import ALERT_HISTORY_LIMIT, Source, ViewFilters, load_alerts
from serialmon.dashboard.styles import state_css, styler

LABEL = "Alerts"


def render(source: Source, view: ViewFilters) -> None:
    """Draw the alert manager's active alerts, silences, and the transitions in the sidebar's time range."""
    alerts = load_alerts(source.fingerprint, source.settings)
    active, silences = alerts["active"], alerts["silences"]
    history = _in_range(alerts["history"], view)
    firing = [alert for alert in active if alert["state"] == "firing"]

    columns = st.columns(4)
    columns[0].metric("Firing", fmt.count(len(firing)), border=True)
    columns[1].metric("Pending", fmt.count(len(active) - len(firing)), border=True,
                      help="Conditions that hold but have not lasted their `for` duration yet.")
    columns[2].metric("Silences", fmt.count(len(silences)), border=True, help="In force or still to start.")
    columns[3].metric("Transitions in range", fmt.count(len(history)), border=True)
    st.caption(
        "Alerts are evaluated by `serialmon alerts run`; the category, type and coverage filters do not apply "
        "here. Silence an alert with `serialmon alerts silence RULE --for 2h --reason ...`."
    )

    st.subheader("Active alerts")
    if active:
        frame = fmt.table(active, {
            "state": "state", "severity": "severity", "rule": "rule", "scope": "scope", "message": "message",
            "value": "value", "threshold": "threshold", "firing_since": "firing since",
            "pending_since": "pending since", "silenced": "silenced", "fix": "fix",
        })
        styled = styler(frame, precision=3).map(state_css, subset=["state", "severity"])
        st.dataframe(styled, hide_index=True, key="active_alerts")
    else:
        st.success("No alert is pending or firing.")

    st.subheader("Silences")
    if silences:
        shown = [{**silence, "scope": silence["scope"] or "all scopes"} for silence in silences]
        frame = fmt.table(shown, {
            "id": "id", "rule": "rule", "scope": "scope", "reason": "reason", "created_by": "by",
            "starts_at": "starts", "ends_at": "ends", "active": "in force",
        })
        st.dataframe(styler(frame), hide_index=True, key="silences")
    else:
        st.caption("No silence in force or planned.")

    st.subheader("History")
    if history:
        frame = fmt.table(history, {
            "at": "time", "rule": "rule", "scope": "scope", "from_state": "from", "to_state": "to",
            "severity": "severity", "value": "value", "threshold": "threshold", "message": "message",
            "notification": "notification", "suppressed": "held back by",
        })
        styled = styler(frame, precision=3).map(state_css, subset=["to", "severity"])
        st.dataframe(styled, hide_index=True, key="alert_history")
        if len(alerts["history"]) == ALERT_HISTORY_LIMIT:
            st.caption(f"The latest {ALERT_HISTORY_LIMIT} transitions; `serialmon alerts history` lists more.")
    else:
        st.caption("No alert transition in this time range.")


def _in_range(history: list[dict], view: ViewFilters) -> list[dict]:
    """Return the transitions inside the sidebar's time range (relative ranges end at the local clock)."""
    if view.range_minutes is not None:
        since = datetime.now(timezone.utc) - timedelta(minutes=view.range_minutes)
        return [row for row in history if fmt.timestamp(row["at"]) >= since]
    return [row for row in history if view.since <= fmt.timestamp(row["at"]) < view.until]
