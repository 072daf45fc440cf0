"""The full database report: every section in one dict, each section failing on its own."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy import Connection, text

from serialmon.config import Settings
from serialmon.monitor.bloat import bloat
from serialmon.monitor.checks import evaluate
from serialmon.monitor.growth import growth_or_reason
from serialmon.monitor.indexes import index_health
from serialmon.monitor.jsonb import estimated_rows, jsonb_stats
from serialmon.monitor.sections import MonitorRun, SectionSkipped, skipped_section
from serialmon.monitor.space import start_run, table_stats
from serialmon.monitor.statements import query_stats

logger = logging.getLogger(__name__)

REPORT_KEYS = ("table", "jsonb", "indexes", "queries", "bloat", "growth", "alerts")


def _guarded(run: MonitorRun, name: str, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return build()
    except SectionSkipped as skipped:
        run.note_skip(name, skipped.reason, skipped.fix)
        return skipped_section(skipped)


def full_report(conn: Connection, settings: Settings, *, exact_bloat: bool = False, query_limit: int = 20) -> dict[str, Any]:
    """Build the report dict on `conn`; JSON-serialisable, times as ISO strings.

    Top-level keys: `generated_at`, `server_version`, `relation`, `table`,
    `jsonb`, `indexes`, `queries`, `bloat`, `growth`, `alerts` (a list of
    condition dicts) and `skipped` (one entry per section or part that was
    skipped, with `section`, `reason` and `fix`). A skipped section is
    `{"available": False, "reason": ..., "fix": ...}`. Raises `MissingTable`
    when the monitored table does not exist.
    """
    run, relation = start_run(conn, settings)
    server_version = conn.execute(text("SHOW server_version")).scalar_one()

    table = _guarded(run, "table", lambda: table_stats(run, relation))
    rows = estimated_rows(relation, table.get("live_tuples"))
    report: dict[str, Any] = {
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "server_version": server_version,
        "relation": relation.quoted,
        "table": table,
        "jsonb": _guarded(run, "jsonb", lambda: jsonb_stats(run, relation, rows)),
        "indexes": _guarded(run, "indexes", lambda: index_health(run, relation)),
        "queries": _guarded(run, "queries", lambda: query_stats(run, relation, query_limit)),
        "bloat": _guarded(run, "bloat", lambda: bloat(run, relation, exact=exact_bloat)),
        "growth": growth_or_reason(run, relation),
        "alerts": [condition.as_dict() for condition in evaluate(run, relation)],
    }
    report["skipped"] = run.skipped
    return report
