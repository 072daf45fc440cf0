"""Live figures of one process: counts, processing-time percentiles, rates and coverage.

`SerializeMetricsCollector.get_stats()` reads a `LiveStats`. Memory stays
bounded whatever the number of events. Counters are plain integers. Processing
times go into DDSketch quantile sketches (relative accuracy 1 %), one per
minute in a ring of `RING_MINUTES` minutes, and a minute that leaves the ring
is merged into one archive sketch that keeps the whole-run figures.

Windows are by recording time (the moment `add()` runs), not by the event's
`occurred_at`, because these are the figures of the running process.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from ddsketch import DDSketch

logger = logging.getLogger(__name__)

RELATIVE_ACCURACY = 0.01
RING_MINUTES = 360  # the ring's length, and so the longest window that get_stats() returns
MAX_CATEGORIES = 1000
OTHER_CATEGORY = "(other)"  # categories past MAX_CATEGORIES are counted here
NO_CATEGORY = "(none)"
STATUSES = ("success", "failure", "skipped")
MODEL_TYPES = ("part", "assembly")
COVERAGE_BUCKETS = tuple(f"{low}-{low + 10}" for low in range(0, 100, 10))
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
THROUGHPUT_WINDOWS_MIN = (5, 60)

_SUCCESS, _FAILURE, _SKIPPED = range(3)
_STATUS_INDEX = {"success": _SUCCESS, "failure": _FAILURE, "skipped": _SKIPPED}


class _Minute:
    """Figures of one minute of recording time."""

    __slots__ = (
        "minute", "counts", "times", "time_min", "time_max",
        "coverage_count", "coverage_sum", "below_warning", "below_critical",
    )

    def __init__(self, minute: int) -> None:
        self.minute = minute
        self.counts = [0, 0, 0]  # success, failure, skipped
        self.times = DDSketch(relative_accuracy=RELATIVE_ACCURACY)
        self.time_min = math.inf
        self.time_max = -math.inf
        self.coverage_count = 0
        self.coverage_sum = 0.0
        self.below_warning = 0
        self.below_critical = 0


class LiveStats:
    """Thread-safe in-memory figures of the events one collector recorded.

    Processing-time percentiles and the time mean cover attempts only (success
    and failure): a skipped model was not serialized, and its near-zero time
    would pull the percentiles down. Failure rate is failure / (success +
    failure), so skipped models count in neither rate.
    """

    def __init__(
        self,
        *,
        coverage_warning: float = 80.0,
        coverage_critical: float = 50.0,
        max_categories: int = MAX_CATEGORIES,
        clock: Any = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.started_at = clock()
        self.coverage_warning = coverage_warning
        self.coverage_critical = coverage_critical
        self._max_categories = max_categories
        self._overflow_logged = False
        self.recorded = 0  # events counted, read without the lock by the heartbeat

        self._ring: list[_Minute | None] = [None] * RING_MINUTES
        self._current: _Minute | None = None
        self._archive = DDSketch(relative_accuracy=RELATIVE_ACCURACY)  # minutes that left the ring
        self._archive_min = math.inf
        self._archive_max = -math.inf

        self._type_counts = {model_type: [0, 0, 0] for model_type in MODEL_TYPES}
        self._category_counts: dict[str, list[int]] = {}
        self._time_sum = 0.0
        self._coverage_histogram = [0] * len(COVERAGE_BUCKETS)
        self._coverage_sum = 0.0
        self._coverage_unknown = 0
        self._below_warning = 0
        self._below_critical = 0
        self._unrecoverable_total = 0
        self._unrecoverable_models = 0
        self._unrecoverable_reported = 0

    # Recording

    def add(
        self,
        model_type: str,
        status: str,
        processing_time_sec: float,
        element_coverage: float | None,
        category: str | None,
        unrecoverable_unknown: int | None,
        now: float | None = None,
    ) -> None:
        """Count one validated event; `now` is the recording time in seconds since the epoch."""
        now = self._clock() if now is None else now
        index = _STATUS_INDEX[status]
        minute = int(now // 60)
        category = NO_CATEGORY if category is None else category

        with self._lock:
            bucket = self._current
            if bucket is None or bucket.minute != minute:
                bucket = self._bucket_for(minute)

            self.recorded += 1
            bucket.counts[index] += 1
            self._type_counts[model_type][index] += 1
            counts = self._category_counts.get(category)
            if counts is None:
                counts = self._new_category(category)
            counts[index] += 1

            if index != _SKIPPED:
                bucket.times.add(processing_time_sec)
                self._time_sum += processing_time_sec
                if processing_time_sec < bucket.time_min:
                    bucket.time_min = processing_time_sec
                if processing_time_sec > bucket.time_max:
                    bucket.time_max = processing_time_sec

            if element_coverage is None:
                self._coverage_unknown += 1
            else:
                self._coverage_histogram[min(int(element_coverage // 10), 9)] += 1
                self._coverage_sum += element_coverage
                bucket.coverage_count += 1
                bucket.coverage_sum += element_coverage
                if element_coverage < self.coverage_warning:
                    self._below_warning += 1
                    bucket.below_warning += 1
                if element_coverage < self.coverage_critical:
                    self._below_critical += 1
                    bucket.below_critical += 1

            if unrecoverable_unknown is not None:
                self._unrecoverable_reported += 1
                self._unrecoverable_total += unrecoverable_unknown
                if unrecoverable_unknown > 0:
                    self._unrecoverable_models += 1

    def _bucket_for(self, minute: int) -> _Minute:
        """Return the bucket of `minute`, evicting the minute that used its slot (lock held)."""
        current = self._current
        if current is not None and minute < current.minute:
            # The wall clock went back: keep counting in the newest minute.
            return current

        slot = minute % RING_MINUTES
        old = self._ring[slot]
        if old is not None:
            self._archive.merge(old.times)
            self._archive_min = min(self._archive_min, old.time_min)
            self._archive_max = max(self._archive_max, old.time_max)
        bucket = _Minute(minute)
        self._ring[slot] = bucket
        self._current = bucket
        return bucket

    def _new_category(self, category: str) -> list[int]:
        if len(self._category_counts) < self._max_categories:
            counts = self._category_counts[category] = [0, 0, 0]
            return counts
        if not self._overflow_logged:
            self._overflow_logged = True
            logger.warning(
                "more than %d distinct categories recorded; further new categories are counted as %r",
                self._max_categories, OTHER_CATEGORY,
            )
        counts = self._category_counts.get(OTHER_CATEGORY)
        if counts is None:
            counts = self._category_counts[OTHER_CATEGORY] = [0, 0, 0]
        return counts

    # Reading

    def snapshot(self, minutes: int = 60, now: float | None = None) -> dict[str, Any]:
        """Return whole-run figures and those of the last `minutes` minutes (1 to `RING_MINUTES`).

        Raises `ValueError` for a window outside that range. The lock is held
        only to copy the counters and the current minute's sketch. Finished
        minutes never change, so they are merged after the lock is released.
        """
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= RING_MINUTES:
            raise ValueError(f"Invalid minutes={minutes!r}: expected an integer from 1 to {RING_MINUTES}")
        now = self._clock() if now is None else now
        newest = int(now // 60)

        with self._lock:
            buckets = [_copy_minute(bucket) if bucket is self._current else bucket
                       for bucket in self._ring if bucket is not None]
            run_times = _copy_sketch(self._archive)
            run_min, run_max = self._archive_min, self._archive_max
            totals = self._totals()
            coverage = self._coverage()
            time_sum = self._time_sum
            unrecoverable = {
                "total": self._unrecoverable_total,
                "models_with_any": self._unrecoverable_models,
                "models_reported": self._unrecoverable_reported,
            }

        for bucket in buckets:
            run_times.merge(bucket.times)
            run_min = min(run_min, bucket.time_min)
            run_max = max(run_max, bucket.time_max)
        throughput = {
            f"last_{span}_min": _rate(buckets, newest - span + 1, now, self.started_at)
            for span in THROUGHPUT_WINDOWS_MIN
        }
        throughput["run"] = totals["recorded"] / max(now - self.started_at, 1.0) * 3600.0
        attempts = totals["success"] + totals["failure"]
        return {
            "started_at": self.started_at,
            "uptime_sec": now - self.started_at,
            "totals": totals,
            "success_rate": totals["success"] / attempts if attempts else None,
            "failure_rate": totals["failure"] / attempts if attempts else None,
            "processing_time_sec": _time_summary(run_times, run_min, run_max, time_sum),
            "throughput_per_hour": throughput,
            "coverage": coverage,
            "unrecoverable_unknown": unrecoverable,
            "window": _window(buckets, newest - minutes + 1, now, self.started_at, minutes),
        }

    def _totals(self) -> dict[str, Any]:
        by_type = {model_type: _status_counts(counts) for model_type, counts in self._type_counts.items()}
        by_category = {category: _status_counts(counts) for category, counts in sorted(self._category_counts.items())}
        totals: dict[str, Any] = {status: sum(by_type[t][status] for t in MODEL_TYPES) for status in STATUSES}
        totals["recorded"] = totals["success"] + totals["failure"] + totals["skipped"]
        totals["by_type"] = by_type
        totals["by_category"] = by_category
        totals["categories_capped"] = OTHER_CATEGORY in self._category_counts
        return totals

    def _coverage(self) -> dict[str, Any]:
        known = sum(self._coverage_histogram)
        return {
            "count": known,
            "unknown": self._coverage_unknown,
            "mean": self._coverage_sum / known if known else None,
            "histogram": dict(zip(COVERAGE_BUCKETS, self._coverage_histogram)),
            "below_warning": self._below_warning,
            "below_critical": self._below_critical,
            "warning_percent": self.coverage_warning,
            "critical_percent": self.coverage_critical,
        }


def _status_counts(counts: list[int]) -> dict[str, int]:
    return {"success": counts[0], "failure": counts[1], "skipped": counts[2], "total": sum(counts)}


def _copy_minute(bucket: _Minute) -> _Minute:
    copy = _Minute(bucket.minute)
    copy.counts = list(bucket.counts)
    copy.times.merge(bucket.times)
    for name in ("time_min", "time_max", "coverage_count", "coverage_sum", "below_warning", "below_critical"):
        setattr(copy, name, getattr(bucket, name))
    return copy


def _copy_sketch(sketch: DDSketch) -> DDSketch:
    copy = DDSketch(relative_accuracy=RELATIVE_ACCURACY)
    copy.merge(sketch)
    return copy


def _time_summary(times: DDSketch, low: float, high: float, total: float | None) -> dict[str, Any]:
    """Return count, mean, min, max and percentiles in seconds; quantiles are clamped to [min, max]."""
    count = int(times.count)
    if count == 0:
        return {"count": 0, "mean": None, "min": None, "max": None, **{name: None for name, _ in QUANTILES}}
    summary: dict[str, Any] = {
        "count": count,
        "mean": (total if total is not None else times.sum) / count,
        "min": low,
        "max": high,
    }
    for name, quantile in QUANTILES:
        summary[name] = min(max(times.get_quantile_value(quantile), low), high)
    return summary


def _span_sec(first_minute: int, now: float, started_at: float) -> float:
    """Return the seconds a window covers: from its first minute, or the collector's start when later, to now.

    A window that began before the collector started is not diluted by the
    minutes in which nothing could have been recorded.
    """
    return max(now - max(first_minute * 60.0, started_at), 1.0)


def _rate(buckets: list[_Minute], first_minute: int, now: float, started_at: float) -> float:
    """Return models per hour recorded in the buckets from `first_minute` on."""
    recorded = sum(sum(bucket.counts) for bucket in buckets if bucket.minute >= first_minute)
    return recorded / _span_sec(first_minute, now, started_at) * 3600.0


def _window(buckets: list[_Minute], first_minute: int, now: float, started_at: float, minutes: int) -> dict[str, Any]:
    """Return the figures of the buckets from `first_minute` on."""
    inside = [bucket for bucket in buckets if bucket.minute >= first_minute]
    counts = [sum(bucket.counts[index] for bucket in inside) for index in range(3)]
    times = DDSketch(relative_accuracy=RELATIVE_ACCURACY)
    low, high = math.inf, -math.inf
    for bucket in inside:
        times.merge(bucket.times)
        low = min(low, bucket.time_min)
        high = max(high, bucket.time_max)
    coverage_count = sum(bucket.coverage_count for bucket in inside)
    coverage_sum = sum(bucket.coverage_sum for bucket in inside)

    recorded = sum(counts)
    attempts = counts[_SUCCESS] + counts[_FAILURE]
    return {
        "minutes": minutes,
        "recorded": recorded,
        "success": counts[_SUCCESS],
        "failure": counts[_FAILURE],
        "skipped": counts[_SKIPPED],
        "success_rate": counts[_SUCCESS] / attempts if attempts else None,
        "failure_rate": counts[_FAILURE] / attempts if attempts else None,
        "models_per_hour": recorded / _span_sec(first_minute, now, started_at) * 3600.0,
        "processing_time_sec": _time_summary(times, low, high, None),
        "coverage": {
            "count": coverage_count,
            "mean": coverage_sum / coverage_count if coverage_count else None,
            "below_warning": sum(bucket.below_warning for bucket in inside),
            "below_critical": sum(bucket.below_critical for bucket in inside),
        },
    }
