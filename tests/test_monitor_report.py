"""The full report dict, the ledger-or-sample choice for JSONB sizes, and the `db-report` command."""

from __future__ import annotations

import json

import psycopg
import pytest
from typer.testing import CliRunner

from serialmon.cli import app
from serialmon.monitor import DatabaseMonitor, get_db_monitor
from serialmon.monitor.report import REPORT_KEYS

LOAD = """
INSERT INTO serialized_models (model_name, model_type, serialized_content, units, feature_types)
SELECT 'model-' || g, 'part',
       jsonb_build_object('features', (SELECT jsonb_agg(md5(g::text || k::text)) FROM generate_series(1, g * 10) k)),
       '{"length": "mm"}', ARRAY['CUT']
FROM generate_series(1, 50) g
"""


@pytest.fixture
def filled(initialized, libpq_url):
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute(LOAD)
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("ANALYZE serialized_models")
    return initialized


def write_ledger(libpq_url: str, minutes_ago: float, rows: int) -> None:
    """Play the ledger refresh: copy stored sizes of `rows` models and mark the ledger refreshed."""
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO serialmon.model_quality (model_id, model_name, row_version, quality_known, content_bytes) "
            "SELECT id, model_name, xmin::text, false, pg_column_size(serialized_content) "
            "FROM serialized_models ORDER BY id LIMIT %s",
            (rows,),
        )
        conn.execute(
            "INSERT INTO serialmon.ledger_state (relation, refreshed_at, rows_seen) "
            "VALUES ('public.serialized_models', now() - make_interval(mins => %s), %s)",
            (minutes_ago, rows),
        )


async def test_full_report_has_every_section(filled):
    report = await get_db_monitor().get_full_report()

    assert set(REPORT_KEYS) <= set(report)
    assert {"generated_at", "server_version", "skipped"} <= set(report)
    assert report["skipped"] == []
    assert json.loads(json.dumps(report)) == report
    assert report["table"]["live_tuples"] == 50
    assert report["table"]["toast_share"] > 0.5
    assert report["growth"]["samples_last_day"] == 1
    assert isinstance(report["alerts"], list)


async def test_jsonb_from_fresh_ledger(filled, libpq_url):
    write_ledger(libpq_url, minutes_ago=1, rows=50)
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        expected = conn.execute(
            "SELECT avg(pg_column_size(serialized_content)), max(pg_column_size(serialized_content)), "
            "sum(pg_column_size(serialized_content)) FROM serialized_models"
        ).fetchone()

    jsonb = await DatabaseMonitor(filled).get_jsonb_stats()

    content = jsonb["serialized_content"]
    assert content["source"] == "ledger"
    assert content["avg_bytes"] == pytest.approx(float(expected[0]))
    assert content["max_bytes"] == expected[1]
    assert content["total_bytes"] == expected[2]
    assert jsonb["largest_models"][0] == {"model_name": "model-50", "content_bytes": expected[1]}
    assert jsonb["columns"]["units"]["source"] == "sample"
    assert jsonb["columns"]["units"]["rows"] == 50


@pytest.mark.parametrize(
    ("minutes_ago", "rows", "reason"),
    [(30, 50, "more than 10 minutes ago"), (1, 40, "covers 80%")],
)
async def test_jsonb_falls_back_to_sample(filled, libpq_url, minutes_ago, rows, reason):
    write_ledger(libpq_url, minutes_ago=minutes_ago, rows=rows)

    jsonb = await DatabaseMonitor(filled).get_jsonb_stats()

    assert jsonb["serialized_content"]["source"] == "sample"
    assert jsonb["sample"]["percent"] == 100.0
    assert jsonb["sample"]["rows"] == 50
    assert reason in jsonb["notes"][0]


async def test_sample_fraction_follows_page_budget(filled):
    settings = filled.model_copy(update={"monitor_sample_pages": 1})

    jsonb = await DatabaseMonitor(settings).get_jsonb_stats()

    assert jsonb["sample"]["percent"] < 100.0
    assert jsonb["serialized_content"]["total_is_estimate"] is True


async def test_query_limit_rejected():
    with pytest.raises(ValueError, match="limit=0"):
        await DatabaseMonitor().get_query_stats(limit=0)


@pytest.fixture
def cli_env(filled, database_url, tmp_path, monkeypatch):
    """Point the CLI, which loads its settings from the environment, at the test database."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SERIALMON_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "240")
    return filled


def test_db_report_json_command(cli_env):
    result = CliRunner().invoke(app, ["db-report", "--json", "--exact-bloat"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(REPORT_KEYS) <= set(report)
    assert report["table"]["live_tuples"] == 50
    assert report["bloat"]["exact"]["heap"]["function"] == "pgstattuple_approx"


def test_db_report_rich_command(cli_env):
    result = CliRunner().invoke(app, ["db-report"])

    assert result.exit_code == 0, result.output
    assert "serialized_content" in result.output
    assert "Exact measurement not run" in result.output
    assert "Statements on the table" in result.output


def test_db_report_missing_table(cli_env, monkeypatch, capsys):
    from serialmon.cli import main

    monkeypatch.setenv("SERIALMON_MODELS_TABLE", "no_such_table")
    with pytest.raises(SystemExit) as exited:
        main(["db-report"])

    assert exited.value.code == 2
    assert "does not exist" in capsys.readouterr().err


async def test_report_on_async_and_orm_sessions(filled):
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    from serialmon.db import create_async, get_engine

    async_engine = create_async(filled)
    try:
        async with AsyncSession(async_engine) as session:
            from_async = await DatabaseMonitor(filled).get_full_report(session)
            still_usable = (await session.execute(text("SELECT 1"))).scalar_one()
    finally:
        await async_engine.dispose()
    with Session(get_engine(filled)) as session:
        from_orm = await DatabaseMonitor(filled).get_table_stats(session)

    assert from_async["table"]["live_tuples"] == 50
    assert from_async["skipped"] == []
    assert still_usable == 1
    assert from_orm["live_tuples"] == 50
