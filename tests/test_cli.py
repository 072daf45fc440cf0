"""The command line: one-line errors with exit code 2, doctor's checks and fixes, masked config."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from sqlalchemy.engine import make_url


def run_cli(*args: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items()
            if not key.startswith(("SERIALMON_", "SMTP_", "ALERT_")) and key not in ("DATABASE_URL", "MODEL_DATA_DB_URL")}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "serialmon.cli", *args], capture_output=True, text=True, env=base, cwd=cwd, timeout=120,
    )


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("config", "init", "db", "simulate", "doctor"):
        assert command in result.stdout


def test_invalid_setting_is_one_line_exit_2(tmp_path):
    result = run_cli("config", env={"SMTP_PORT": "abc"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "SMTP_PORT='abc'" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_database_is_one_line_exit_2(tmp_path):
    env = {"DATABASE_URL": "postgresql://nobody:topsecret@127.0.0.1:1/none", "SERIALMON_CONNECT_TIMEOUT_SEC": "2"}
    result = run_cli("init", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "Cannot connect" in result.stderr
    assert "topsecret" not in result.stderr
    assert "Traceback" not in result.stderr
    debug = run_cli("--debug", "init", env=env, cwd=tmp_path)
    assert "Traceback" in debug.stderr


def test_config_masks_credentials(tmp_path):
    env = {"DATABASE_URL": "postgresql://u:hunter2@db.example.com/models", "SMTP_PASSWORD": "mailsecret"}
    (tmp_path / ".env").write_text("SMTP_HOST=mail.example.com\n")
    result = run_cli("config", env=env, cwd=tmp_path)
    assert result.returncode == 0
    assert "hunter2" not in result.stdout
    assert "mailsecret" not in result.stdout
    assert "mail.example.com" in result.stdout
    assert ".env" in result.stdout


def test_doctor_healthy(initialized, database_url, tmp_path):
    result = run_cli("doctor", env={"DATABASE_URL": database_url}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Healthy" in result.stdout


def test_doctor_missing_table_gives_fix(settings, database_url, tmp_path):
    from serialmon.schema import init_db

    init_db(settings)
    result = run_cli("doctor", env={"DATABASE_URL": database_url, "COLUMNS": "200"}, cwd=tmp_path)
    assert result.returncode == 1
    assert "does not exist" in result.stdout
    assert "--create-models-table" in result.stdout


def test_doctor_foreign_table_gives_fix(settings, database_url, libpq_url, tmp_path):
    from serialmon.schema import init_db

    init_db(settings)
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE serialized_models (uid text PRIMARY KEY, blob bytea)")
    result = run_cli("doctor", env={"DATABASE_URL": database_url, "COLUMNS": "250"}, cwd=tmp_path)
    assert result.returncode == 1
    assert "lacks the column(s) id, model_name" in result.stdout
    assert "SERIALMON_MODELS_TABLE" in result.stdout


def test_doctor_wrong_url_gives_fix(tmp_path):
    env = {"DATABASE_URL": "postgresql://nobody:pw@127.0.0.1:1/none", "COLUMNS": "200",
           "SERIALMON_CONNECT_TIMEOUT_SEC": "2"}
    result = run_cli("doctor", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "MODEL_DATA_DB_URL" in result.stdout


def test_doctor_role_without_select_gives_grant(initialized, libpq_url, database_url, tmp_path):
    with psycopg.connect(libpq_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS doctor_reader")
        conn.execute("CREATE ROLE doctor_reader LOGIN")
        conn.execute("GRANT USAGE ON SCHEMA serialmon TO doctor_reader")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA serialmon TO doctor_reader")
    url = make_url(database_url).set(username="doctor_reader").render_as_string(hide_password=False)
    try:
        result = run_cli("doctor", env={"DATABASE_URL": url, "COLUMNS": "250"}, cwd=tmp_path)
        assert result.returncode == 1
        assert "cannot SELECT" in result.stdout, result.stdout
        assert 'GRANT SELECT ON "public"."serialized_models" TO "doctor_reader"' in result.stdout
    finally:
        with psycopg.connect(libpq_url, autocommit=True) as conn:
            conn.execute("DROP OWNED BY doctor_reader")
            conn.execute("DROP ROLE doctor_reader")


def test_init_then_simulate_fills_table(database_url, libpq_url, tmp_path):
    env = {"DATABASE_URL": database_url, "SERIALMON_DATA_DIR": str(tmp_path / "data")}
    assert run_cli("init", "--create-models-table", env=env, cwd=tmp_path).returncode == 0
    again = run_cli("init", "--create-models-table", env=env, cwd=tmp_path)
    assert again.returncode == 0
    assert "left it unchanged" in again.stdout
    result = run_cli("simulate", "--count", "40", "--seed", "1", "--content-kb", "1", "--no-record",
                     env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with psycopg.connect(libpq_url) as conn:
        assert conn.execute("SELECT count(*) FROM serialized_models").fetchone()[0] == 40


@pytest.mark.parametrize("args", [("simulate", "--failure-rate", "2"), ("simulate", "--workers", "0")])
def test_bad_option_exit_2(args, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
