"""`DatabaseMonitor`: size, growth, JSONB, indexes, queries and bloat of the monitored table.

    monitor = get_db_monitor()
    report = await monitor.get_full_report()          # or get_full_report(session)
    conditions = await monitor.check_alerts(session)

Every method accepts `session=None` (serialmon's own database connection) or
a SQLAlchemy `AsyncSession`, `AsyncConnection`, `Session` or `Connection`.
With a caller's session the reads run inside the caller's transaction, in
savepoints that are rolled back, so its mode and locks stay unchanged.
The synchronous implementation of each method is the module function named in
its docstring, taking a `Connection` and `Settings`.

Cost and safety: only the JSONB sample (`TABLESAMPLE SYSTEM` of
`monitor_sample_pages` heap pages) and the exact bloat measurement (on
request) read table pages. Every read runs read-only with `lock_timeout`
and `statement_timeout`. A relation that another session has locked
exclusively is skipped with a note instead of waited on.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import Connection

from serialmon.config import Settings, get_settings
from serialmon.db import AnySession, arun, read_only
from serialmon.monitor.checks import DatabaseCondition, check_conditions
from serialmon.monitor.sections import MonitorRun, SectionSkipped, skipped_section

__all__ = ["DatabaseMonitor", "DatabaseCondition", "check_conditions", "get_db_monitor"]


class DatabaseMonitor:
    """Report on the monitored table's health; keeps no state besides its settings."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings

    @property
    def settings(self) -> Settings:
        """The settings given at construction, else the process-wide ones at call time."""
        return self._settings or get_settings()

    async def _section(self, session: AnySession, build: Any) -> dict[str, Any]:
        """Run `build(run, relation)` on a fresh run; a skipped section becomes its reason dict."""
        from serialmon.monitor.space import start_run

        settings = self.settings

        def work(conn: Connection) -> dict[str, Any]:
            if session is None:
                read_only(conn)
            run, relation = start_run(conn, settings)
            try:
                result = build(run, relation)
            except SectionSkipped as skipped:
                return skipped_section(skipped)
            if run.skipped and isinstance(result, dict):
                result = {**result, "skipped": run.skipped}
            return result

        return await arun(session, work, settings)

    async def get_table_stats(self, session: AnySession = None) -> dict[str, Any]:
        """Return heap, TOAST, index and total bytes, tuples, vacuum/analyze times and the TOAST share.

        Implementation: `serialmon.monitor.space.table_stats`.
        """
        from serialmon.monitor.space import table_stats

        return await self._section(session, table_stats)

    async def get_jsonb_stats(self, session: AnySession = None) -> dict[str, Any]:
        """Return stored sizes of `serialized_content` (ledger or sample) and the other JSONB columns.

        Implementation: `serialmon.monitor.jsonb.jsonb_stats`.
        """
        from serialmon.monitor.jsonb import estimated_rows, jsonb_stats
        from serialmon.monitor.space import tuple_stats

        def build(run: MonitorRun, relation: Any) -> dict[str, Any]:
            live = run.section("jsonb", lambda conn: tuple_stats(conn, relation)).get("live_tuples")
            return jsonb_stats(run, relation, estimated_rows(relation, live))

        return await self._section(session, build)

    async def get_index_health(self, session: AnySession = None) -> dict[str, Any]:
        """Return per-index size, scans, cache hits and validity, unused indexes and the GIN index state.

        Implementation: `serialmon.monitor.indexes.index_health`.
        """
        from serialmon.monitor.indexes import index_health

        return await self._section(session, index_health)

    async def get_query_stats(self, session: AnySession = None, limit: int = 20) -> dict[str, Any]:
        """Return the `pg_stat_statements` entries touching the table, by total and by mean time.

        Raises `ValueError` when `limit` is outside 1-1000. When the extension
        is missing or not preloaded, returns `available: False` with the
        reason and fix. Implementation: `serialmon.monitor.statements.query_stats`.
        """
        from serialmon.monitor.statements import query_stats

        if not 1 <= limit <= 1000:
            raise ValueError(f"limit={limit} is out of range; expected 1 to 1000")
        return await self._section(session, lambda run, relation: query_stats(run, relation, limit))

    async def get_bloat(self, session: AnySession = None, exact: bool = False) -> dict[str, Any]:
        """Return the scan-free bloat estimate, plus the `pgstattuple` measurement when `exact`.

        `exact=True` reads every page of the table, its TOAST table and its
        B-tree indexes. Implementation: `serialmon.monitor.bloat.bloat`.
        """
        from serialmon.monitor.bloat import bloat

        return await self._section(session, lambda run, relation: bloat(run, relation, exact=exact))

    async def get_growth(self, session: AnySession = None) -> dict[str, Any]:
        """Return MB per hour over the last hour and day, days until the size limit and recent cache hits.

        Implementation: `serialmon.monitor.growth.growth`.
        """
        from serialmon.monitor.growth import growth

        return await self._section(session, growth)

    async def record_size_sample(self, session: AnySession = None) -> dict[str, Any] | None:
        """Insert a size sample unless one is younger than `size_sample_interval_sec`; return it or None.

        Writes `serialmon.table_size_samples` (never the monitored table) and
        deletes samples older than `size_samples_retention_days`. With a
        caller's session the caller commits. Implementation:
        `serialmon.monitor.growth.record_size_sample`.
        """
        from serialmon.monitor.growth import record_size_sample

        settings = self.settings
        return await arun(session, lambda conn: record_size_sample(conn, settings), settings)

    async def check_alerts(
        self, session: AnySession = None, *, record_sample: bool | None = None
    ) -> list[DatabaseCondition]:
        """Return the database conditions that hold now (rules and defaults in `serialmon.monitor.checks`).

        Records a size sample first, as `get_full_report` does (by default only
        with `session=None`). Implementation: `serialmon.monitor.checks.check_conditions`.
        """
        settings = self.settings
        if record_sample if record_sample is not None else session is None:
            await self._try_sample(session)

        def work(conn: Connection) -> list[DatabaseCondition]:
            if session is None:
                read_only(conn)
            return check_conditions(conn, settings, record_sample=False)

        return await arun(session, work, settings)

    async def get_full_report(
        self, session: AnySession = None, exact_bloat: bool = False, *, record_sample: bool | None = None
    ) -> dict[str, Any]:
        """Return the full report dict (keys in `serialmon.monitor.report.full_report`).

        Records a size sample first (at most one per interval) when
        `record_sample` is true, which by default it is only with
        `session=None`: a caller's transaction is not written to unless asked.
        A sample that cannot be written (for example, the role may not
        insert) is listed under `skipped` and the report goes on.
        """
        from serialmon.monitor.report import full_report

        settings = self.settings
        sample_note: dict[str, Any] | None = None
        if record_sample if record_sample is not None else session is None:
            sample_note = await self._try_sample(session)

        def work(conn: Connection) -> dict[str, Any]:
            if session is None:
                read_only(conn)
            return full_report(conn, settings, exact_bloat=exact_bloat)

        report = await arun(session, work, settings)
        if sample_note is not None:
            report["skipped"].append(sample_note)
        return report

    async def _try_sample(self, session: AnySession) -> dict[str, Any] | None:
        from sqlalchemy.exc import DBAPIError

        from serialmon.errors import first_line

        from serialmon.monitor.growth import record_size_sample

        settings = self.settings

        def sample(conn: Connection) -> None:
            # A savepoint keeps a failed insert from aborting a caller's transaction.
            with conn.begin_nested():
                record_size_sample(conn, settings)

        try:
            await arun(session, sample, settings)
        except DBAPIError as error:
            return {
                "section": "growth",
                "reason": f"no size sample recorded: {first_line(error)}",
                "fix": "GRANT INSERT, DELETE, SELECT ON serialmon.table_size_samples TO <role>;",
            }
        return None


_monitor: DatabaseMonitor | None = None
_monitor_lock = threading.Lock()


def get_db_monitor() -> DatabaseMonitor:
    """Return the process-wide `DatabaseMonitor` (it reads the process-wide settings at each call)."""
    global _monitor
    with _monitor_lock:
        if _monitor is None:
            _monitor = DatabaseMonitor()
        return _monitor
