"""Benchmark the metrics collector: call cost, persisted throughput, outage latency, memory, accuracy.

    python bench/bench_collector.py            # embedded PostgreSQL in a temporary folder
    SERIALMON_BENCH_DATABASE_URL=postgresql://... python bench/bench_collector.py
    python bench/bench_collector.py --quick    # smaller counts, for a smoke run

Prints the machine, one table of results against their targets, and the
insert-strategy comparison behind `serialmon.writer.insert_events`. It never
asserts: read the "met" column. It writes into a fresh
`serialmon_bench_<random>` schema and drops that schema at the end.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from prometheus_client import CollectorRegistry, Counter, Histogram

from machine import machine_info
from serialmon.collector import SerializeMetricsCollector
from serialmon.config import Settings, load_settings
from serialmon.db import dispose_engines, get_engine, names
from serialmon.embedded import EmbeddedServer
from serialmon.livestats import LiveStats
from serialmon.schema import init_db
from serialmon.writer import (
    Event,
    EventWriter,
    HeartbeatInfo,
    Origin,
    Statements,
    insert_events_copy,
    insert_events_unnest,
)

CATEGORIES = ("brackets", "shafts", "housings", "covers", "fasteners")


def machine(settings: Settings) -> dict[str, str]:
    raw = get_engine(settings).raw_connection()
    try:
        version = raw.driver_connection.execute("SHOW server_version").fetchone()[0]
    finally:
        raw.close()
    return machine_info(version)


def record_arguments(rng: random.Random, count: int) -> list[tuple]:
    statuses = ("success",) * 17 + ("failure",) * 2 + ("skipped",)
    return [
        (f"model-{index}.prt", rng.choice(("part", "assembly")), rng.choice(statuses),
         rng.lognormvariate(3.5, 1.0), rng.uniform(40, 100), rng.choice(CATEGORIES))
        for index in range(count)
    ]


# 1. Cost of one call, beside prometheus_client


def bench_call_cost(settings: Settings, count: int, rounds: int) -> dict[str, Any]:
    """Median per-call cost of record_serialization_sync and of the Prometheus equivalent, interleaved.

    The writer is configured to wait (huge batch, one-hour interval) during
    each measured round, so that the figure is the call itself. The cost of
    persisting is measured separately, as "amortized" (record + persist, wall time).
    """
    idle = settings.model_copy(update={
        "writer_batch_size": 100_000, "writer_flush_interval_sec": 3600.0, "queue_size": 10_000_000,
    })
    registry = CollectorRegistry()
    histogram = Histogram("serialization_seconds", "time", ["model_type", "status", "category"], registry=registry)
    counter = Counter("serializations", "models", ["model_type", "status", "category"], registry=registry)
    arguments = record_arguments(random.Random(1), count)

    def prometheus_round() -> float:
        started = time.perf_counter()
        for name, model_type, status, seconds, coverage, category in arguments:
            histogram.labels(model_type, status, category).observe(seconds)
            counter.labels(model_type, status, category).inc()
        return (time.perf_counter() - started) / count

    collector_costs, prometheus_costs = [], []
    with SerializeMetricsCollector(idle) as collector:
        record = collector.record_serialization_sync
        record("warm-up.prt", "part", "success", 1.0)
        collector.flush(60)
        for _ in range(rounds):
            gc.collect()
            started = time.perf_counter()
            for name, model_type, status, seconds, coverage, category in arguments:
                record(name, model_type, status, seconds, coverage, category)
            collector_costs.append((time.perf_counter() - started) / count)
            prometheus_costs.append(prometheus_round())
            collector.flush(120)

    with SerializeMetricsCollector(settings) as collector:
        record = collector.record_serialization_sync
        started = time.perf_counter()
        for name, model_type, status, seconds, coverage, category in arguments:
            record(name, model_type, status, seconds, coverage, category)
        collector.flush(300)
        amortized = (time.perf_counter() - started) / count
    collector_us = statistics.median(collector_costs) * 1e6
    prometheus_us = statistics.median(prometheus_costs) * 1e6
    return {"collector_us": collector_us, "prometheus_us": prometheus_us, "amortized_us": amortized * 1e6}


# 2. Persisted throughput


def bench_throughput(settings: Settings, count: int) -> dict[str, float]:
    """Events per second into serialization_events: end to end, and the writer alone on a full queue."""
    arguments = record_arguments(random.Random(2), count)

    with SerializeMetricsCollector(settings.model_copy(update={"queue_size": max(count * 2, 100)})) as collector:
        record = collector.record_serialization_sync
        record("warm-up.prt", "part", "success", 1.0)
        collector.flush(60)
        started = time.perf_counter()
        for name, model_type, status, seconds, coverage, category in arguments:
            record(name, model_type, status, seconds, coverage, category)
        collector.flush(600)
        end_to_end = count / (time.perf_counter() - started)
        spilled = collector.get_stats()["writer"]["spilled"]

    # The writer alone: fill the queue of a writer whose thread has not started, then time the drain.
    origin = Origin("bench", os.getpid(), f"bench:{os.getpid()}:drain")
    writer = EventWriter(settings.model_copy(update={"queue_size": count + 10}), origin,
                         lambda: HeartbeatInfo(None, None, 0), started_at=time.time(), token="bench")
    for name, model_type, status, seconds, coverage, category in arguments:
        writer.submit(Event(uuid.uuid4(), time.time(), name, model_type, status, seconds, coverage, None,
                            None, category, None, None, None, None, origin))
    started = time.perf_counter()
    writer.start()
    writer.flush(600)
    writer_only = count / (time.perf_counter() - started)
    writer.close()
    return {"end_to_end": end_to_end, "writer_only": writer_only, "spilled": spilled}


def bench_insert_strategies(settings: Settings, count: int) -> list[tuple[str, int, float]]:
    """Events per second of each insert strategy at several batch sizes, on one connection."""
    statements = Statements(names(settings))
    origin = Origin("bench", os.getpid(), "bench:1:1")
    rng = random.Random(3)
    results = []
    raw = get_engine(settings).raw_connection()
    conn = raw.driver_connection
    try:
        for batch in (500, 2000, 5000):
            for label, insert in (("unnest", insert_events_unnest), ("copy", insert_events_copy)):
                events = [
                    Event(uuid.uuid4(), time.time(), f"m{index}.prt", "part", "success", rng.random() * 100,
                          rng.uniform(0, 100), 0, 10, "c", "bench-batch", None, None, ["a"], origin)
                    for index in range(count)
                ]
                started = time.perf_counter()
                with conn.cursor() as cursor:
                    for offset in range(0, count, batch):
                        insert(cursor, statements, events[offset:offset + batch])
                        conn.commit()
                results.append((label, batch, count / (time.perf_counter() - started)))
    finally:
        raw.close()
    return results


# 3. Recording while the database is stopped


def bench_outage_latency(settings: Settings, server: EmbeddedServer | None, count: int) -> dict[str, float] | None:
    """Per-call durations of record_serialization_sync with the database stopped (embedded server only)."""
    if server is None:
        return None
    arguments = record_arguments(random.Random(4), count)
    durations = np.empty(count)
    with SerializeMetricsCollector(settings) as collector:
        record = collector.record_serialization_sync
        record("warm-up.prt", "part", "success", 1.0)
        collector.flush(60)
        server.stop()
        # The benchmark's own 100,000 argument tuples are not the collector's:
        # keep the garbage collector from scanning them inside a timed call.
        gc.freeze()
        try:
            clock = time.perf_counter_ns
            for index, (name, model_type, status, seconds, coverage, category) in enumerate(arguments):
                started = clock()
                record(name, model_type, status, seconds, coverage, category)
                durations[index] = clock() - started
            collector.flush(120)
            spilled = collector.get_stats()["writer"]["spilled"]
        finally:
            gc.unfreeze()
            server.start()
            dispose_engines()
    micro = durations / 1000.0
    return {
        "p50": float(np.percentile(micro, 50)), "p99": float(np.percentile(micro, 99)),
        "p99.9": float(np.percentile(micro, 99.9)), "max": float(micro.max()), "spilled": spilled,
    }


# 4. Memory


def bench_memory(settings: Settings, count: int) -> dict[str, float]:
    """Traced memory growth of a collector over `count` events, and of a full 6-hour ring of minutes."""
    arguments = record_arguments(random.Random(5), 10_000)
    with SerializeMetricsCollector(settings.model_copy(update={"queue_size": 100_000})) as collector:
        record = collector.record_serialization_sync
        for name, model_type, status, seconds, coverage, category in arguments[:1000]:
            record(name, model_type, status, seconds, coverage, category)
        collector.flush(60)
        gc.collect()
        rss_before = psutil.Process().memory_info().rss
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for index in range(count):
            name, model_type, status, seconds, coverage, category = arguments[index % 10_000]
            record(name, model_type, status, seconds, coverage, category)
            if index % 50_000 == 0:
                collector.flush(120)  # let the writer keep pace, as a real pipeline's rate would
        collector.flush(600)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        rss_after = psutil.Process().memory_info().rss

    # Worst case for the ring: every one of its 360 minutes contains a wide spread of times.
    minute = [0.0]
    stats = LiveStats(clock=lambda: minute[0])
    rng = random.Random(6)
    tracemalloc.start()
    ring_before = tracemalloc.get_traced_memory()[0]
    for index in range(count):
        minute[0] = (index * 1440 // count) * 60.0  # 24 hours of minutes, so the ring wraps four times
        stats.add("part", "success", rng.lognormvariate(3.5, 1.5), 80.0, CATEGORIES[index % 5], 0)
    gc.collect()
    ring_after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "traced_mb": (after - before) / 2**20,
        "rss_mb": (rss_after - rss_before) / 2**20,
        "ring_worst_mb": (ring_after - ring_before) / 2**20,
    }


# 5. Percentile accuracy


def bench_accuracy(count: int) -> dict[str, float]:
    """Worst relative error of the p50/p95/p99 in get_stats() against numpy on log-normal times."""
    rng = np.random.default_rng(7)
    times = rng.lognormal(mean=3.5, sigma=1.0, size=count)
    stats = LiveStats()
    for value in times.tolist():
        stats.add("part", "success", value, None, None, None)
    summary = stats.snapshot(60)["processing_time_sec"]
    errors = {}
    for name, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        lower = np.percentile(times, q, method="lower")
        linear = np.percentile(times, q)
        errors[name] = abs(summary[name] - lower) / lower
        errors[name + "_linear"] = abs(summary[name] - linear) / linear
    return errors


# Running


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    options = parser.parse_args()
    scale = 10 if options.quick else 1

    folder = Path(tempfile.mkdtemp(prefix="serialmon-bench-"))
    server = None
    url = os.environ.get("SERIALMON_BENCH_DATABASE_URL")
    if not url:
        server = EmbeddedServer(folder / "pg")
        url = server.start()
    schema = f"serialmon_bench_{uuid.uuid4().hex[:8]}"
    settings = load_settings(database_url=url, data_dir=folder / "data", state_schema=schema)
    init_db(settings, create_models_table=False)
    try:
        run(settings, server, scale)
    finally:
        raw = get_engine(settings).raw_connection()
        try:
            raw.driver_connection.execute(f'DROP SCHEMA "{schema}" CASCADE')
            raw.driver_connection.commit()
        finally:
            raw.close()
        dispose_engines()
        if server is not None:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def run(settings: Settings, server: EmbeddedServer | None, scale: int) -> None:
    print("## Machine\n")
    for key, value in machine(settings).items():
        print(f"- {key}: {value}")
    print()

    call = bench_call_cost(settings, 50_000 // scale, 5)
    throughput = bench_throughput(settings, 200_000 // scale)
    outage = bench_outage_latency(settings, server, 100_000 // scale)
    memory = bench_memory(settings, 1_000_000 // scale)
    accuracy = bench_accuracy(100_000 // scale)
    strategies = bench_insert_strategies(settings, 50_000 // scale)

    ratio = call["collector_us"] / call["prometheus_us"]
    rows = [
        ("record_serialization_sync, per call", f"{call['collector_us']:.2f} µs", "", ""),
        ("prometheus Histogram.observe + Counter.inc", f"{call['prometheus_us']:.2f} µs", "", ""),
        ("ratio collector / prometheus", f"{ratio:.2f}×", "≤ 3×", _met(ratio <= 3)),
        ("record + persist, amortized wall time per event", f"{call['amortized_us']:.2f} µs", "", ""),
        ("persisted throughput, recording and writing in one process",
         f"{throughput['end_to_end']:,.0f} events/s", "≥ 20,000/s", _met(throughput["end_to_end"] >= 20_000)),
        ("persisted throughput, writer draining a full queue",
         f"{throughput['writer_only']:,.0f} events/s", "≥ 20,000/s", _met(throughput["writer_only"] >= 20_000)),
    ]
    if outage is None:
        rows.append(("one call while the database is stopped", "not measured (needs the embedded server)", "", ""))
    else:
        rows += [
            ("one call while the database is stopped, p50", f"{outage['p50']:.1f} µs", "", ""),
            ("one call while the database is stopped, p99", f"{outage['p99']:.1f} µs", "≤ 100 µs",
             _met(outage["p99"] <= 100)),
            ("one call while the database is stopped, p99.9 / max",
             f"{outage['p99.9']:.1f} / {outage['max']:.0f} µs", "", ""),
        ]
    rows += [
        (f"memory growth after {1_000_000 // scale:,} events (tracemalloc)", f"{memory['traced_mb']:.2f} MB",
         "≤ 10 MB", _met(memory["traced_mb"] <= 10)),
        (f"RSS growth after {1_000_000 // scale:,} events", f"{memory['rss_mb']:.1f} MB", "", ""),
        ("live figures, 24 h of busy minutes (ring of 360 full)", f"{memory['ring_worst_mb']:.2f} MB", "", ""),
    ]
    for name in ("p50", "p95", "p99"):
        error = accuracy[name]
        rows.append((f"{name} relative error vs numpy (lower) on {100_000 // scale:,} log-normal times",
                     f"{error * 100:.3f} %", "≤ 1 %", _met(error <= 0.01)))
    rows.append(("largest error vs numpy's default (linear) percentile",
                 f"{max(accuracy[n + '_linear'] for n in ('p50', 'p95', 'p99')) * 100:.3f} %", "", ""))

    print("## Results\n")
    print("| measure | result | target | met |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\n## Insert strategies (events/s, one connection, commit per batch)\n")
    print("| strategy | batch size | events/s |")
    print("|---|---|---|")
    for label, batch, rate in strategies:
        print(f"| {label} | {batch} | {rate:,.0f} |")
    sys.stdout.flush()


def _met(condition: bool) -> str:
    return "yes" if condition else "no"


if __name__ == "__main__":
    main()
