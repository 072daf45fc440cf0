"""The monitor under restricted roles, a missing extension, an exclusive lock, and an odd table name."""

from __future__ import annotations

import asyncio
import json
import uuid

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text

from serialmon.db import get_engine
from serialmon.monitor import DatabaseMonitor
from serialmon.monitor.checks import check_conditions
from serialmon.monitor.sections import MonitorRun
from serialmon.monitor.space import relation_sizes, resolve_relation
from serialmon.schema import init_db

ROWS_SQL = """
INSERT INTO {table} (model_name, model_type, serialized_content, feature_types, parameters)
SELECT 'model-' || g, 'part',
       jsonb_build_object('features', (SELECT jsonb_agg(md5(g::text || k::text))
                                       FROM generate_series(1, 10 + (g % 3) * 300) k)),
       ARRAY['CUT'], jsonb_build_object('p', g)
FROM generate_series(1, 120) g
"""


def fill(libpq_url: str, table: str = "serialized_models") -> None:
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute(ROWS_SQL.format(table=table))
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute(f"ANALYZE {table}")


@pytest.fixture
def filled(initialized, libpq_url):
    fill(libpq_url)
    return initialized


@pytest.fixture
def make_role(libpq_url):
    """Create login-less roles with SELECT on the monitored table; dropped after the test."""
    created: list[str] = []

    def make(*, monitor: bool) -> str:
        role = f"sm_role_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(libpq_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("GRANT SELECT ON serialized_models TO {}").format(sql.Identifier(role)))
            if monitor:
                conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(role)))
        created.append(role)
        return role

    yield make
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        for role in created:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


async def report_as(settings, role: str, **kwargs) -> dict:
    """Run the full report on a connection that has switched to `role` with SET ROLE."""
    engine = get_engine(settings)
    with engine.connect() as conn:
        conn.execute(text(f'SET ROLE "{role}"'))
        try:
            return await DatabaseMonitor(settings).get_full_report(conn, **kwargs)
        finally:
            conn.rollback()
            conn.execute(text("RESET ROLE"))


async def test_restricted_role_gets_every_permitted_section(filled, make_role):
    role = make_role(monitor=True)

    report = await report_as(filled, role)

    json.dumps(report)
    assert report["table"]["total_bytes"] > 0
    assert report["table"]["size_source"] == "files"
    assert report["jsonb"]["serialized_content"]["source"] == "sample"
    assert report["jsonb"]["sample"]["rows"] == 120
    assert report["indexes"]["gin"]["present"] is True
    assert report["indexes"]["gin"]["pending_list"]["available"] is True
    assert report["queries"]["available"] is True
    assert report["queries"]["hidden_statements"] == 0
    assert report["bloat"]["estimate"]["table"]["complete"] is True
    assert report["growth"]["available"] is False
    assert "permission denied" in report["growth"]["reason"]
    assert "GRANT" in report["growth"]["fix"]
    assert any("permission denied" in note for note in report["jsonb"]["notes"])


async def test_restricted_role_exact_bloat_allowed_by_pg_monitor(filled, make_role):
    role = make_role(monitor=True)

    report = await report_as(filled, role, exact_bloat=True)

    assert report["bloat"]["exact"]["toast"]["function"] == "pgstattuple"


async def test_role_without_pg_monitor_gets_reasons(filled, make_role):
    role = make_role(monitor=False)

    report = await report_as(filled, role, exact_bloat=True)

    assert report["table"]["total_bytes"] > 0
    assert report["queries"]["hidden_statements"] > 0
    assert "pg_read_all_stats" in report["queries"]["notes"][0]
    assert report["bloat"]["exact"]["available"] is False
    assert "permission denied" in report["bloat"]["exact"]["reason"]
    assert report["indexes"]["gin"]["pending_list"]["available"] is False
    hidden = [alert for alert in report["alerts"] if alert["rule"] == "db_query_stats_unavailable"]
    assert hidden and "insufficient privilege" in hidden[0]["message"]


async def test_missing_extension_gives_reason_and_fix(filled, libpq_url):
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute("DROP EXTENSION pg_stat_statements")

    monitor = DatabaseMonitor(filled)
    queries = await monitor.get_query_stats()
    conditions = await monitor.check_alerts()

    assert queries["available"] is False
    assert "pg_stat_statements extension is not installed in this database" in queries["reason"]
    assert "(the library is preloaded)" in queries["reason"]
    assert queries["fix"].startswith("Run CREATE EXTENSION pg_stat_statements")
    unavailable = [condition for condition in conditions if condition.rule == "db_query_stats_unavailable"]
    assert len(unavailable) == 1
    assert "CREATE EXTENSION" in unavailable[0].fix


async def test_exclusive_lock_skips_instead_of_waiting(filled, libpq_url):
    holder = psycopg.connect(libpq_url)
    try:
        holder.execute("LOCK TABLE serialized_models IN ACCESS EXCLUSIVE MODE")
        pid = holder.info.backend_pid

        report = await asyncio.wait_for(DatabaseMonitor(filled).get_full_report(), timeout=60)
    finally:
        holder.rollback()
        holder.close()

    reasons = " ".join(entry["reason"] for entry in report["skipped"])
    assert f"pid {pid} holds an ACCESS EXCLUSIVE lock" in reasons
    assert report["table"]["size_source"].startswith("pg_class.relpages")
    assert report["jsonb"]["sample"]["available"] is False
    assert report["bloat"]["estimate"]["table"]["size_source"].startswith("pg_class.relpages")
    assert report["queries"]["available"] is True
    assert report["indexes"]["indexes"][0]["definition"] is None
    assert report["indexes"]["gin"]["present"] is True


def test_lock_timeout_backstop_skips_section(filled, libpq_url):
    holder = psycopg.connect(libpq_url)
    try:
        holder.execute("LOCK TABLE serialized_models IN ACCESS EXCLUSIVE MODE")
        with get_engine(filled).connect() as conn:
            relation = resolve_relation(conn, filled)
            run = MonitorRun(conn, filled)  # no lock check: the statement itself must time out

            sizes = relation_sizes(run, relation)
            conn.rollback()
    finally:
        holder.rollback()
        holder.close()

    assert sizes["size_source"].startswith("pg_class.relpages")
    assert "not granted within 200 ms" in run.skipped[0]["reason"]


async def test_caller_transaction_keeps_its_mode(filled):
    engine = get_engine(filled)
    with engine.connect() as conn:
        await DatabaseMonitor(filled).get_full_report(conn)
        read_only = conn.execute(text("SHOW transaction_read_only")).scalar_one()
        lock_timeout = conn.execute(text("SHOW lock_timeout")).scalar_one()
        conn.rollback()

    assert read_only == "off"
    assert lock_timeout == "1s"


async def test_table_name_needing_quotes(settings, libpq_url):
    odd = settings.model_copy(update={"models_schema": "Odd Schema", "models_table": 'Serialized Models "x"'})
    init_db(odd, create_models_table=True)
    quoted = '"Odd Schema"."Serialized Models ""x"""'
    fill(libpq_url, quoted)
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute(f"SELECT count(*) FROM {quoted} WHERE feature_types @> ARRAY['CUT']")

    monitor = DatabaseMonitor(odd)
    report = await monitor.get_full_report(exact_bloat=True)
    sample = await monitor.record_size_sample()

    assert report["relation"] == quoted
    assert report["skipped"] == []
    assert report["table"]["total_bytes"] > 0
    assert report["jsonb"]["sample"]["rows"] == 120
    assert report["indexes"]["gin"]["present"] is True
    assert any("feature_types @>" in statement["query"] for statement in report["queries"]["by_total_time"])
    assert report["bloat"]["estimate"]["table"]["bloat_percent"] < 10
    assert report["bloat"]["exact"]["toast"]["tuple_count"] > 0
    assert report["growth"]["latest_total_bytes"] == report["table"]["total_bytes"]
    assert sample is None  # the report already sampled within the interval


def test_check_conditions_on_plain_connection(filled):
    with get_engine(filled).connect() as conn:
        conditions = check_conditions(conn, filled)
        conn.rollback()
    assert all(condition.severity in ("warning", "critical") for condition in conditions)
    assert "db_gin_index" not in {condition.rule for condition in conditions}
