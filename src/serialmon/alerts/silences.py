"""Silences: stop notifications for a rule (and optionally one scope) until an end time.

A silenced alert still changes state and every transition is recorded; only
its notifications wait. A notification still owed when the silence ends is
sent then (for example "firing" for an alert that began during the silence
and still fires). Rule "*" silences every rule; scope None silences every
scope of the rule. Ending a silence early (`end_silence`) sets its end time to
now, so the row stays as a record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from serialmon.db import Names

ALL_RULES = "*"


@dataclass(frozen=True)
class Silence:
    """One row of `silences`."""

    id: int
    rule: str
    scope: str | None
    reason: str
    created_by: str | None
    starts_at: datetime
    ends_at: datetime
    created_at: datetime

    def matches(self, rule: str, scope: str, now: datetime) -> bool:
        """Return whether this silence covers `rule` and `scope` at `now`."""
        if not (self.starts_at <= now < self.ends_at):
            return False
        if self.rule not in (ALL_RULES, rule):
            return False
        return self.scope is None or self.scope == scope

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.rule,
            "scope": self.scope,
            "reason": self.reason,
            "created_by": self.created_by,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "created_at": self.created_at,
            "active": self.starts_at <= now < self.ends_at,
        }


_COLUMNS = "id, rule, scope, reason, created_by, starts_at, ends_at, created_at"


def active_silences(conn: Connection, names: Names, now: datetime) -> list[Silence]:
    """Return silences in force at `now`."""
    rows = conn.execute(
        text(
            f"SELECT {_COLUMNS} FROM {names.table('silences')} "
            "WHERE starts_at <= :now AND ends_at > :now ORDER BY id"
        ),
        {"now": now},
    ).mappings().all()
    return [Silence(**row) for row in rows]


def matching_silence(silences: list[Silence], rule: str, scope: str, now: datetime) -> int | None:
    """Return the id of the first silence that covers `rule` and `scope` at `now`, or None."""
    for silence in silences:
        if silence.matches(rule, scope, now):
            return silence.id
    return None


def add_silence(
    conn: Connection,
    names: Names,
    *,
    rule: str,
    scope: str | None,
    starts_at: datetime,
    ends_at: datetime,
    reason: str,
    created_by: str | None,
) -> Silence:
    """Insert a silence and return it."""
    row = conn.execute(
        text(
            f"""
            INSERT INTO {names.table("silences")} (rule, scope, reason, created_by, starts_at, ends_at, created_at)
            VALUES (:rule, :scope, :reason, :created_by, :starts_at, :ends_at, :starts_at)
            RETURNING {_COLUMNS}
            """
        ),
        {
            "rule": rule, "scope": scope, "reason": reason, "created_by": created_by,
            "starts_at": starts_at, "ends_at": ends_at,
        },
    ).mappings().one()
    return Silence(**row)


def end_silence(conn: Connection, names: Names, silence_id: int, now: datetime) -> Silence | None:
    """End a silence at `now` (no-op for one already over); returns it, or None when the id does not exist."""
    row = conn.execute(
        text(
            f"""
            UPDATE {names.table("silences")} SET ends_at = least(ends_at, :now)
            WHERE id = :id
            RETURNING {_COLUMNS}
            """
        ),
        {"id": silence_id, "now": now},
    ).mappings().one_or_none()
    return None if row is None else Silence(**row)


def list_silences(conn: Connection, names: Names, now: datetime, include_expired: bool) -> list[Silence]:
    """Return silences in force or still to start, plus ended ones when `include_expired`; newest first."""
    rows = conn.execute(
        text(
            f"SELECT {_COLUMNS} FROM {names.table('silences')} "
            "WHERE :include_expired OR ends_at > :now ORDER BY id DESC"
        ),
        {"now": now, "include_expired": include_expired},
    ).mappings().all()
    return [Silence(**row) for row in rows]
