"""The AlertManager API: caller sessions, queued-only evaluation, history, silences' input checks, retention."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from alerts_support import T0, alert_settings, failures, manager, minutes, query, successes
from sqlalchemy.ext.asyncio import AsyncSession

from serialmon import get_alert_manager
from serialmon.alerts import AlertManager
from serialmon.config import load_settings, set_settings
from serialmon.db import create_async, get_engine
from serialmon.errors import MissingTable, SettingsError

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


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
        ({"rule": "high_failure_rate", "duration": 1e20, "reason": "x"}, "duration must be at most 365 days"),
        ({"rule": "high_failure_rate", "duration": timedelta(days=366), "reason": "x"},
         "duration must be at most 365 days"),
        ({"rule": "high_failure_rate", "duration": float("nan"), "reason": "x"}, "duration must be positive"),
        ({"rule": "high_failure_rate", "until": T0 + timedelta(days=366), "reason": "x"},
         "until must be at most 365 days after now"),
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


async def test_silence_of_365_days_accepted(initialized):
    alerts = manager(alert_settings(initialized))

    silence = await alerts.silence("high_failure_rate", duration=timedelta(days=365), reason="x", now=T0)

    assert silence["ends_at"] == T0 + timedelta(days=365)


async def test_expected_rule_error_logged_without_traceback(initialized, caplog):
    def missing_table(conn, settings):
        raise MissingTable("The monitored table public.nope does not exist.", "Set SERIALMON_MODELS_TABLE.")

    settings = alert_settings(initialized, alert_window_minutes=10)
    burst(settings, T0 - minutes(1))

    with caplog.at_level("INFO", logger="serialmon.alerts.manager"):
        result = await manager(settings, condition_source=missing_table).process_alerts(now=T0)

    database = [rule for rule in result["rules"] if rule["rule"] == "database"]
    assert database == [{"rule": "database", "ok": False, "alerts": 0,
                         "error": "The monitored table public.nope does not exist. Set SERIALMON_MODELS_TABLE."}]
    assert [t["alert_key"] for t in result["transitions"]] == ["high_failure_rate"]
    logged = [record for record in caplog.records if "not evaluated" in record.getMessage()]
    assert len(logged) == 1
    assert logged[0].levelname == "WARNING"
    assert logged[0].exc_info is None
    assert "\n" not in logged[0].getMessage()


async def test_unexpected_rule_error_keeps_traceback(initialized, caplog):
    def broken(conn, settings):
        raise RuntimeError("boom\nsecond line")

    settings = alert_settings(initialized, alert_window_minutes=10)

    with caplog.at_level("INFO", logger="serialmon.alerts.manager"):
        result = await manager(settings, condition_source=broken).process_alerts(now=T0)

    database = [rule for rule in result["rules"] if rule["rule"] == "database"]
    assert database[0]["error"] == "RuntimeError: boom"
    logged = [record for record in caplog.records if "not evaluated" in record.getMessage()]
    assert len(logged) == 1
    assert logged[0].levelname == "ERROR"
    assert logged[0].exc_info is not None


def test_rule_for_minutes_rejects_unknown_rule():
    settings = load_settings(database_url=UNREACHABLE, alert_rule_for_minutes={"no_such_rule": 5})

    with pytest.raises(SettingsError) as raised:
        AlertManager(settings)

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("Invalid setting SERIALMON_ALERT_RULE_FOR_MINUTES: unknown rule 'no_such_rule'.")
    assert "did you mean" not in message
    assert "Known rules: coverage_anomaly, db_autovacuum," in message
    for rule in ("high_failure_rate", "low_element_coverage", "processing_stall", "db_bloat", "db_table_size"):
        assert rule in message


def test_rule_for_minutes_suggests_close_match():
    settings = load_settings(database_url=UNREACHABLE, alert_rule_for_minutes={"procesing_stall": 5, "db_blaot": 1})

    with pytest.raises(SettingsError, match="unknown rules 'db_blaot' \\(did you mean 'db_bloat'\\?\\), "
                                            "'procesing_stall' \\(did you mean 'processing_stall'\\?\\)"):
        AlertManager(settings)


def test_rule_for_minutes_accepts_every_known_rule():
    names = ["coverage_anomaly", "db_bloat", "db_table_size", "high_failure_rate", "processing_stall"]
    settings = load_settings(database_url=UNREACHABLE, alert_rule_for_minutes={name: 5 for name in names})

    alerts = AlertManager(settings)

    assert alerts.settings.alert_rule_for_minutes == {name: 5 for name in names}
    assert set(names) <= set(alerts.known_rules())


def test_rule_for_minutes_checked_in_replaced_settings(settings):
    alerts = AlertManager()
    set_settings(load_settings(database_url=UNREACHABLE, alert_rule_for_minutes={"nope": 5}))

    with pytest.raises(SettingsError, match="unknown rule 'nope'"):
        alerts.settings  # noqa: B018 - reading the property runs the check
