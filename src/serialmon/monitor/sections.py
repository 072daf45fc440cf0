"""Run each part of the database report safely: read-only, time-bounded, never queued behind a lock.

Every section runs inside a savepoint that is always rolled back. Inside it,
`SET LOCAL` makes the subtransaction read-only and sets a short `lock_timeout`
and a `statement_timeout`. Rolling back undoes those settings and releases the
section's `ACCESS SHARE` locks, so the same code is safe inside a caller's own
transaction: the caller's transaction keeps its mode, timeouts and locks.

Functions such as `pg_total_relation_size()` and `TABLESAMPLE` take an
`ACCESS SHARE` lock on the relation, which waits behind a migration's
`ACCESS EXCLUSIVE` lock. `MonitorRun` therefore reads `pg_locks` once at the
start and skips a statement on a relation that another session holds (or is
waiting for) exclusively; the short `lock_timeout` covers a lock taken after
that check. Catalog and statistics views (`pg_class`, `pg_stat_*`) take no
relation lock and are always read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from serialmon.config import Settings
from serialmon.errors import first_line

logger = logging.getLogger(__name__)

T = TypeVar("T")

_GRANT_FIX = "Grant the monitor's role pg_monitor (GRANT pg_monitor TO <role>) and SELECT on the table."


class SectionSkipped(Exception):
    """A section (or part of one) cannot run; `reason` and `fix` go into the report."""

    def __init__(self, reason: str, fix: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


@dataclass
class LockHolder:
    """Another session's `ACCESS EXCLUSIVE` lock (held or requested) on one relation."""

    relation: str
    pid: int
    granted: bool
    application_name: str | None
    since: str | None

    def describe(self) -> str:
        state = "holds" if self.granted else "is waiting for"
        who = f"pid {self.pid}" + (f" ({self.application_name})" if self.application_name else "")
        since = f" since {self.since}" if self.since else ""
        return f"{who} {state} an ACCESS EXCLUSIVE lock on {self.relation}{since}"


@dataclass
class MonitorRun:
    """One monitor call: its connection, settings, the resolved relation and the notes it collects."""

    conn: Connection
    settings: Settings
    locks: dict[int, LockHolder] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)

    def note_skip(self, section: str, reason: str, fix: str | None = None) -> dict[str, Any]:
        """Record that `section` (or a part of it) was skipped and return the entry."""
        entry = {"section": section, "reason": reason, "fix": fix}
        if entry not in self.skipped:
            self.skipped.append(entry)
        return entry

    def lock_on(self, oids: Iterable[int]) -> LockHolder | None:
        """Return another session's exclusive lock on any of `oids`, if the start-up check saw one."""
        for oid in oids:
            if oid in self.locks:
                return self.locks[oid]
        return None

    def require_unlocked(self, oids: Iterable[int]) -> None:
        """Raise `SectionSkipped` when a relation in `oids` is exclusively locked by another session."""
        holder = self.lock_on(oids)
        if holder is not None:
            raise SectionSkipped(
                f"skipped without waiting: {holder.describe()} (a migration or maintenance command)",
                "Rerun the report when that command has finished.",
            )

    def section(self, name: str, fn: Callable[[Connection], T], *, timeout_ms: int | None = None) -> T:
        """Run `fn(conn)` in a read-only savepoint that is rolled back afterwards.

        Returns what `fn` returns. Raises `SectionSkipped` with a reason and a
        fix when the statement hits the lock timeout, the statement timeout, a
        missing privilege or a missing object; other database errors are
        logged and turned into `SectionSkipped` too, so one failing section
        never fails the report.
        """
        timeout_ms = timeout_ms or self.settings.monitor_statement_timeout_ms
        savepoint = self.conn.begin_nested()
        try:
            self.conn.execute(
                text(
                    "SELECT set_config('transaction_read_only', 'on', true), "
                    "set_config('lock_timeout', :lock_ms, true), "
                    "set_config('statement_timeout', :statement_ms, true)"
                ),
                {"lock_ms": f"{self.settings.monitor_lock_timeout_ms}ms", "statement_ms": f"{timeout_ms}ms"},
            )
            return fn(self.conn)
        except DBAPIError as error:
            raise self._skip_for(name, error, timeout_ms) from error
        finally:
            if savepoint.is_active:
                savepoint.rollback()

    def _skip_for(self, name: str, error: DBAPIError, timeout_ms: int) -> SectionSkipped:
        sqlstate = getattr(error.orig, "sqlstate", None)
        first = first_line(error)
        if sqlstate == "55P03":
            return SectionSkipped(
                f"skipped: a lock was not granted within {self.settings.monitor_lock_timeout_ms} ms "
                f"(another session holds it, for example a migration): {first}",
                "Rerun the report when that session has finished.",
            )
        if sqlstate == "57014":
            return SectionSkipped(
                f"timed out after {timeout_ms} ms",
                "Raise SERIALMON_MONITOR_STATEMENT_TIMEOUT_MS (or SERIALMON_MONITOR_EXACT_TIMEOUT_MS for --exact-bloat).",
            )
        if sqlstate == "42501":
            return SectionSkipped(f"permission denied: {first}", _GRANT_FIX)
        if sqlstate in ("42P01", "42883", "3F000", "42704"):
            return SectionSkipped(f"missing: {first}", "Run `serialmon init` to create serialmon's schema.")
        logger.warning("database monitor section %s failed: %s", name, first)
        return SectionSkipped(f"failed: {first}")


def find_locks(conn: Connection, oids: list[int]) -> dict[int, LockHolder]:
    """Return other sessions' `ACCESS EXCLUSIVE` locks, held or requested, on any of `oids`.

    `pg_locks` is readable by every role; the application name and start
    time come from `pg_stat_activity` and stay empty for a role that may not
    see the other session.
    """
    if not oids:
        return {}
    rows = conn.execute(
        text(
            """
            SELECT l.relation::bigint AS oid, l.relation::regclass::text AS relation, l.pid, l.granted,
                   a.application_name, a.xact_start
            FROM pg_catalog.pg_locks l
            LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'relation'
              AND l.mode = 'AccessExclusiveLock'
              AND l.pid <> pg_backend_pid()
              AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
              AND l.relation = ANY(CAST(:oids AS oid[]))
            """
        ),
        {"oids": oids},
    ).mappings()
    found: dict[int, LockHolder] = {}
    for row in rows:
        found.setdefault(
            int(row["oid"]),
            LockHolder(
                relation=row["relation"],
                pid=row["pid"],
                granted=row["granted"],
                application_name=row["application_name"] or None,
                since=iso(row["xact_start"]),
            ),
        )
    return found


def iso(value: Any) -> Any:
    """Return a JSON-ready value: ISO strings for times, numbers for Decimal."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def plain(row: Any) -> dict[str, Any]:
    """Return a result row mapping as a dict of JSON-ready values."""
    return {key: iso(value) for key, value in dict(row).items()}


def skipped_section(error: SectionSkipped) -> dict[str, Any]:
    """Return the dict a whole section is replaced by when it cannot run."""
    return {"available": False, "reason": error.reason, "fix": error.fix}
