"""The Prometheus exporter: its text output parses and equals the snapshot; a dead database gives serialmon_up 0."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import psycopg
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serialmon.config import load_settings
from serialmon.db import get_engine
from serialmon.exporter import build_registry, start_exporter
from serialmon.readmodel import Filters, attempt_counts, get_snapshot


def populate(libpq_url):
    """Events well inside the last hour (away from the 5, 15 and 60 minute edges), a batch, workers, models."""
    now = datetime.now(timezone.utc)
    rows = []
    plan = [
        (2, "success", 10.0, "EMJAC", "part", "b1"), (3, "success", 20.0, "EMJAC", "assembly", "b1"),
        (8, "failure", 30.0, "SDI", "part", "b1"), (20, "success", 40.0, None, "part", None),
        (25, "skipped", 0.1, "SDI", "part", "b1"), (40, "failure", 50.0, "SDI", "part", None),
        (50, "success", 60.0, "EMJAC", "part", None),
    ]
    for index, (minutes_ago, status, seconds, category, model_type, batch_id) in enumerate(plan):
        rows.append((
            uuid.uuid4(), now - timedelta(minutes=minutes_ago), f"m{index}.prt", model_type, status, seconds,
            category, batch_id, "GrpcError" if status == "failure" else None,
        ))
    with psycopg.connect(libpq_url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO serialmon.serialization_events (event_id, occurred_at, model_name, model_type, status, "
            "processing_time_sec, category, batch_id, error_type) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
        cursor.execute(
            "INSERT INTO serialmon.batch_jobs (batch_id, status, total_models, processed, succeeded, failed, skipped, "
            "started_at, heartbeat_at) VALUES ('b1', 'running', 40, 10, 7, 2, 1, now() - interval '1 hour', now())"
        )
        cursor.execute(
            "INSERT INTO serialmon.worker_heartbeats (worker_id, host, pid, heartbeat_at) VALUES "
            "('host-a:11', 'host-a', 11, now()), ('host-a:12', 'host-a', 12, now() - interval '10 minutes')"
        )
        cursor.executemany(
            "INSERT INTO serialized_models (model_name, category, model_type, serialized_content) "
            "VALUES (%s, %s, %s, %s)",
            [
                ("m0.prt", "EMJAC", "part", json.dumps({"serialization_quality": {"element_coverage": 92.0}})),
                ("m1.prt", "EMJAC", "assembly", json.dumps({"element_coverage": 45.0})),
                ("m2.prt", "SDI", "part", None),
            ],
        )


def scrape(registry):
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def test_exporter_values_equal_snapshot(initialized, libpq_url):
    populate(libpq_url)

    samples = scrape(build_registry(initialized, minutes=60))
    with get_engine(initialized).connect() as conn:
        snapshot = get_snapshot(conn, initialized, minutes=60, refresh=False)
        attempts = attempt_counts(conn, initialized, Filters())

    assert value(samples, "serialmon_up") == 1
    assert value(samples, "serialmon_ledger_refresh_failed") == 0
    assert value(samples, "serialmon_ledger_rows") == 3
    for row in attempts:
        labels = {"status": row["status"], "model_type": row["model_type"], "category": row["category"] or ""}
        assert value(samples, "serialmon_models_total", **labels) == row["attempts"]
    assert sum(value for (name, _), value in samples.items() if name == "serialmon_models_total") == 7
    assert value(samples, "serialmon_failure_ratio") == pytest.approx(snapshot["failure_rate"])
    assert snapshot["failure_rate"] == pytest.approx(2 / 6)
    timing = snapshot["processing_time_sec"]
    for quantile, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
        assert value(samples, "serialmon_processing_seconds", quantile=quantile) == pytest.approx(timing[key])
    assert value(samples, "serialmon_processing_seconds_count") == timing["count"] == 6
    assert value(samples, "serialmon_processing_seconds_sum") == pytest.approx(timing["sum"])
    for period, expected in snapshot["throughput_per_hour"].items():
        assert value(samples, "serialmon_throughput_models_per_hour", period=period) == pytest.approx(expected)
    assert value(samples, "serialmon_window_models") == snapshot["total_models"] == 7
    assert value(samples, "serialmon_table_models") == snapshot["table_models"] == 3
    quality = snapshot["quality"]
    assert value(samples, "serialmon_element_coverage_percent", statistic="mean") == quality["avg_element_coverage"]
    assert value(samples, "serialmon_element_coverage_percent", statistic="min") == 45.0
    assert value(samples, "serialmon_models_below_coverage", threshold="warning") == quality["below_warning"] == 1
    assert value(samples, "serialmon_quality_unknown_models") == 1
    assert value(samples, "serialmon_models_by_coverage_bucket", lower="90", upper="100") == 1
    (batch,) = snapshot["batches"]
    assert value(samples, "serialmon_batch_progress_ratio", batch_id="b1") == pytest.approx(batch["percent"] / 100)
    assert value(samples, "serialmon_batch_eta_seconds", batch_id="b1") == pytest.approx(batch["eta_seconds"])
    # Models count once, by their latest attempt (m2 failed); attempts come from the batch row's counters.
    assert value(samples, "serialmon_batch_models", batch_id="b1", state="processed") == 4
    assert value(samples, "serialmon_batch_models", batch_id="b1", state="failed") == 1
    assert value(samples, "serialmon_batch_models", batch_id="b1", state="failed_attempts") == 2
    assert value(samples, "serialmon_batch_status", batch_id="b1", status="running") == 1
    for worker in snapshot["workers"]:
        heartbeat = datetime.fromisoformat(worker["heartbeat_at"]).timestamp()
        labels = {"worker_id": worker["worker_id"], "host": worker["host"]}
        assert value(samples, "serialmon_worker_last_heartbeat_timestamp_seconds", **labels) == pytest.approx(heartbeat)
    assert value(samples, "serialmon_worker_live", worker_id="host-a:11") == 1
    assert value(samples, "serialmon_worker_live", worker_id="host-a:12") == 0
    assert value(samples, "serialmon_window_failures", error_type="GrpcError") == 2
    assert value(samples, "serialmon_category_failure_ratio", category="SDI") == pytest.approx(2 / 2)


def test_unreachable_database_gives_up_zero(tmp_path):
    dead = load_settings(
        database_url="postgresql://nobody:secret@127.0.0.1:1/none", data_dir=tmp_path, connect_timeout_sec=1
    )

    text = generate_latest(build_registry(dead)).decode()
    samples = {
        sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples
    }

    assert samples["serialmon_up"] == 0
    assert "serialmon_scrape_duration_seconds" in samples
    assert "serialmon_failure_ratio" not in samples
    assert "secret" not in text


def test_exporter_serves_http_on_loopback(initialized, libpq_url):
    populate(libpq_url)
    server, thread = start_exporter(initialized, port=0)
    try:
        response = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=30)
    finally:
        server.shutdown()

    assert server.server_address[0] == "127.0.0.1"
    assert response.status_code == 200
    assert "serialmon_up 1.0" in response.text
    # b1 has events for 4 distinct models of its 40.
    assert 'serialmon_batch_progress_ratio{batch_id="b1"} 0.1' in response.text


@pytest.mark.parametrize("port", [-1, 70000, "9464"])
def test_exporter_rejects_bad_port(initialized, port):
    with pytest.raises(ValueError, match="port"):
        start_exporter(initialized, port=port)
