"""The metrics collector's API: validation, live figures, track(), batch jobs, threads and processes."""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import random
import threading
import time
from datetime import datetime, timedelta, timezone
from fractions import Fraction

import numpy as np
import psycopg
import pytest

from serialmon.collector import (
    SerializeMetricsCollector,
    get_serialize_metrics_collector,
    reset_serialize_metrics_collector,
)
from serialmon.livestats import COVERAGE_BUCKETS, OTHER_CATEGORY


@pytest.fixture
def collector(initialized):
    settings = initialized.model_copy(update={"writer_flush_interval_sec": 0.1, "heartbeat_interval_sec": 0.2})
    with SerializeMetricsCollector(settings) as created:
        yield created


def db_rows(libpq_url, query, params=()):
    with psycopg.connect(libpq_url) as conn:
        return conn.execute(query, params).fetchall()


def event_count(libpq_url):
    return db_rows(libpq_url, "SELECT count(*) FROM serialmon.serialization_events")[0][0]


VALID = {
    "model_name": "bracket.prt", "model_type": "part", "status": "success", "processing_time_sec": 12.5,
    "element_coverage": 91.0, "category": "brackets",
}

# (arguments that replace the valid ones, text the ValueError must contain)
INVALID_CALLS = [
    ({"status": "failed"}, "Invalid status='failed': expected one of 'success', 'failure', 'skipped'. "
                           "Did you mean 'failure'?"),
    ({"status": "ok"}, "Did you mean 'success'?"),
    ({"status": "succeeded"}, "Did you mean 'success'?"),
    ({"status": "Skipped"}, "Did you mean 'skipped'?"),
    ({"status": None}, "Invalid status=None: expected one of"),
    ({"model_type": "prt"}, "Invalid model_type='prt': expected one of 'part', 'assembly'. Did you mean 'part'?"),
    ({"model_type": "PART"}, "Did you mean 'part'?"),
    ({"model_type": "asm"}, "Did you mean 'assembly'?"),
    ({"model_type": "drawing"}, "Invalid model_type='drawing': expected one of 'part', 'assembly'."),
    ({"processing_time_sec": -1}, "Invalid processing_time_sec=-1: expected a finite number of seconds "
                                  "from 0 to 2,678,400."),
    ({"processing_time_sec": 1e160}, "Invalid processing_time_sec=1e+160"),
    ({"processing_time_sec": math.nan}, "Invalid processing_time_sec=nan"),
    ({"processing_time_sec": math.inf}, "Invalid processing_time_sec=inf"),
    ({"processing_time_sec": True}, "Invalid processing_time_sec=True"),
    ({"processing_time_sec": "12"}, "Pass seconds as a number"),
    ({"processing_time_sec": None}, "Invalid processing_time_sec=None"),
    ({"element_coverage": 100.5}, "Invalid element_coverage=100.5: expected None or a finite percentage from 0 to 100."),
    ({"element_coverage": -0.1}, "Invalid element_coverage=-0.1"),
    ({"element_coverage": math.nan}, "Invalid element_coverage=nan"),
    ({"element_coverage": "90"}, "Invalid element_coverage='90'"),
    ({"element_coverage": False}, "Invalid element_coverage=False"),
    ({"unrecoverable_unknown": -1}, "Invalid unrecoverable_unknown=-1: expected None or an integer from 0 to 2147483647."),
    ({"unrecoverable_unknown": 1.0}, "Pass a whole number."),
    ({"feature_count": True}, "Invalid feature_count=True"),
    ({"feature_count": 2**31}, "Invalid feature_count=2147483648"),
    ({"model_name": ""}, "Invalid model_name='': expected a non-blank string of at most 255 characters"),
    ({"model_name": "   "}, "Invalid model_name='   '"),
    ({"model_name": "x" * 256}, "(256 characters)"),
    ({"model_name": 42}, "Invalid model_name=42"),
    ({"model_name": "a\x00b.prt"}, "without NUL"),
    ({"model_name": "a\ud800.prt"}, "unpaired surrogates"),
    ({"category": "\ud800"}, "Invalid category="),
    ({"tags": ["ok", "\udfff"]}, "but item 1 is"),
    ({"category": "c" * 101}, "Invalid category='ccccc"),
    ({"category": 7}, "Invalid category=7: expected None or a non-blank string of at most 100 characters"),
    ({"tags": "urgent"}, "Invalid tags='urgent': expected None or a list of at most 100 strings of 1 to 255 "
                         "characters without NUL or unpaired surrogates. Wrap a single tag in a list."),
    ({"tags": ["a", 1]}, "but item 1 is 1"),
    ({"occurred_at": "2024-01-01"}, "Invalid occurred_at='2024-01-01': expected None or a datetime"),
    ({"occurred_at": 1_700_000_000}, "Invalid occurred_at=1700000000"),
    ({"occurred_at": datetime(9999, 12, 31, 23, 59)}, "expected a time from 1970-01-01 00:00 UTC to 24 hours from now"),
    ({"error": 42}, "Invalid error=42: expected None, a string or an exception."),
    ({"batch_id": "b" * 65}, "Invalid batch_id='bbbb"),
    ({"processing_time_sec": 10**400}, "Invalid processing_time_sec=1000000000"),
    ({"processing_time_sec": -(10**400)}, "Invalid processing_time_sec=-1000000000"),
    ({"processing_time_sec": Fraction(10**400)}, "Invalid processing_time_sec=Fraction("),
    ({"processing_time_sec": 10**5000}, "Invalid processing_time_sec=<int of 16,610 bits>"),
    ({"element_coverage": 10**400}, "Invalid element_coverage=1000000000"),
    ({"element_coverage": Fraction(-(10**400))}, "Invalid element_coverage=Fraction(-1000"),
    ({"feature_count": 10**400}, "Invalid feature_count=1000000000"),
    ({"unrecoverable_unknown": 10**5000}, "Invalid unrecoverable_unknown=<int of 16,610 bits>"),
    ({"tags": ["x" * 256]}, "but item 0 is 'xxxxx"),
    ({"tags": ["x" * 10_000_000]}, "(10000000 characters)"),
    ({"tags": ["ok", ""]}, "Invalid tags=['ok', '']: expected None or a list of at most 100 strings of 1 to 255 "
                           "characters without NUL or unpaired surrogates, but item 1 is ''."),
    ({"tags": ["x"] * 101}, "but it has 101 items"),
    ({"tags": ["x"] * 100_000}, "but it has 100000 items"),
    ({"occurred_at": datetime(1, 1, 1, tzinfo=timezone.utc)}, "expected a time from 1970-01-01 00:00 UTC"),
    ({"occurred_at": datetime(1969, 12, 31, 23, 59, 59)}, "Invalid occurred_at=datetime.datetime(1969, 12, 31"),
]


def test_invalid_calls_raise_and_record_nothing(collector, libpq_url):
    collector.record_serialization_sync(**VALID)
    assert collector.flush(10)
    before = collector.get_stats()

    for changes, expected in INVALID_CALLS:
        arguments = {**VALID, **changes}
        with pytest.raises(ValueError) as raised:
            collector.record_serialization_sync(**arguments)
        assert expected in str(raised.value), f"{changes}: {raised.value}"
        assert len(str(raised.value)) <= 400, f"{changes}: message not shortened"

    after = collector.get_stats()
    for key in ("totals", "coverage", "processing_time_sec", "unrecoverable_unknown", "success_rate"):
        assert after[key] == before[key], key
    assert after["window"]["recorded"] == 1
    assert collector.flush(10)
    assert event_count(libpq_url) == 1


async def test_async_invalid_call_raises(collector):
    with pytest.raises(ValueError, match="Did you mean 'failure'"):
        await collector.record_serialization(**{**VALID, "status": "failed"})
    assert collector.get_stats()["totals"]["recorded"] == 0


def test_track_invalid_arguments_raise_before_block(collector):
    with pytest.raises(ValueError, match="Did you mean 'assembly'"):
        collector.track("top.asm", "asm")
    with collector.track("top.asm", "assembly") as tracker:
        with pytest.raises(ValueError, match="element_coverage=150"):
            tracker.element_coverage = 150
    assert tracker.status == "success"
    assert tracker.element_coverage is None


class Text(str):
    """A plain subclass of str, as some libraries return."""


def test_str_subclasses_are_accepted(collector, libpq_url):
    event_id = collector.record_serialization_sync(
        np.str_("bracket.prt"), np.str_("part"), np.str_("failure"), 2.0, category=np.str_("brackets"),
        batch_id=Text("b-1"), error=np.str_("Creo crashed"), tags=[np.str_("creo"), Text("large")],
    )
    with collector.track(Text("cover.prt"), Text("assembly"), Text("covers"), tags=(np.str_("x"),)) as tracker:
        pass
    batch_id = collector.start_batch_job(name=np.str_("nightly"), batch_id=np.str_("b-2"))
    collector.update_batch_job(Text("b-2"), name=Text("nightly run"))
    collector.finish_batch_job(np.str_("b-2"), status=np.str_("completed"))

    assert type(batch_id) is str
    assert type(tracker.model_name) is str
    assert type(tracker.category) is str
    stats = collector.get_stats()
    assert type(stats["current_model"]) is str
    assert stats["totals"]["by_type"]["part"]["failure"] == 1
    assert stats["totals"]["by_type"]["assembly"]["success"] == 1
    assert all(type(key) is str for key in stats["totals"]["by_category"])
    assert json.loads(collector.export_json())["totals"]["recorded"] == 2
    assert collector.flush(10)
    row = db_rows(libpq_url, """
        SELECT model_name, model_type, status, category, batch_id, error_message, tags
        FROM serialmon.serialization_events WHERE event_id = %s""", (event_id,))[0]
    assert row == ("bracket.prt", "part", "failure", "brackets", "b-1", "Creo crashed", ["creo", "large"])
    assert db_rows(libpq_url, "SELECT model_type, category, tags FROM serialmon.serialization_events "
                              "WHERE model_name = 'cover.prt'") == [("assembly", "covers", ["x"])]
    assert db_rows(libpq_url, "SELECT name, status FROM serialmon.batch_jobs WHERE batch_id = 'b-2'") == [
        ("nightly run", "completed")
    ]


def test_str_subclass_typo_still_gets_hint(collector):
    with pytest.raises(ValueError, match="Invalid status='failed'.*Did you mean 'failure'"):
        collector.record_serialization_sync("a.prt", "part", np.str_("failed"), 1.0)
    assert collector.get_stats()["totals"]["recorded"] == 0


def test_huge_batch_totals_raise_value_error(collector):
    with pytest.raises(ValueError, match="Invalid total_models=1000000000"):
        collector.start_batch_job(total_models=10**400)
    with pytest.raises(ValueError, match="Invalid total_models=<int of 16,610 bits>"):
        collector.update_batch_job("b", total_models=10**5000)
    with collector.track("a.prt", "part") as tracker:
        with pytest.raises(ValueError, match="Invalid element_coverage=1000000000"):
            tracker.element_coverage = 10**400
        with pytest.raises(ValueError, match="Invalid feature_count=1000000000"):
            tracker.feature_count = 10**400
    with pytest.raises(ValueError, match="Invalid element_coverage=1000000000"):
        collector.track("b.prt", "part", element_coverage=10**400)
    assert tracker.element_coverage is None
    assert collector.get_stats()["running_batches"] == []


def test_tags_at_their_bounds_are_stored(collector, libpq_url):
    tags = [f"{index:03d}" + "x" * 252 for index in range(100)]
    collector.record_serialization_sync("a.prt", "part", "success", 1.0, tags=tags)
    with pytest.raises(ValueError, match="but it has 101 items"):
        collector.track("b.prt", "part", tags=tags + ["one more"])
    assert collector.flush(10)
    assert db_rows(libpq_url, "SELECT tags FROM serialmon.serialization_events") == [(tags,)]


def test_occurred_at_epoch_is_accepted(collector, libpq_url):
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    collector.record_serialization_sync("a.prt", "part", "success", 1.0, occurred_at=epoch)
    assert collector.flush(10)
    assert db_rows(libpq_url, "SELECT occurred_at FROM serialmon.serialization_events") == [(epoch,)]


# (details, text the ValueError must contain)
INVALID_DETAILS = [
    ({"x": float("nan")}, "NaN"),
    ({"x": math.inf}, "Infinity"),
    ({"nested": [1, {"deep": -math.inf}]}, "-Infinity"),
    ({"x": np.float64("nan")}, "NaN"),
    ({"x": "a\x00b"}, "NUL"),
    ({"a\x00": 1}, "NUL"),
    ({"x": ["\ud800"]}, "unpaired surrogate"),
    ({"x": "y" * 70_000}, "65,536 bytes"),
    ({"x": object()}, "not JSON serializable"),
]


def test_batch_details_rejected_before_queueing(collector, libpq_url):
    for details, expected in INVALID_DETAILS:
        with pytest.raises(ValueError) as raised:
            collector.start_batch_job(name="bad", details=details)
        assert "Invalid details=" in str(raised.value), details
        assert expected in str(raised.value), f"{details!r}: {raised.value}"
        assert len(str(raised.value)) <= 400, details
        with pytest.raises(ValueError, match="Invalid details="):
            collector.update_batch_job("b-1", details=details)
    assert collector.get_stats()["running_batches"] == []

    # Nothing was queued: the writer never started, and the database has no batch row.
    assert collector.get_stats()["writer"]["database"] == "not started"
    batch_id = collector.start_batch_job(name="good", details={"limit": 1.5, "text": "y" * 65_000})
    assert collector.flush(10)
    assert db_rows(libpq_url, "SELECT batch_id, name, details->>'limit' FROM serialmon.batch_jobs") == [
        (batch_id, "good", "1.5")
    ]


def test_batch_details_at_size_bound_are_stored(collector, libpq_url):
    details = {"x": ""}
    details["x"] = "y" * (65_536 - len(json.dumps(details, separators=(",", ":"))))
    batch_id = collector.start_batch_job(details=details)
    with pytest.raises(ValueError, match="65,536 bytes"):
        collector.update_batch_job(batch_id, details={"x": details["x"] + "y"})
    assert collector.flush(10)
    assert db_rows(libpq_url, "SELECT details FROM serialmon.batch_jobs") == [(details,)]


def test_writer_stats_have_every_key_before_start(collector):
    before = collector.get_stats()["writer"]
    assert before == {
        "database": "not started", "last_error": None, "queued": 0, "persisted": 0, "duplicates": 0,
        "spilled": 0, "replayed": 0, "rejected": 0, "dropped": 0, "journal_dir": None,
    }
    collector.record_serialization_sync("a.prt", "part", "success", 1.0)
    assert collector.flush(10)
    after = collector.get_stats()["writer"]
    assert list(after) == list(before)
    assert after["persisted"] == 1


def test_writer_stats_kept_after_close(collector):
    for index in range(5):
        collector.record_serialization_sync(f"m{index}.prt", "part", "success", 1.0)
    assert collector.close(30)
    closed = collector.get_stats()["writer"]
    assert closed["persisted"] == 5
    assert closed["database"] == "ok"
    assert closed["queued"] == 0

def test_record_stores_every_field(collector, libpq_url):
    occurred = datetime(2024, 5, 1, 12, 30, 15, 250000)  # naive: taken as UTC
    event_id = collector.record_serialization_sync(
        "housing.asm", "assembly", "failure", 61.25, 72.5, "housings",
        unrecoverable_unknown=3, feature_count=140, batch_id="b-1", error=KeyError("feature 42"),
        tags=["creo", "large"], occurred_at=occurred,
    )
    assert collector.flush(10)
    row = db_rows(libpq_url, """
        SELECT model_name, model_type, status, processing_time_sec, element_coverage, category,
               unrecoverable_unknown, feature_count, batch_id, error_type, error_message, tags,
               occurred_at, pid, worker_id
        FROM serialmon.serialization_events WHERE event_id = %s""", (event_id,))[0]
    assert row[:11] == (
        "housing.asm", "assembly", "failure", 61.25, 72.5, "housings", 3, 140, "b-1", "KeyError", "'feature 42'",
    )
    assert row[11] == ["creo", "large"]
    assert row[12] == occurred.replace(tzinfo=timezone.utc)
    assert row[13] == os.getpid()
    assert row[14] == collector.worker_id


def test_error_string_has_no_type(collector, libpq_url):
    collector.record_serialization_sync("a.prt", "part", "failure", 1.0, error="Creo crashed")
    assert collector.flush(10)
    assert db_rows(libpq_url, "SELECT error_type, error_message FROM serialmon.serialization_events") == [
        (None, "Creo crashed")
    ]


def test_aware_occurred_at_is_converted_to_utc(collector, libpq_url):
    occurred = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    collector.record_serialization_sync("a.prt", "part", "success", 1.0, occurred_at=occurred)
    assert collector.flush(10)
    stored = db_rows(libpq_url, "SELECT occurred_at FROM serialmon.serialization_events")[0][0]
    assert stored == datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def test_track_records_failure_and_reraises(collector, libpq_url):
    with pytest.raises(RuntimeError, match="regeneration failed"):
        with collector.track("crank.prt", "part", category="shafts") as tracker:
            time.sleep(0.02)
            raise RuntimeError("regeneration failed")
    assert tracker.status == "failure"
    assert tracker.processing_time_sec >= 0.02
    assert collector.flush(10)
    rows = db_rows(libpq_url, "SELECT status, error_type, error_message, processing_time_sec, category "
                              "FROM serialmon.serialization_events")
    assert len(rows) == 1
    assert rows[0][:3] == ("failure", "RuntimeError", "regeneration failed")
    assert 0.02 <= rows[0][3] < 5
    assert rows[0][4] == "shafts"
    assert collector.get_stats()["totals"]["failure"] == 1


async def test_async_track_records_failure_and_reraises(collector, libpq_url):
    with pytest.raises(ValueError, match="bad units"):
        async with collector.track("cover.prt", "part") as tracker:
            await asyncio.sleep(0.01)
            raise ValueError("bad units")
    assert tracker.event_id is not None
    assert collector.flush(10)
    rows = db_rows(libpq_url, "SELECT status, error_type, error_message FROM serialmon.serialization_events")
    assert rows == [("failure", "ValueError", "bad units")]


async def test_async_track_records_success_with_quality(collector, libpq_url):
    quality = {"total_features": 40, "features_with_elements": 30, "element_coverage": 75.0,
               "group_features": 0, "analysis_features": 0, "recoverable_unknown": 0, "unrecoverable_unknown": 2}
    async with collector.track("plate.prt", "part", category="plates") as tracker:
        tracker.set_quality(quality)
    assert collector.flush(10)
    rows = db_rows(libpq_url, "SELECT status, element_coverage, unrecoverable_unknown, feature_count "
                              "FROM serialmon.serialization_events")
    assert rows == [("success", 75.0, 2, 40)]


def test_track_skip_and_attached_figures(collector, libpq_url):
    with collector.track("old.prt", "part") as tracker:
        tracker.skip("already serialized")
    with collector.track("new.prt", "part") as tracker:
        tracker.element_coverage = 55.5
        tracker.feature_count = 12
        tracker.unrecoverable_unknown = 0
    assert collector.flush(10)
    rows = db_rows(libpq_url, "SELECT model_name, status, error_message, element_coverage, feature_count "
                              "FROM serialmon.serialization_events ORDER BY model_name")
    assert rows == [("new.prt", "success", None, 55.5, 12), ("old.prt", "skipped", "already serialized", None, None)]


def test_track_interrupt_records_nothing(collector):
    with pytest.raises(KeyboardInterrupt):
        with collector.track("a.prt", "part"):
            raise KeyboardInterrupt
    assert collector.get_stats()["totals"]["recorded"] == 0
    assert collector.get_stats()["current_model"] is None


def test_track_sets_current_model(collector):
    with collector.track("inside.prt", "part"):
        assert collector.get_stats()["current_model"] == "inside.prt"
    assert collector.get_stats()["current_model"] == "inside.prt"  # now the last recorded


async def test_cancelled_track_resets_current_model(collector):
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            async with collector.track("timeout.prt", "part"):
                await asyncio.sleep(10)
    stats = collector.get_stats()
    assert stats["current_model"] is None
    assert stats["totals"]["recorded"] == 0

    collector.record_serialization_sync("done.prt", "part", "success", 1.0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(_track_forever(collector, "stuck.prt"), 0.05)
    assert collector.get_stats()["current_model"] == "done.prt"
    assert collector._heartbeat_info().current_model == "done.prt"


async def _track_forever(collector, model_name):
    async with collector.track(model_name, "part"):
        await asyncio.sleep(10)


def test_current_model_is_latest_open_block(collector):
    outer = collector.track("outer.asm", "assembly")
    inner = collector.track("inner.prt", "part")
    with outer:
        inner.__enter__()
        assert collector.get_stats()["current_model"] == "inner.prt"
        assert inner.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None) is False
        assert collector.get_stats()["current_model"] == "outer.asm"
    assert collector.get_stats()["current_model"] == "outer.asm"
    assert collector.get_stats()["totals"]["recorded"] == 1


async def test_timeout_inside_track_records_failure(collector, libpq_url):
    with pytest.raises(TimeoutError):
        async with collector.track("slow.prt", "part") as tracker:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(10)
    assert tracker.status == "failure"
    with pytest.raises(TimeoutError):
        async with collector.track("slower.prt", "part") as waited:
            await asyncio.wait_for(asyncio.sleep(10), 0.05)
    assert waited.status == "failure"
    assert collector.get_stats()["totals"]["failure"] == 2
    assert collector.get_stats()["current_model"] == "slower.prt"
    assert collector.flush(10)
    rows = db_rows(libpq_url, "SELECT model_name, status, error_type FROM serialmon.serialization_events "
                              "ORDER BY model_name")
    assert rows == [("slow.prt", "failure", "TimeoutError"), ("slower.prt", "failure", "TimeoutError")]


async def test_timeout_outside_track_recorded_by_caller(collector, libpq_url):
    tracker = collector.track("slow.prt", "part")
    with pytest.raises(TimeoutError):
        try:
            async with asyncio.timeout(0.05):
                async with tracker:
                    await asyncio.sleep(10)
        except TimeoutError:
            await collector.record_serialization(
                "slow.prt", "part", "failure", tracker.processing_time_sec, error="timed out after 0.05 s"
            )
            raise
    assert tracker.status is None  # the block itself recorded nothing
    assert collector.flush(10)
    rows = db_rows(libpq_url, "SELECT status, error_message, processing_time_sec FROM serialmon.serialization_events")
    assert len(rows) == 1
    assert rows[0][:2] == ("failure", "timed out after 0.05 s")
    assert 0.05 <= rows[0][2] < 5


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("__str__ is broken")


def test_track_records_unprintable_exception(collector, libpq_url):
    error = Unprintable("regeneration failed")
    with pytest.raises(Unprintable) as raised:
        with collector.track("crank.prt", "part") as tracker:
            raise error
    assert raised.value is error
    assert tracker.status == "failure"
    collector.record_serialization_sync("direct.prt", "part", "failure", 1.0, error=Unprintable())
    assert collector.flush(10)
    rows = db_rows(libpq_url, "SELECT model_name, error_type, error_message FROM serialmon.serialization_events "
                              "ORDER BY model_name")
    assert rows == [
        ("crank.prt", "Unprintable", "<unprintable Unprintable>"),
        ("direct.prt", "Unprintable", "<unprintable Unprintable>"),
    ]


def test_track_never_masks_pipeline_exception(collector, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("collector bug")

    monkeypatch.setattr(collector, "record_serialization_sync", broken)
    error = KeyError("feature 42")
    with pytest.raises(KeyError) as raised:
        with collector.track("a.prt", "part"):
            raise error
    assert raised.value is error
    assert collector.get_stats()["current_model"] is None


def test_get_stats_match_independent_computation(collector):
    rng = random.Random(7)
    events = []
    for index in range(3000):
        status = rng.choices(["success", "failure", "skipped"], weights=[80, 15, 5])[0]
        events.append({
            "model_name": f"m{index}.prt",
            "model_type": rng.choice(["part", "assembly"]),
            "status": status,
            "processing_time_sec": rng.lognormvariate(3.5, 1.0),
            "element_coverage": None if index % 10 == 0 else rng.uniform(0, 100),
            "category": rng.choice(["brackets", "shafts", None]),
            "unrecoverable_unknown": rng.choice([None, 0, 0, 1, 4]),
        })
    for event in events:
        collector.record_serialization_sync(**event)
    stats = collector.get_stats(minutes=5)

    totals = stats["totals"]
    for status in ("success", "failure", "skipped"):
        assert totals[status] == sum(e["status"] == status for e in events), status
    for model_type in ("part", "assembly"):
        for status in ("success", "failure", "skipped"):
            expected = sum(e["model_type"] == model_type and e["status"] == status for e in events)
            assert totals["by_type"][model_type][status] == expected, (model_type, status)
    assert totals["by_category"]["(none)"]["total"] == sum(e["category"] is None for e in events)
    assert totals["by_category"]["shafts"]["failure"] == sum(
        e["category"] == "shafts" and e["status"] == "failure" for e in events
    )
    assert totals["recorded"] == 3000

    attempts = [e for e in events if e["status"] != "skipped"]
    failures = sum(e["status"] == "failure" for e in events)
    assert stats["failure_rate"] == pytest.approx(failures / len(attempts))
    assert stats["success_rate"] == pytest.approx(1 - failures / len(attempts))

    times = np.array([e["processing_time_sec"] for e in attempts])
    summary = stats["processing_time_sec"]
    assert summary["count"] == len(times)
    assert summary["mean"] == pytest.approx(times.mean())
    assert summary["min"] == pytest.approx(times.min())
    assert summary["max"] == pytest.approx(times.max())
    for name, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        exact = np.percentile(times, q, method="lower")
        assert abs(summary[name] - exact) / exact <= 0.01, (name, summary[name], exact)
        assert stats["window"]["processing_time_sec"][name] == summary[name], name

    coverages = np.array([e["element_coverage"] for e in events if e["element_coverage"] is not None])
    coverage = stats["coverage"]
    assert coverage["count"] == len(coverages)
    assert coverage["unknown"] == len(events) - len(coverages)
    assert coverage["mean"] == pytest.approx(coverages.mean())
    expected_histogram = np.histogram(np.minimum(coverages // 10, 9), bins=np.arange(11))[0]
    assert list(coverage["histogram"].values()) == expected_histogram.tolist()
    assert list(coverage["histogram"]) == list(COVERAGE_BUCKETS)
    assert coverage["below_warning"] == int((coverages < 80).sum())
    assert coverage["below_critical"] == int((coverages < 50).sum())
    assert stats["window"]["coverage"]["below_warning"] == coverage["below_warning"]

    unrecoverable = [e["unrecoverable_unknown"] for e in events if e["unrecoverable_unknown"] is not None]
    assert stats["unrecoverable_unknown"] == {
        "total": sum(unrecoverable),
        "models_with_any": sum(value > 0 for value in unrecoverable),
        "models_reported": len(unrecoverable),
    }

    window = stats["window"]
    assert window["minutes"] == 5
    assert window["recorded"] == 3000
    assert window["failure"] == failures
    # Everything was recorded within the window, so each rate is count / uptime (at least 1 s).
    for rate in (window["models_per_hour"], stats["throughput_per_hour"]["last_5_min"],
                 stats["throughput_per_hour"]["last_60_min"], stats["throughput_per_hour"]["run"]):
        assert 3000 * 3600 / (stats["uptime_sec"] + 5) < rate <= 3000 * 3600, rate


def test_failure_rate_ignores_skipped(collector):
    for status in ["success"] * 3 + ["failure"] + ["skipped"] * 6:
        collector.record_serialization_sync("a.prt", "part", status, 0.0 if status == "skipped" else 10.0)
    stats = collector.get_stats()
    assert stats["failure_rate"] == 0.25
    assert stats["success_rate"] == 0.75
    assert stats["processing_time_sec"]["count"] == 4
    assert stats["processing_time_sec"]["p50"] == pytest.approx(10.0, rel=0.01)


def test_empty_stats_have_no_rates(collector):
    stats = collector.get_stats()
    assert stats["failure_rate"] is None
    assert stats["processing_time_sec"]["p99"] is None
    assert stats["window"]["processing_time_sec"]["count"] == 0
    assert stats["coverage"]["mean"] is None


def test_get_stats_rejects_bad_window(collector):
    with pytest.raises(ValueError, match="Invalid minutes=0: expected an integer from 1 to 360"):
        collector.get_stats(minutes=0)
    with pytest.raises(ValueError, match="Invalid minutes=361"):
        collector.get_stats(minutes=361)


def test_categories_are_capped(collector):
    for index in range(1005):
        collector.record_serialization_sync("a.prt", "part", "success", 1.0, category=f"c{index}")
    totals = collector.get_stats()["totals"]
    assert len(totals["by_category"]) == 1001
    assert totals["by_category"][OTHER_CATEGORY]["total"] == 5
    assert totals["categories_capped"] is True


def test_export_json_round_trips(collector):
    collector.record_serialization_sync(**VALID)
    exported = json.loads(collector.export_json(minutes=10))
    assert exported["totals"]["success"] == 1
    assert exported["window"]["minutes"] == 10
    assert exported["worker_id"] == collector.worker_id


def test_batch_counters_equal_event_counts(collector, libpq_url):
    batch_id = collector.start_batch_job(total_models=50, name="nightly", details={"source": "test"})
    statuses = ["success"] * 30 + ["failure"] * 12 + ["skipped"] * 8
    random.Random(3).shuffle(statuses)
    for index, status in enumerate(statuses):
        collector.record_serialization_sync(f"m{index}.prt", "part", status, 2.0)  # batch_id by default
    collector.record_serialization_sync("other.prt", "part", "success", 1.0, batch_id="another-batch")
    collector.update_batch_job(batch_id, total_models=55, details={"host_group": "a"})
    collector.finish_batch_job(batch_id)
    collector.record_serialization_sync("after.prt", "part", "success", 1.0)  # no batch running any more
    assert collector.flush(10)

    row = db_rows(libpq_url, """
        SELECT name, status, total_models, processed, succeeded, failed, skipped, details, finished_at IS NOT NULL
        FROM serialmon.batch_jobs WHERE batch_id = %s""", (batch_id,))[0]
    counted = dict(db_rows(libpq_url, """
        SELECT status, count(*) FROM serialmon.serialization_events WHERE batch_id = %s GROUP BY status""",
        (batch_id,)))
    assert row[:3] == ("nightly", "completed", 55)
    assert row[3] == 50
    assert row[4:7] == (counted["success"], counted["failure"], counted["skipped"])
    assert row[4:7] == (30, 12, 8)
    assert row[7] == {"source": "test", "host_group": "a"}
    assert row[8] is True
    assert db_rows(libpq_url, "SELECT processed FROM serialmon.batch_jobs WHERE batch_id = 'another-batch'") == [(1,)]
    assert db_rows(libpq_url, "SELECT batch_id FROM serialmon.serialization_events WHERE model_name = 'after.prt'") == [
        (None,)
    ]


def test_batch_validation(collector):
    with pytest.raises(ValueError, match="Invalid total_models=-5"):
        collector.start_batch_job(total_models=-5)
    with pytest.raises(ValueError, match="Did you mean 'completed'"):
        collector.finish_batch_job("b", status="done")
    with pytest.raises(ValueError, match="Invalid details="):
        collector.start_batch_job(details={"when": object()})
    assert collector.get_stats()["running_batches"] == []


def test_batch_start_never_blocks_when_database_down(settings, tmp_path):
    down = settings.model_copy(update={"database_url": _unreachable_url(), "data_dir": tmp_path / "down"})
    with SerializeMetricsCollector(down) as collector:
        batch_id = collector.start_batch_job(total_models=3)
        collector.record_serialization_sync("a.prt", "part", "success", 1.0)
        assert collector.flush(10)
        assert collector.get_stats()["writer"]["database"] == "unavailable"
        assert collector.get_stats()["running_batches"] == [batch_id]
    lines = [json.loads(line) for path in (tmp_path / "down" / "journal").rglob("*.jsonl")
             for line in path.read_text().splitlines()]
    assert {(line["kind"], line.get("op")) for line in lines} == {("batch", "start"), ("event", None)}
    assert all(line["batch_id"] == batch_id for line in lines)


def _unreachable_url():
    from pydantic import SecretStr

    return SecretStr("postgresql://serialmon@127.0.0.1:1/nothing")


def _record_in_child(count: int, prefix: str) -> None:
    """Run in a forked child: record through the process-wide collector and return (closed by its finalizer)."""
    collector = get_serialize_metrics_collector()
    for index in range(count):
        collector.record_serialization_sync(f"{prefix}-{index}.prt", "part", "success", 1.0 + index % 7)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
def test_threads_and_processes_store_once(initialized, libpq_url):
    settings = initialized.model_copy(update={"writer_flush_interval_sec": 0.1, "heartbeat_interval_sec": 0.2})
    from serialmon.config import set_settings

    set_settings(settings)
    reset_serialize_metrics_collector()
    parent = get_serialize_metrics_collector()
    try:
        def record(thread: int) -> None:
            for index in range(750):
                parent.record_serialization_sync(f"t{thread}-{index}.prt", "assembly", "success", 0.5)

        threads = [threading.Thread(target=record, args=(number,)) for number in range(8)]
        context = multiprocessing.get_context("fork")
        processes = [context.Process(target=_record_in_child, args=(1000, f"p{number}")) for number in range(4)]
        for worker in threads + processes:
            worker.start()
        for worker in threads + processes:
            worker.join(120)
        assert [process.exitcode for process in processes] == [0, 0, 0, 0]
        assert parent.flush(30)
        assert parent.get_stats()["totals"]["recorded"] == 6000
    finally:
        reset_serialize_metrics_collector()

    total, distinct = db_rows(libpq_url, "SELECT count(*), count(DISTINCT event_id) FROM serialmon.serialization_events")[0]
    assert (total, distinct) == (10_000, 10_000)
    per_worker = dict(db_rows(libpq_url, "SELECT worker_id, count(*) FROM serialmon.serialization_events GROUP BY 1"))
    assert sorted(per_worker.values()) == [1000, 1000, 1000, 1000, 6000]
    assert len({worker_id.split(":")[1] for worker_id in per_worker}) == 5  # five processes, five pids
    stopped = db_rows(libpq_url, "SELECT count(*) FROM serialmon.worker_heartbeats WHERE stopped_at IS NOT NULL")
    assert stopped == [(5,)]


def test_singleton_is_shared_and_resettable(initialized):
    reset_serialize_metrics_collector()
    try:
        first = get_serialize_metrics_collector()
        seen = []
        threads = [threading.Thread(target=lambda: seen.append(get_serialize_metrics_collector())) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(item is first for item in seen)
        reset_serialize_metrics_collector()
        assert get_serialize_metrics_collector() is not first
    finally:
        reset_serialize_metrics_collector()


def test_recording_after_close_starts_new_writer(collector, libpq_url):
    collector.record_serialization_sync("a.prt", "part", "success", 1.0)
    assert collector.close()
    collector.record_serialization_sync("b.prt", "part", "success", 1.0)
    assert collector.flush(10)
    assert event_count(libpq_url) == 2


async def test_db_snapshot_counts_flushed_events(collector):
    pytest.importorskip("serialmon.readmodel")
    for status in ("success", "success", "failure", "skipped"):
        await collector.record_serialization("a.prt", "part", status, 3.0)
    assert collector.flush(10)
    snapshot = await collector.get_db_snapshot(minutes=60)
    assert snapshot["by_status"] == {"success": 2, "failure": 1, "skipped": 1}


def test_pid_check_without_fork_hook(collector, monkeypatch):
    import serialmon.collector as module

    collector.record_serialization_sync("parent.prt", "part", "success", 1.0)
    parent_worker = collector.worker_id
    parent_writer = collector._writer
    monkeypatch.setattr(module, "_HAS_FORK_HOOK", False)
    monkeypatch.setattr(collector, "_pid", -1)  # as if this object had been inherited by a new process
    collector.record_serialization_sync("child.prt", "part", "success", 1.0)
    parent_writer.close()  # in a real child that thread would not exist; here it must be stopped
    stats = collector.get_stats()
    assert collector.worker_id != parent_worker
    assert stats["pid"] == os.getpid()
    assert stats["totals"]["recorded"] == 1
    assert stats["current_model"] == "child.prt"
