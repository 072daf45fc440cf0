"""Database conditions for alerting: each rule that currently holds, with severity, value, threshold and fix.

| rule | holds when (defaults) | what others use |
|---|---|---|
| db_table_size | total bytes >= 80 % (warning) / 95 % (critical) of `table_size_limit_bytes` | check_postgres `relation_size`: no default, sizes given per call |
| db_bloat | estimated heap + TOAST bloat >= 30 % / 50 % and >= 100 MiB wasted | check_postgres `bloat`: 1 GB / 5 GB wasted; awesome-prometheus-alerts: > 80 % on tables > 200 MB; pghero: index bloat >= 100 MB |
| db_cache_hit_ratio | hit ratio between the last two samples < 0.99 / 0.90, at >= 1000 block accesses | pghero: 99 % (lifetime counters) |
| db_dead_tuples | dead / (live + dead) >= 0.10 / 0.20 and >= 10,000 dead tuples | awesome-prometheus-alerts (postgres_exporter): > 10,000 dead and >= 10 % |
| db_autovacuum | autovacuum is due (dead tuples over its own trigger) and no vacuum for 240 h | awesome-prometheus-alerts: not autovacuumed for 10 days |
| db_gin_index | the GIN index on feature_types is missing (warning) or invalid (critical) | awesome-prometheus-alerts: invalid index (`ccnew`) for 6 h |
| db_long_transaction | a transaction holding back vacuum is open >= 15 / 60 minutes | pghero: long-running queries >= 60 s |
| db_query_stats_unavailable | pg_stat_statements is missing, not preloaded, or hides statements | pghero: shows "query stats not enabled" |

Every threshold is a `SERIALMON_*` setting.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Callable

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from serialmon.config import Settings
from serialmon.errors import first_line
from serialmon.monitor.bloat import estimate_bloat
from serialmon.monitor.growth import growth, record_size_sample
from serialmon.monitor.indexes import index_health
from serialmon.monitor.sections import MonitorRun, SectionSkipped
from serialmon.monitor.space import RelationInfo, format_bytes, relation_sizes, start_run, tuple_stats
from serialmon.monitor.statements import QueryStatsUnavailable, query_stats

logger = logging.getLogger(__name__)


# Every rule name that check_conditions() can return; silences are checked against it.
CONDITION_RULES: tuple[str, ...] = (
    "db_autovacuum",
    "db_bloat",
    "db_cache_hit_ratio",
    "db_dead_tuples",
    "db_gin_index",
    "db_long_transaction",
    "db_query_stats_unavailable",
    "db_table_size",
)


@dataclass(frozen=True)
class DatabaseCondition:
    """One database rule that currently holds; the alert manager turns it into an alert."""

    rule: str
    scope: str
    severity: str
    value: float | None
    threshold: float | None
    message: str
    fix: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _grade(value: float, warning: float, critical: float, *, below: bool = False) -> tuple[str, float] | None:
    """Return (severity, threshold crossed) or None; `below` means low values are bad."""
    if below:
        if value < critical:
            return "critical", critical
        if value < warning:
            return "warning", warning
        return None
    if value >= critical:
        return "critical", critical
    if value >= warning:
        return "warning", warning
    return None


def _table_size(run: MonitorRun, relation: RelationInfo) -> list[DatabaseCondition]:
    settings = run.settings
    limit = settings.table_size_limit_bytes
    if not limit:
        return []
    total = relation_sizes(run, relation)["total_bytes"]
    graded = _grade(total, limit * settings.table_size_warning_ratio, limit * settings.table_size_critical_ratio)
    if graded is None:
        return []
    severity, threshold = graded
    return [
        DatabaseCondition(
            rule="db_table_size",
            scope=relation.quoted,
            severity=severity,
            value=float(total),
            threshold=threshold,
            message=(
                f"{relation.quoted} is {format_bytes(total)}, {total / limit:.0%} of the "
                f"{format_bytes(limit)} limit ({severity} at {threshold / limit:.0%})"
            ),
            fix="Archive or delete old rows and reclaim the space, or raise SERIALMON_TABLE_SIZE_LIMIT_BYTES.",
        )
    ]


def _bloat(run: MonitorRun, relation: RelationInfo) -> list[DatabaseCondition]:
    settings = run.settings
    table = estimate_bloat(run, relation)["table"]
    sizes = relation_sizes(run, relation)
    if sizes["heap_main_bytes"] + sizes["toast_main_bytes"] < settings.db_bloat_min_bytes:
        return []  # even all of it wasted would stay under the minimum
    if not table["complete"]:
        # A percentage of the heap or the TOAST table alone would be judged as the table's.
        missing = [part for part in ("heap", "toast") if part in table and not table[part].get("available", True)]
        first = table[missing[0]]
        raise SectionSkipped(f"no {' or '.join(missing)} estimate: {first['reason']}", first.get("fix"))
    percent, wasted = table["bloat_percent"], table["wasted_bytes"]
    if percent is None or wasted < settings.db_bloat_min_bytes:
        return []
    graded = _grade(percent, settings.db_bloat_warning_percent, settings.db_bloat_critical_percent)
    if graded is None:
        return []
    severity, threshold = graded
    return [
        DatabaseCondition(
            rule="db_bloat",
            scope=relation.quoted,
            severity=severity,
            value=percent,
            threshold=threshold,
            message=(
                f"{relation.quoted} (heap and TOAST) is an estimated {percent:.1f}% bloated: "
                f"{format_bytes(wasted)} of {format_bytes(table['size_bytes'])} hold no live rows"
            ),
            fix=(
                "VACUUM makes dead space reusable; to return it to the operating system run pg_repack "
                "(or VACUUM FULL, which locks the table) in a maintenance window. Confirm with `db-report --exact-bloat`."
            ),
        )
    ]


def _cache_hit(run: MonitorRun, relation: RelationInfo) -> list[DatabaseCondition]:
    settings = run.settings
    cache = growth(run, relation)["cache_hit"]
    ratio = cache.get("overall")
    if ratio is None or cache.get("blocks_accessed", 0) < settings.db_cache_hit_min_blocks:
        return []
    graded = _grade(ratio, settings.db_cache_hit_warning, settings.db_cache_hit_critical, below=True)
    if graded is None:
        return []
    severity, threshold = graded
    return [
        DatabaseCondition(
            rule="db_cache_hit_ratio",
            scope=relation.quoted,
            severity=severity,
            value=ratio,
            threshold=threshold,
            message=(
                f"{ratio:.1%} of {cache['blocks_accessed']} block reads of {relation.quoted} hit shared buffers "
                f"between {cache['from']} and {cache['to']} ({severity} below {threshold:.0%})"
            ),
            fix="Find the statements that read the table from disk (db-report queries) and add an index, "
            "or raise shared_buffers.",
        )
    ]


def _dead_tuples(run: MonitorRun, relation: RelationInfo) -> list[DatabaseCondition]:
    settings = run.settings
    stats = run.section("checks", lambda conn: tuple_stats(conn, relation))
    live, dead = stats.get("live_tuples") or 0, stats.get("dead_tuples") or 0
    if dead < settings.db_dead_tuples_min or live + dead == 0:
        return []
    ratio = dead / (live + dead)
    graded = _grade(ratio, settings.db_dead_tuples_warning_ratio, settings.db_dead_tuples_critical_ratio)
    if graded is None:
        return []
    severity, threshold = graded
    return [
        DatabaseCondition(
            rule="db_dead_tuples",
            scope=relation.quoted,
            severity=severity,
            value=ratio,
            threshold=threshold,
            message=f"{dead} dead tuples in {relation.quoted}, {ratio:.0%} of all tuples ({severity} at {threshold:.0%})",
            fix=f"Run VACUUM {relation.quoted}; and check that autovacuum keeps up (db_autovacuum, long transactions).",
        )
    ]


def _autovacuum_state(conn: Connection, relation: RelationInfo) -> dict[str, Any]:
    row = conn.execute(
        text(
            """
            SELECT s.n_dead_tup AS dead,
                   greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum,
                   extract(epoch FROM now() - greatest(s.last_vacuum, s.last_autovacuum)) / 3600.0 AS hours,
                   c.reltuples,
                   coalesce((SELECT option_value FROM pg_catalog.pg_options_to_table(c.reloptions)
                             WHERE option_name = 'autovacuum_vacuum_threshold'),
                            current_setting('autovacuum_vacuum_threshold'))::float8 AS base_threshold,
                   coalesce((SELECT option_value FROM pg_catalog.pg_options_to_table(c.reloptions)
                             WHERE option_name = 'autovacuum_vacuum_scale_factor'),
                            current_setting('autovacuum_vacuum_scale_factor'))::float8 AS scale_factor,
                   current_setting('autovacuum')::bool
                   AND coalesce((SELECT option_value FROM pg_catalog.pg_options_to_table(c.reloptions)
                                 WHERE option_name = 'autovacuum_enabled'), 'true')::bool AS enabled
            FROM pg_catalog.pg_stat_all_tables s JOIN pg_catalog.pg_class c ON c.oid = s.relid
            WHERE s.relid = CAST(:oid AS oid)
            """
        ),
        {"oid": relation.oid},
    ).mappings().first()
    return dict(row) if row else {}


def _autovacuum(run: MonitorRun, relation: RelationInfo) -> list[DatabaseCondition]:
    settings = run.settings
    state = run.section("checks", lambda conn: _autovacuum_state(conn, relation))
    if not state:
        return []
    dead = state["dead"] or 0
    trigger = state["base_threshold"] + state["scale_factor"] * max(float(state["reltuples"]), 0.0)
    hours = float(state["hours"]) if state["hours"] is not None else None
    overdue = hours is None or hours >= settings.db_autovacuum_max_age_hours
    if dead < max(trigger, settings.db_dead_tuples_min) or not overdue:
        return []
    when = f"last vacuumed {hours:.0f} hours ago" if hours is not None else "never vacuumed"
    disabled = "" if state["enabled"] else "; autovacuum is disabled for it"
    return [
        DatabaseCondition(
            rule="db_autovacuum",
            scope=relation.quoted,
            severity="warning",
            value=hours,
            threshold=settings.db_autovacuum_max_age_hours,
            message=(
                f"{relation.quoted} has {dead} dead tuples, over autovacuum's trigger of {trigger:.0f}, "
                f"and was {when}{disabled}"
            ),
            fix=(
                f"Run VACUUM {relation.quoted}; then check autovacuum settings and long transactions "
                "that hold back vacuum."
            ),
        )
    ]


def _gin(run: MonitorRun, relation: RelationInfo) -> list[DatabaseCondition]:
    gin = index_health(run, relation)["gin"]
    if not gin["present"]:
        return [
            DatabaseCondition(
                rule="db_gin_index",
                scope=relation.quoted,
                severity="warning",
                value=None,
                threshold=None,
                message=f"{relation.quoted} has no GIN index on feature_types, so feature-type searches scan the table",
                fix=f"CREATE INDEX CONCURRENTLY ON {relation.quoted} USING GIN (feature_types);",
            )
        ]
    if not gin["is_valid"]:
        return [
            DatabaseCondition(
                rule="db_gin_index",
                scope=gin["name"],
                severity="critical",
                value=None,
                threshold=None,
                message=f"the GIN index {gin['name']} on feature_types is invalid (a failed concurrent build), "
                "so no query uses it",
                fix=f'REINDEX INDEX CONCURRENTLY "{gin["name"]}"; or drop it and create it again.',
            )
        ]
    return []


def _long_transactions(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        text(
            """
            SELECT pid, application_name, state, extract(epoch FROM now() - xact_start) / 60.0 AS minutes
            FROM pg_catalog.pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL
              AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)
            UNION ALL
            SELECT NULL, 'prepared transaction ' || gid, 'prepared', extract(epoch FROM now() - prepared) / 60.0
            FROM pg_catalog.pg_prepared_xacts WHERE database = current_database()
            ORDER BY minutes DESC LIMIT 1
            """
        )
    ).mappings()
    return [dict(row) for row in rows]


def _long_transaction(run: MonitorRun, relation: RelationInfo) -> list[DatabaseCondition]:
    settings = run.settings
    oldest = run.section("checks", _long_transactions)
    if not oldest:
        return []
    row = oldest[0]
    minutes = float(row["minutes"])
    graded = _grade(minutes, settings.db_long_transaction_warning_minutes, settings.db_long_transaction_critical_minutes)
    if graded is None:
        return []
    severity, threshold = graded
    who = f"pid {row['pid']}" if row["pid"] is not None else row["application_name"]
    app = f" ({row['application_name']})" if row["pid"] is not None and row["application_name"] else ""
    return [
        DatabaseCondition(
            rule="db_long_transaction",
            scope=relation.quoted,
            severity=severity,
            value=minutes,
            threshold=threshold,
            message=(
                f"{who}{app} has held a transaction open for {minutes:.0f} minutes (state {row['state']}); "
                f"vacuum cannot remove tuples that died after it started"
            ),
            fix="Commit or end that transaction (SELECT pg_terminate_backend(pid) as a last resort); "
            "set idle_in_transaction_session_timeout to prevent it.",
        )
    ]


def _query_stats(run: MonitorRun, relation: RelationInfo) -> list[DatabaseCondition]:
    try:
        stats = query_stats(run, relation, limit=1)
    except QueryStatsUnavailable as unavailable:
        return [
            DatabaseCondition(
                rule="db_query_stats_unavailable",
                scope=relation.quoted,
                severity="warning",
                value=None,
                threshold=None,
                message=f"query statistics are unavailable: {unavailable.reason}",
                fix=unavailable.fix or "",
            )
        ]
    if stats["hidden_statements"]:
        return [
            DatabaseCondition(
                rule="db_query_stats_unavailable",
                scope=relation.quoted,
                severity="warning",
                value=float(stats["hidden_statements"]),
                threshold=None,
                message=f"{stats['hidden_statements']} statements of other roles are hidden "
                "(<insufficient privilege>) from the monitor's role",
                fix="GRANT pg_read_all_stats TO <monitor role>; (pg_monitor includes it).",
            )
        ]
    return []


# Each check with the condition rule it reports.
_RULES: tuple[tuple[str, Callable[[MonitorRun, RelationInfo], list[DatabaseCondition]]], ...] = (
    ("db_table_size", _table_size),
    ("db_bloat", _bloat),
    ("db_cache_hit_ratio", _cache_hit),
    ("db_dead_tuples", _dead_tuples),
    ("db_autovacuum", _autovacuum),
    ("db_gin_index", _gin),
    ("db_long_transaction", _long_transaction),
    ("db_query_stats_unavailable", _query_stats),
)


@dataclass(frozen=True)
class ConditionResults:
    """Conditions that hold now, and the rules whose data could not be read (neither met nor clear)."""

    conditions: list[DatabaseCondition]
    not_evaluated: frozenset[str]


def evaluate(run: MonitorRun, relation: RelationInfo) -> list[DatabaseCondition]:
    """Evaluate every rule on an open run; a rule whose data cannot be read is skipped and noted."""
    return evaluate_all(run, relation).conditions


def evaluate_all(run: MonitorRun, relation: RelationInfo) -> ConditionResults:
    """Evaluate every rule on an open run, naming the rules that were skipped because their data could not be read."""
    conditions: list[DatabaseCondition] = []
    skipped_rules: set[str] = set()
    for name, rule in _RULES:
        try:
            conditions.extend(rule(run, relation))
        except SectionSkipped as skipped:
            skipped_rules.add(name)
            run.note_skip("alerts", f"{name} not evaluated: {skipped.reason}", skipped.fix)
            logger.info("database rule %s not evaluated: %s", name, skipped.reason)
    return ConditionResults(conditions, frozenset(skipped_rules))


def check_conditions(conn: Connection, settings: Settings, *, record_sample: bool = True) -> list[DatabaseCondition]:
    """Return the database conditions that currently hold for the monitored table.

    See `check_all_conditions`, which also names the rules it could not evaluate.
    """
    return check_all_conditions(conn, settings, record_sample=record_sample).conditions


def check_all_conditions(conn: Connection, settings: Settings, *, record_sample: bool = True) -> ConditionResults:
    """Return the database conditions that hold now and the rules that could not be evaluated.

    With `record_sample`, first records a size sample (at most one per
    `size_sample_interval_sec`) in a savepoint, so that an alert loop keeps
    the cache-hit and growth figures current. A sample that cannot be
    written is logged and skipped. The rules then read catalogs,
    statistics views, the size samples and a bounded TABLESAMPLE, and each
    read waits at most `monitor_lock_timeout_ms` for a lock. Raises `MissingTable`
    when the table does not exist.
    """
    if record_sample:
        _record_sample_quietly(conn, settings)
    run, relation = start_run(conn, settings)
    return evaluate_all(run, relation)


_sample_failure_logged = False


def _record_sample_quietly(conn: Connection, settings: Settings) -> None:
    global _sample_failure_logged
    try:
        with conn.begin_nested():
            record_size_sample(conn, settings)
    except DBAPIError as error:
        # Logged once per process: a role without INSERT would otherwise log at every evaluation.
        if not _sample_failure_logged:
            logger.warning("no size sample recorded (growth and cache hit rules lack data): %s", first_line(error))
            _sample_failure_logged = True
