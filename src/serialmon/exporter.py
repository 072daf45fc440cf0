"""A Prometheus exporter for the fleet-wide figures, over the read model.

Each scrape reads one snapshot (`serialmon.readmodel.get_snapshot`) and turns
it into metric families, so the exporter shows the numbers that
`serialmon status` and the dashboard show. When the database cannot be read,
the scrape still succeeds with `serialmon_up 0`, so Prometheus alerts on a
metric instead of a failed scrape.

    serialmon exporter --port 9464          # http://127.0.0.1:9464/metrics

Windowed figures (gauges and the `serialmon_processing_seconds` summary) cover
the last `minutes` minutes; `serialmon_models_total` counts every retained
event, as a Prometheus counter should.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy.exc import SQLAlchemyError

from serialmon.config import Settings, get_settings
from serialmon.db import connect
from serialmon.errors import SerialmonError
from serialmon.readmodel import Filters, attempt_counts, get_snapshot

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464
_ERROR_LOG_INTERVAL_SEC = 60.0


def _label(value: Any) -> str:
    """Return a label value; a missing value (None) becomes the empty string, as Prometheus expects."""
    return "" if value is None else str(value)


def _timestamp(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


def _gauge(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    if value is not None:
        family.add_metric([], value)
    return family


def snapshot_metrics(snapshot: dict[str, Any], attempts: Iterable[dict[str, Any]]) -> list[Metric]:
    """Return the metric families for one snapshot and the all-time attempt counts (`attempt_counts`).

    A figure that is None in the snapshot (no data) has no sample, rather than
    a made-up zero.
    """
    families: list[Metric] = []

    models = CounterMetricFamily(
        "serialmon_models",
        "Serialization attempts recorded in serialization_events (all retained events)",
        labels=["status", "model_type", "category"],
    )
    for row in attempts:
        models.add_metric([row["status"], _label(row["model_type"]), _label(row["category"])], row["attempts"])
    families.append(models)

    families += _run_metrics(snapshot)
    families += _quality_metrics(snapshot["quality"])
    families += _batch_metrics(snapshot["batches"])
    families += _worker_metrics(snapshot["workers"])

    ledger = snapshot["ledger"]
    families.append(_gauge(
        "serialmon_ledger_refreshed_timestamp_seconds",
        "Unix time of the ledger's last refresh (its read snapshot)",
        _timestamp(ledger["refreshed_at"]),
    ))
    families.append(_gauge("serialmon_ledger_rows", "Rows in the model-quality ledger", ledger["rows"]))
    families.append(_gauge(
        "serialmon_ledger_refresh_failed",
        "1 when this scrape's ledger refresh failed and quality figures come from the ledger as it was",
        1 if ledger["error"] else 0,
    ))
    return families


def _run_metrics(snapshot: dict[str, Any]) -> list[Metric]:
    families: list[Metric] = []
    window_minutes = snapshot["window_minutes"]
    families.append(_gauge(
        "serialmon_window_seconds",
        "Length of the window that the serialmon_window_* and ratio metrics cover",
        window_minutes * 60.0 if window_minutes is not None else None,
    ))
    families.append(_gauge(
        "serialmon_window_models", "Distinct models with an event in the window", snapshot["total_models"]
    ))
    window_attempts = GaugeMetricFamily(
        "serialmon_window_attempts", "Serialization attempts in the window", labels=["status"]
    )
    for status, count in snapshot["by_status"].items():
        window_attempts.add_metric([status], count)
    families.append(window_attempts)
    families.append(_gauge("serialmon_table_models", "Rows of the monitored table (ledger)", snapshot["table_models"]))

    timing = snapshot["processing_time_sec"]
    summary = Metric(
        "serialmon_processing_seconds",
        "Processing time of successes and failures in the window (exact quantiles)",
        "summary",
    )
    for quantile, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
        if timing[key] is not None:
            summary.add_sample("serialmon_processing_seconds", {"quantile": quantile}, timing[key])
    summary.add_sample("serialmon_processing_seconds_sum", {}, timing["sum"])
    summary.add_sample("serialmon_processing_seconds_count", {}, timing["count"])
    families.append(summary)

    families.append(_gauge(
        "serialmon_failure_ratio", "Failures / (successes + failures) in the window", snapshot["failure_rate"]
    ))
    families.append(_gauge(
        "serialmon_success_ratio", "Successes / (successes + failures) in the window", snapshot["success_rate"]
    ))
    throughput = GaugeMetricFamily(
        "serialmon_throughput_models_per_hour",
        "Successes + failures per hour, over the last 5 minutes, the last hour, or the window",
        labels=["period"],
    )
    for period, value in snapshot["throughput_per_hour"].items():
        if value is not None:
            throughput.add_metric([period], value)
    families.append(throughput)

    failures = GaugeMetricFamily(
        "serialmon_window_failures", "Failures in the window by error type", labels=["error_type"]
    )
    for group in snapshot["failure_reasons"]:
        failures.add_metric([_label(group["error_type"])], group["failures"])
    families.append(failures)

    category_ratio = GaugeMetricFamily(
        "serialmon_category_failure_ratio", "Failure ratio in the window by category", labels=["category"]
    )
    category_coverage = GaugeMetricFamily(
        "serialmon_category_element_coverage_percent",
        "Mean element coverage by category (ledger)",
        labels=["category"],
    )
    for row in snapshot["by_category"]:
        if row["failure_rate"] is not None:
            category_ratio.add_metric([_label(row["category"])], row["failure_rate"])
        if row["avg_element_coverage"] is not None:
            category_coverage.add_metric([_label(row["category"])], row["avg_element_coverage"])
    families += [category_ratio, category_coverage]
    return families


def _quality_metrics(quality: dict[str, Any]) -> list[Metric]:
    coverage = GaugeMetricFamily(
        "serialmon_element_coverage_percent",
        "Element coverage over models of known quality (ledger), mean and minimum",
        labels=["statistic"],
    )
    for statistic, key in (("mean", "avg_element_coverage"), ("min", "min_element_coverage")):
        if quality[key] is not None:
            coverage.add_metric([statistic], quality[key])

    below = GaugeMetricFamily(
        "serialmon_models_below_coverage",
        "Models whose element coverage is under the warning or critical threshold",
        labels=["threshold"],
    )
    below.add_metric(["warning"], quality["below_warning"])
    below.add_metric(["critical"], quality["below_critical"])

    by_bucket = GaugeMetricFamily(
        "serialmon_models_by_coverage_bucket",
        "Models by element coverage in 10-point buckets [lower, upper); the last bucket includes 100",
        labels=["lower", "upper"],
    )
    for bucket in quality["coverage_histogram"]:
        by_bucket.add_metric([str(bucket["bucket_start"]), str(bucket["bucket_end"])], bucket["models"])

    return [
        coverage,
        below,
        by_bucket,
        _gauge(
            "serialmon_quality_unknown_models", "Models whose quality could not be read", quality["quality_unknown"]
        ),
        _gauge(
            "serialmon_unrecoverable_unknown_features",
            "Unknown features without element data, summed over the table",
            quality["unrecoverable_unknown"],
        ),
        _gauge(
            "serialmon_content_bytes",
            "Stored size of serialized_content summed over the table (after compression)",
            quality["content_bytes"],
        ),
    ]


def _batch_metrics(batches: list[dict[str, Any]]) -> list[Metric]:
    progress = GaugeMetricFamily(
        "serialmon_batch_progress_ratio", "Processed / total models of a batch", labels=["batch_id"]
    )
    counts = GaugeMetricFamily("serialmon_batch_models", "Models of a batch by state", labels=["batch_id", "state"])
    throughput = GaugeMetricFamily(
        "serialmon_batch_throughput_models_per_hour",
        "Models per hour of a batch over its last 15 minutes",
        labels=["batch_id"],
    )
    eta = GaugeMetricFamily(
        "serialmon_batch_eta_seconds", "Estimated seconds until a running batch finishes", labels=["batch_id"]
    )
    status = GaugeMetricFamily(
        "serialmon_batch_status", "1 for the batch's current status", labels=["batch_id", "status"]
    )
    for batch in batches:
        batch_id = batch["batch_id"]
        if batch["percent"] is not None:
            progress.add_metric([batch_id], batch["percent"] / 100.0)
        for state in ("total", "processed", "succeeded", "failed", "skipped", "attempts", "failed_attempts"):
            if batch[state] is not None:
                counts.add_metric([batch_id, state], batch[state])
        throughput.add_metric([batch_id], batch["throughput_per_hour"])
        if batch["eta_seconds"] is not None:
            eta.add_metric([batch_id], batch["eta_seconds"])
        status.add_metric([batch_id, batch["status"]], 1)
    return [progress, counts, throughput, eta, status]


def _worker_metrics(workers: list[dict[str, Any]]) -> list[Metric]:
    heartbeat = GaugeMetricFamily(
        "serialmon_worker_last_heartbeat_timestamp_seconds",
        "Unix time of a worker's last heartbeat",
        labels=["worker_id", "host"],
    )
    live = GaugeMetricFamily(
        "serialmon_worker_live", "1 when a worker's heartbeat is recent, 0 when silent or stopped", labels=["worker_id"]
    )
    for worker in workers:
        heartbeat.add_metric([worker["worker_id"], worker["host"]], _timestamp(worker["heartbeat_at"]))
        live.add_metric([worker["worker_id"]], 1 if worker["state"] == "live" else 0)
    return [heartbeat, live]


class SnapshotCollector:
    """A prometheus_client custom collector that reads one snapshot per scrape.

    Each `collect()` blocks for one snapshot (a few queries, and a ledger
    refresh unless `refresh=False`). Database failures (SQLAlchemy errors,
    `SerialmonError` such as `DatabaseUnavailable`, socket errors) do not
    raise: the scrape then contains `serialmon_up 0` and the scrape duration.

        registry = CollectorRegistry()
        registry.register(SnapshotCollector(settings, minutes=60))
    """

    def __init__(self, settings: Settings | None = None, *, minutes: float | None = None, refresh: bool = True) -> None:
        self.settings = settings or get_settings()
        self.minutes = minutes
        self.refresh = refresh
        self._errors = 0
        self._last_error_log = 0.0
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        # No names at registration time, so registering never queries the database.
        return []

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        try:
            snapshot, attempts = self._read()
        except (SerialmonError, SQLAlchemyError, OSError) as error:
            self._log_failure(error)
            yield _gauge("serialmon_up", "1 when the last scrape could read the database", 0)
            yield _gauge("serialmon_scrape_duration_seconds", "Time to read the figures", time.monotonic() - started)
            return
        yield _gauge("serialmon_up", "1 when the last scrape could read the database", 1)
        yield from snapshot_metrics(snapshot, attempts)
        yield _gauge("serialmon_scrape_duration_seconds", "Time to read the figures", time.monotonic() - started)

    def _read(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        with connect(self.settings) as conn:
            snapshot = get_snapshot(conn, self.settings, minutes=self.minutes, refresh=self.refresh)
            attempts = attempt_counts(conn, self.settings, Filters())
            conn.rollback()
        return snapshot, attempts

    def _log_failure(self, error: BaseException) -> None:
        # At most one line a minute while the database stays down.
        with self._lock:
            self._errors += 1
            now = time.monotonic()
            if now - self._last_error_log < _ERROR_LOG_INTERVAL_SEC and self._errors > 1:
                return
            self._last_error_log = now
            errors, self._errors = self._errors, 0
        message = str(getattr(error, "orig", None) or error).strip().splitlines()
        logger.warning(
            "scrape could not read the database (%d failures since the last message): %s: %s",
            errors, type(error).__name__, message[0] if message else "",
        )


def build_registry(
    settings: Settings | None = None, *, minutes: float | None = None, refresh: bool = True
) -> CollectorRegistry:
    """Return a registry that holds only serialmon's collector (no process or platform metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(settings, minutes=minutes, refresh=refresh))
    return registry


def start_exporter(
    settings: Settings | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    minutes: float | None = None,
    refresh: bool = True,
) -> tuple[Any, threading.Thread]:
    """Serve /metrics on `host`:`port` from a daemon thread and return (server, thread); non-blocking.

    Port 0 picks a free port (`server.server_port`). Stop with
    `server.shutdown()`. Raises `ValueError` for a port outside 0-65535 and
    `OSError` when the address cannot be bound.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port {port!r} is out of range: expected an integer from 0 to 65535")
    registry = build_registry(settings, minutes=minutes, refresh=refresh)
    server, thread = start_http_server(port, addr=host, registry=registry)
    logger.info("exporter listening on http://%s:%d/metrics", host, server.server_port)
    return server, thread
