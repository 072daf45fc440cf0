"""Alert lifecycle end to end: rules over real rows, the stored state machine, and real SMTP delivery."""

from __future__ import annotations

from alerts_support import (
    T0,
    manager,
    minutes,
    query,
    smtp_server,
    smtp_settings,
    successes,
)


async def test_full_cycle_sends_expected_messages(initialized):
    with smtp_server() as (inbox, port):
        settings = smtp_settings(initialized, port, alert_for_minutes=5)
        alerts = manager(settings)

        successes(settings, 20, 70.0, T0 - minutes(10))
        first = await alerts.process_alerts(now=T0)
        assert [(t["from_state"], t["to_state"]) for t in first["transitions"]] == [("inactive", "pending")]
        assert first["queued"] == []

        await alerts.process_alerts(now=T0 + minutes(3))
        assert inbox.subjects == []

        fired = await alerts.process_alerts(now=T0 + minutes(6))
        assert [(t["from_state"], t["to_state"]) for t in fired["transitions"]] == [("pending", "firing")]
        assert [item["channel"] for item in fired["sent"]] == ["email"]
        assert inbox.subjects == ["[serialmon] WARNING low_element_coverage"]

        successes(settings, 20, 10.0, T0 + minutes(7))
        escalated = await alerts.process_alerts(now=T0 + minutes(8))
        assert escalated["transitions"][0]["severity"] == "critical"
        assert inbox.subjects[-1] == "[serialmon] CRITICAL low_element_coverage (escalated from warning)"

        await alerts.process_alerts(now=T0 + minutes(9))
        successes(settings, 30, 95.0, T0 + minutes(70))
        resolved = await alerts.process_alerts(now=T0 + minutes(75))
        assert [(t["from_state"], t["to_state"]) for t in resolved["transitions"]] == [("firing", "resolved")]

    assert inbox.subjects == [
        "[serialmon] WARNING low_element_coverage",
        "[serialmon] CRITICAL low_element_coverage (escalated from warning)",
        "[serialmon] RESOLVED low_element_coverage",
    ]
    warning, critical, resolved_mail = inbox.received
    assert warning.recipients == ["ops@example.com", "lead@example.com"]
    assert "Average element coverage is 70.0 % over 20 models" in warning.part("plain")
    assert "alert-warning" in warning.part("html")
    assert "Average element coverage is 40.0 % over 40 models" in critical.part("plain")
    assert "alert-critical" in critical.part("html")
    assert "alert-resolved" in resolved_mail.part("html")
    assert "RESOLVED low_element_coverage" in resolved_mail.part("plain")

    history = query(settings, "SELECT from_state, to_state, severity, notification FROM {t}.alert_history ORDER BY seq")
    assert [(row["from_state"], row["to_state"], row["severity"], row["notification"]) for row in history] == [
        ("inactive", "pending", "warning", None),
        ("pending", "firing", "warning", "firing"),
        ("firing", "firing", "critical", "escalated"),
        ("firing", "resolved", "critical", "resolved"),
    ]
