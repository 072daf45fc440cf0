"""Each rule's signal, measured on real rows: windows, minimums, grouping, hysteresis and the anomaly score."""

from __future__ import annotations

import pytest
from alerts_support import (
    T0,
    alert_settings,
    failures,
    insert_events,
    minutes,
    query,
    successes,
)

from serialmon.alerts.rules import (
    CoverageAnomalyRule,
    FailureRateRule,
    LowCoverageRule,
    ProcessingStallRule,
    Thresholds,
)
from serialmon.alerts.state import alert_key
from serialmon.db import names, run_sync


def evaluate(rule, settings, now=T0, firing=None):
    return run_sync(None, lambda conn: rule.evaluate(conn, settings, names(settings), now, firing or {}), settings)


def test_coverage_counts_latest_event_per_model(initialized):
    settings = alert_settings(initialized, alert_window_minutes=60)
    successes(settings, 9, 60.0, T0 - minutes(30))
    insert_events(settings, [
        {"occurred_at": T0 - minutes(40), "status": "success", "element_coverage": 5.0, "model_name": "a.prt"},
        {"occurred_at": T0 - minutes(20), "status": "success", "element_coverage": 90.0, "model_name": "a.prt"},
        {"occurred_at": T0 - minutes(20), "status": "failure", "model_name": "b.prt"},
        {"occurred_at": T0 - minutes(20), "status": "success", "element_coverage": None, "model_name": "c.prt"},
        {"occurred_at": T0 - minutes(90), "status": "success", "element_coverage": 0.0, "model_name": "old.prt"},
    ])

    [finding] = evaluate(LowCoverageRule(), settings)

    assert finding.value == pytest.approx((9 * 60 + 90) / 10)
    assert finding.severity == "warning"
    assert finding.threshold == 80.0
    assert finding.details["models"] == 10
    assert [row["model_name"] for row in finding.details["worst"]][-1] != "a.prt"
    assert "old.prt" not in str(finding.details)
    assert finding.message.startswith("Average element coverage is 63.0 % over 10 models in the last 60 min")


def test_coverage_needs_minimum_models(initialized):
    settings = alert_settings(initialized, min_models_for_coverage=10)
    successes(settings, 9, 10.0, T0 - minutes(5))
    assert evaluate(LowCoverageRule(), settings) == []
    successes(settings, 1, 10.0, T0 - minutes(5))
    assert [finding.severity for finding in evaluate(LowCoverageRule(), settings)] == ["critical"]


def test_failure_rate_ignores_skipped(initialized):
    settings = alert_settings(initialized, min_attempts_for_failure_rate=20)
    failures(settings, 5, T0 - minutes(5))
    successes(settings, 5, 90.0, T0 - minutes(5))
    insert_events(settings, [{"occurred_at": T0 - minutes(5), "status": "skipped"} for _ in range(50)])
    assert evaluate(FailureRateRule(), settings) == []

    successes(settings, 10, 90.0, T0 - minutes(5))
    [finding] = evaluate(FailureRateRule(), settings)
    assert finding.value == pytest.approx(5 / 20)
    assert finding.severity == "warning"
    assert finding.value_text == "25.0 %"


def test_failure_rate_groups_reasons(initialized):
    settings = alert_settings(initialized, min_attempts_for_failure_rate=20)
    failures(settings, 6, T0 - minutes(5), error_type="CreoTimeout")
    failures(settings, 3, T0 - minutes(4), error_type="RegenerationFailed")
    insert_events(settings, [{"occurred_at": T0 - minutes(3), "status": "failure", "error_type": None}])
    successes(settings, 10, 90.0, T0 - minutes(5))

    [finding] = evaluate(FailureRateRule(), settings)

    assert finding.severity == "critical"
    assert [(row["reason"], row["failures"]) for row in finding.details["reasons"]] == [
        ("CreoTimeout", 6), ("RegenerationFailed", 3), ("unknown", 1)]
    assert "Failures by reason: CreoTimeout x6, RegenerationFailed x3, unknown x1." in finding.message
    assert finding.details["table"]["rows"][0][3] == "CreoTimeout while opening the model"


def test_failure_rate_at_limit_does_not_fire(initialized):
    settings = alert_settings(initialized, min_attempts_for_failure_rate=20)
    failures(settings, 2, T0 - minutes(5))
    successes(settings, 18, 90.0, T0 - minutes(5))
    assert evaluate(FailureRateRule(), settings) == []


def add_batch(settings, batch_id, status, started_at, heartbeat_at):
    query(settings, "INSERT INTO {t}.batch_jobs (batch_id, status, started_at, heartbeat_at) "
                    "VALUES (:id, :status, :started, :heartbeat) RETURNING batch_id",
          id=batch_id, status=status, started=started_at, heartbeat=heartbeat_at)


def add_worker(settings, worker_id, heartbeat_at, batch_id=None, stopped_at=None):
    query(settings, "INSERT INTO {t}.worker_heartbeats (worker_id, host, pid, started_at, heartbeat_at, batch_id, "
                    "stopped_at, current_model) VALUES (:id, 'cad-01', 4242, :at, :at, :batch, :stopped, 'gear.asm') "
                    "RETURNING worker_id",
          id=worker_id, at=heartbeat_at, batch=batch_id, stopped=stopped_at)


def test_stall_of_batches(initialized):
    settings = alert_settings(initialized, stall_minutes=15)
    add_batch(settings, "quiet", "running", T0 - minutes(120), T0 - minutes(1))
    successes(settings, 1, 90.0, T0 - minutes(20), batch_id="quiet")
    add_batch(settings, "no-heartbeat", "running", T0 - minutes(120), T0 - minutes(25))
    successes(settings, 1, 90.0, T0 - minutes(2), batch_id="no-heartbeat")
    add_batch(settings, "busy", "running", T0 - minutes(120), T0 - minutes(1))
    successes(settings, 1, 90.0, T0 - minutes(2), batch_id="busy")
    add_batch(settings, "just-started", "running", T0 - minutes(5), T0 - minutes(1))
    add_batch(settings, "done", "completed", T0 - minutes(300), T0 - minutes(200))

    findings = {finding.scope: finding for finding in evaluate(ProcessingStallRule(), settings)}

    assert sorted(findings) == ["batch:no-heartbeat", "batch:quiet"]
    assert findings["batch:quiet"].message == "Batch quiet is running but recorded no model for 20 min."
    assert findings["batch:no-heartbeat"].message == "Batch no-heartbeat is running but sent no heartbeat for 25 min."
    assert findings["batch:quiet"].severity == "critical"
    assert findings["batch:quiet"].value == pytest.approx(20.0)


def test_stall_of_workers(initialized):
    settings = alert_settings(initialized, stall_minutes=15, stall_forget_hours=24)
    add_batch(settings, "live", "running", T0 - minutes(60), T0 - minutes(1))
    successes(settings, 1, 90.0, T0 - minutes(1), batch_id="live")
    add_batch(settings, "finished", "completed", T0 - minutes(60), T0 - minutes(30))
    add_worker(settings, "w-silent", T0 - minutes(20), batch_id="live")
    add_worker(settings, "w-alive", T0 - minutes(1), batch_id="live")
    add_worker(settings, "w-stopped", T0 - minutes(20), batch_id="live", stopped_at=T0 - minutes(20))
    add_worker(settings, "w-finished-batch", T0 - minutes(40), batch_id="finished")
    add_worker(settings, "w-ancient", T0 - minutes(60 * 48))

    findings = evaluate(ProcessingStallRule(), settings)

    assert [finding.scope for finding in findings] == ["worker:w-silent"]
    assert findings[0].message == (
        "Worker w-silent (host cad-01, pid 4242) in batch live sent no heartbeat for 20 min, last model gear.asm."
    )


def history_and_recent(settings, category, history_values, recent_values):
    rows = []
    for index, value in enumerate(history_values):
        at = T0 - minutes(120 + 60 * index)
        rows.append({"occurred_at": at, "status": "success", "element_coverage": value, "category": category})
    for value in recent_values:
        rows.append({"occurred_at": T0 - minutes(10), "status": "success", "element_coverage": value,
                     "category": category})
    insert_events(settings, rows)


def test_anomaly_catches_drop_above_static_threshold(initialized):
    settings = alert_settings(initialized, anomaly_training_days=7, anomaly_min_history_models=30)
    steady = [86.0, 88.0, 90.0, 92.0, 94.0] * 8
    history_and_recent(settings, "brackets", steady, [83.0] * 8)
    history_and_recent(settings, "housings", steady, [89.0, 91.0, 90.0, 88.0, 92.0, 90.0])
    history_and_recent(settings, "new-line", steady[:10], [40.0] * 8)

    findings = evaluate(CoverageAnomalyRule(), settings)

    assert [finding.scope for finding in findings] == ["category:brackets"]
    finding = findings[0]
    assert finding.severity == "warning"
    assert finding.value < -3
    assert finding.details["history_models"] == 40
    assert finding.details["recent_models"] == 8
    assert finding.details["drop_points"] == pytest.approx(7.0)
    assert finding.details["recent_mean"] > settings.coverage_warning


def test_anomaly_needs_minimum_drop(initialized):
    settings = alert_settings(initialized, anomaly_min_drop=5.0)
    tight = [89.8, 90.0, 90.2] * 14
    history_and_recent(settings, "brackets", tight, [88.0] * 30)

    assert evaluate(CoverageAnomalyRule(), settings) == []
    firing = {("coverage_anomaly", "category:brackets"): "warning"}
    assert [finding.scope for finding in evaluate(CoverageAnomalyRule(), settings, firing=firing)] == [
        "category:brackets"]


@pytest.mark.parametrize(
    ("value", "firing", "expected"),
    [
        (79.9, None, ("warning", 80.0)),
        (80.0, None, None),
        (81.0, "warning", ("warning", 80.0)),
        (82.0, "warning", None),
        (49.0, None, ("critical", 50.0)),
        (51.0, "critical", ("critical", 50.0)),
        (52.5, "critical", ("warning", 80.0)),
    ],
)
def test_thresholds_apply_recovery_margin(value, firing, expected):
    limits = Thresholds(warning=80.0, critical=50.0, recovery_margin=2.0, higher_is_worse=False)
    assert limits.classify(value, firing) == expected


def test_alert_key_includes_scope():
    assert alert_key("high_failure_rate", "") == "high_failure_rate"
    assert alert_key("processing_stall", "batch:42") == "processing_stall[batch:42]"
