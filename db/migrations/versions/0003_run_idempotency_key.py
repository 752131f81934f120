"""runs.idempotency_key: a retried POST /runs returns the run it opened

Revision ID: 0003_run_idempotency_key
Revises: 0001
Create Date: 2026-11-26 12:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_run_idempotency_key"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint("uq_runs_device_idempotency_key", ["device_id", "idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_runs_device_idempotency_key", type_="unique")
        batch_op.drop_column("idempotency_key")
