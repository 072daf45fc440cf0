"""`serialmon demo --no-dashboard` as a new user runs it: real embedded server, real figures."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from alerts_support import successes

from serialmon.demo import _replay_alerts
from serialmon.embedded import EmbeddedServer


def run_cli(*args: str, env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    base = {key: value for key, value in os.environ.items()
            if not key.startswith(("SERIALMON_", "SMTP_", "ALERT_")) and key not in ("DATABASE_URL", "MODEL_DATA_DB_URL")}
    base.update(env)
    return subprocess.run([sys.executable, "-m", "serialmon.cli", *args], capture_output=True, text=True,
                          env=base, cwd=cwd, timeout=300)


@pytest.fixture
def demo_home(tmp_path):
    data_dir = tmp_path / "home"
    yield data_dir
    EmbeddedServer(data_dir / "postgres").stop()


def test_demo_records_alerts_and_emails(demo_home, tmp_path):
    env = {"SERIALMON_DATA_DIR": str(demo_home), "COLUMNS": "200"}
    result = run_cli("demo", "--no-dashboard", "--models", "1200", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "models simulated / recorded  1200 / 1200" in result.stdout

    server = EmbeddedServer(demo_home / "postgres")
    conninfo = server.url("serialmon_demo").replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(conninfo) as conn:
        models = conn.execute("SELECT count(DISTINCT model_name) FROM serialmon.serialization_events").fetchone()[0]
        rows = conn.execute("SELECT count(*) FROM serialized_models").fetchone()[0]
        fired = conn.execute(
            "SELECT count(DISTINCT alert_key) FROM serialmon.alert_history WHERE to_state = 'firing'"
        ).fetchone()[0]
        resolved = conn.execute(
            "SELECT count(DISTINCT alert_key) FROM serialmon.alert_history WHERE to_state = 'resolved'"
        ).fetchone()[0]
        failure_alert = conn.execute(
            "SELECT count(*) FROM serialmon.alert_history WHERE rule = 'high_failure_rate' AND to_state = 'firing'"
        ).fetchone()[0]
    assert models == 1200
    assert rows == 1200
    assert fired >= 1
    assert resolved >= 1
    assert failure_alert >= 1

    emails = sorted((demo_home / "outbox").glob("*.eml"))
    assert emails, "the demo writes alert e-mails into the outbox folder"
    assert any("high_failure_rate" in email.read_text(errors="replace") for email in emails)
    assert str(demo_home / "outbox") in result.stdout.replace("\n", "")


def test_demo_runs_twice(demo_home, tmp_path):
    env = {"SERIALMON_DATA_DIR": str(demo_home), "COLUMNS": "200"}
    for _ in range(2):
        result = run_cli("demo", "--no-dashboard", "--models", "200", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "models simulated / recorded  200 / 200" in result.stdout


def test_replay_tells_reminders_from_escalations(initialized):
    # Coverage 70 % (warning below 80 %) for five hours, then 30 % (critical below 50 %) in the last hour:
    # the warning fires, gets a reminder after `alert_repeat_minutes` (240), then escalates once.
    now = datetime.now(timezone.utc)
    for minutes_ago in range(330, 0, -5):
        coverage = 30.0 if minutes_ago <= 60 else 70.0
        successes(initialized, 2, coverage, now - timedelta(minutes=minutes_ago))

    _, transitions, _ = asyncio.run(_replay_alerts(initialized))

    kinds = [kind for key, kind in transitions if key == "low_element_coverage"]
    assert kinds.count("firing") == 1
    assert kinds.count("escalated") == 1
    assert "reminder" in kinds
    assert kinds.index("firing") < kinds.index("reminder") < kinds.index("escalated")
    assert [key for key, kind in transitions if kind == "escalated"] == ["low_element_coverage"]
