"""validations.idempotency_key: a retried POST /validations answers the validation it stored

Revision ID: 0009_validation_idempotency_key
Revises: 0008_plan_batches
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_validation_idempotency_key"
down_revision = "0008_plan_batches"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("validations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("request_sha256", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint("uq_validations_device_idempotency_key", ["device_id", "idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("validations", schema=None) as batch_op:
        batch_op.drop_constraint("uq_validations_device_idempotency_key", type_="unique")
        batch_op.drop_column("request_sha256")
        batch_op.drop_column("idempotency_key")
