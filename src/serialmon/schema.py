"""serialmon's own schema (through Alembic) and the monitored table's documented layout.

`init_db()` applies every migration and can run any number of times, from
several processes at once: an advisory lock serialises them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from serialmon.config import Settings, get_settings
from serialmon.db import Names, names, run_sync

logger = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).parent / "migrations"
_INIT_LOCK_ID = 0x5E41A1  # advisory lock key shared by every `serialmon init`

# The pipeline's table, exactly as the pipeline creates it. serialmon creates it
# only on request (`init --create-models-table`) and never alters an existing one.
MODELS_TABLE_DDL = """
CREATE TABLE {table} (
    id SERIAL PRIMARY KEY,
    model_name VARCHAR(255) UNIQUE NOT NULL,
    model_type VARCHAR(50),
    feature_count INTEGER,
    category VARCHAR(100),
    tags TEXT[],
    serialized_content JSONB,
    structure_summary JSONB,
    feature_types TEXT[],
    units JSONB,
    parameters JSONB,
    relations JSONB,
    mass_properties JSONB,
    bounding_box JSONB,
    feature_statuses JSONB,
    model_created_at TIMESTAMP,
    model_author VARCHAR(255),
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW()
)
"""
MODELS_GIN_INDEX_DDL = "CREATE INDEX {index} ON {table} USING GIN (feature_types)"

EXTENSIONS = ("pg_stat_statements", "pgstattuple")


@dataclass
class InitResult:
    """What `init_db()` did, for the CLI to print."""

    schema: str
    revision: str | None
    models_table: str
    models_table_created: bool = False
    models_table_existed: bool = False
    extensions: dict[str, str] = field(default_factory=dict)


def _alembic_config(conn: Connection, schema: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = conn
    config.attributes["schema"] = schema
    return config


def table_exists(conn: Connection, schema: str, table: str) -> bool:
    return bool(
        conn.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = :schema AND c.relname = :table "
                "AND c.relkind IN ('r', 'p'))"
            ),
            {"schema": schema, "table": table},
        ).scalar_one()
    )


def current_revision(conn: Connection, settings: Settings) -> str | None:
    """Return the applied migration heads joined by "+", or None when serialmon's schema is not initialised.

    Each concern adds its migrations on a branch of its own, so a database has
    several heads; they are listed in sorted order.
    """
    if not table_exists(conn, settings.state_schema, "alembic_version"):
        return None
    quoted = names(settings).table("alembic_version")
    heads = conn.execute(text(f"SELECT version_num FROM {quoted} ORDER BY version_num")).scalars().all()
    return "+".join(heads) or None


def _upgrade(conn: Connection, settings: Settings) -> str | None:
    quoted: Names = names(settings)
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _INIT_LOCK_ID})
    conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted.state}"))
    command.upgrade(_alembic_config(conn, settings.state_schema), "heads")
    return current_revision(conn, settings)


def _create_models_table(conn: Connection, settings: Settings, result: InitResult) -> None:
    quoted = names(settings)
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _INIT_LOCK_ID})
    if table_exists(conn, settings.models_schema, settings.models_table):
        result.models_table_existed = True
        return
    conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quoted._quote(settings.models_schema)}"))
    conn.execute(text(MODELS_TABLE_DDL.format(table=quoted.models)))
    index = quoted._quote(f"{settings.models_table[:40]}_feature_types_gin")
    conn.execute(text(MODELS_GIN_INDEX_DDL.format(index=index, table=quoted.models)))
    result.models_table_created = True


def _ensure_extensions(conn: Connection) -> dict[str, str]:
    """Create the optional extensions where the role may; report each outcome instead of failing."""
    outcome: dict[str, str] = {}
    for extension in EXTENSIONS:
        installed = conn.execute(
            text("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = :name"), {"name": extension}
        ).scalar_one_or_none()
        if installed:
            outcome[extension] = f"installed ({installed})"
            continue
        available = conn.execute(
            text("SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = :name"), {"name": extension}
        ).scalar_one_or_none()
        if not available:
            outcome[extension] = "not available on this server"
            continue
        try:
            with conn.begin_nested():
                conn.execute(text(f'CREATE EXTENSION IF NOT EXISTS "{extension}"'))
            outcome[extension] = "created"
        except Exception as error:  # noqa: BLE001 - reported, never fatal
            reason = str(getattr(error, "orig", error)).strip().splitlines()[0]
            outcome[extension] = f"not created: {reason}"
            logger.warning("could not create extension %s: %s", extension, reason)
    return outcome


def init_db(settings: Settings | None = None, *, create_models_table: bool = False) -> InitResult:
    """Apply serialmon's migrations, optionally create the monitored table, and create extensions.

    Idempotent. Never alters an existing monitored table: when it exists,
    `models_table_existed` is set and nothing is done to it.
    """
    settings = settings or get_settings()
    result = InitResult(
        schema=settings.state_schema, revision=None, models_table=f"{settings.models_schema}.{settings.models_table}"
    )
    result.revision = run_sync(None, lambda conn: _upgrade(conn, settings), settings)
    if create_models_table:
        run_sync(None, lambda conn: _create_models_table(conn, settings, result), settings)
    result.extensions = run_sync(None, _ensure_extensions, settings)
    logger.info("serialmon schema %s at revision %s", settings.state_schema, result.revision)
    return result
