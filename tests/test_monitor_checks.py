"""check_alerts: each database rule fires with lowered thresholds, and stays quiet on a healthy table."""

from __future__ import annotations

import time

import psycopg
import pytest

from serialmon.monitor import DatabaseMonitor

LOAD = """
INSERT INTO serialized_models (model_name, model_type, serialized_content, feature_types)
SELECT 'model-' || g, 'part',
       jsonb_build_object('features', (SELECT jsonb_agg(md5(g::text || k::text)) FROM generate_series(1, 400) k)),
       ARRAY['CUT']
FROM generate_series(1, 200) g
"""

RELATION = '"public"."serialized_models"'


@pytest.fixture
def churned(initialized, libpq_url):
    """A table whose every row was updated once, with autovacuum off so dead tuples stay."""
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE serialized_models SET (autovacuum_enabled = false)")
        conn.execute(LOAD)
        conn.execute("UPDATE serialized_models SET serialized_content = serialized_content || '{\"v\": 2}'")
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("ANALYZE serialized_models")
    return initialized


def lowered(settings, **extra):
    return settings.model_copy(
        update={
            "db_dead_tuples_min": 0,
            "db_dead_tuples_warning_ratio": 0.2,
            "db_dead_tuples_critical_ratio": 0.9,
            "db_bloat_min_bytes": 0,
            "db_bloat_warning_percent": 20.0,
            "db_bloat_critical_percent": 40.0,
            "db_autovacuum_max_age_hours": 1.0,
            **extra,
        }
    )


def by_rule(conditions):
    return {condition.rule: condition for condition in conditions}


async def test_churned_table_raises_expected_conditions(churned):
    settings = lowered(churned, table_size_limit_bytes=1024 * 1024)

    conditions = by_rule(await DatabaseMonitor(settings).check_alerts())

    assert set(conditions) == {"db_table_size", "db_bloat", "db_dead_tuples", "db_autovacuum"}
    assert conditions["db_table_size"].severity == "critical"
    assert conditions["db_table_size"].threshold == pytest.approx(0.95 * 1024 * 1024)
    assert conditions["db_bloat"].severity == "critical"
    assert conditions["db_bloat"].value > 40.0
    assert conditions["db_dead_tuples"].severity == "warning"
    assert conditions["db_dead_tuples"].value == pytest.approx(0.5, abs=0.05)
    assert conditions["db_autovacuum"].value is None
    assert "never vacuumed; autovacuum is disabled" in conditions["db_autovacuum"].message
    for condition in conditions.values():
        assert condition.scope == RELATION
        assert condition.fix


async def test_default_thresholds_stay_quiet(churned):
    conditions = await DatabaseMonitor(churned).check_alerts()

    assert conditions == []


async def test_missing_and_invalid_gin_index(initialized, libpq_url):
    monitor = DatabaseMonitor(initialized)
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute("DROP INDEX serialized_models_feature_types_gin")
    missing = by_rule(await monitor.check_alerts())["db_gin_index"]

    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute("CREATE INDEX serialized_models_feature_types_gin ON serialized_models USING GIN (feature_types)")
        conn.execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'serialized_models_feature_types_gin'::regclass"
        )
    invalid = by_rule(await monitor.check_alerts())["db_gin_index"]

    assert missing.severity == "warning"
    assert "no GIN index" in missing.message
    assert invalid.severity == "critical"
    assert invalid.scope == "serialized_models_feature_types_gin"
    assert "REINDEX" in invalid.fix


async def test_long_transaction_detected(initialized, libpq_url):
    settings = initialized.model_copy(
        update={"db_long_transaction_warning_minutes": 0.001, "db_long_transaction_critical_minutes": 60.0}
    )
    holder = psycopg.connect(libpq_url, application_name="stuck-writer")
    pid = holder.info.backend_pid
    try:
        holder.execute("SELECT txid_current()")
        time.sleep(0.2)
        condition = by_rule(await DatabaseMonitor(settings).check_alerts())["db_long_transaction"]
    finally:
        holder.rollback()
        holder.close()

    assert condition.severity == "warning"
    assert condition.value > 0.001
    assert f"pid {pid} (stuck-writer)" in condition.message


async def test_cache_hit_ratio_from_recent_samples(initialized, libpq_url):
    settings = initialized.model_copy(update={"db_cache_hit_min_blocks": 10})
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        for minutes, hit, read in ((10, 10_000, 10), (5, 10_050, 60)):
            conn.execute(
                "INSERT INTO serialmon.table_size_samples (relation, sampled_at, heap_bytes, toast_bytes, index_bytes, "
                "total_bytes, heap_blks_hit, heap_blks_read, idx_blks_hit, idx_blks_read, toast_blks_hit, "
                "toast_blks_read, tidx_blks_hit, tidx_blks_read) "
                "VALUES (%s, now() - make_interval(mins => %s), 1, 1, 1, 3, %s, %s, 0, 0, 0, 0, 0, 0)",
                (RELATION, minutes, hit, read),
            )

    conditions = await DatabaseMonitor(settings).check_alerts(record_sample=False)
    condition = by_rule(conditions)["db_cache_hit_ratio"]

    assert condition.severity == "critical"
    assert condition.value == pytest.approx(0.5)
    assert condition.threshold == pytest.approx(0.90)


async def test_conditions_serialise_for_the_alert_manager(churned):
    conditions = await DatabaseMonitor(lowered(churned)).check_alerts()

    first = conditions[0].as_dict()
    assert set(first) == {"rule", "scope", "severity", "value", "threshold", "message", "fix"}


async def test_check_alerts_records_a_size_sample(initialized, libpq_url):
    await DatabaseMonitor(initialized).check_alerts()
    await DatabaseMonitor(initialized).check_alerts()

    with psycopg.connect(libpq_url, autocommit=True) as conn:
        count = conn.execute("SELECT count(*) FROM serialmon.table_size_samples").fetchone()[0]
    assert count == 1  # the second call was within size_sample_interval_sec
