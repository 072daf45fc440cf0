"""Checks of a serialmon installation, each with the fix for what it finds wrong.

`run_checks()` never raises: every problem becomes a `Check` with status
"fail" (serialmon cannot work) or "warn" (a feature is limited), and a fix.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import sys
from dataclasses import dataclass

from sqlalchemy import Connection, text

from serialmon.config import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """The outcome of one check."""

    name: str
    status: str  # "ok", "warn" or "fail"
    detail: str
    fix: str = ""


def check_python() -> Check:
    version = ".".join(str(part) for part in sys.version_info[:3])
    if sys.version_info < (3, 10):
        return Check("python", "fail", f"Python {version}", "Install Python 3.10 or newer.")
    return Check("python", "ok", f"Python {version}")


def check_dependencies() -> Check:
    """Compare every declared dependency of serialmon with what is installed."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return Check("dependencies", "fail", "packaging is missing", "Run `pip install -e .` (or `pip install serialmon`).")

    try:
        declared = importlib.metadata.requires("serialmon") or []
    except importlib.metadata.PackageNotFoundError:
        return Check("dependencies", "fail", "serialmon is not installed as a package", "Run `pip install -e .`.")
    problems = []
    for line in declared:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{requirement.name} missing")
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{requirement.name} {installed} does not satisfy {requirement.specifier}")
    if problems:
        return Check("dependencies", "fail", "; ".join(problems), "Run `pip install -e .` (or `pip install serialmon`).")
    return Check("dependencies", "ok", f"{len(declared)} declared requirements satisfied")


def _database_checks(conn: Connection, settings: Settings) -> list[Check]:
    from serialmon.db import names
    from serialmon.schema import current_revision, table_exists

    checks = []
    version = conn.execute(text("SHOW server_version")).scalar_one()
    user = conn.execute(text("SELECT current_user")).scalar_one()
    major = int(conn.execute(text("SHOW server_version_num")).scalar_one()) // 10000
    status = "ok" if major >= 13 else "warn"
    checks.append(Check(
        "database", status, f"PostgreSQL {version}, connected as {user}",
        "" if status == "ok" else "serialmon is tested on PostgreSQL 13 and newer.",
    ))

    revision = current_revision(conn, settings)
    if revision is None:
        checks.append(Check("schema", "fail", f"schema {settings.state_schema!r} is not initialised",
                            "Run `serialmon init`."))
    else:
        checks.append(Check("schema", "ok", f"schema {settings.state_schema!r} at revision {revision}"))

    table = f"{settings.models_schema}.{settings.models_table}"
    if not table_exists(conn, settings.models_schema, settings.models_table):
        checks.append(Check(
            "monitored table", "fail", f"{table} does not exist",
            "Point SERIALMON_MODELS_SCHEMA / SERIALMON_MODELS_TABLE at the pipeline's table, "
            "or run `serialmon init --create-models-table` for a new database.",
        ))
        return checks

    missing = _missing_columns(conn, settings)
    if missing:
        checks.append(Check(
            "monitored table", "fail",
            f"{table} lacks the column(s) {', '.join(missing)} that serialmon reads",
            "Point SERIALMON_MODELS_SCHEMA / SERIALMON_MODELS_TABLE at the pipeline's serialized_models table.",
        ))
        return checks

    quoted = names(settings).models
    can_select = conn.execute(
        text("SELECT has_table_privilege(current_user, CAST(:table AS regclass), 'SELECT')"), {"table": quoted}
    ).scalar_one()
    if not can_select:
        checks.append(Check(
            "privileges", "fail", f"role {user} cannot SELECT from {table}",
            f"Run as an administrator: GRANT SELECT ON {quoted} TO {_quote(user)};",
        ))
    else:
        estimate = conn.execute(
            text("SELECT reltuples::bigint FROM pg_class WHERE oid = CAST(:table AS regclass)"), {"table": quoted}
        ).scalar_one()
        rows = f"about {estimate} rows" if estimate >= 0 else "not analysed yet, so no row estimate"
        checks.append(Check("monitored table", "ok", f"{table} readable, {rows}"))

    monitor = conn.execute(
        text("SELECT rolsuper OR pg_has_role(current_user, 'pg_monitor', 'MEMBER') FROM pg_roles "
             "WHERE rolname = current_user")
    ).scalar_one()
    if not monitor:
        checks.append(Check(
            "monitoring role", "warn", f"role {user} is neither superuser nor member of pg_monitor",
            f"GRANT pg_monitor TO {_quote(user)}; (query text and some statistics stay hidden without it)",
        ))
    checks.extend(_extension_checks(conn))
    return checks


# The columns of the pipeline's table that the ledger and the simulator read.
REQUIRED_COLUMNS = (
    "id", "model_name", "model_type", "category", "feature_count", "serialized_content", "created_at", "updated_at",
)


def _missing_columns(conn: Connection, settings: Settings) -> list[str]:
    present = set(conn.execute(
        text(
            "SELECT a.attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :schema AND c.relname = :table AND a.attnum > 0 AND NOT a.attisdropped"
        ),
        {"schema": settings.models_schema, "table": settings.models_table},
    ).scalars())
    return [column for column in REQUIRED_COLUMNS if column not in present]


def _extension_checks(conn: Connection) -> list[Check]:
    checks = []
    # pg_settings hides superuser-only settings from roles without pg_read_all_settings.
    preload = conn.execute(
        text("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'shared_preload_libraries'")
    ).scalar_one_or_none()
    installed = dict(conn.execute(text("SELECT extname, extversion FROM pg_extension")).all())
    if preload is None:
        checks.append(Check(
            "pg_stat_statements", "warn", "cannot read shared_preload_libraries with this role",
            "GRANT pg_monitor (which includes pg_read_all_settings) to this role.",
        ))
    elif "pg_stat_statements" not in preload:
        checks.append(Check(
            "pg_stat_statements", "warn", "not in shared_preload_libraries",
            "Add pg_stat_statements to shared_preload_libraries in postgresql.conf and restart the server.",
        ))
    elif "pg_stat_statements" not in installed:
        checks.append(Check(
            "pg_stat_statements", "warn", "preloaded but the extension is not created in this database",
            "Run `CREATE EXTENSION pg_stat_statements;` as a superuser (or `serialmon init`).",
        ))
    else:
        checks.append(Check("pg_stat_statements", "ok", f"version {installed['pg_stat_statements']}"))

    if "pgstattuple" not in installed:
        checks.append(Check(
            "pgstattuple", "warn", "not created; exact bloat measurement is unavailable",
            "Run `CREATE EXTENSION pgstattuple;` as a superuser (or `serialmon init`).",
        ))
    else:
        checks.append(Check("pgstattuple", "ok", f"version {installed['pgstattuple']}"))
    return checks


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def check_database(settings: Settings) -> list[Check]:
    """Check reachability, schema, the monitored table, privileges and extensions."""
    from serialmon.db import describe_url, run_sync
    from serialmon.errors import SerialmonError

    try:
        return run_sync(None, lambda conn: _database_checks(conn, settings), settings)
    except SerialmonError as error:
        fix = (error.fix or "").replace(" (`serialmon doctor`)", "")  # the user is already running it
        return [Check("database", "fail", str(error).split(" Check ")[0], fix)]
    except Exception as error:  # noqa: BLE001 - a doctor reports, it does not crash
        orig = getattr(error, "orig", None) or error
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
        target = describe_url(settings.database_url.get_secret_value()) if settings.database_url else "embedded server"
        return [Check(
            "database", "fail", f"{target}: {first}",
            "Check MODEL_DATA_DB_URL / DATABASE_URL (host, port, database name, user, password).",
        )]


def check_smtp(settings: Settings) -> Check:
    """Connect to the configured SMTP server, negotiate TLS and log in; sends no mail."""
    if not settings.smtp_configured:
        return Check(
            "smtp", "warn", f"no SMTP_HOST set; alert e-mails are written to {settings.resolved_outbox_dir}",
            "Set SMTP_HOST, SMTP_PORT, SMTP_USER, SMTP_PASSWORD and ALERT_TO_EMAILS to send e-mail.",
        )
    try:
        detail = asyncio.run(_probe_smtp(settings))
    except Exception as error:  # noqa: BLE001 - reported with its reason
        from serialmon.alerts.notify import describe_smtp_error

        # The same reason and hint as a failed delivery; the password is masked in case a server echoes it.
        reason = describe_smtp_error(error, settings)
        if settings.smtp_password:
            reason = reason.replace(settings.smtp_password.get_secret_value(), "***")
        return Check(
            "smtp", "fail", reason,
            "Check SMTP_HOST, SMTP_PORT, SMTP_USER, SMTP_PASSWORD and SERIALMON_SMTP_SECURITY.",
        )
    if not settings.alert_to_emails:
        return Check("smtp", "warn", detail + "; ALERT_TO_EMAILS is empty", "Set ALERT_TO_EMAILS=ops@example.com.")
    return Check("smtp", "ok", detail)


async def _probe_smtp(settings: Settings) -> str:
    import aiosmtplib

    implicit_tls = settings.smtp_security == "tls" or (settings.smtp_security == "auto" and settings.smtp_port == 465)
    client = aiosmtplib.SMTP(
        hostname=settings.smtp_host, port=settings.smtp_port, use_tls=implicit_tls,
        start_tls=False, timeout=settings.smtp_timeout_sec,
    )
    await client.connect()
    try:
        security = "implicit TLS" if implicit_tls else "plain"
        if not implicit_tls and settings.smtp_security != "plain":
            if client.supports_extension("starttls"):
                await client.starttls()
                security = "STARTTLS"
            elif not settings.smtp_allow_plain:
                raise RuntimeError("server does not offer STARTTLS and SERIALMON_SMTP_ALLOW_PLAIN is off")
        if settings.smtp_user:
            password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
            await client.login(settings.smtp_user, password)
            return f"{settings.smtp_host}:{settings.smtp_port} reachable ({security}), login as {settings.smtp_user} ok"
        return f"{settings.smtp_host}:{settings.smtp_port} reachable ({security}), no login configured"
    finally:
        try:
            await client.quit()
        except Exception:  # noqa: BLE001 - closing a probe connection
            client.close()


def run_checks(settings: Settings, *, smtp: bool = False) -> list[Check]:
    """Run every check; never raises."""
    checks = [check_python(), check_dependencies(), *check_database(settings)]
    if smtp:
        checks.append(check_smtp(settings))
    return checks
