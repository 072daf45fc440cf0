"""The stored alert state machine: one row per alert key in `alert_state`.

States: inactive -> pending -> firing -> resolved (and pending -> inactive when
the condition clears before its `for` duration). With a `for` duration of 0 a
key goes straight from inactive or resolved to firing.

Notifications follow from what was last notified for the key
(`last_notified_state`, `last_notified_severity`), not from the transition
alone. So a notification held back by a silence or a cooldown is sent once the
silence ends or the cooldown passes, and never twice:

- firing, never notified or last notified "resolved": `firing`, unless the
  previous notification of this key is younger than `cooldown_minutes` and
  was at least as severe;
- firing at a higher severity than last notified: `escalated`, at once;
- firing, notified, and `alert_repeat_minutes` (> 0, at least the cooldown)
  since the last notification: `reminder`;
- not firing but last notified "firing": `resolved`, at once (with
  `notify_resolved` off, it is only marked as notified).

A de-escalation (critical to warning) is recorded but not notified. It lowers
the notified severity, so a new escalation is notified again. Every transition
and every notification is a row in `alert_history`.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from serialmon.alerts.rules import SEVERITY_RANK, Finding
from serialmon.config import Settings
from serialmon.db import Names

INACTIVE = "inactive"
PENDING = "pending"
FIRING = "firing"
RESOLVED = "resolved"

# Notification kinds.
NOTIFY_FIRING = "firing"
NOTIFY_ESCALATED = "escalated"
NOTIFY_REMINDER = "reminder"
NOTIFY_RESOLVED = "resolved"


def alert_key(rule: str, scope: str) -> str:
    """Return the stored key of an alert: the rule, with the scope in brackets when there is one."""
    return f"{rule}[{scope}]" if scope else rule


@dataclass
class AlertState:
    """One row of `alert_state`."""

    alert_key: str
    rule: str
    scope: str
    source: str
    state: str = INACTIVE
    severity: str | None = None
    value: float | None = None
    threshold: float | None = None
    message: str | None = None
    details: dict | None = None
    fix: str | None = None
    pending_since: datetime | None = None
    firing_since: datetime | None = None
    resolved_at: datetime | None = None
    last_evaluated_at: datetime | None = None
    last_notified_at: datetime | None = None
    last_notified_severity: str | None = None
    last_notified_state: str | None = None
    notify_seq: int = 0
    version: int = 0
    silenced_by: int | None = None


@dataclass(frozen=True)
class Transition:
    """One row of `alert_history`: a state change, a notification, or both."""

    alert_key: str
    rule: str
    scope: str
    seq: int
    from_state: str
    to_state: str
    severity: str | None
    value: float | None
    threshold: float | None
    message: str | None
    notification: str | None = None
    suppressed: str | None = None
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "alert_key": self.alert_key,
            "rule": self.rule,
            "scope": self.scope,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "severity": self.severity,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "notification": self.notification,
            "suppressed": self.suppressed,
        }


@dataclass(frozen=True)
class Notice:
    """One alert in an outgoing notification."""

    alert_key: str
    rule: str
    scope: str
    kind: str
    severity: str | None
    previous_severity: str | None
    value_text: str
    threshold_text: str
    message: str | None
    details: dict
    fix: str | None
    firing_since: datetime | None
    resolved_at: datetime | None
    seq: int

    @property
    def style(self) -> str:
        """Which template style shows this alert: critical, warning or resolved."""
        if self.kind == NOTIFY_RESOLVED:
            return RESOLVED
        return self.severity or "warning"


@dataclass
class Step:
    """Result of one evaluation for one key."""

    state: AlertState
    transitions: list[Transition]
    notice: Notice | None
    changed: bool


def _rank(severity: str | None) -> int:
    return SEVERITY_RANK.get(severity or "", 0)


def advance(
    current: AlertState,
    finding: Finding | None,
    *,
    now: datetime,
    for_minutes: float,
    settings: Settings,
    silence_id: int | None,
) -> Step:
    """Apply one evaluation to one key and decide its notification; pure, the caller stores the result.

    `finding` is the condition when it is met now, None when it is clear.
    `silence_id` is the active silence that matches the key, if any: the key
    still changes state, but nothing is notified.
    """
    state = replace(current)
    before = replace(current)
    transitions: list[Transition] = []

    def record(from_state: str, to_state: str, **extra: Any) -> None:
        state.version += 1
        transitions.append(
            Transition(
                alert_key=state.alert_key, rule=state.rule, scope=state.scope, seq=state.version,
                from_state=from_state, to_state=to_state, severity=state.severity, value=state.value,
                threshold=state.threshold, message=state.message, **extra,
            )
        )

    if finding is not None:
        _measure(state, finding)
        _hold(state, before, finding, now, for_minutes, record)
    else:
        _clear(state, now, record)

    state.last_evaluated_at = now
    state.silenced_by = silence_id
    notice = _notify(state, now, settings, silence_id, transitions, record)
    changed = bool(transitions) or _stored_fields(state) != _stored_fields(before)
    return Step(state=state, transitions=transitions, notice=notice, changed=changed)


def _measure(state: AlertState, finding: Finding) -> None:
    state.value = finding.value
    state.threshold = finding.threshold
    state.message = finding.message
    state.fix = finding.fix
    state.details = {
        **finding.details,
        "value_text": finding.value_text,
        "threshold_text": finding.threshold_text,
    }


def _hold(state: AlertState, before: AlertState, finding: Finding, now: datetime, for_minutes: float,
          record: Any) -> None:
    if state.state in (INACTIVE, RESOLVED):
        state.severity = finding.severity
        state.pending_since = now
        state.resolved_at = None
        if for_minutes <= 0:
            state.state = FIRING
            state.firing_since = now
            record(before.state, FIRING)
        else:
            state.state = PENDING
            record(before.state, PENDING)
        return

    if state.state == PENDING:
        state.severity = finding.severity
        held = now - (state.pending_since or now)
        if held >= timedelta(minutes=for_minutes):
            state.state = FIRING
            state.firing_since = now
            record(PENDING, FIRING)
        return

    # Firing: only a change of severity is a transition.
    if finding.severity != state.severity:
        previous = state.severity
        state.severity = finding.severity
        direction = "escalated" if _rank(finding.severity) > _rank(previous) else "de-escalated"
        record(FIRING, FIRING, details={"change": direction, "previous_severity": previous})
        if direction == "de-escalated" and state.last_notified_state == FIRING:
            # Lower the notified severity so that a renewed escalation is notified again.
            state.last_notified_severity = finding.severity


def _clear(state: AlertState, now: datetime, record: Any) -> None:
    if state.state == PENDING:
        state.state = INACTIVE
        state.pending_since = None
        record(PENDING, INACTIVE)
    elif state.state == FIRING:
        state.state = RESOLVED
        state.resolved_at = now
        record(FIRING, RESOLVED)


def owed_notification(state: AlertState, now: datetime, settings: Settings) -> tuple[str | None, str | None]:
    """Return (kind, held back by) for the notification this key owes now.

    kind is None when nothing is owed. "held back by" is "cooldown" when a
    firing notification must wait for the cooldown, else None.
    """
    cooldown = timedelta(minutes=settings.cooldown_minutes)
    since_last = None if state.last_notified_at is None else now - state.last_notified_at

    if state.state == FIRING:
        if state.last_notified_state != FIRING:
            more_severe = _rank(state.severity) > _rank(state.last_notified_severity)
            if since_last is not None and since_last < cooldown and not more_severe:
                return NOTIFY_FIRING, "cooldown"
            return NOTIFY_FIRING, None
        if _rank(state.severity) > _rank(state.last_notified_severity):
            return NOTIFY_ESCALATED, None
        repeat = timedelta(minutes=settings.alert_repeat_minutes)
        if settings.alert_repeat_minutes > 0 and since_last is not None and since_last >= max(repeat, cooldown):
            return NOTIFY_REMINDER, None
        return None, None

    if state.last_notified_state == FIRING:
        return NOTIFY_RESOLVED, None
    return None, None


def _notify(state: AlertState, now: datetime, settings: Settings, silence_id: int | None,
            transitions: list[Transition], record: Any) -> Notice | None:
    kind, held_back_by = owed_notification(state, now, settings)
    if kind is None:
        return None

    suppressed = held_back_by
    if suppressed is None and silence_id is not None:
        suppressed = "silence"
    if suppressed is None and kind == NOTIFY_RESOLVED and not settings.notify_resolved:
        # Resolved notifications are off: count the resolution as notified, so a re-fire notifies again.
        state.last_notified_state = RESOLVED
        _note(transitions, record, state, kind=None, suppressed="disabled")
        return None
    if suppressed is not None:
        # Only a transition row notes why nothing was sent, so held-back keys add no row per evaluation.
        if transitions:
            _note(transitions, record, state, kind=None, suppressed=suppressed)
        return None

    previous_severity = state.last_notified_severity
    state.notify_seq += 1
    state.last_notified_at = now
    state.last_notified_state = RESOLVED if kind == NOTIFY_RESOLVED else FIRING
    state.last_notified_severity = state.severity
    _note(transitions, record, state, kind=kind, suppressed=None)
    details = dict(state.details or {})
    return Notice(
        alert_key=state.alert_key,
        rule=state.rule,
        scope=state.scope,
        kind=kind,
        severity=state.severity,
        previous_severity=previous_severity if kind == NOTIFY_ESCALATED else None,
        value_text=str(details.get("value_text") or ""),
        threshold_text=str(details.get("threshold_text") or ""),
        message=state.message,
        details=details,
        fix=state.fix,
        firing_since=state.firing_since,
        resolved_at=state.resolved_at,
        seq=state.notify_seq,
    )


def _note(transitions: list[Transition], record: Any, state: AlertState, *, kind: str | None,
          suppressed: str | None) -> None:
    """Attach a notification outcome to this evaluation's last transition, or add a row for it."""
    if transitions:
        transitions[-1] = replace(transitions[-1], notification=kind, suppressed=suppressed)
        return
    record(state.state, state.state, notification=kind, suppressed=suppressed)


def _stored_fields(state: AlertState) -> tuple:
    return tuple(getattr(state, f.name) for f in fields(AlertState) if f.name != "last_evaluated_at")


# Storage


def lock_key(settings: Settings) -> int:
    """Return the advisory lock id that serialises evaluators of one state schema (a signed 64-bit int)."""
    return 0x5E41A100000000 + zlib.crc32(f"serialmon.alerts:{settings.state_schema}".encode())


def lock_evaluation(conn: Connection, settings: Settings) -> None:
    """Take the evaluation lock for the current transaction, waiting up to `alert_lock_timeout_sec`.

    Two evaluators on the same database then apply their transitions one after
    the other, and the second reads the first's committed state. The connection's
    own lock and statement timeouts are restored once the lock is held.
    """
    timeouts = conn.execute(
        text("SELECT current_setting('lock_timeout') AS lock, current_setting('statement_timeout') AS statement")
    ).mappings().one()
    wait_ms = str(int(settings.alert_lock_timeout_sec * 1000))
    conn.execute(text("SELECT set_config('lock_timeout', :ms, true)"), {"ms": wait_ms})
    conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": wait_ms})
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(settings)})
    conn.execute(text("SELECT set_config('lock_timeout', :value, true)"), {"value": timeouts["lock"]})
    conn.execute(text("SELECT set_config('statement_timeout', :value, true)"), {"value": timeouts["statement"]})


_STATE_COLUMNS = [f.name for f in fields(AlertState)]


def load_states(conn: Connection, names: Names) -> dict[str, AlertState]:
    """Return every stored alert state by key."""
    rows = conn.execute(
        text(f"SELECT {', '.join(_STATE_COLUMNS)} FROM {names.table('alert_state')}")
    ).mappings().all()
    return {row["alert_key"]: AlertState(**{**row, "source": row["source"] or ""}) for row in rows}


def save_state(conn: Connection, names: Names, state: AlertState) -> None:
    """Insert or update one alert state row."""
    columns = _STATE_COLUMNS
    updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in columns if column != "alert_key")
    values = {name: getattr(state, name) for name in columns}
    values["details"] = None if state.details is None else json.dumps(state.details, default=str)
    placeholders = ", ".join(
        "CAST(:details AS jsonb)" if column == "details" else f":{column}" for column in columns
    )
    conn.execute(
        text(
            f"INSERT INTO {names.table('alert_state')} ({', '.join(columns)}) VALUES ({placeholders}) "
            f"ON CONFLICT (alert_key) DO UPDATE SET {updates}"
        ),
        values,
    )


def insert_history(conn: Connection, names: Names, transitions: list[Transition], now: datetime) -> None:
    """Append transitions to `alert_history`; a (key, seq) already there is skipped."""
    if not transitions:
        return
    conn.execute(
        text(
            f"""
            INSERT INTO {names.table("alert_history")}
                (at, alert_key, rule, scope, seq, from_state, to_state, severity, value, threshold,
                 message, notification, suppressed, details)
            VALUES (:at, :alert_key, :rule, :scope, :seq, :from_state, :to_state, :severity, :value, :threshold,
                    :message, :notification, :suppressed, CAST(:details AS jsonb))
            ON CONFLICT (alert_key, seq) DO NOTHING
            """
        ),
        [
            {
                "at": now, "alert_key": t.alert_key, "rule": t.rule, "scope": t.scope, "seq": t.seq,
                "from_state": t.from_state, "to_state": t.to_state, "severity": t.severity, "value": t.value,
                "threshold": t.threshold, "message": t.message, "notification": t.notification,
                "suppressed": t.suppressed, "details": json.dumps(t.details, default=str),
            }
            for t in transitions
        ],
    )


def active_alerts(conn: Connection, names: Names) -> list[dict[str, Any]]:
    """Return pending and firing alerts, most severe and oldest first."""
    rows = conn.execute(
        text(
            f"""
            SELECT alert_key, rule, scope, source, state, severity, value, threshold, message, fix, details,
                   pending_since, firing_since, last_evaluated_at, last_notified_at, last_notified_state,
                   silenced_by
            FROM {names.table("alert_state")}
            WHERE state IN ('pending', 'firing')
            ORDER BY state = 'firing' DESC, severity = 'critical' DESC, coalesce(firing_since, pending_since),
                     alert_key
            """
        )
    ).mappings().all()
    return [{**row, "silenced": row["silenced_by"] is not None} for row in rows]


def history(conn: Connection, names: Names, limit: int, alert_key: str | None = None) -> list[dict[str, Any]]:
    """Return the latest `limit` history rows, newest first, optionally for one key."""
    return [
        dict(row)
        for row in conn.execute(
            text(
                f"""
                SELECT id, at, alert_key, rule, scope, from_state, to_state, severity, value, threshold,
                       message, notification, suppressed
                FROM {names.table("alert_history")}
                WHERE CAST(:alert_key AS text) IS NULL OR alert_key = :alert_key
                ORDER BY at DESC, id DESC
                LIMIT :limit
                """
            ),
            {"limit": limit, "alert_key": alert_key},
        ).mappings()
    ]


def delete_history_before(conn: Connection, names: Names, before: datetime) -> int:
    """Delete history rows older than `before`; returns how many."""
    result = conn.execute(text(f"DELETE FROM {names.table('alert_history')} WHERE at < :before"), {"before": before})
    return result.rowcount or 0
