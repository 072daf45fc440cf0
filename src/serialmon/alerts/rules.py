"""Alert rules: what each one measures, over which window, and when it fires.

| rule | signal | window | fires (defaults) | clears |
|---|---|---|---|---|
| `low_element_coverage` | mean coverage of successful models, latest event per model | `alert_window_minutes` (60) | warning < 80 %, critical < 50 %, with >= 10 models | >= threshold + 2 points |
| `high_failure_rate` | failures / (successes + failures), skipped excluded | `alert_window_minutes` (60) | warning > 10 %, critical > 25 %, with >= 20 attempts | <= threshold - 2 points |
| `processing_stall` | running batch without events or heartbeat; worker without heartbeat | `stall_minutes` (15) | critical | activity again, or batch finished |
| `coverage_anomaly` | a category's recent mean vs its own training history (z-score) | window vs the 7 days before it | warning when z < -3 and the mean dropped >= 5 points, with >= 30 historic events and >= 5 recent models | z >= -2 |
| database conditions | `serialmon.monitor.checks.check_all_conditions` | the monitor's | the monitor's severity | the monitor evaluates it and stops reporting it |

Each rule returns the conditions that are met now as `Finding`s. A rule that
cannot measure (too few models, no data) returns nothing, which clears its
alerts. A rule that raises, or that a `RuleResult` lists as not evaluated,
leaves its alerts unchanged. `firing` lists the rule's keys that are firing,
so the rule can apply the recovery margin (hysteresis) to them instead of the
firing threshold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from serialmon.alerts import signals
from serialmon.config import Settings
from serialmon.db import Names

logger = logging.getLogger(__name__)

WARNING = "warning"
CRITICAL = "critical"
SEVERITY_RANK = {WARNING: 1, CRITICAL: 2}

# (rule, scope) -> severity of the keys of one rule group that are firing now.
FiringKeys = dict[tuple[str, str], str]
ConditionSource = Callable[[Connection, Settings], Iterable[Any]]


@dataclass(frozen=True)
class Finding:
    """A condition that is met now, for one alert key (rule and scope).

    `value` and `threshold` are in the rule's own unit; `value_text` and
    `threshold_text` carry that unit for people. `details` is JSON-serializable
    and may hold a `table` ({"title", "columns", "rows"}) that the e-mail shows.
    """

    rule: str
    scope: str
    severity: str
    value: float | None
    threshold: float | None
    message: str
    value_text: str = ""
    threshold_text: str = ""
    details: dict = field(default_factory=dict)
    fix: str | None = None


@dataclass(frozen=True)
class Thresholds:
    """Warning and critical limits with a recovery margin (hysteresis).

    With `higher_is_worse`, a value above a limit crosses it; otherwise a value
    below it does. A key that is already firing at a severity keeps it until
    the value is back past the limit by `recovery_margin`, so a value hovering
    at a limit does not flap.
    """

    warning: float
    critical: float | None
    recovery_margin: float
    higher_is_worse: bool

    def _crosses(self, value: float, limit: float, margin: float) -> bool:
        if self.higher_is_worse:
            return value > limit - margin
        return value < limit + margin

    def classify(self, value: float, firing_severity: str | None) -> tuple[str, float] | None:
        """Return (severity, limit crossed) for `value`, or None when it is within limits."""
        if self.critical is not None:
            margin = self.recovery_margin if firing_severity == CRITICAL else 0.0
            if self._crosses(value, self.critical, margin):
                return CRITICAL, self.critical
        margin = self.recovery_margin if firing_severity is not None else 0.0
        if self._crosses(value, self.warning, margin):
            return WARNING, self.warning
        return None


@dataclass
class RuleResult:
    """Findings of a rule group, and its rules that could not be evaluated (their alerts keep their state)."""

    findings: list[Finding]
    not_evaluated: frozenset[str] = frozenset()


class Rule:
    """A rule group: evaluates one or more rules and returns the findings that hold now.

    `source` is stored with each alert key, so that a key of a group that ran
    and did not report it is known to be clear. `evaluate` returns the
    findings, or a `RuleResult` when some of its rules could not be evaluated.
    """

    source: str = ""
    rules: tuple[str, ...] = ()

    def evaluate(self, conn: Connection, settings: Settings, names: Names, now: datetime,
                 firing: FiringKeys) -> list[Finding] | RuleResult:
        raise NotImplementedError


def _window(settings: Settings) -> timedelta:
    return timedelta(minutes=settings.alert_window_minutes)


def _percent(value: float) -> str:
    return f"{value:.1f} %"


class LowCoverageRule(Rule):
    """Average element coverage of the models serialized in the window is low.

    Signal: mean `element_coverage` of successful events in the last
    `alert_window_minutes`, each model once with its latest value. Fires when
    below `coverage_warning` / `coverage_critical` with at least
    `min_models_for_coverage` models; clears at threshold +
    `coverage_recovery_margin` points. Scope: all models ("").
    """

    source = "low_element_coverage"
    rules = ("low_element_coverage",)

    def evaluate(self, conn, settings, names, now, firing):
        window = _window(settings)
        signal = signals.coverage_in_window(conn, names, now - window, now)
        if signal.models < settings.min_models_for_coverage or signal.mean_coverage is None:
            return []

        limits = Thresholds(
            warning=settings.coverage_warning,
            critical=settings.coverage_critical,
            recovery_margin=settings.coverage_recovery_margin,
            higher_is_worse=False,
        )
        verdict = limits.classify(signal.mean_coverage, firing.get(("low_element_coverage", "")))
        if verdict is None:
            return []

        severity, limit = verdict
        message = (
            f"Average element coverage is {_percent(signal.mean_coverage)} over {signal.models} models "
            f"in the last {settings.alert_window_minutes} min ({severity} below {_percent(limit)})."
        )
        table = {
            "title": "Models with the lowest coverage",
            "columns": ["model", "coverage", "category", "batch"],
            "rows": [
                [row["model_name"], _percent(row["element_coverage"]), row["category"] or "-", row["batch_id"] or "-"]
                for row in signal.worst
            ],
        }
        return [
            Finding(
                rule="low_element_coverage",
                scope="",
                severity=severity,
                value=signal.mean_coverage,
                threshold=limit,
                message=message,
                value_text=_percent(signal.mean_coverage),
                threshold_text=f"< {_percent(limit)}",
                details={"models": signal.models, "worst": signal.worst, "table": table},
                fix="Open the worst models' serialization logs; a new Creo build or feature type often causes it.",
            )
        ]


class FailureRateRule(Rule):
    """Share of failed serializations in the window is high.

    Signal: failures / (successes + failures) in the last
    `alert_window_minutes`; skipped models are not attempts. Fires above
    `failure_rate_warning` / `failure_rate_critical` with at least
    `min_attempts_for_failure_rate` attempts, so one failure out of one is not
    100 %; clears at threshold - `failure_rate_recovery_margin`. Scope: all
    models (""). The message groups failures by `error_type`.
    """

    source = "high_failure_rate"
    rules = ("high_failure_rate",)

    def evaluate(self, conn, settings, names, now, firing):
        signal = signals.failures_in_window(conn, names, now - _window(settings), now)
        if signal.attempts < settings.min_attempts_for_failure_rate or signal.failure_rate is None:
            return []

        limits = Thresholds(
            warning=settings.failure_rate_warning,
            critical=settings.failure_rate_critical,
            recovery_margin=settings.failure_rate_recovery_margin,
            higher_is_worse=True,
        )
        verdict = limits.classify(signal.failure_rate, firing.get(("high_failure_rate", "")))
        if verdict is None:
            return []

        severity, limit = verdict
        reasons = ", ".join(f"{row['reason']} x{row['failures']}" for row in signal.reasons[:5])
        message = (
            f"{signal.failures} of {signal.attempts} attempts failed ({_percent(signal.failure_rate * 100)}) "
            f"in the last {settings.alert_window_minutes} min ({severity} above {_percent(limit * 100)}). "
            f"Failures by reason: {reasons}."
        )
        table = {
            "title": "Failures by reason",
            "columns": ["reason", "failures", "latest model", "latest message"],
            "rows": [
                [row["reason"], str(row["failures"]), row["latest_model"] or "-", _shorten(row["example"])]
                for row in signal.reasons
            ],
        }
        return [
            Finding(
                rule="high_failure_rate",
                scope="",
                severity=severity,
                value=signal.failure_rate,
                threshold=limit,
                message=message,
                value_text=_percent(signal.failure_rate * 100),
                threshold_text=f"> {_percent(limit * 100)}",
                details={
                    "attempts": signal.attempts,
                    "failures": signal.failures,
                    "reasons": signal.reasons,
                    "table": table,
                },
                fix="Check the most frequent reason first; the latest message is an example of it.",
            )
        ]


def _shorten(message: str | None, limit: int = 160) -> str:
    if not message:
        return "-"
    first = message.strip().splitlines()[0] if message.strip() else "-"
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _minutes_since(moment: datetime, now: datetime) -> float:
    return max((now - moment).total_seconds() / 60.0, 0.0)


class ProcessingStallRule(Rule):
    """A running batch or a worker has gone quiet.

    Batch signal (scope `batch:<id>`): a batch with status `running` whose
    latest event is older than `stall_minutes`, or whose heartbeat is. A batch
    without events counts from its start. Worker signal (scope `worker:<id>`):
    a worker that has not stopped cleanly and whose heartbeat is older than
    `stall_minutes`. Workers of finished batches and heartbeats older than
    `stall_forget_hours` are left out. Severity: critical. Clears when activity
    resumes or the batch finishes.
    """

    source = "processing_stall"
    rules = ("processing_stall",)

    def evaluate(self, conn, settings, names, now, firing):
        stall = timedelta(minutes=settings.stall_minutes)
        findings = [
            finding
            for batch in signals.running_batches(conn, names, now)
            if (finding := self._batch_finding(batch, settings, now, stall)) is not None
        ]
        forget_before = now - timedelta(hours=settings.stall_forget_hours)
        for worker in signals.silent_workers(conn, names, now - stall, forget_before):
            minutes = _minutes_since(worker.heartbeat_at, now)
            where = f" in batch {worker.batch_id}" if worker.batch_id else ""
            model = f", last model {worker.current_model}" if worker.current_model else ""
            findings.append(
                Finding(
                    rule="processing_stall",
                    scope=f"worker:{worker.worker_id}",
                    severity=CRITICAL,
                    value=minutes,
                    threshold=settings.stall_minutes,
                    message=(
                        f"Worker {worker.worker_id} (host {worker.host}, pid {worker.pid}){where} sent no heartbeat "
                        f"for {minutes:.0f} min{model}."
                    ),
                    value_text=f"{minutes:.0f} min",
                    threshold_text=f"> {settings.stall_minutes:g} min",
                    details={"worker_id": worker.worker_id, "host": worker.host, "pid": worker.pid,
                             "batch_id": worker.batch_id, "current_model": worker.current_model},
                    fix="Check that the worker process still runs; a Creo session may hang on a model.",
                )
            )
        return findings

    @staticmethod
    def _batch_finding(batch: signals.BatchActivity, settings: Settings, now: datetime,
                       stall: timedelta) -> Finding | None:
        last_activity = batch.last_event_at or batch.started_at
        no_events = now - last_activity > stall
        no_heartbeat = now - batch.heartbeat_at > stall
        if not (no_events or no_heartbeat):
            return None

        event_minutes = _minutes_since(last_activity, now)
        heartbeat_minutes = _minutes_since(batch.heartbeat_at, now)
        reasons = []
        if no_events:
            since = "recorded no model" if batch.last_event_at else "recorded no model since it started"
            reasons.append(f"{since} for {event_minutes:.0f} min")
        if no_heartbeat:
            reasons.append(f"sent no heartbeat for {heartbeat_minutes:.0f} min")
        label = f"{batch.batch_id} ({batch.name})" if batch.name else batch.batch_id
        minutes = max(event_minutes if no_events else 0.0, heartbeat_minutes if no_heartbeat else 0.0)
        return Finding(
            rule="processing_stall",
            scope=f"batch:{batch.batch_id}",
            severity=CRITICAL,
            value=minutes,
            threshold=settings.stall_minutes,
            message=f"Batch {label} is running but {' and '.join(reasons)}.",
            value_text=f"{minutes:.0f} min",
            threshold_text=f"> {settings.stall_minutes:g} min",
            details={
                "batch_id": batch.batch_id,
                "last_event_at": batch.last_event_at.isoformat() if batch.last_event_at else None,
                "heartbeat_at": batch.heartbeat_at.isoformat(),
                "host": batch.host,
                "pid": batch.pid,
            },
            fix="Check the batch's workers; mark the batch finished if it was stopped on purpose.",
        )


class CoverageAnomalyRule(Rule):
    """A category's recent coverage falls well below its own history.

    Signal per category: recent mean coverage in the alert window (each model
    once) against the `anomaly_training_days` before the window (each event).
    Score: z = (recent_mean - history_mean) / (history_std / sqrt(recent_models)),
    the standard error of a mean of `recent_models` draws from the history,
    with `history_std` floored at `anomaly_min_std`. Fires (warning) when
    z < -`anomaly_z_threshold` and the mean dropped by at least
    `anomaly_min_drop` points, with at least `anomaly_min_history_models`
    historic and `anomaly_min_recent_models` recent models. The drop minimum
    keeps a large window from alerting on a statistically clear but tiny drop.
    Clears at z >= -(threshold - `anomaly_recovery_z`). Scope: `category:<name>`.
    """

    source = "coverage_anomaly"
    rules = ("coverage_anomaly",)

    def evaluate(self, conn, settings, names, now, firing):
        window_start = now - _window(settings)
        history_start = window_start - timedelta(days=settings.anomaly_training_days)
        findings = []
        for category in signals.coverage_by_category(conn, names, history_start, window_start, now):
            finding = self._category_finding(category, settings, firing)
            if finding is not None:
                findings.append(finding)
        return findings

    @staticmethod
    def _category_finding(category: signals.CategoryCoverage, settings: Settings,
                          firing: FiringKeys) -> Finding | None:
        if category.history_models < settings.anomaly_min_history_models or category.history_mean is None:
            return None
        if category.recent_models < settings.anomaly_min_recent_models:
            return None

        scope = f"category:{category.category}"
        std = max(category.history_std or 0.0, settings.anomaly_min_std)
        z = (category.recent_mean - category.history_mean) / (std / math.sqrt(category.recent_models))
        drop = category.history_mean - category.recent_mean
        is_firing = ("coverage_anomaly", scope) in firing
        if is_firing:
            met = z < -max(settings.anomaly_z_threshold - settings.anomaly_recovery_z, 0.0)
        else:
            met = z < -settings.anomaly_z_threshold and drop >= settings.anomaly_min_drop
        if not met:
            return None

        message = (
            f"Category {category.category}: mean coverage {_percent(category.recent_mean)} over "
            f"{category.recent_models} models in the last {settings.alert_window_minutes} min, against "
            f"{_percent(category.history_mean)} (standard deviation {std:.1f}) over {category.history_models} "
            f"models in the {settings.anomaly_training_days:g} days before (z = {z:.1f}, "
            f"fires below {-settings.anomaly_z_threshold:g})."
        )
        return Finding(
            rule="coverage_anomaly",
            scope=scope,
            severity=WARNING,
            value=z,
            threshold=-settings.anomaly_z_threshold,
            message=message,
            value_text=f"z = {z:.1f}",
            threshold_text=f"z < {-settings.anomaly_z_threshold:g}",
            details={
                "category": category.category,
                "recent_models": category.recent_models,
                "recent_mean": category.recent_mean,
                "history_models": category.history_models,
                "history_mean": category.history_mean,
                "history_std": category.history_std,
                "drop_points": drop,
            },
            fix="Compare this category's recent models with older ones; a regression in extraction is likely.",
        )


def monitor_condition_source(conn: Connection, settings: Settings) -> Any:
    """Call the database monitor's `check_all_conditions`; raises `RuleUnavailable` when it is not installed."""
    try:
        from serialmon.monitor.checks import check_all_conditions
    except ImportError as error:
        raise RuleUnavailable(f"the database monitor is not available ({error})") from error
    return check_all_conditions(conn, settings)


class RuleUnavailable(RuntimeError):
    """A rule cannot run in this installation; its alerts stay as they are."""


class DatabaseConditionsRule(Rule):
    """Conditions that the database monitor reports (bloat, cache hit ratio, table size, ...).

    Each condition object has `rule`, `scope`, `severity` ("warning" or
    "critical"), `value`, `threshold`, `message` and `fix`, and is reported only
    while it is met, so a missing condition clears its alert. The monitor owns
    the thresholds. `condition_source(conn, settings)` is injectable; it
    defaults to `serialmon.monitor.checks.check_all_conditions`. It returns
    the conditions, or an object with `conditions` and `not_evaluated` (rule
    names whose data could not be read, for example behind another session's
    lock). Alerts of a rule that was not evaluated keep their state.
    """

    source = "database"

    @property
    def rules(self) -> tuple[str, ...]:  # type: ignore[override]
        from serialmon.monitor.checks import CONDITION_RULES

        return CONDITION_RULES

    def __init__(self, condition_source: ConditionSource | None = None) -> None:
        self._condition_source = condition_source or monitor_condition_source

    def evaluate(self, conn, settings, names, now, firing):
        result = self._condition_source(conn, settings)
        conditions = getattr(result, "conditions", result)
        not_evaluated = frozenset(getattr(result, "not_evaluated", ()))
        by_key: dict[tuple[str, str], Finding] = {}
        for condition in conditions:
            finding = self._finding(condition)
            key = (finding.rule, finding.scope)
            current = by_key.get(key)
            if current is None or SEVERITY_RANK[finding.severity] > SEVERITY_RANK[current.severity]:
                by_key[key] = finding
        return RuleResult(list(by_key.values()), not_evaluated)

    @staticmethod
    def _finding(condition: Any) -> Finding:
        severity = CRITICAL if str(condition.severity).lower() == CRITICAL else WARNING
        value = _as_float(getattr(condition, "value", None))
        threshold = _as_float(getattr(condition, "threshold", None))
        return Finding(
            rule=str(condition.rule),
            scope=str(getattr(condition, "scope", None) or ""),
            severity=severity,
            value=value,
            threshold=threshold,
            message=str(condition.message),
            value_text="-" if value is None else f"{value:g}",
            threshold_text="-" if threshold is None else f"{threshold:g}",
            fix=getattr(condition, "fix", None),
        )


def _as_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def default_rules(condition_source: ConditionSource | None = None) -> list[Rule]:
    """Return every rule group, in evaluation order."""
    return [
        LowCoverageRule(),
        FailureRateRule(),
        ProcessingStallRule(),
        CoverageAnomalyRule(),
        DatabaseConditionsRule(condition_source),
    ]


def for_minutes(rule: str, settings: Settings) -> float:
    """Return how long `rule`'s condition must hold before it fires: the rule's override or `alert_for_minutes`."""
    return settings.alert_rule_for_minutes.get(rule, settings.alert_for_minutes)
