"""The notification outbox: rows queued with the state change, delivered until they succeed.

`enqueue` runs in the same transaction as the state change that caused the
notification, with a deterministic `dedup_key` (unique), so a crash either
keeps both or neither, and a notification is never queued twice.

Delivery claims due rows with `FOR UPDATE SKIP LOCKED` and sets a lease
(`notification_lease_sec`), so two deliverers never take the same row. Every
attempt is a row in `notification_attempts`. A failed row is retried after
`notification_retry_base_sec * 2^(attempts - 1)`, capped at
`notification_retry_max_sec`, for as long as it takes. Later rows of the same
channel wait behind it, so notifications arrive in the order they were queued.
The only rows given up are webhook rows once no webhook URL is configured.

NOTE: the lease makes delivery at-least-once at the SMTP boundary: a process
that dies after the server accepted a message but before the attempt was
recorded sends it again when the lease ends. The Message-ID stays the same,
so mail clients can drop the copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from serialmon.alerts import notify
from serialmon.alerts.state import Notice
from serialmon.config import Settings
from serialmon.db import Names

logger = logging.getLogger(__name__)

CHANNEL_EMAIL = "email"
CHANNEL_WEBHOOK = "webhook"


@dataclass(frozen=True)
class OutboxMessage:
    """One claimed row of `notification_outbox`."""

    id: int
    dedup_key: str
    channel: str
    recipients: list[str] | None
    subject: str | None
    body_text: str | None
    body_html: str | None
    payload: dict | None
    attempts: int
    created_at: datetime
    alert_keys: list[str] | None


def dedup_key(channel: str, notices: list[Notice]) -> str:
    """Return the outbox key of a group: the channel and a hash of each alert key with its notification number."""
    members = sorted(f"{notice.alert_key}#{notice.seq}" for notice in notices)
    digest = hashlib.sha256("\n".join(members).encode()).hexdigest()[:32]
    return f"{channel}:{digest}"


def enqueue(conn: Connection, names: Names, notices: list[Notice], settings: Settings,
            now: datetime) -> list[dict[str, Any]]:
    """Queue one e-mail (and one webhook call, when configured) for a group of notices.

    Returns the rows inserted as dicts (id, channel, dedup_key, subject); a
    group already queued under the same key is skipped.
    """
    if not notices:
        return []
    rendered = notify.render(notices, sent_at=now)
    alert_keys = [notice.alert_key for notice in notices]
    rows = [
        {
            "dedup_key": dedup_key(CHANNEL_EMAIL, notices),
            "channel": CHANNEL_EMAIL,
            "recipients": list(settings.alert_to_emails),
            "subject": rendered.subject,
            "body_text": rendered.text,
            "body_html": rendered.html,
            "payload": None,
        }
    ]
    if settings.webhook_url is not None:
        rows.append(
            {
                "dedup_key": dedup_key(CHANNEL_WEBHOOK, notices),
                "channel": CHANNEL_WEBHOOK,
                "recipients": None,
                "subject": rendered.subject,
                "body_text": None,
                "body_html": None,
                "payload": json.dumps(notify.webhook_payload(notices, rendered.subject)),
            }
        )

    queued = []
    for row in rows:
        inserted = conn.execute(
            text(
                f"""
                INSERT INTO {names.table("notification_outbox")}
                    (dedup_key, channel, recipients, subject, body_text, body_html, payload, alert_keys,
                     status, attempts, next_attempt_at, created_at)
                VALUES (:dedup_key, :channel, :recipients, :subject, :body_text, :body_html,
                        CAST(:payload AS jsonb), :alert_keys, 'pending', 0, :now, :now)
                ON CONFLICT (dedup_key) DO NOTHING
                RETURNING id
                """
            ),
            {**row, "alert_keys": alert_keys, "now": now},
        ).scalar_one_or_none()
        if inserted is not None:
            queued.append({"id": inserted, "channel": row["channel"], "dedup_key": row["dedup_key"],
                           "subject": row["subject"]})
    return queued


def claim_due(conn: Connection, names: Names, now: datetime, settings: Settings,
              limit: int = 100) -> list[OutboxMessage]:
    """Claim up to `limit` due rows, oldest first, by moving their next attempt to the end of a lease.

    A row waits while an earlier pending row of its channel is not due, so a
    channel's notifications go out in the order they were queued.
    """
    rows = conn.execute(
        text(
            f"""
            UPDATE {names.table("notification_outbox")} o
            SET next_attempt_at = :lease_until
            FROM (
                SELECT id FROM {names.table("notification_outbox")} q
                WHERE status = 'pending' AND next_attempt_at <= :now
                  AND NOT EXISTS (
                      SELECT 1 FROM {names.table("notification_outbox")} earlier
                      WHERE earlier.channel = q.channel AND earlier.status = 'pending'
                        AND earlier.id < q.id AND earlier.next_attempt_at > :now
                  )
                ORDER BY id
                LIMIT :limit
                FOR UPDATE SKIP LOCKED
            ) due
            WHERE o.id = due.id
            RETURNING o.id, o.dedup_key, o.channel, o.recipients, o.subject, o.body_text, o.body_html,
                      o.payload, o.attempts, o.created_at, o.alert_keys
            """
        ),
        {"now": now, "lease_until": now + timedelta(seconds=settings.notification_lease_sec), "limit": limit},
    ).mappings().all()
    return sorted((OutboxMessage(**row) for row in rows), key=lambda message: message.id)


def retry_delay_sec(attempts: int, settings: Settings) -> float:
    """Return the wait before the next attempt after `attempts` failed ones (exponential, capped)."""
    exponent = min(max(attempts - 1, 0), 30)
    return min(settings.notification_retry_base_sec * 2**exponent, settings.notification_retry_max_sec)


def record_success(conn: Connection, names: Names, message: OutboxMessage, now: datetime) -> None:
    """Mark a row sent and record the attempt."""
    conn.execute(
        text(
            f"""
            UPDATE {names.table("notification_outbox")}
            SET status = 'sent', sent_at = :now, attempts = attempts + 1, last_error = NULL
            WHERE id = :id
            """
        ),
        {"id": message.id, "now": now},
    )
    _insert_attempt(conn, names, message.id, now, ok=True, error=None)


def record_failure(conn: Connection, names: Names, message: OutboxMessage, error: str, now: datetime,
                   settings: Settings) -> datetime:
    """Record a failed attempt and schedule the retry; later rows of the channel wait for it. Returns its time."""
    attempts = message.attempts + 1
    next_attempt_at = now + timedelta(seconds=retry_delay_sec(attempts, settings))
    conn.execute(
        text(
            f"""
            UPDATE {names.table("notification_outbox")}
            SET attempts = :attempts, last_error = :error, next_attempt_at = :next_attempt_at
            WHERE id = :id
            """
        ),
        {"id": message.id, "attempts": attempts, "error": error, "next_attempt_at": next_attempt_at},
    )
    _insert_attempt(conn, names, message.id, now, ok=False, error=error)
    hold_back_after(conn, names, message, next_attempt_at)

    if attempts == 1 or attempts & (attempts - 1) == 0:
        # Logged on attempts 1, 2, 4, 8, ... so a long outage does not flood the log.
        logger.warning(
            "notification %s (%s) not delivered after %d attempt(s), next try at %s: %s",
            message.id, message.channel, attempts, next_attempt_at.isoformat(), error,
        )
    return next_attempt_at


def hold_back_after(conn: Connection, names: Names, message: OutboxMessage, until: datetime) -> None:
    """Delay the pending rows of `message`'s channel queued after it to `until`, keeping their order."""
    conn.execute(
        text(
            f"""
            UPDATE {names.table("notification_outbox")}
            SET next_attempt_at = greatest(next_attempt_at, :until)
            WHERE channel = :channel AND status = 'pending' AND id > :id
            """
        ),
        {"channel": message.channel, "id": message.id, "until": until},
    )


def release(conn: Connection, names: Names, message: OutboxMessage, at: datetime) -> None:
    """Return a claimed but unattempted row to the queue, due at `at`."""
    conn.execute(
        text(f"UPDATE {names.table('notification_outbox')} SET next_attempt_at = :at WHERE id = :id"),
        {"id": message.id, "at": at},
    )


def give_up(conn: Connection, names: Names, message: OutboxMessage, error: str, now: datetime) -> None:
    """Mark a row failed for good; only for a channel that is no longer configured."""
    conn.execute(
        text(
            f"""
            UPDATE {names.table("notification_outbox")}
            SET status = 'failed', attempts = attempts + 1, last_error = :error
            WHERE id = :id
            """
        ),
        {"id": message.id, "error": error},
    )
    _insert_attempt(conn, names, message.id, now, ok=False, error=error)
    logger.warning("notification %s (%s) dropped: %s", message.id, message.channel, error)


def _insert_attempt(conn: Connection, names: Names, outbox_id: int, now: datetime, *, ok: bool,
                    error: str | None) -> None:
    conn.execute(
        text(
            f"INSERT INTO {names.table('notification_attempts')} (outbox_id, attempted_at, ok, error) "
            "VALUES (:outbox_id, :now, :ok, :error)"
        ),
        {"outbox_id": outbox_id, "now": now, "ok": ok, "error": error},
    )


def backlog(conn: Connection, names: Names) -> list[dict[str, Any]]:
    """Return the pending rows (oldest first, at most 50) with their attempts and last error."""
    rows = conn.execute(
        text(
            f"""
            SELECT id, channel, subject, attempts, created_at, next_attempt_at, last_error
            FROM {names.table("notification_outbox")}
            WHERE status = 'pending'
            ORDER BY id
            LIMIT 50
            """
        )
    ).mappings().all()
    return [dict(row) for row in rows]


def pending_count(conn: Connection, names: Names) -> int:
    """Return how many rows wait for delivery."""
    return conn.execute(
        text(f"SELECT count(*) FROM {names.table('notification_outbox')} WHERE status = 'pending'")
    ).scalar_one()


def delete_sent_before(conn: Connection, names: Names, before: datetime) -> int:
    """Delete sent or dropped rows (and their attempts) created before `before`; returns how many."""
    result = conn.execute(
        text(
            f"DELETE FROM {names.table('notification_outbox')} "
            "WHERE status IN ('sent', 'failed') AND created_at < :before"
        ),
        {"before": before},
    )
    return result.rowcount or 0
