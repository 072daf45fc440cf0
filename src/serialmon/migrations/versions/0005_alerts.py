"""Add the columns the alert state machine needs.

- `alert_state.source`: which rule group evaluates the key, so that a key whose
  group ran and found nothing is known to be clear.
- `alert_state.last_notified_state` and `notify_seq`: what operators were last
  told and a per-key notification counter that makes outbox keys deterministic.
- `alert_state.silenced_by`, `fix`: shown by `alerts list`.
- `alert_history.seq` with a unique (alert_key, seq): one row per transition,
  even when two evaluators race.
- `alert_history.notification`, `suppressed`, `details`: what was sent for the
  transition, or why nothing was.

Revision ID: 0005_alerts
Revises: 0001_initial
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql as pg

revision = "0005_alerts"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def _schema() -> str:
    return context.config.attributes["schema"]


def upgrade() -> None:
    schema = _schema()

    op.add_column("alert_state", sa.Column("source", sa.String(40)), schema=schema)
    op.add_column("alert_state", sa.Column("last_notified_state", sa.String(20)), schema=schema)
    op.add_column(
        "alert_state", sa.Column("notify_seq", sa.Integer, nullable=False, server_default="0"), schema=schema
    )
    op.add_column("alert_state", sa.Column("silenced_by", sa.BigInteger), schema=schema)
    op.add_column("alert_state", sa.Column("fix", sa.Text), schema=schema)

    op.add_column("alert_history", sa.Column("seq", sa.Integer), schema=schema)
    op.add_column("alert_history", sa.Column("notification", sa.String(20)), schema=schema)
    op.add_column("alert_history", sa.Column("suppressed", sa.String(20)), schema=schema)
    op.add_column("alert_history", sa.Column("details", pg.JSONB), schema=schema)
    op.create_index(
        "alert_history_key_seq_key", "alert_history", ["alert_key", "seq"], unique=True, schema=schema
    )

    op.add_column("notification_outbox", sa.Column("alert_keys", pg.ARRAY(sa.Text)), schema=schema)
    op.create_index("silences_rule_idx", "silences", ["rule", "ends_at"], schema=schema)


def downgrade() -> None:
    schema = _schema()
    op.drop_index("silences_rule_idx", table_name="silences", schema=schema)
    op.drop_column("notification_outbox", "alert_keys", schema=schema)
    op.drop_index("alert_history_key_seq_key", table_name="alert_history", schema=schema)
    for column in ("details", "suppressed", "notification", "seq"):
        op.drop_column("alert_history", column, schema=schema)
    for column in ("fix", "silenced_by", "notify_seq", "last_notified_state", "source"):
        op.drop_column("alert_state", column, schema=schema)
