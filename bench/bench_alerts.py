"""Benchmark the alert manager: rule evaluation cost against event volume, and outbox delivery throughput.

    python bench/bench_alerts.py            # embedded PostgreSQL in a temporary folder
    SERIALMON_BENCH_DATABASE_URL=postgresql://... python bench/bench_alerts.py
    python bench/bench_alerts.py --quick    # smaller volumes, for a smoke run

Prints the machine and one table per measurement. It never asserts. A fresh
`serialmon_bench_<random>` schema contains the data and is dropped at the end.
Events are generated server-side: the training period (7 days) at an even
rate, plus the alert window (60 minutes) at the same rate, across 20
categories, with 12 % failures and a coverage drop in one category so that
the anomaly rule has work to do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from sqlalchemy import text

from machine import machine_info
from serialmon.alerts import AlertManager
from serialmon.alerts.outbox import enqueue
from serialmon.alerts.rules import default_rules
from serialmon.alerts.state import Notice
from serialmon.config import Settings, load_settings
from serialmon.db import dispose_engines, names, run_sync
from serialmon.embedded import EmbeddedServer
from serialmon.schema import init_db

NOW = datetime(2025, 3, 3, 12, 0, tzinfo=timezone.utc)


def machine(settings: Settings) -> dict[str, str]:
    version = run_sync(None, lambda conn: conn.execute(text("SHOW server_version")).scalar_one(), settings)
    return machine_info(version)


def fill_events(settings: Settings, total: int) -> None:
    """Insert `total` events spread evenly over the 7 days and 60 minutes before NOW."""
    span_sec = (7 * 24 * 60 + 60) * 60
    table = names(settings).table("serialization_events")
    statement = text(
        f"""
        INSERT INTO {table} (event_id, occurred_at, model_name, model_type, status, processing_time_sec,
                             element_coverage, category, batch_id, error_type, error_message)
        SELECT gen_random_uuid(),
               :now - make_interval(secs => (i::float8 / :total) * :span),
               'model-' || i || '.prt',
               'part',
               CASE WHEN i % 25 < 3 THEN 'failure' ELSE 'success' END,
               30 + (i % 60),
               CASE WHEN i % 25 < 3 THEN NULL
                    WHEN i % 20 = 0 AND i < :recent THEN 70 + (i % 7)
                    ELSE 85 + (i % 13) END,
               'category-' || (i % 20),
               'batch-' || (i / 50000),
               CASE WHEN i % 25 < 3 THEN (ARRAY['CreoTimeout', 'RegenerationFailed', 'LicenseBusy'])[1 + i % 3] END,
               CASE WHEN i % 25 < 3 THEN 'simulated failure' END
        FROM generate_series(0, :total - 1) AS i
        """
    )
    recent = int(total * 60 / (7 * 24 * 60 + 60))
    run_sync(None, lambda conn: conn.execute(statement, {"now": NOW, "total": total, "span": span_sec,
                                                          "recent": recent}), settings)
    run_sync(None, lambda conn: conn.execute(text(f"ANALYZE {table}")), settings)


def timed(function, repeat: int) -> tuple[float, float]:
    """Return (median, max) wall time in milliseconds over `repeat` calls."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), max(samples)


def rule_costs(settings: Settings, repeat: int) -> list[tuple[str, float, float, int]]:
    quoted = names(settings)
    rows = []
    for rule in default_rules(lambda conn, settings: []):
        findings: list = []

        def once(rule=rule, findings=findings) -> None:
            findings[:] = run_sync(None, lambda conn: rule.evaluate(conn, settings, quoted, NOW, {}), settings)

        median, worst = timed(once, repeat)
        rows.append((rule.source, median, worst, len(findings)))
    return rows


def evaluation_cost(settings: Settings, repeat: int) -> tuple[float, float, int]:
    manager = AlertManager(settings, condition_source=lambda conn, settings: [])
    first = asyncio.run(manager.process_alerts(send_notifications=False, now=NOW))
    median, worst = timed(
        lambda: asyncio.run(manager.process_alerts(send_notifications=False, now=NOW)), repeat
    )
    return median, worst, len(first["transitions"])


def notices(count: int) -> list[list[Notice]]:
    return [
        [Notice(alert_key=f"bench[{index}]", rule="bench", scope=str(index), kind="firing", severity="warning",
                previous_severity=None, value_text="1", threshold_text="0", message="benchmark alert",
                details={}, fix=None, firing_since=NOW, resolved_at=None, seq=1)]
        for index in range(count)
    ]


class Sink:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def delivery_rate(settings: Settings, count: int) -> float:
    """Queue `count` single-alert notifications and return delivered messages per second."""
    quoted = names(settings)
    run_sync(None, lambda conn: [enqueue(conn, quoted, group, settings, NOW) for group in notices(count)],
             settings)
    manager = AlertManager(settings)
    start = time.perf_counter()
    result = asyncio.run(manager.deliver_notifications(now=NOW, limit=count))
    elapsed = time.perf_counter() - start
    if len(result["sent"]) != count:
        print(f"  warning: {len(result['sent'])} of {count} delivered: {result['failed'][:1]}", file=sys.stderr)
    run_sync(None, lambda conn: conn.execute(text(f"DELETE FROM {quoted.table('notification_outbox')}")), settings)
    return len(result["sent"]) / elapsed


def print_table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{cell:.1f}" if isinstance(cell, float) else str(cell) for cell in row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller volumes for a smoke run")
    args = parser.parse_args()
    volumes = (20_000, 100_000) if args.quick else (100_000, 1_000_000)
    repeat = 3 if args.quick else 7

    with tempfile.TemporaryDirectory() as folder:
        url = os.environ.get("SERIALMON_BENCH_DATABASE_URL")
        server = None
        if not url:
            server = EmbeddedServer(Path(folder) / "pg")
            url = server.start()
        common = {
            "database_url": url,
            "state_schema": f"serialmon_bench_{uuid.uuid4().hex[:8]}",
            "data_dir": Path(folder) / "data",
            "alert_to_emails": ["ops@example.com"],
        }
        settings = load_settings(**common)
        try:
            init_db(settings)
            print("Machine\n")
            for key, value in machine(settings).items():
                print(f"- {key}: {value}")

            evaluation_rows, rule_rows = [], []
            filled = 0
            for volume in volumes:
                # Filling a million rows takes longer than the default statement_timeout allows.
                fill_events(load_settings(**common, statement_timeout_ms=0), volume - filled)
                filled = volume
                median, worst, transitions = evaluation_cost(settings, repeat)
                evaluation_rows.append((f"{volume:,}", median, worst, transitions))
                for name, rule_median, rule_worst, findings in rule_costs(settings, repeat):
                    rule_rows.append((f"{volume:,}", name, rule_median, rule_worst, findings))

            print_table(f"process_alerts(send_notifications=False), median and max of {repeat} runs",
                        ("events in 7 days + window", "median ms", "max ms", "transitions (first run)"),
                        evaluation_rows)
            print_table("Each rule's signal queries",
                        ("events", "rule", "median ms", "max ms", "alerts"), rule_rows)

            count = 50 if args.quick else 200
            eml_rate = delivery_rate(settings, count)
            sink = Controller(Sink(), hostname="127.0.0.1", port=_free_port())
            sink.start()
            try:
                smtp = load_settings(**common, smtp_host="127.0.0.1", smtp_port=sink.port, smtp_allow_plain=True)
                smtp_rate = delivery_rate(smtp, count)
            finally:
                sink.stop()
            print_table(f"Outbox delivery of {count} single-alert notifications (claim, send, record each)",
                        ("channel", "messages/s"),
                        [(".eml files", eml_rate), ("SMTP, aiosmtpd on 127.0.0.1, one connection per message",
                                                    smtp_rate)])
        finally:
            run_sync(None, lambda conn: conn.execute(text(f"DROP SCHEMA {names(settings).state} CASCADE")),
                     settings)
            dispose_engines()
            if server is not None:
                server.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    main()
