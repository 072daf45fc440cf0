"""The stored state machine: for durations, cooldown across restarts, hysteresis, silences, concurrency."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from alerts_support import (
    T0,
    alert_settings,
    execute,
    failures,
    manager,
    minutes,
    query,
    smtp_server,
    smtp_settings,
    successes,
)

from serialmon.alerts import AlertManager
from serialmon.alerts.rules import Finding, Rule


def failure_burst(settings, at, failed=10, succeeded=10, **extra):
    """Make the failure rate 50 % in a window that contains `at`."""
    failures(settings, failed, at, **extra)
    successes(settings, succeeded, 90.0, at)


def notifications(settings):
    return query(settings, "SELECT alert_key, to_state, notification, suppressed FROM {t}.alert_history ORDER BY id")


async def test_flicker_within_for_sends_nothing(initialized):
    with smtp_server() as (inbox, port):
        settings = smtp_settings(initialized, port, alert_window_minutes=5, alert_for_minutes=10)
        alerts = manager(settings)
        states = []
        for cycle in range(4):
            start = T0 + minutes(12 * cycle)
            failure_burst(settings, start - minutes(1))
            holding = await alerts.process_alerts(now=start)
            clear = await alerts.process_alerts(now=start + minutes(6))
            states += [t["to_state"] for t in holding["transitions"] + clear["transitions"]]

    assert states == ["pending", "inactive"] * 4
    assert inbox.subjects == []
    assert all(row["notification"] is None for row in notifications(settings))


async def test_restart_during_cooldown_sends_nothing_new(initialized):
    with smtp_server() as (inbox, port):
        settings = smtp_settings(initialized, port, alert_window_minutes=10, cooldown_minutes=30)
        failure_burst(settings, T0 - minutes(1))
        await manager(settings).process_alerts(now=T0)
        resolved = await manager(settings).process_alerts(now=T0 + minutes(12))
        assert resolved["transitions"][0]["to_state"] == "resolved"
        assert inbox.subjects == ["[serialmon] CRITICAL high_failure_rate", "[serialmon] RESOLVED high_failure_rate"]

        # It fires again 15 minutes after the first message: inside the cooldown, so it waits.
        failure_burst(settings, T0 + minutes(14))
        refired = await manager(settings).process_alerts(now=T0 + minutes(15))
        assert refired["transitions"][0]["to_state"] == "firing"
        assert refired["transitions"][0]["suppressed"] == "cooldown"

        # Several restarts inside the cooldown: each new manager reads the stored state and sends nothing.
        for offset in (16, 18, 20):
            failure_burst(settings, T0 + minutes(offset - 1))
            result = await manager(settings).process_alerts(now=T0 + minutes(offset))
            assert result["queued"] == []
        assert len(inbox.subjects) == 2

        # Once the cooldown since the resolved message (sent at +12) has passed, the firing goes out once.
        failure_burst(settings, T0 + minutes(42))
        late = await manager(settings).process_alerts(now=T0 + minutes(43))
        again = await manager(settings).process_alerts(now=T0 + minutes(44))

    assert [item["subject"] for item in late["sent"]] == ["[serialmon] CRITICAL high_failure_rate"]
    assert again["queued"] == []
    assert inbox.subjects == [
        "[serialmon] CRITICAL high_failure_rate",
        "[serialmon] RESOLVED high_failure_rate",
        "[serialmon] CRITICAL high_failure_rate",
    ]


async def test_reminder_after_repeat_interval_only(initialized):
    with smtp_server() as (inbox, port):
        settings = smtp_settings(initialized, port, alert_window_minutes=10, alert_repeat_minutes=60)
        for offset in range(0, 125, 5):
            failure_burst(settings, T0 + minutes(offset - 1))
            await manager(settings).process_alerts(now=T0 + minutes(offset))

    assert inbox.subjects == [
        "[serialmon] CRITICAL high_failure_rate",
        "[serialmon] CRITICAL high_failure_rate (still firing)",
        "[serialmon] CRITICAL high_failure_rate (still firing)",
    ]


async def test_recovery_margin_prevents_flapping(initialized):
    with smtp_server() as (inbox, port):
        settings = smtp_settings(initialized, port, alert_window_minutes=10, coverage_recovery_margin=2.0)
        alerts = manager(settings)
        sequence = [79.0, 81.0, 79.5, 81.5, 82.5]
        for index, coverage in enumerate(sequence):
            at = T0 + minutes(20 * index)
            successes(settings, 12, coverage, at - minutes(1))
            await alerts.process_alerts(now=at)
        active = await alerts.get_active_alerts()

    assert inbox.subjects == ["[serialmon] WARNING low_element_coverage", "[serialmon] RESOLVED low_element_coverage"]
    assert active == []
    states = [row["to_state"] for row in notifications(settings)]
    assert states == ["firing", "resolved"]


async def test_silence_holds_notifications_until_it_ends(initialized):
    with smtp_server() as (inbox, port):
        settings = smtp_settings(initialized, port, alert_window_minutes=10)
        alerts = manager(settings)
        silence = await alerts.silence("high_failure_rate", duration=minutes(30), reason="planned Creo upgrade",
                                       now=T0 - minutes(5))
        assert silence["active"] is True

        failure_burst(settings, T0 - minutes(1))
        silenced = await alerts.process_alerts(now=T0)
        assert silenced["transitions"][0]["to_state"] == "firing"
        assert silenced["transitions"][0]["suppressed"] == "silence"
        active = await alerts.get_active_alerts()
        assert active[0]["silenced"] is True
        assert active[0]["silenced_by"] == silence["id"]

        failure_burst(settings, T0 + minutes(9))
        await alerts.process_alerts(now=T0 + minutes(10))
        assert inbox.subjects == []

        ended = await alerts.unsilence(silence["id"], now=T0 + minutes(11))
        assert ended["active"] is False
        failure_burst(settings, T0 + minutes(11))
        after = await alerts.process_alerts(now=T0 + minutes(12))
        assert [item["subject"] for item in after["sent"]] == ["[serialmon] CRITICAL high_failure_rate"]
        assert await alerts.unsilence(9999, now=T0 + minutes(12)) is None

    assert inbox.subjects == ["[serialmon] CRITICAL high_failure_rate"]
    assert await alerts.list_silences(now=T0 + minutes(12)) == []
    assert len(await alerts.list_silences(include_expired=True, now=T0 + minutes(12))) == 1


async def test_silence_by_scope_leaves_other_scopes(initialized):
    with smtp_server() as (inbox, port):
        settings = smtp_settings(initialized, port, stall_minutes=15)
        alerts = manager(settings)
        for batch in ("a", "b"):
            query(settings, "INSERT INTO {t}.batch_jobs (batch_id, status, started_at, heartbeat_at) "
                            "VALUES (:id, 'running', :at, :at) RETURNING batch_id", id=batch, at=T0 - minutes(40))
        await alerts.silence("processing_stall", "batch:a", duration=3600, reason="batch a is paused", now=T0)
        result = await alerts.process_alerts(now=T0)

    keys = sorted((t["alert_key"], t["suppressed"]) for t in result["transitions"])
    assert keys == [("processing_stall[batch:a]", "silence"), ("processing_stall[batch:b]", None)]
    assert inbox.subjects == ["[serialmon] CRITICAL processing_stall (batch b)"]


async def test_alerts_in_one_evaluation_grouped(initialized):
    with smtp_server() as (inbox, port):
        settings = smtp_settings(initialized, port, alert_window_minutes=10)
        failures(settings, 10, T0 - minutes(1))
        successes(settings, 12, 70.0, T0 - minutes(1))
        await manager(settings).process_alerts(now=T0)

    assert inbox.subjects == ["[serialmon] 2 alerts: 1 critical, 1 warning"]
    body = inbox.received[0].part("plain")
    assert "high_failure_rate" in body
    assert "low_element_coverage" in body
    assert len(inbox.received) == 1


async def test_concurrent_evaluators_send_each_once(initialized):
    with smtp_server() as (inbox, port):
        settings = smtp_settings(initialized, port, alert_window_minutes=10, cooldown_minutes=0)
        timeline = [(0, True), (3, False), (12, False), (20, True), (60, False)]
        for offset, holds in timeline:
            at = T0 + minutes(offset)
            if holds:
                failure_burst(settings, at - minutes(1))
            first, second = manager(settings), manager(settings)
            results = await asyncio.gather(
                first.process_alerts(now=at), second.process_alerts(now=at), manager(settings).process_alerts(now=at)
            )
            moved = [t["to_state"] for result in results for t in result["transitions"]]
            assert len(moved) <= 1, moved

    assert inbox.subjects == [
        "[serialmon] CRITICAL high_failure_rate",
        "[serialmon] RESOLVED high_failure_rate",
        "[serialmon] CRITICAL high_failure_rate",
        "[serialmon] RESOLVED high_failure_rate",
    ]
    outbox = query(settings, "SELECT status, attempts FROM {t}.notification_outbox ORDER BY id")
    assert outbox == [{"status": "sent", "attempts": 1}] * 4


async def test_resolved_not_sent_when_disabled(initialized):
    with smtp_server() as (inbox, port):
        settings = smtp_settings(initialized, port, alert_window_minutes=10, notify_resolved=False,
                                 cooldown_minutes=0)
        failure_burst(settings, T0 - minutes(1))
        await manager(settings).process_alerts(now=T0)
        resolved = await manager(settings).process_alerts(now=T0 + minutes(12))
        failure_burst(settings, T0 + minutes(13))
        await manager(settings).process_alerts(now=T0 + minutes(14))

    assert resolved["transitions"][0]["suppressed"] == "disabled"
    assert inbox.subjects == ["[serialmon] CRITICAL high_failure_rate"] * 2


@dataclass
class Condition:
    rule: str
    scope: str
    severity: str
    value: float
    threshold: float
    message: str
    fix: str


async def test_database_conditions_fire_and_resolve(initialized):
    reported: list[Condition] = [
        Condition("table_bloat", "public.serialized_models", "warning", 42.0, 30.0,
                  "serialized_models has 42 % dead tuples", "Run VACUUM (ANALYZE) on it."),
    ]
    with smtp_server() as (inbox, port):
        settings = smtp_settings(initialized, port)
        alerts = manager(settings, condition_source=lambda conn, settings: list(reported))
        fired = await alerts.process_alerts(now=T0)
        reported[0] = Condition("table_bloat", "public.serialized_models", "critical", 61.0, 50.0,
                                "serialized_models has 61 % dead tuples", "Run VACUUM (ANALYZE) on it.")
        await alerts.process_alerts(now=T0 + minutes(1))
        reported.clear()
        await alerts.process_alerts(now=T0 + minutes(2))

    assert fired["transitions"][0]["alert_key"] == "table_bloat[public.serialized_models]"
    assert inbox.subjects == [
        "[serialmon] WARNING table_bloat (public.serialized_models)",
        "[serialmon] CRITICAL table_bloat (public.serialized_models) (escalated from warning)",
        "[serialmon] RESOLVED table_bloat (public.serialized_models)",
    ]
    assert "Run VACUUM (ANALYZE) on it." in inbox.received[0].part("plain")


async def test_database_monitor_missing_keeps_state(initialized):
    settings = alert_settings(initialized)

    def unavailable(conn, settings):
        from serialmon.alerts.rules import RuleUnavailable

        raise RuleUnavailable("the database monitor is not available")

    reported = [Condition("cache_hit_ratio", "", "warning", 0.8, 0.95, "cache hit ratio 80 %", "Add memory.")]
    await manager(settings, condition_source=lambda conn, settings: reported).process_alerts(now=T0)
    result = await manager(settings, condition_source=unavailable).process_alerts(now=T0 + minutes(1))

    database = [rule for rule in result["rules"] if rule["rule"] == "database"]
    assert database == [{"rule": "database", "ok": False, "alerts": 0,
                         "error": "the database monitor is not available"}]
    assert result["transitions"] == []
    assert [alert["alert_key"] for alert in await AlertManager(settings).get_active_alerts()] == ["cache_hit_ratio"]



async def test_not_evaluated_database_rule_keeps_alert(initialized):
    from serialmon.monitor.checks import ConditionResults

    settings = alert_settings(initialized)
    bloat = Condition("db_bloat", "public.serialized_models", "warning", 42.0, 30.0, "42 % bloated", "VACUUM it.")
    results = [
        ConditionResults([bloat], frozenset()),
        ConditionResults([], frozenset({"db_bloat"})),  # its statistics could not be read
        ConditionResults([], frozenset()),
    ]
    alerts = manager(settings, condition_source=lambda conn, settings: results.pop(0))

    fired = await alerts.process_alerts(now=T0)
    unknown = await alerts.process_alerts(now=T0 + minutes(1))
    active = [alert["alert_key"] for alert in await alerts.get_active_alerts()]
    cleared = await alerts.process_alerts(now=T0 + minutes(2))

    assert [t["to_state"] for t in fired["transitions"]] == ["firing"]
    assert unknown["transitions"] == []
    database = [rule for rule in unknown["rules"] if rule["rule"] == "database"]
    assert database == [{"rule": "database", "ok": True, "alerts": 0, "error": None, "not_evaluated": ["db_bloat"]}]
    assert active == ["db_bloat[public.serialized_models]"]
    assert [t["to_state"] for t in cleared["transitions"]] == ["resolved"]


MODELS_RELATION = '"public"."serialized_models"'
CACHE_KEY = f"db_cache_hit_ratio[{MODELS_RELATION}]"


async def test_monitor_rule_behind_lock_keeps_alert(initialized, libpq_url):
    import psycopg

    settings = alert_settings(initialized, db_cache_hit_min_blocks=10, size_sample_interval_sec=86_400)
    with psycopg.connect(libpq_url, autocommit=True) as conn:  # two samples 5 minutes apart: 50 hits, 50 reads
        for ago, hit, read in ((10, 10_000, 10), (5, 10_050, 60)):
            conn.execute(
                "INSERT INTO serialmon.table_size_samples (relation, sampled_at, heap_bytes, toast_bytes, "
                "index_bytes, total_bytes, heap_blks_hit, heap_blks_read, idx_blks_hit, idx_blks_read, "
                "toast_blks_hit, toast_blks_read, tidx_blks_hit, tidx_blks_read) "
                "VALUES (%s, now() - make_interval(mins => %s), 1, 1, 1, 3, %s, %s, 0, 0, 0, 0, 0, 0)",
                (MODELS_RELATION, ago, hit, read),
            )
    alerts = AlertManager(settings)
    fired = await alerts.process_alerts(now=T0)

    holder = psycopg.connect(libpq_url)  # the samples cannot be read: the rule times out on the lock
    try:
        holder.execute("LOCK TABLE serialmon.table_size_samples IN ACCESS EXCLUSIVE MODE")
        unknown = await alerts.process_alerts(now=T0 + minutes(1))
    finally:
        holder.rollback()
        holder.close()

    assert CACHE_KEY in [t["alert_key"] for t in fired["transitions"]]
    assert [t for t in unknown["transitions"] if t["rule"] == "db_cache_hit_ratio"] == []
    assert CACHE_KEY in [alert["alert_key"] for alert in await alerts.get_active_alerts()]
    database = [rule for rule in unknown["rules"] if rule["rule"] == "database"]
    assert "db_cache_hit_ratio" in database[0]["not_evaluated"]


async def test_bloat_without_statistics_keeps_alert(initialized, libpq_url):
    import psycopg

    from serialmon.simulate import SimulationConfig, run_simulation

    settings = alert_settings(initialized, db_bloat_min_bytes=0, db_bloat_warning_percent=0.01,
                              db_bloat_critical_percent=100)
    run_simulation(SimulationConfig(count=40, seed=3, content_kb=2, record=False), settings)
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute("DELETE FROM serialized_models WHERE model_name IN "
                     "(SELECT model_name FROM serialized_models ORDER BY model_name LIMIT 20)")
        conn.execute("ANALYZE serialized_models")
    alerts = AlertManager(settings)
    fired = await alerts.process_alerts(now=T0)

    with psycopg.connect(libpq_url, autocommit=True) as conn:  # as after a restore: no column statistics yet
        conn.execute("DELETE FROM pg_statistic WHERE starelid = 'serialized_models'::regclass")
    unknown = await alerts.process_alerts(now=T0 + minutes(1))

    bloat_key = f"db_bloat[{MODELS_RELATION}]"
    assert bloat_key in [t["alert_key"] for t in fired["transitions"]]
    assert [t for t in unknown["transitions"] if t["rule"] == "db_bloat"] == []
    assert bloat_key in [alert["alert_key"] for alert in await alerts.get_active_alerts()]
    database = [rule for rule in unknown["rules"] if rule["rule"] == "database"]
    assert database[0]["not_evaluated"] == ["db_bloat"]

class BrokenRule(Rule):
    source = "low_element_coverage"

    def evaluate(self, conn, settings, names, now, firing):
        conn.exec_driver_sql("SELECT * FROM no_such_table")
        return []


async def test_broken_rule_leaves_alerts_and_others_run(initialized):
    settings = alert_settings(initialized, alert_window_minutes=10)
    successes(settings, 12, 60.0, T0 - minutes(1))
    failure_burst(settings, T0 - minutes(1))
    await manager(settings).process_alerts(now=T0)

    from serialmon.alerts.rules import FailureRateRule

    broken = AlertManager(settings, rules=[BrokenRule(), FailureRateRule()])
    result = await broken.process_alerts(now=T0 + minutes(30))

    assert result["rules"][0]["ok"] is False
    assert "no_such_table" in result["rules"][0]["error"]
    assert [t["alert_key"] for t in result["transitions"]] == ["high_failure_rate"]
    active = [alert["alert_key"] for alert in await broken.get_active_alerts()]
    assert active == ["low_element_coverage"]


async def test_pending_key_uses_rule_for_override(initialized):
    settings = alert_settings(initialized, alert_for_minutes=0, alert_rule_for_minutes={"processing_stall": 10})
    query(settings, "INSERT INTO {t}.batch_jobs (batch_id, status, started_at, heartbeat_at) "
                    "VALUES ('7', 'running', :at, :at) RETURNING batch_id", at=T0 - minutes(30))

    class Always(Rule):
        source = "custom"

        def evaluate(self, conn, settings, names, now, firing):
            return [Finding("custom", "", "warning", 1.0, 0.0, "custom condition")]

    from serialmon.alerts.rules import ProcessingStallRule

    alerts = AlertManager(settings, rules=[ProcessingStallRule(), Always()])
    first = await alerts.process_alerts(send_notifications=False, now=T0)
    later = await alerts.process_alerts(send_notifications=False, now=T0 + minutes(10))

    assert sorted((t["alert_key"], t["to_state"]) for t in first["transitions"]) == [
        ("custom", "firing"), ("processing_stall[batch:7]", "pending")]
    assert [(t["alert_key"], t["to_state"]) for t in later["transitions"]] == [("processing_stall[batch:7]", "firing")]
    assert later["pending"] == 2
    assert len(first["queued"]) == 1


async def test_real_database_monitor_condition(initialized):
    # Test setup plays the pipeline's DBA here: without the GIN index the monitor reports db_gin_index.
    settings = alert_settings(initialized)
    execute(settings, "DROP INDEX public.serialized_models_feature_types_gin")
    result = await AlertManager(settings).process_alerts(now=T0)

    assert {"rule": "database", "ok": True, "alerts": 1, "error": None} in result["rules"]
    [transition] = result["transitions"]
    assert transition["rule"] == "db_gin_index"
    assert transition["scope"] == '"public"."serialized_models"'
    assert transition["to_state"] == "firing"
    assert "has no GIN index on feature_types" in transition["message"]


async def test_more_severe_refire_skips_cooldown(initialized):
    with smtp_server() as (inbox, port):
        settings = smtp_settings(initialized, port, alert_window_minutes=10, cooldown_minutes=30)
        failure_burst(settings, T0 - minutes(1), failed=3, succeeded=17)
        await manager(settings).process_alerts(now=T0)
        await manager(settings).process_alerts(now=T0 + minutes(12))
        failure_burst(settings, T0 + minutes(13), failed=10, succeeded=10)
        refired = await manager(settings).process_alerts(now=T0 + minutes(14))

    assert refired["transitions"][0]["notification"] == "firing"
    assert inbox.subjects == [
        "[serialmon] WARNING high_failure_rate",
        "[serialmon] RESOLVED high_failure_rate",
        "[serialmon] CRITICAL high_failure_rate",
    ]
