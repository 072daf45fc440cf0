"""Overview: is the run healthy? Headline figures, batch progress with ETA, workers, firing alerts."""

from __future__ import annotations

from typing import Any

import streamlit as st

from serialmon.dashboard import formatting as fmt
from serialmon.dashboard.data import Source, ViewFilters, load_alerts, load_snapshot
from serialmon.dashboard.styles import state_css, styler

LABEL = "Overview"
_STATE_ORDER = {"silent": 0, "live": 1, "stopped": 2}


def render(source: Source, view: ViewFilters) -> None:
    """Draw the overview from `get_snapshot()` and the alert manager's active alerts."""
    snapshot = load_snapshot(source.fingerprint, source.settings, view)
    alerts = load_alerts(source.fingerprint, source.settings)
    health_line(snapshot, alerts["active"])
    headline_metrics(snapshot, alerts["active"])

    if snapshot["attempts"] == 0:
        st.info(
            "No serialization events in this time range with these filters. "
            "Widen the time range in the sidebar, or clear a filter."
        )
    if snapshot["ledger"]["error"]:
        st.warning(f"The quality ledger was not refreshed: {snapshot['ledger']['error'].rstrip('.')}. Quality figures may be old.")

    st.subheader("Batch jobs")
    batch_progress(snapshot["batches"])
    st.subheader("Workers")
    worker_table(snapshot["workers"])

    firing = [alert for alert in alerts["active"] if alert["state"] == "firing"]
    if firing:
        st.subheader("Firing alerts")
        for alert in firing:
            text = f"**{alert['severity'] or 'alert'}** · {alert['rule']}: {alert['message']}"
            (st.error if alert["severity"] == "critical" else st.warning)(text)


def health_line(snapshot: dict[str, Any], active_alerts: list[dict[str, Any]]) -> None:
    """Draw one line stating whether the run needs attention, and why."""
    thresholds = snapshot["thresholds"]
    failure_level = _level(
        snapshot["failure_rate"], thresholds["failure_rate_warning"], thresholds["failure_rate_critical"]
    )
    coverage_level = _coverage_level(
        snapshot["quality"]["avg_element_coverage"], thresholds["coverage_warning"], thresholds["coverage_critical"]
    )
    firing = [alert for alert in active_alerts if alert["state"] == "firing"]
    silent = sum(1 for worker in snapshot["workers"] if worker["state"] == "silent")
    stalled = sum(1 for batch in snapshot["batches"] if batch["stalled"])

    problems = []
    if firing:
        problems.append(f"{len(firing)} firing alert" + ("s" if len(firing) > 1 else ""))
    if silent:
        problems.append(f"{silent} silent worker" + ("s" if silent > 1 else ""))
    if stalled:
        problems.append(f"{stalled} stalled batch" + ("es" if stalled > 1 else ""))
    if failure_level in ("warning", "critical"):
        problems.append(f"failure rate at the {failure_level} level")
    if coverage_level in ("warning", "critical"):
        problems.append(f"average coverage at the {coverage_level} level")

    if not problems:
        st.success("Healthy: no firing alert, no silent worker or stalled batch, failure rate and coverage within "
                   "their thresholds.", icon=":material/check_circle:")
        return
    critical = (
        any(alert["severity"] == "critical" for alert in firing) or "critical" in (failure_level, coverage_level)
        or stalled > 0
    )
    (st.error if critical else st.warning)("Needs attention: " + ", ".join(problems) + ".", icon=":material/warning:")


def headline_metrics(snapshot: dict[str, Any], active_alerts: list[dict[str, Any]]) -> None:
    """Draw the eight headline figures; the labels are what tests and operators look for."""
    by_type = snapshot["by_type"]
    thresholds = snapshot["thresholds"]
    quality = snapshot["quality"]
    throughput = snapshot["throughput_per_hour"]
    firing = sum(1 for alert in active_alerts if alert["state"] == "firing")

    first, second = st.columns(4), st.columns(4)
    first[0].metric(
        "Models", fmt.count(snapshot["total_models"]), border=True,
        help=f"Distinct models with an event in the range; {fmt.count(snapshot['table_models'])} rows in the table.",
    )
    first[1].metric("Parts", fmt.count(by_type.get("part", {}).get("models", 0)), border=True)
    first[2].metric("Assemblies", fmt.count(by_type.get("assembly", {}).get("models", 0)), border=True)
    first[3].metric(
        "Throughput now", fmt.per_hour(throughput["last_5_min"]), border=True,
        help=f"Models per hour over the last 5 minutes; last hour {fmt.per_hour(throughput['last_hour'])}, "
        f"whole range {fmt.per_hour(throughput['window'])}.",
    )
    second[0].metric(
        "Success rate", fmt.ratio_percent(snapshot["success_rate"]), border=True,
        help="Successes / (successes + failures); skipped models are not attempts.",
    )
    failure_rate = snapshot["failure_rate"]
    second[1].metric(
        "Failure rate", fmt.ratio_percent(failure_rate), border=True,
        **_level_delta(_level(failure_rate, thresholds["failure_rate_warning"], thresholds["failure_rate_critical"])),
        help=f"{fmt.count(snapshot['by_status']['failure'])} failed attempts; warning above "
        f"{fmt.ratio_percent(thresholds['failure_rate_warning'], 0)}, critical above "
        f"{fmt.ratio_percent(thresholds['failure_rate_critical'], 0)}.",
    )
    coverage = quality["avg_element_coverage"]
    second[2].metric(
        "Average element coverage", fmt.percent(coverage), border=True,
        **_level_delta(_coverage_level(coverage, thresholds["coverage_warning"], thresholds["coverage_critical"])),
        help="Mean over the models in the table whose quality is known (the ledger; the time range does not apply).",
    )
    second[3].metric(
        "Active alerts", fmt.count(firing), border=True,
        help=f"Firing alerts; {len(active_alerts) - firing} more pending.",
    )


_LEVEL_COLORS = {"critical": "red", "warning": "orange", "ok": "green"}


def _level_delta(level: str | None) -> dict[str, Any]:
    """Return `st.metric` arguments that show a threshold level as a coloured badge without an arrow."""
    if level is None:
        return {}
    return {"delta": level, "delta_color": _LEVEL_COLORS[level], "delta_arrow": "off"}


def _level(rate: float | None, warning: float, critical: float) -> str | None:
    if rate is None:
        return None
    if rate > critical:
        return "critical"
    return "warning" if rate > warning else "ok"


def _coverage_level(coverage: float | None, warning: float, critical: float) -> str | None:
    if coverage is None:
        return None
    if coverage < critical:
        return "critical"
    return "warning" if coverage < warning else "ok"


def batch_progress(batches: list[dict[str, Any]]) -> None:
    """Draw a progress bar with ETA for each running batch, and a table of the others."""
    if not batches:
        st.caption("No batch job in this time range.")
        return
    for batch in (batch for batch in batches if batch["stored_status"] == "running"):
        name = batch["name"] or batch["batch_id"]
        done = f"{fmt.count(batch['processed'])} / {fmt.count(batch['total'])}"
        eta = (
            f"ETA {fmt.duration(batch['eta_seconds'])} ({fmt.utc_time(batch['eta_at'])})"
            if batch["eta_seconds"] is not None else "ETA unknown"
        )
        state = "running"
        if batch["stalled"]:
            state = "stalled: no heartbeat for " + fmt.duration(batch["heartbeat_age_sec"])
        label = (
            f"**{name}** · {state} · {done} ({fmt.percent(batch['percent'])}) · {eta} · "
            f"{fmt.per_hour(batch['throughput_per_hour'])} over the last 15 min · "
            f"{fmt.count(batch['failed'])} failed, {fmt.count(batch['skipped'])} skipped"
        )
        fraction = min(max((batch["percent"] or 0.0) / 100.0, 0.0), 1.0)
        st.progress(fraction, text=label)

    others = [batch for batch in batches if batch["stored_status"] != "running"]
    if others:
        frame = fmt.table(others, {
            "name": "batch", "status": "status", "processed": "processed", "total": "total",
            "succeeded": "succeeded", "failed": "failed", "failed_attempts": "failed attempts", "skipped": "skipped",
            "started_at": "started", "finished_at": "finished",
        })
        st.dataframe(styler(frame).map(state_css, subset=["status"]), hide_index=True)


def worker_table(workers: list[dict[str, Any]]) -> None:
    """Draw the workers with their last heartbeat and whether they are live, silent or stopped."""
    if not workers:
        st.caption("No worker sent a heartbeat in this time range.")
        return
    # Silent workers first: they are the ones that need a look.
    ordered = sorted(workers, key=lambda worker: _STATE_ORDER.get(worker["state"], len(_STATE_ORDER)))
    rows = [{**worker, "heartbeat_age": f"{fmt.duration(worker['heartbeat_age_sec'])} ago"} for worker in ordered]
    frame = fmt.table(rows, {
        "worker_id": "worker", "host": "host", "pid": "pid", "state": "state",
        "heartbeat_at": "last heartbeat", "heartbeat_age": "age", "current_model": "current model",
        "batch_id": "batch", "events_recorded": "events",
    })
    st.dataframe(styler(frame).map(state_css, subset=["state"]), hide_index=True)
    live = sum(1 for worker in workers if worker["state"] == "live")
    silent = sum(1 for worker in workers if worker["state"] == "silent")
    st.caption(
        f"{live} live, {silent} silent: a worker is silent after 3 missed heartbeat intervals without stopping."
    )
