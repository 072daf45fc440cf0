"""Create serialmon's tables.

Revision ID: 0001_initial
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql as pg

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def _schema() -> str:
    return context.config.attributes["schema"]


def upgrade() -> None:
    schema = _schema()
    now = sa.text("now()")

    op.create_table(
        "serialization_events",
        sa.Column("event_id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("model_type", sa.String(20), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("processing_time_sec", sa.Float, nullable=False),
        sa.Column("element_coverage", sa.Float),
        sa.Column("unrecoverable_unknown", sa.Integer),
        sa.Column("feature_count", sa.Integer),
        sa.Column("category", sa.String(100)),
        sa.Column("batch_id", sa.String(64)),
        sa.Column("error_type", sa.Text),
        sa.Column("error_message", sa.Text),
        sa.Column("tags", pg.ARRAY(sa.Text)),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("worker_id", sa.String(255)),
        sa.CheckConstraint("status IN ('success', 'failure', 'skipped')", name="events_status_check"),
        sa.CheckConstraint("processing_time_sec >= 0", name="events_time_check"),
        schema=schema,
    )
    op.create_index("serialization_events_occurred_at_idx", "serialization_events", ["occurred_at"], schema=schema)
    op.create_index(
        "serialization_events_batch_idx", "serialization_events", ["batch_id", "occurred_at"], schema=schema
    )
    op.create_index(
        "serialization_events_model_idx", "serialization_events", ["model_name", "occurred_at"], schema=schema
    )

    op.create_table(
        "batch_jobs",
        sa.Column("batch_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(255)),
        sa.Column("status", sa.String(20), nullable=False, server_default="running"),
        sa.Column("total_models", sa.Integer),
        sa.Column("processed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("succeeded", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("details", pg.JSONB),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'failed', 'abandoned')", name="batch_jobs_status_check"
        ),
        schema=schema,
    )

    op.create_table(
        "worker_heartbeats",
        sa.Column("worker_id", sa.String(255), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("current_model", sa.String(255)),
        sa.Column("batch_id", sa.String(64)),
        sa.Column("events_recorded", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("stopped_at", sa.DateTime(timezone=True)),
        schema=schema,
    )

    op.create_table(
        "model_quality",
        sa.Column("model_id", sa.Integer, primary_key=True),
        sa.Column("model_name", sa.String(255), nullable=False),
        sa.Column("model_type", sa.String(50)),
        sa.Column("category", sa.String(100)),
        sa.Column("feature_count", sa.Integer),
        sa.Column("row_version", sa.Text, nullable=False),
        sa.Column("quality_known", sa.Boolean, nullable=False),
        sa.Column("quality_reason", sa.Text),
        sa.Column("quality_source", sa.String(30)),
        sa.Column("total_features", sa.Integer),
        sa.Column("features_with_elements", sa.Integer),
        sa.Column("element_coverage", sa.Float),
        sa.Column("group_features", sa.Integer),
        sa.Column("analysis_features", sa.Integer),
        sa.Column("recoverable_unknown", sa.Integer),
        sa.Column("unrecoverable_unknown", sa.Integer),
        sa.Column("content_bytes", sa.BigInteger),
        sa.Column("model_created_at", sa.DateTime(timezone=False)),
        sa.Column("model_updated_at", sa.DateTime(timezone=False)),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        schema=schema,
    )
    op.create_index("model_quality_name_idx", "model_quality", ["model_name"], schema=schema)
    op.create_index("model_quality_category_idx", "model_quality", ["category"], schema=schema)
    op.create_index("model_quality_updated_idx", "model_quality", ["model_updated_at"], schema=schema)

    op.create_table(
        "ledger_state",
        sa.Column("relation", sa.Text, primary_key=True),
        sa.Column("refreshed_at", sa.DateTime(timezone=True)),
        sa.Column("rows_seen", sa.BigInteger),
        sa.Column("details", pg.JSONB),
        schema=schema,
    )

    op.create_table(
        "table_size_samples",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("relation", sa.Text, nullable=False),
        sa.Column("heap_bytes", sa.BigInteger, nullable=False),
        sa.Column("toast_bytes", sa.BigInteger, nullable=False),
        sa.Column("index_bytes", sa.BigInteger, nullable=False),
        sa.Column("total_bytes", sa.BigInteger, nullable=False),
        sa.Column("row_estimate", sa.BigInteger),
        sa.Column("live_tuples", sa.BigInteger),
        sa.Column("dead_tuples", sa.BigInteger),
        sa.Column("heap_blks_read", sa.BigInteger),
        sa.Column("heap_blks_hit", sa.BigInteger),
        sa.Column("idx_blks_read", sa.BigInteger),
        sa.Column("idx_blks_hit", sa.BigInteger),
        sa.Column("toast_blks_read", sa.BigInteger),
        sa.Column("toast_blks_hit", sa.BigInteger),
        sa.Column("tidx_blks_read", sa.BigInteger),
        sa.Column("tidx_blks_hit", sa.BigInteger),
        schema=schema,
    )
    op.create_index(
        "table_size_samples_relation_idx", "table_size_samples", ["relation", "sampled_at"], schema=schema
    )

    op.create_table(
        "alert_state",
        sa.Column("alert_key", sa.Text, primary_key=True),
        sa.Column("rule", sa.String(100), nullable=False),
        sa.Column("scope", sa.Text, nullable=False, server_default=""),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("severity", sa.String(20)),
        sa.Column("value", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("message", sa.Text),
        sa.Column("details", pg.JSONB),
        sa.Column("pending_since", sa.DateTime(timezone=True)),
        sa.Column("firing_since", sa.DateTime(timezone=True)),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Column("last_evaluated_at", sa.DateTime(timezone=True)),
        sa.Column("last_notified_at", sa.DateTime(timezone=True)),
        sa.Column("last_notified_severity", sa.String(20)),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.CheckConstraint(
            "state IN ('inactive', 'pending', 'firing', 'resolved')", name="alert_state_state_check"
        ),
        schema=schema,
    )

    op.create_table(
        "alert_history",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("alert_key", sa.Text, nullable=False),
        sa.Column("rule", sa.String(100), nullable=False),
        sa.Column("scope", sa.Text, nullable=False, server_default=""),
        sa.Column("from_state", sa.String(20)),
        sa.Column("to_state", sa.String(20), nullable=False),
        sa.Column("severity", sa.String(20)),
        sa.Column("value", sa.Float),
        sa.Column("threshold", sa.Float),
        sa.Column("message", sa.Text),
        schema=schema,
    )
    op.create_index("alert_history_key_idx", "alert_history", ["alert_key", "at"], schema=schema)
    op.create_index("alert_history_at_idx", "alert_history", ["at"], schema=schema)

    op.create_table(
        "notification_outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("dedup_key", sa.Text, nullable=False, unique=True),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("recipients", pg.ARRAY(sa.Text)),
        sa.Column("subject", sa.Text),
        sa.Column("body_text", sa.Text),
        sa.Column("body_html", sa.Text),
        sa.Column("payload", pg.JSONB),
        sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name="outbox_status_check"),
        schema=schema,
    )
    op.create_index("notification_outbox_due_idx", "notification_outbox", ["status", "next_attempt_at"], schema=schema)

    op.create_table(
        "notification_attempts",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "outbox_id",
            sa.BigInteger,
            sa.ForeignKey(f"{schema}.notification_outbox.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text),
        schema=schema,
    )
    op.create_index("notification_attempts_outbox_idx", "notification_attempts", ["outbox_id"], schema=schema)

    op.create_table(
        "silences",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("rule", sa.String(100), nullable=False),
        sa.Column("scope", sa.Text),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(255)),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        schema=schema,
    )


def downgrade() -> None:
    schema = _schema()
    for table in (
        "silences", "notification_attempts", "notification_outbox", "alert_history", "alert_state",
        "table_size_samples", "ledger_state", "model_quality", "worker_heartbeats", "batch_jobs",
        "serialization_events",
    ):
        op.drop_table(table, schema=schema)
