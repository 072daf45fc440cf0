"""The AlertManager API: caller sessions, queued-only evaluation, history, silences' input checks, retention."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from alerts_support import T0, alert_settings, failures, manager, minutes, query, successes
from sqlalchemy.ext.asyncio import AsyncSession

from serialmon import get_alert_manager
from serialmon.alerts import AlertManager
from serialmon.config import load_settings
from serialmon.db import create_async, get_engine


def burst(settings, at):
    failures(settings, 10, at)
    successes(settings, 10, 90.0, at)


async def test_queued_only_until_delivered(initialized):
    settings = alert_settings(initialized, alert_window_minutes=10)
    burst(settings, T0 - minutes(1))
    alerts = manager(settings)

    queued = await alerts.process_alerts(send_notifications=False, now=T0)
    assert [row["channel"] for row in queued["queued"]] == ["email"]
    assert queued["sent"] == []
    assert queued["pending"] == 1
    assert list(settings.resolved_outbox_dir.glob("*.eml")) == []

    delivered = await alerts.deliver_notifications(now=T0)
    assert [row["id"] for row in delivered["sent"]] == [queued["queued"][0]["id"]]
    assert len(list(settings.resolved_outbox_dir.glob("*.eml"))) == 1


async def test_async_session_commits_with_caller(initialized):
    settings = alert_settings(initialized, alert_window_minutes=10)
    burst(settings, T0 - minutes(1))
    engine = create_async(settings)
    try:
        async with AsyncSession(engine) as session:
            result = await manager(settings).process_alerts(session, now=T0)
            assert [t["to_state"] for t in result["transitions"]] == ["firing"]
            assert query(settings, "SELECT count(*) AS n FROM {t}.alert_state") == [{"n": 0}]
            await session.commit()
    finally:
        await engine.dispose()

    assert query(settings, "SELECT state FROM {t}.alert_state") == [{"state": "firing"}]
    assert query(settings, "SELECT status FROM {t}.notification_outbox") == [{"status": "sent"}]


async def test_sync_connection_session(initialized):
    settings = alert_settings(initialized, alert_window_minutes=10)
    burst(settings, T0 - minutes(1))
    with get_engine(settings).connect() as conn:
        result = await manager(settings).process_alerts(conn, send_notifications=False, now=T0)
        conn.commit()
    assert len(result["queued"]) == 1
    active = await manager(settings).get_active_alerts()
    assert [(alert["alert_key"], alert["state"], alert["severity"]) for alert in active] == [
        ("high_failure_rate", "firing", "critical")]
    assert active[0]["details"]["value_text"] == "50.0 %"


async def test_history_newest_first_and_by_key(initialized):
    settings = alert_settings(initialized, alert_window_minutes=10, stall_minutes=15)
    query(settings, "INSERT INTO {t}.batch_jobs (batch_id, status, started_at, heartbeat_at) "
                    "VALUES ('9', 'running', :at, :at) RETURNING batch_id", at=T0 - minutes(30))
    burst(settings, T0 - minutes(1))
    alerts = manager(settings)
    await alerts.process_alerts(send_notifications=False, now=T0)
    await alerts.process_alerts(send_notifications=False, now=T0 + minutes(12))

    rows = await alerts.get_alert_history()
    assert [(row["alert_key"], row["to_state"]) for row in rows] == [
        ("high_failure_rate", "resolved"),
        ("processing_stall[batch:9]", "firing"),
        ("high_failure_rate", "firing"),
    ]
    only = await alerts.get_alert_history(limit=10, alert_key="processing_stall[batch:9]")
    assert [row["to_state"] for row in only] == ["firing"]
    assert len(await alerts.get_alert_history(limit=1)) == 1
    with pytest.raises(ValueError, match="limit must be between 1 and 100000, got 0"):
        await alerts.get_alert_history(limit=0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"rule": "", "duration": 60, "reason": "x"}, "rule must be 1-100 characters"),
        ({"rule": "high_failure_rat", "duration": 60, "reason": "x"}, "unknown rule 'high_failure_rat'"),
        ({"rule": "db_bloot", "duration": 60, "reason": "x"}, "one of .*db_bloat"),
        ({"rule": "high_failure_rate", "duration": 60, "reason": " "}, "reason must not be empty"),
        ({"rule": "high_failure_rate", "reason": "x"}, "give exactly one of until and duration"),
        ({"rule": "high_failure_rate", "duration": -5, "reason": "x"}, "duration must be positive"),
        ({"rule": "high_failure_rate", "until": T0 - minutes(1), "reason": "x"}, "until must be in the future"),
        ({"rule": "high_failure_rate", "until": datetime(2030, 1, 1), "reason": "x"}, "until must be timezone-aware"),
    ],
)
async def test_silence_rejects_invalid_arguments(arguments, message):
    # Arguments are checked before any database access, so no database is needed.
    alerts = AlertManager(load_settings(database_url="postgresql://nobody@127.0.0.1:1/none"))
    with pytest.raises(ValueError, match=message):
        await alerts.silence(now=T0, **arguments)


async def test_silence_all_rules_with_star(initialized):
    settings = alert_settings(initialized, alert_window_minutes=10)
    alerts = manager(settings)
    await alerts.silence("*", until=T0 + timedelta(hours=1), reason="maintenance window", now=T0 - minutes(1))
    burst(settings, T0 - minutes(1))
    successes(settings, 12, 30.0, T0 - minutes(1))
    result = await alerts.process_alerts(now=T0)

    assert sorted(t["suppressed"] for t in result["transitions"]) == ["silence", "silence"]
    assert result["queued"] == []


async def test_history_retention_deletes_old_rows(initialized):
    settings = alert_settings(initialized, alert_window_minutes=10, alert_history_retention_days=30)
    burst(settings, T0 - minutes(1))
    alerts = manager(settings)
    await alerts.process_alerts(now=T0)
    await alerts.process_alerts(now=T0 + minutes(12))
    later = await alerts.process_alerts(now=T0 + timedelta(days=31))

    assert later["cleaned"] == {"history": 2, "outbox": 2}
    assert query(settings, "SELECT count(*) AS n FROM {t}.notification_attempts") == [{"n": 0}]


def test_get_alert_manager_is_shared(settings):
    first = get_alert_manager()
    assert first is get_alert_manager()
    assert isinstance(first, AlertManager)
    assert first.settings is settings


async def test_naive_now_rejected():
    alerts = AlertManager(load_settings(database_url="postgresql://nobody@127.0.0.1:1/none"))
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        await alerts.process_alerts(now=datetime(2025, 1, 1))
