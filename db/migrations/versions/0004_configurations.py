"""configurations: precision and stability move onto the run

A run belongs to one configuration (precision, runtime, runtime_version, threads, cpu_mask,
compute_units). Existing runs take their device's precision; no run is unstable. Each measurement
may carry its own per-call overhead (so a resumed run keeps every op's).

Revision ID: 0004_configurations
Revises: 0003_run_idempotency_key
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_configurations"
down_revision = "0003_run_idempotency_key"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("precision", sa.String(length=16), nullable=False, server_default="fp32"))
        batch_op.add_column(sa.Column("unstable", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("measurements", schema=None) as batch_op:
        batch_op.add_column(sa.Column("overhead_us", sa.Float(), nullable=True))
    op.execute("UPDATE runs SET precision = (SELECT devices.precision FROM devices WHERE devices.id = runs.device_id)")


def downgrade() -> None:
    with op.batch_alter_table("measurements", schema=None) as batch_op:
        batch_op.drop_column("overhead_us")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("unstable")
        batch_op.drop_column("precision")
