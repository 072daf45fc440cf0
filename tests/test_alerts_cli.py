"""`serialmon alerts ...` commands, run in-process against the test database."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from alerts_support import failures, free_port, smtp_server, successes
from typer.testing import CliRunner

from serialmon.cli import app, main
from serialmon.cli_alerts import parse_duration
from serialmon.errors import SerialmonError


@pytest.fixture
def cli_env(initialized, database_url, tmp_path, monkeypatch):
    """Environment the CLI reads its settings from: the test database and a data folder of its own."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("SERIALMON_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ALERT_TO_EMAILS", "ops@example.com")
    monkeypatch.setenv("SERIALMON_ALERT_WINDOW_MINUTES", "10")
    monkeypatch.setenv("COLUMNS", "240")
    return initialized


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_run_once_writes_eml_and_says_where(cli_env, tmp_path):
    now = datetime.now(timezone.utc)
    failures(cli_env, 10, now - timedelta(minutes=1))
    successes(cli_env, 10, 90.0, now - timedelta(minutes=1))

    code, output = invoke("alerts", "run", "--once")

    outbox_dir = tmp_path / "data" / "outbox"
    assert code == 0, output
    assert f"e-mails are written as .eml files to {outbox_dir}" in " ".join(output.split())
    assert "high_failure_rate: inactive -> firing (critical), notified firing" in output
    assert "'[serialmon] CRITICAL high_failure_rate' written to" in output
    written = re.search(r"written to (\S+\.eml)", output)
    assert written is not None, output
    assert written.group(1).startswith(str(outbox_dir))
    assert len(list(outbox_dir.glob("*.eml"))) == 1

    code, output = invoke("alerts", "list")
    assert code == 0
    assert "high_failure_rate" in output
    assert "firing" in output

    code, output = invoke("alerts", "history", "--limit", "5")
    assert code == 0
    assert "inactive" in output
    assert "firing" in output


def test_list_shows_bracketed_keys(cli_env):
    from alerts_support import query

    query(cli_env, "INSERT INTO {t}.batch_jobs (batch_id, status, started_at, heartbeat_at) "
                   "VALUES ('42', 'running', now() - interval '1 hour', now() - interval '1 hour') RETURNING batch_id")
    code, output = invoke("alerts", "run", "--once")
    assert code == 0, output
    assert "processing_stall[batch:42]: inactive -> firing (critical)" in output

    code, output = invoke("alerts", "list")
    assert "processing_stall[batch:42]" in output


def test_silence_list_unsilence(cli_env):
    code, output = invoke("alerts", "silence", "processing_stall", "--scope", "batch:42", "--for", "2h",
                          "--reason", "batch 42 paused for a Creo licence swap")
    assert code == 0, output
    silence_id = int(re.search(r"Silence (\d+):", output).group(1))
    assert "processing_stall (batch:42) until" in output

    code, output = invoke("alerts", "list")
    assert "No active alerts." in output
    assert "batch 42 paused" in output

    code, output = invoke("alerts", "unsilence", str(silence_id))
    assert code == 0
    assert f"Silence {silence_id} (processing_stall, batch:42) ended." in output

    code, output = invoke("alerts", "unsilence", "999")
    assert code == 2
    assert "Silence 999 not found" in output


def test_silence_rejects_bad_input(cli_env):
    code, output = invoke("alerts", "silence", "high_failure_rate", "--for", "2x", "--reason", "test")
    assert code == 2
    assert "Invalid duration '2x'" in output

    code, output = invoke("alerts", "silence", "high_failure_rate", "--reason", "test")
    assert code == 2
    assert "Give exactly one of --for" in output

    code, output = invoke("alerts", "silence", "high_failure_rate", "--for", "1h", "--reason", "  ")
    assert code == 2
    assert "reason must not be empty" in output


def test_silence_rejects_too_long(cli_env):
    code, output = invoke("alerts", "silence", "processing_stall", "--for", "9999999999999d", "--reason", "r")
    assert code == 2
    assert "Invalid duration '9999999999999d': it must be at most 365d." in output
    assert "OverflowError" not in output

    code, output = invoke("alerts", "silence", "processing_stall", "--for", "366d", "--reason", "r")
    assert code == 2
    assert "Invalid duration '366d': it must be at most 365d." in output

    code, output = invoke("alerts", "silence", "processing_stall", "--until", "9999-12-31T00:00", "--reason", "r")
    assert code == 2
    assert "Invalid silence: until must be at most 365 days after now" in " ".join(output.split())

    code, output = invoke("alerts", "list")
    assert "No active alerts." in output
    assert "Silences" not in output


@pytest.mark.parametrize("interval", ["1e300", "inf", "86401"])
def test_run_rejects_huge_interval(cli_env, interval):
    # With --once the command ends even if the option check were missing, instead of looping forever.
    code, output = invoke("alerts", "run", "--once", "--interval", interval)
    assert code == 2
    assert "Invalid value for '--interval'" in output
    assert "less than or equal to 86400" in " ".join(output.split())


def test_run_once_with_missing_table(cli_env, monkeypatch, caplog):
    monkeypatch.setenv("SERIALMON_MODELS_TABLE", "nope")
    now = datetime.now(timezone.utc)
    failures(cli_env, 10, now - timedelta(minutes=1))
    successes(cli_env, 10, 90.0, now - timedelta(minutes=1))

    code, output = invoke("alerts", "run", "--once")

    assert code == 0, output
    lines = output.splitlines()
    expected = ('  not evaluated database: The monitored table "public"."nope" does not exist in this database. '
                "Set SERIALMON_MODELS_SCHEMA / SERIALMON_MODELS_TABLE, or run `serialmon init --create-models-table`.")
    assert expected in lines
    assert "4 rule group(s) evaluated" in output
    assert "high_failure_rate: inactive -> firing (critical)" in output
    assert "MissingTable" not in output
    logged = [record for record in caplog.records if record.name == "serialmon.alerts.manager"
              and "not evaluated" in record.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is None


def test_run_rejects_unknown_rule_for_minutes(cli_env, monkeypatch, capsys):
    monkeypatch.setenv("SERIALMON_ALERT_RULE_FOR_MINUTES", '{"no_such_rule": 5}')
    # The CLI process creates its manager afresh, as a new process would.
    monkeypatch.setattr("serialmon.alerts._manager", None)

    with pytest.raises(SystemExit) as exited:
        main(["alerts", "run", "--once"])

    captured = capsys.readouterr()
    assert exited.value.code == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "Error: Invalid setting SERIALMON_ALERT_RULE_FOR_MINUTES: unknown rule 'no_such_rule'. Known rules: "
    )
    assert "processing_stall" in lines[0]


def test_run_rejects_once_with_interval(cli_env):
    code, output = invoke("alerts", "run", "--once", "--interval", "30")
    assert code == 2
    assert "--once and --interval cannot be combined" in output


def test_test_email_through_smtp(cli_env, monkeypatch):
    with smtp_server() as (inbox, port):
        monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("SMTP_PORT", str(port))
        monkeypatch.setenv("SERIALMON_SMTP_ALLOW_PLAIN", "true")
        code, output = invoke("alerts", "test-email")

    assert code == 0, output
    assert f"Test e-mail sent via SMTP 127.0.0.1:{port}." in output
    assert inbox.subjects == ["[serialmon] test e-mail"]
    assert "If you can read it, alert e-mails reach you." in inbox.received[0].part("plain")


def test_test_email_reports_failure(cli_env, monkeypatch):
    port = free_port()
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(port))
    monkeypatch.setenv("SMTP_USER", "alerts")
    monkeypatch.setenv("SMTP_PASSWORD", "do-not-print-me")
    monkeypatch.setenv("SERIALMON_SMTP_ALLOW_PLAIN", "true")
    code, output = invoke("alerts", "test-email")

    assert code == 1
    assert f"Test e-mail not delivered: cannot connect to SMTP server 127.0.0.1:{port}" in " ".join(output.split())
    assert "do-not-print-me" not in output


def test_test_email_tls_to_plain_server(cli_env, monkeypatch):
    with smtp_server() as (inbox, port):
        monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("SMTP_PORT", str(port))
        monkeypatch.setenv("SERIALMON_SMTP_SECURITY", "tls")
        monkeypatch.setenv("SERIALMON_SMTP_TIMEOUT_SEC", "5")
        code, output = invoke("alerts", "test-email")

    text = " ".join(output.split())
    assert code == 1
    assert f"Test e-mail not delivered: TLS with SMTP server 127.0.0.1:{port} failed: WRONG_VERSION_NUMBER." in text
    assert ("The server does not speak implicit TLS on this port: use SERIALMON_SMTP_SECURITY=starttls, "
            "or the server's TLS port (usually 465)") in text
    assert "SERIALMON_SMTP_CA_FILE" not in text
    assert inbox.received == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30m", timedelta(minutes=30)), ("2h", timedelta(hours=2)), ("1h30m", timedelta(minutes=90)),
     ("1d", timedelta(days=1)), ("45s", timedelta(seconds=45)), ("1.5h", timedelta(minutes=90)),
     ("365d", timedelta(days=365)), ("364d23h59m59s", timedelta(days=365) - timedelta(seconds=1))],
)
def test_parse_duration_units(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "2", "h", "0m", "2 weeks", "-1h", "366d", "365d1s", "9999999999999d", "9" * 400 + "d"]
)
def test_parse_duration_rejects(text):
    with pytest.raises(SerialmonError):
        parse_duration(text)
