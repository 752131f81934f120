"""plan_batches: the batches of v2 grid ops the service issued per device, space and configuration

Revision ID: 0008_plan_batches
Revises: 0007_context_cost
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_plan_batches"
down_revision = "0007_context_cost"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "plan_batches",
        sa.Column("id", PK, nullable=False),
        sa.Column("device_id", PK, nullable=False),
        sa.Column("space_id", PK, nullable=False),
        sa.Column("config_id", sa.String(length=32), nullable=False),
        sa.Column("configuration", sa.JSON(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("keys", sa.JSON(), nullable=False),
        sa.Column("failed", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["space_id"], ["spaces.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "space_id", "config_id", "round", name="uq_plan_batches_round"),
    )
    op.create_index("ix_plan_batches_config", "plan_batches", ["device_id", "space_id", "config_id"])


def downgrade() -> None:
    op.drop_index("ix_plan_batches_config", table_name="plan_batches")
    op.drop_table("plan_batches")
