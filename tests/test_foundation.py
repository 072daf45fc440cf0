"""Configuration, database access, embedded server and schema, against a real PostgreSQL."""

from __future__ import annotations

import multiprocessing
import os

import pytest
from sqlalchemy import text

from serialmon.config import load_settings, mask_url
from serialmon.db import arun, get_engine, names, run_sync
from serialmon.errors import SettingsError
from serialmon.schema import init_db, table_exists


def test_model_data_url_wins_over_database_url(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://a@db1/one")
    monkeypatch.setenv("MODEL_DATA_DB_URL", "postgres://b@db2/two")
    settings = load_settings()
    assert settings.database_url.get_secret_value() == "postgres://b@db2/two"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SMTP_PORT", "abc", "SMTP_PORT='abc'"),
        ("ALERT_TO_EMAILS", "ops@example.com;bad", "ALERT_TO_EMAILS="),
        ("SERIALMON_DB_SSLMODE", "sometimes", "unknown SSL mode"),
        ("SERIALMON_COVERAGE_WARNING", "120", "SERIALMON_COVERAGE_WARNING='120'"),
        ("SERIALMON_COOLDOWN_MINUTES", "inf", "Input should be a finite number"),
        ("SERIALMON_STALL_MINUTES", "nan", "Input should be a finite number"),
        ("SERIALMON_STALL_MINUTES", "1e300", "less than or equal to 43200"),
        ("SERIALMON_ALERT_HISTORY_RETENTION_DAYS", "100000000000", "less than or equal to 36500"),
        ("SERIALMON_ALERT_WINDOW_MINUTES", "100000000000", "less than or equal to 43200"),
        ("SERIALMON_ALERT_RULE_FOR_MINUTES", "{bad json",
         "SERIALMON_ALERT_RULE_FOR_MINUTES='{bad json': expected a JSON value"),
    ],
)
def test_invalid_setting_names_variable(monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert expected in str(raised.value)
    assert variable in str(raised.value)


def test_invalid_url_sslmode_rejected(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:secret@h/db?sslmode=maybe")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "sslmode" in str(raised.value)
    assert "secret" not in str(raised.value)



@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"SERIALMON_COVERAGE_CRITICAL": "90"},
         "SERIALMON_COVERAGE_CRITICAL=90.0 must be at or below SERIALMON_COVERAGE_WARNING=80.0"),
        ({"SERIALMON_FAILURE_RATE_WARNING": "0.5"},
         "SERIALMON_FAILURE_RATE_CRITICAL=0.25 must be at or above SERIALMON_FAILURE_RATE_WARNING=0.5"),
        ({"SERIALMON_DB_CACHE_HIT_CRITICAL": "0.995"}, "SERIALMON_DB_CACHE_HIT_CRITICAL=0.995 must be at or below"),
        ({"SERIALMON_DB_BLOAT_WARNING_PERCENT": "60"}, "SERIALMON_DB_BLOAT_CRITICAL_PERCENT=50.0 must be at or above"),
        ({"SERIALMON_NOTIFICATION_RETRY_BASE_SEC": "7200"},
         "SERIALMON_NOTIFICATION_RETRY_MAX_SEC=3600.0 must be at or above SERIALMON_NOTIFICATION_RETRY_BASE_SEC=7200.0"),
    ],
)
def test_inverted_thresholds_name_both_variables(monkeypatch, variables, expected):
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value).startswith("Invalid settings: ")
    assert expected in str(raised.value)


def test_equal_thresholds_are_accepted(monkeypatch):
    monkeypatch.setenv("SERIALMON_COVERAGE_WARNING", "60")
    monkeypatch.setenv("SERIALMON_COVERAGE_CRITICAL", "60")
    loaded = load_settings()
    assert (loaded.coverage_warning, loaded.coverage_critical) == (60.0, 60.0)


def test_unknown_variables_are_named_with_the_close_setting(monkeypatch, tmp_path, caplog):
    from serialmon import config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config, "_warned_unknown", set())
    monkeypatch.setenv("SERIALMON_COVERAGE_WARN", "70")
    monkeypatch.setenv("SERIALMON_TEST_ANYTHING", "1")  # the test suite's own variables are not settings
    (tmp_path / ".env").write_text("SERIALMON_STAL_MINUTES=5\nSERIALMON_STALL_MINUTES=5\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="serialmon.config"):
        loaded = load_settings()
        load_settings()  # each name is reported once per process
    assert loaded.coverage_warning == 80.0
    assert loaded.stall_minutes == 5.0
    assert caplog.messages == [
        "SERIALMON_COVERAGE_WARN is not a serialmon setting and is ignored; did you mean SERIALMON_COVERAGE_WARNING?",
        "SERIALMON_STAL_MINUTES is not a serialmon setting and is ignored; did you mean SERIALMON_STALL_MINUTES?",
    ]

def test_alert_emails_split_on_commas(monkeypatch):
    monkeypatch.setenv("ALERT_TO_EMAILS", "a@example.com, b@example.org")
    assert load_settings().alert_to_emails == ["a@example.com", "b@example.org"]


def test_mask_url_hides_password():
    masked = mask_url("postgresql://user:hunter2@db.example.com:5432/models?password=x")
    assert "hunter2" not in masked
    assert "password=x" not in masked
    assert "user:***@db.example.com" in masked


def test_connection_sets_timeouts_and_name(settings):
    def read(conn):
        return [conn.execute(text(f"SHOW {name}")).scalar_one() for name in
                ("application_name", "statement_timeout", "lock_timeout")]

    assert run_sync(None, read, settings) == ["serialmon", "15s", "1s"]


async def test_arun_accepts_every_session_kind(settings):
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    from serialmon.db import create_async

    def one(conn):
        return conn.execute(text("SELECT 1")).scalar_one()

    engine = get_engine(settings)
    async_engine = create_async(settings)
    try:
        assert await arun(None, one, settings) == 1
        with engine.connect() as conn:
            assert await arun(conn, one) == 1
        with Session(engine) as session:
            assert await arun(session, one) == 1
        async with async_engine.connect() as aconn:
            assert await arun(aconn, one) == 1
        async with AsyncSession(async_engine) as asession:
            assert await arun(asession, one) == 1
    finally:
        await async_engine.dispose()


def _query_in_child(settings, answers) -> None:
    with get_engine(settings).connect() as conn:
        answers.put(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
def test_forked_child_never_touches_parent_session(settings, libpq_url):
    """The pool pings a reused connection before checkout listeners run; a child must never ping the parent's."""
    import psycopg

    engine = get_engine(settings)
    with engine.connect() as conn:
        parent_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()

    def last_activity():
        with psycopg.connect(libpq_url) as watcher:
            return watcher.execute(
                "SELECT query_start, state_change FROM pg_stat_activity WHERE pid = %s", (parent_pid,)
            ).fetchone()

    before = last_activity()
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    child = context.Process(target=_query_in_child, args=(settings, answers))
    child.start()
    child_pid = answers.get(timeout=60)
    child.join(60)
    assert child.exitcode == 0
    assert child_pid != parent_pid
    assert last_activity() == before, "the child sent a statement on the parent's session"
    with engine.connect() as conn:  # and the parent's pooled session still works
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == parent_pid


def test_embedded_server_started_once_per_process(tmp_path, monkeypatch):
    """A collector's reconnect must not undo `serialmon db stop`."""
    from serialmon import db
    from serialmon.embedded import default_server

    for variable in ("MODEL_DATA_DB_URL", "DATABASE_URL", "SERIALMON_DATABASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    settings = load_settings(data_dir=tmp_path / "data")
    server = default_server(settings.data_dir)
    try:
        url = db.database_url(settings)
        started = server.status().running
        server.stop()
        again = db.database_url(settings)
        assert started
        assert again == url
        assert not server.status().running
    finally:
        server.stop()
        db._started_embedded.discard(server.data_dir)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_waits_for_running_program():
    """A fork during a PostgreSQL program run would copy subprocess's pipe into the child and hang the parent."""
    import sys
    import threading
    import time

    from serialmon.embedded import _run_program

    finished = []

    def run() -> None:
        _run_program([sys.executable, "-c", "import time; time.sleep(1.0)"], check=True, timeout=60)
        finished.append(time.monotonic())

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.3)  # the program is running now
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_end, repr(time.monotonic()).encode())
        os._exit(0)
    os.close(write_end)
    forked_at = float(os.read(read_end, 100))
    os.close(read_end)
    os.waitpid(pid, 0)
    thread.join(60)
    assert finished, "the program run did not end"
    assert forked_at >= finished[0]


def test_init_is_idempotent_and_creates_tables(settings):
    first = init_db(settings, create_models_table=True)
    second = init_db(settings, create_models_table=True)
    assert first.models_table_created is True
    assert second.models_table_existed is True
    assert first.revision == second.revision

    def check(conn):
        return {table: table_exists(conn, "serialmon", table) for table in (
            "serialization_events", "batch_jobs", "worker_heartbeats", "model_quality", "table_size_samples",
            "alert_state", "alert_history", "notification_outbox", "silences")}

    assert all(run_sync(None, check, settings).values())


def test_models_table_has_gin_index(initialized):
    def index_methods(conn):
        return conn.execute(text(
            "SELECT am.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_am am ON am.oid = c.relam WHERE i.indrelid = 'public.serialized_models'::regclass"
        )).scalars().all()

    assert "gin" in run_sync(None, index_methods, initialized)


def test_init_never_alters_existing_models_table(settings):
    def create_own(conn):
        conn.execute(text("CREATE TABLE serialized_models (id int primary key, model_name text)"))

    run_sync(None, create_own, settings)
    result = init_db(settings, create_models_table=True)
    assert result.models_table_existed is True

    def columns(conn):
        return conn.execute(text(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'serialized_models'"
        )).scalar_one()

    assert run_sync(None, columns, settings) == 2


def test_state_schema_name_is_quoted(database_url, tmp_path):
    settings = load_settings(database_url=database_url, data_dir=tmp_path, state_schema='odd "schema"; drop')
    init_db(settings)
    quoted = names(settings).table("batch_jobs")
    assert quoted == '"odd ""schema""; drop"."batch_jobs"'
    assert run_sync(None, lambda conn: conn.execute(text(f"SELECT count(*) FROM {quoted}")).scalar_one(),
                    settings) == 0


def test_configuration_doc_is_current():
    from pathlib import Path

    from serialmon.config import settings_reference

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert settings_reference() in doc, "regenerate the table with `serialmon config --reference`"
