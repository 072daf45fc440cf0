"""`serialmon demo`: a simulated multi-worker run, alerts and e-mail, on the embedded server.

The demo works in a database of its own (`serialmon_demo`), dropped and made
anew at every run, so it never touches the user's data and runs any number of
times. Hours of pipeline time are simulated in seconds, because events carry
times on a simulated clock that ends now. The alert manager is evaluated at
steps along that clock, so alerts fire, escalate and resolve as they would
have during the real run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from serialmon.config import Settings
from serialmon.simulate import DEMO_SCENARIO, SimulationConfig, run_simulation

logger = logging.getLogger(__name__)

DEMO_DATABASE = "serialmon_demo"
ALERT_STEP = timedelta(minutes=10)


@dataclass
class DemoResult:
    """Figures of one demo run, for the summary and the tests."""

    database_url: str
    models_simulated: int
    models_recorded: int
    events_recorded: int
    failed_attempts: int
    alert_evaluations: int
    alerts_fired: list[str] = field(default_factory=list)
    alerts_escalated: list[str] = field(default_factory=list)
    alerts_reminded: list[str] = field(default_factory=list)
    alerts_resolved: list[str] = field(default_factory=list)
    emails: list[Path] = field(default_factory=list)
    notifications_sent: int = 0
    outbox_dir: Path | None = None
    smtp: bool = False
    elapsed_sec: float = 0.0
    snapshot: dict[str, Any] = field(default_factory=dict)


def prepare_database(server_url: str) -> str:
    """Drop and recreate the demo database on the server of `server_url`; return its URL."""
    import psycopg
    from psycopg import sql

    maintenance = make_url(server_url).set(drivername="postgresql", database="postgres")
    with psycopg.connect(maintenance.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEMO_DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DATABASE)))
    return make_url(server_url).set(database=DEMO_DATABASE).render_as_string(hide_password=False)


def run_demo(
    settings: Settings,
    *,
    models: int = 3000,
    workers: int = 2,
    seed: int = 1,
    server_url: str | None = None,
    on_step: Callable[[str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> DemoResult:
    """Run the whole demo and return its figures; the dashboard is started by the caller.

    `server_url` picks the PostgreSQL server (default: the embedded one in the
    data directory). Raises `SerialmonError` when the server cannot start.
    """
    from serialmon.config import load_settings, set_settings
    from serialmon.db import dispose_engines
    from serialmon.schema import init_db

    step = on_step or (lambda message: logger.info(message))
    started = time.perf_counter()

    step("Starting the database")
    if server_url is None:
        from serialmon.embedded import default_server

        server_url = default_server(settings.data_dir).start()
    demo_url = prepare_database(server_url)
    overrides = settings.model_dump()
    overrides["database_url"] = demo_url
    demo_settings = load_settings(**overrides)
    set_settings(demo_settings)
    dispose_engines()
    _reset_collector()

    step("Creating serialmon's schema and the serialized_models table")
    init_db(demo_settings, create_models_table=True)

    outbox = demo_settings.resolved_outbox_dir
    before = set(outbox.glob("*.eml")) if outbox.exists() else set()

    step(f"Simulating {models} models on {workers} workers (a failure burst, then a coverage drop)")
    config = SimulationConfig(
        count=models, workers=workers, seed=seed, content_kb=6, failure_rate=0.03,
        scenario=DEMO_SCENARIO, history_hours=0.0, batch_name="demo run",
    )
    simulation = run_simulation(config, demo_settings, on_progress=on_progress)

    step("Evaluating alerts along the simulated run")
    evaluations, transitions, sent = asyncio.run(_replay_alerts(demo_settings))

    step("Reading the fleet-wide snapshot")
    from serialmon.readmodel import get_snapshot

    events = _with_connection(
        demo_settings,
        lambda conn: conn.execute(text(
            f"SELECT count(*), count(DISTINCT model_name), min(occurred_at) FROM {_events_table(demo_settings)}"
        )).one(),
    )
    # The summary covers the whole simulated run, not only its last hour.
    run_minutes = (datetime.now(timezone.utc) - events[2]).total_seconds() / 60 + 1 if events[2] else None
    snapshot = _with_connection(demo_settings, lambda conn: get_snapshot(conn, demo_settings, minutes=run_minutes))

    after = set(outbox.glob("*.eml")) if outbox.exists() else set()
    result = DemoResult(
        database_url=demo_url,
        models_simulated=models,
        models_recorded=int(events[1]),
        events_recorded=int(events[0]),
        failed_attempts=simulation.by_status["failure"],
        alert_evaluations=evaluations,
        alerts_fired=sorted({key for key, change in transitions if change == "firing"}),
        alerts_escalated=sorted({key for key, change in transitions if change == "escalated"}),
        alerts_reminded=sorted({key for key, change in transitions if change == "reminder"}),
        alerts_resolved=sorted({key for key, change in transitions if change == "resolved"}),
        emails=sorted(after - before),
        notifications_sent=sent,
        outbox_dir=outbox,
        smtp=demo_settings.smtp_configured,
        elapsed_sec=time.perf_counter() - started,
        snapshot=snapshot,
    )
    _reset_collector()
    return result


def _events_table(settings: Settings) -> str:
    from serialmon.db import names

    return names(settings).table("serialization_events")


def _with_connection(settings: Settings, fn: Callable) -> Any:
    from serialmon.db import run_sync

    return run_sync(None, fn, settings)


def _reset_collector() -> None:
    """Close this process's collector so the next one uses the demo settings."""
    from serialmon.collector import reset_serialize_metrics_collector

    reset_serialize_metrics_collector()


async def _replay_alerts(settings: Settings) -> tuple[int, list[tuple[str, str]], int]:
    """Evaluate every rule at steps along the simulated clock, then once at the real time.

    Returns (evaluations, [(alert key, transition kind)], notifications sent),
    with the kinds of `_transition_kind`.
    """
    from serialmon.alerts import AlertManager

    first, last = _with_connection(
        settings,
        lambda conn: conn.execute(text(
            f"SELECT min(occurred_at), max(occurred_at) FROM {_events_table(settings)}"
        )).one(),
    )
    manager = AlertManager(settings)
    transitions: list[tuple[str, str]] = []
    sent = 0
    evaluations = 0
    now = datetime.now(timezone.utc)
    clock = (first or now) + ALERT_STEP
    steps = []
    while last is not None and clock < last:
        steps.append(clock)
        clock += ALERT_STEP
    steps.append(now)
    severities: dict[str, str | None] = {}
    for moment in steps:
        outcome = await manager.process_alerts(send_notifications=True, now=moment)
        evaluations += 1
        for change in outcome.get("transitions", []):
            key = change["alert_key"]
            transitions.append((key, _transition_kind(change, severities.get(key))))
            severities[key] = change["severity"]
        sent += len(outcome.get("sent", []))
    return evaluations, transitions, sent


def _transition_kind(change: dict[str, Any], previous_severity: str | None) -> str:
    """Classify one transition dict of `process_alerts()` as `serialmon alerts history` shows it.

    A firing -> firing row is "escalated" only when the severity rose from
    `previous_severity` (the key's severity at its previous transition),
    "de-escalated" when it fell, "reminder" when it carries a reminder, and
    "notified" when it only records a notification sent late (after a
    silence or a cooldown). Other rows are named by their new state.
    """
    from serialmon.alerts.rules import SEVERITY_RANK

    if not (change["from_state"] == "firing" and change["to_state"] == "firing"):
        return str(change["to_state"])

    rank = SEVERITY_RANK.get(change["severity"] or "", 0)
    previous_rank = SEVERITY_RANK.get(previous_severity or "", 0)
    if previous_severity is not None and rank > previous_rank:
        return "escalated"
    if previous_severity is not None and rank < previous_rank:
        return "de-escalated"
    if change["notification"] == "reminder":
        return "reminder"
    return "notified"
