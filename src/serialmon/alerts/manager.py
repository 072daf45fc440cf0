"""`AlertManager`: evaluates the rules, stores the state machine, and delivers the outbox.

One evaluation is one database transaction under an advisory lock: it
measures every rule, advances each alert key, appends history, and queues the
notifications in the outbox. A second evaluator waits for the lock and then
reads the committed state, so each notification is queued exactly once.
Delivery runs after the commit and claims rows with `FOR UPDATE SKIP LOCKED`.

Every query is written against a synchronous `Connection` and runs through
`serialmon.db.arun`, so nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from serialmon.alerts import notify, outbox
from serialmon.alerts import silences as silence_store
from serialmon.alerts import state as state_store
from serialmon.alerts.rules import ConditionSource, Rule, RuleResult, RuleUnavailable, default_rules, for_minutes
from serialmon.alerts.state import FIRING, PENDING, AlertState, Notice, Transition, advance, alert_key
from serialmon.config import Settings, env_names, get_settings
from serialmon.db import AnySession, Names, arun, names
from serialmon.errors import SerialmonError, SettingsError, first_line

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# The maximum silence. A rule that should stay quiet for longer needs its threshold or setting changed.
SILENCE_MAX = timedelta(days=365)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class _Evaluation:
    rules: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    queued: list[dict[str, Any]] = field(default_factory=list)
    cleaned: dict[str, int] = field(default_factory=dict)


class AlertManager:
    """Evaluates alert rules, keeps their state in the database, and sends notifications.

    `settings` defaults to the process-wide settings at each call. `rules`
    replaces the rule groups (default: `default_rules(condition_source)`), and
    `condition_source(conn, settings)` replaces the database monitor's
    `check_conditions`. `clock` returns the current time (timezone-aware);
    every method also takes `now=` to drive time in tests.

    Raises `SettingsError` when `alert_rule_for_minutes` names a rule that
    none of the rule groups has: at creation, and at the first use of a
    process-wide settings object that replaced the one checked before.

        manager = get_alert_manager()
        result = await manager.process_alerts()
        print(result["transitions"], result["sent"])
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        rules: list[Rule] | None = None,
        condition_source: ConditionSource | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._settings = settings
        self._rules = rules if rules is not None else default_rules(condition_source)
        self._clock = clock or utc_now
        self._logged_rule_errors: set[tuple[str, str]] = set()
        self._checked_settings: Settings | None = None
        self._check_settings(settings or get_settings())

    @property
    def settings(self) -> Settings:
        settings = self._settings or get_settings()
        if settings is not self._checked_settings:
            self._check_settings(settings)
        return settings

    @property
    def rules(self) -> list[Rule]:
        return list(self._rules)

    def known_rules(self) -> list[str]:
        """Return the sorted names of every rule of the rule groups: what silences and settings may name."""
        return sorted({name for group in self._rules for name in group.rules})

    def _check_settings(self, settings: Settings) -> None:
        """Reject rule names in `alert_rule_for_minutes` that no rule group has; a typo would keep the default."""
        known = self.known_rules()
        unknown = sorted(set(settings.alert_rule_for_minutes) - set(known))
        if unknown:
            described = []
            for name in unknown:
                close = difflib.get_close_matches(name, known, n=1)
                described.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
            noun = "rule" if len(unknown) == 1 else "rules"
            raise SettingsError(
                f"Invalid setting {env_names('alert_rule_for_minutes')[0]}: unknown {noun} {', '.join(described)}.",
                f"Known rules: {', '.join(known)}.",
            )
        self._checked_settings = settings

    def _now(self, now: datetime | None) -> datetime:
        moment = now or self._clock()
        if moment.tzinfo is None:
            raise ValueError(f"now must be timezone-aware, got {moment!r}")
        return moment

    # Evaluation

    async def process_alerts(
        self, session: AnySession = None, send_notifications: bool = True, *, now: datetime | None = None
    ) -> dict[str, Any]:
        """Evaluate every rule, store the transitions, queue notifications, and deliver the due ones.

        Returns a dict with these keys:

        - `evaluated_at`: the evaluation time;
        - `rules`: one dict per rule group (`rule`, `ok`, `alerts`, `error`);
        - `transitions`: dicts with `alert_key`, `rule`, `scope`, `from_state`,
          `to_state`, `severity`, `value`, `threshold`, `message`,
          `notification` and `suppressed`;
        - `queued`: outbox rows added (`id`, `channel`, `dedup_key`, `subject`);
        - `sent` and `failed`: delivery results, empty with
          `send_notifications=False` (notifications then stay queued);
        - `pending`: outbox rows still waiting;
        - `cleaned`: history and outbox rows deleted by retention.

        With a caller's `session`, evaluation and delivery run in the caller's
        transaction, which the caller commits. NOTE: rolling that transaction
        back after notifications were sent undoes their records, so they are
        sent again by the next evaluation. With `session=None` each step
        commits on its own. Raises `DatabaseUnavailable` or SQLAlchemy errors
        when the database fails; SMTP and webhook failures never raise.
        """
        settings = self.settings
        now = self._now(now)
        evaluation = await arun(session, lambda conn: self._evaluate(conn, settings, now), settings)

        delivery: dict[str, list] = {"sent": [], "failed": []}
        if send_notifications:
            delivery = await self.deliver_notifications(session, now=now)
        pending = await arun(session, lambda conn: outbox.pending_count(conn, names(settings)), settings)

        for transition in evaluation.transitions:
            logger.info(
                "alert %s: %s -> %s (%s)%s", transition.alert_key, transition.from_state, transition.to_state,
                transition.severity, f", notified {transition.notification}" if transition.notification else "",
            )
        return {
            "evaluated_at": now,
            "rules": evaluation.rules,
            "transitions": [transition.as_dict() for transition in evaluation.transitions],
            "queued": evaluation.queued,
            "sent": delivery["sent"],
            "failed": delivery["failed"],
            "pending": pending,
            "cleaned": evaluation.cleaned,
        }

    def _evaluate(self, conn: Connection, settings: Settings, now: datetime) -> _Evaluation:
        quoted = names(settings)
        state_store.lock_evaluation(conn, settings)
        states = state_store.load_states(conn, quoted)
        active_silences = silence_store.active_silences(conn, quoted, now)
        evaluation = _Evaluation()

        for rule in self._rules:
            result = self._run_rule(rule, conn, settings, quoted, now, states, evaluation)
            if result is None:
                continue
            by_key = {alert_key(finding.rule, finding.scope): finding for finding in result.findings}
            keys = set(by_key) | {
                key for key, stored in states.items()
                if stored.source == rule.source
                and stored.rule not in result.not_evaluated  # unknown is not clear: the alert keeps its state
                and (stored.state in (PENDING, FIRING) or stored.last_notified_state == FIRING)
            }
            for key in sorted(keys):
                finding = by_key.get(key)
                current = states.get(key)
                if current is None:
                    current = AlertState(alert_key=key, rule=finding.rule, scope=finding.scope, source=rule.source)
                step = advance(
                    current,
                    finding,
                    now=now,
                    for_minutes=for_minutes(current.rule, settings),
                    settings=settings,
                    silence_id=silence_store.matching_silence(active_silences, current.rule, current.scope, now),
                )
                state_store.save_state(conn, quoted, step.state)
                evaluation.transitions.extend(step.transitions)
                if step.notice is not None:
                    evaluation.notices.append(step.notice)

        state_store.insert_history(conn, quoted, evaluation.transitions, now)
        evaluation.queued = outbox.enqueue(conn, quoted, evaluation.notices, settings, now)
        retention = now - timedelta(days=settings.alert_history_retention_days)
        evaluation.cleaned = {
            "history": state_store.delete_history_before(conn, quoted, retention),
            "outbox": outbox.delete_sent_before(conn, quoted, retention),
        }
        return evaluation

    def _run_rule(self, rule: Rule, conn: Connection, settings: Settings, quoted: Names, now: datetime,
                  states: dict[str, AlertState], evaluation: _Evaluation) -> RuleResult | None:
        """Run one rule group in a savepoint; on failure, report it and return None so its keys stay as they are."""
        firing = {
            (stored.rule, stored.scope): stored.severity or ""
            for stored in states.values()
            if stored.source == rule.source and stored.state == FIRING
        }
        try:
            with conn.begin_nested():
                result = rule.evaluate(conn, settings, quoted, now, firing)
        except RuleUnavailable as error:
            self._log_rule_error(rule.source, str(error), logging.INFO)
            evaluation.rules.append({"rule": rule.source, "ok": False, "alerts": 0, "error": str(error)})
            return None
        except SerialmonError as error:
            # An expected problem with its fix, such as `MissingTable`: the message is the whole story.
            reason = first_line(error)
            self._log_rule_error(rule.source, reason, logging.WARNING)
            evaluation.rules.append({"rule": rule.source, "ok": False, "alerts": 0, "error": reason})
            return None
        except Exception as error:  # noqa: BLE001 - one broken rule must not stop the others
            detail = first_line(error)
            reason = detail if detail == type(error).__name__ else f"{type(error).__name__}: {detail}"
            self._log_rule_error(rule.source, reason, logging.ERROR, error)
            evaluation.rules.append({"rule": rule.source, "ok": False, "alerts": 0, "error": reason})
            return None
        if not isinstance(result, RuleResult):
            result = RuleResult(list(result))
        entry = {"rule": rule.source, "ok": True, "alerts": len(result.findings), "error": None}
        if result.not_evaluated:
            entry["not_evaluated"] = sorted(result.not_evaluated)
        evaluation.rules.append(entry)
        return result

    def _log_rule_error(self, source: str, reason: str, level: int, error: BaseException | None = None) -> None:
        # Each distinct failure is logged once per manager, so a rule failing every minute does not flood the log.
        if (source, reason) in self._logged_rule_errors:
            return
        self._logged_rule_errors.add((source, reason))
        logger.log(level, "alert rule %s not evaluated, its alerts keep their state: %s", source, reason,
                   exc_info=error if level >= logging.ERROR else None)

    # Delivery

    async def deliver_notifications(
        self, session: AnySession = None, *, now: datetime | None = None, limit: int = 100
    ) -> dict[str, list[dict[str, Any]]]:
        """Deliver the due outbox rows; returns `sent` (id, channel, subject, detail) and `failed` lists.

        `failed` entries carry `error` (the recorded reason) and
        `next_attempt_at`. SMTP and webhook failures are recorded and retried,
        never raised; `detail` of a `.eml` delivery is the file path.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        settings = self.settings
        quoted = names(settings)
        now = self._now(now)
        claimed = await arun(session, lambda conn: outbox.claim_due(conn, quoted, now, settings, limit), settings)

        sent: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        held_until: dict[str, datetime] = {}
        for message in claimed:
            if message.channel in held_until:
                # An earlier row of this channel just failed: keep the order and wait with it.
                until = held_until[message.channel]
                await arun(session, lambda conn, m=message, at=until: outbox.release(conn, quoted, m, at), settings)
                continue
            if message.channel == outbox.CHANNEL_WEBHOOK and settings.webhook_url is None:
                reason = "webhook no longer configured (SERIALMON_WEBHOOK_URL is empty)"
                await arun(session, lambda conn, m=message: outbox.give_up(conn, quoted, m, reason, now), settings)
                failed.append({"id": message.id, "channel": message.channel, "subject": message.subject,
                               "error": reason, "next_attempt_at": None})
                continue

            result = await notify.deliver(message, settings)
            if result.ok:
                await arun(session, lambda conn, m=message: outbox.record_success(conn, quoted, m, now), settings)
                sent.append({"id": message.id, "channel": message.channel, "subject": message.subject,
                             "detail": result.detail})
                continue

            error = result.error or "unknown error"
            next_attempt_at = await arun(
                session,
                lambda conn, m=message, e=error: outbox.record_failure(conn, quoted, m, e, now, settings),
                settings,
            )
            held_until[message.channel] = next_attempt_at
            failed.append({"id": message.id, "channel": message.channel, "subject": message.subject,
                           "error": error, "next_attempt_at": next_attempt_at})
        return {"sent": sent, "failed": failed}

    # Reading

    async def get_active_alerts(self, session: AnySession = None) -> list[dict[str, Any]]:
        """Return pending and firing alerts (firing and critical first) as dicts.

        Keys: `alert_key`, `rule`, `scope`, `source`, `state`, `severity`,
        `value`, `threshold`, `message`, `fix`, `details`, `pending_since`,
        `firing_since`, `last_evaluated_at`, `last_notified_at`,
        `last_notified_state`, `silenced_by` (silence id) and `silenced`.
        """
        settings = self.settings
        return await arun(session, lambda conn: state_store.active_alerts(conn, names(settings)), settings)

    async def get_alert_history(
        self, session: AnySession = None, limit: int = 100, *, alert_key: str | None = None
    ) -> list[dict[str, Any]]:
        """Return the latest `limit` transitions, newest first, optionally of one alert key.

        Keys: `id`, `at`, `alert_key`, `rule`, `scope`, `from_state`,
        `to_state`, `severity`, `value`, `threshold`, `message`, `notification`
        (the kind sent with the transition) and `suppressed` ("silence",
        "cooldown" or "disabled" when a notification was held back).
        """
        if not 1 <= limit <= 100_000:
            raise ValueError(f"limit must be between 1 and 100000, got {limit}")
        settings = self.settings
        return await arun(
            session, lambda conn: state_store.history(conn, names(settings), limit, alert_key), settings
        )

    async def get_outbox_backlog(self, session: AnySession = None) -> list[dict[str, Any]]:
        """Return the notifications still waiting for delivery (at most 50), with attempts and last error."""
        settings = self.settings
        return await arun(session, lambda conn: outbox.backlog(conn, names(settings)), settings)

    # Silences

    async def silence(
        self,
        rule: str,
        scope: str | None = None,
        *,
        until: datetime | None = None,
        duration: timedelta | float | None = None,
        reason: str,
        created_by: str | None = None,
        session: AnySession = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Silence `rule` ("*" for every rule) in `scope` (None: every scope) until `until` or for `duration`.

        `duration` is a timedelta or seconds. Raises `ValueError` naming the
        argument when `rule` is not a known rule name or `reason` is empty, when neither or both of
        `until` and `duration` are given, or when the end is not in the future
        or more than `SILENCE_MAX` (365 days) after `now`.
        Returns the silence as a dict (`id`, `rule`, `scope`, `reason`,
        `created_by`, `starts_at`, `ends_at`, `created_at`, `active`).
        """
        now = self._now(now)
        rule = (rule or "").strip()
        if not rule or len(rule) > 100:
            raise ValueError(f"rule must be 1-100 characters, got {rule!r}")
        known = self.known_rules()
        if rule != "*" and rule not in known:
            # A misspelt rule would silence nothing, without any sign of it.
            raise ValueError(f"unknown rule {rule!r}: expected '*' or one of {', '.join(known)}")
        if not (reason or "").strip():
            raise ValueError("reason must not be empty: say why the alert is silenced")
        ends_at = _silence_end(now, until, duration)
        settings = self.settings
        created = await arun(
            session,
            lambda conn: silence_store.add_silence(
                conn, names(settings), rule=rule, scope=scope, starts_at=now, ends_at=ends_at,
                reason=reason.strip(), created_by=created_by,
            ),
            settings,
        )
        logger.info("silence %s added for %s [%s] until %s: %s", created.id, rule, scope or "all scopes",
                    ends_at.isoformat(), reason.strip())
        return created.as_dict(now)

    async def unsilence(
        self, silence_id: int, session: AnySession = None, *, now: datetime | None = None
    ) -> dict[str, Any] | None:
        """End a silence now; returns it as a dict, or None when no silence has this id."""
        now = self._now(now)
        settings = self.settings
        ended = await arun(
            session, lambda conn: silence_store.end_silence(conn, names(settings), silence_id, now), settings
        )
        if ended is None:
            return None
        logger.info("silence %s ended", silence_id)
        return ended.as_dict(now)

    async def list_silences(
        self, session: AnySession = None, *, include_expired: bool = False, now: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Return silences in force or still to start (and ended ones with `include_expired`), newest first."""
        now = self._now(now)
        settings = self.settings
        found = await arun(
            session,
            lambda conn: silence_store.list_silences(conn, names(settings), now, include_expired),
            settings,
        )
        return [silence.as_dict(now) for silence in found]

    # Service

    async def send_test_email(self) -> notify.DeliveryResult:
        """Send one test e-mail straight through SMTP (or to a .eml file without SMTP); never raises."""
        return await notify.send_test_email(self.settings, now=self._clock())

    async def run(
        self,
        *,
        interval_sec: float | None = None,
        iterations: int | None = None,
        stop: asyncio.Event | None = None,
        on_result: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Evaluate and deliver every `interval_sec` (default `alert_interval_sec`) until `stop` is set.

        A failing database is logged and retried at the next interval; it never
        ends the loop. `on_result` gets each result dict, or {"error": reason}
        for an evaluation that failed. `iterations` bounds the loop (tests, `--once`).
        """
        interval = interval_sec if interval_sec is not None else self.settings.alert_interval_sec
        if interval <= 0:
            raise ValueError(f"interval_sec must be positive, got {interval}")
        stop = stop or asyncio.Event()
        done = 0
        failures = 0
        logger.info("alert loop started, evaluating every %g s", interval)
        while not stop.is_set():
            try:
                result = await self.process_alerts()
                failures = 0
            except (SerialmonError, SQLAlchemyError, OSError) as error:
                failures += 1
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                if failures == 1 or failures & (failures - 1) == 0:
                    logger.warning("alert evaluation failed (%d in a row), retrying in %g s: %s",
                                   failures, interval, reason)
                result = {"error": reason}
            if on_result is not None:
                on_result(result)
            done += 1
            if iterations is not None and done >= iterations:
                break
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except asyncio.TimeoutError:
                pass
        logger.info("alert loop stopped after %d evaluation(s)", done)


def _silence_end(now: datetime, until: datetime | None, duration: timedelta | float | None) -> datetime:
    if (until is None) == (duration is None):
        raise ValueError("give exactly one of until and duration")
    if duration is not None:
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
        if math.isnan(seconds) or seconds <= 0:
            raise ValueError(f"duration must be positive, got {duration}")
        # Checked in seconds first: timedelta() itself overflows for a huge number.
        if seconds > SILENCE_MAX.total_seconds():
            raise ValueError(f"duration must be at most {SILENCE_MAX.days} days, got {duration}")
        return now + (duration if isinstance(duration, timedelta) else timedelta(seconds=seconds))
    if until.tzinfo is None:
        raise ValueError(f"until must be timezone-aware, got {until!r}")
    if until <= now:
        raise ValueError(f"until must be in the future, got {until.isoformat()} (now {now.isoformat()})")
    if until - now > SILENCE_MAX:
        raise ValueError(
            f"until must be at most {SILENCE_MAX.days} days after now, got {until.isoformat()} "
            f"(now {now.isoformat()})"
        )
    return until
