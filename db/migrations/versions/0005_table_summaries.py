"""table summaries: per-run per-op summaries and per-configuration coverage counters

``op_stats`` holds one narrow row per op of every finished run (written when the run finishes);
``config_ops`` counts the stable and unstable runs of each configuration that measured each op.
Table assembly reads these instead of every measurement of the device. The runs finished before
this revision are summarized here.

Revision ID: 0005_table_summaries
Revises: 0004_configurations
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_table_summaries"
down_revision = "0004_configurations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "op_stats",
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("device_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("space_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("config_id", sa.String(length=32), nullable=False),
        sa.Column("unstable", sa.Boolean(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("median_us", sa.Float(), nullable=False),
        sa.Column("corrected_us", sa.Float(), nullable=True),
        sa.Column("std_us", sa.Float(), nullable=False),
        sa.Column("p10_us", sa.Float(), nullable=False),
        sa.Column("p90_us", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["space_id"], ["spaces.id"]),
        sa.PrimaryKeyConstraint("run_id", "key"),
    )
    op.create_index("ix_op_stats_config", "op_stats", ["device_id", "space_id", "config_id"])
    op.create_table(
        "config_ops",
        sa.Column("device_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("space_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("config_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("n_stable", sa.Integer(), nullable=False),
        sa.Column("n_unstable", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["space_id"], ["spaces.id"]),
        sa.PrimaryKeyConstraint("device_id", "space_id", "config_id", "key"),
    )
    from db.summaries import summarize_finished

    summarize_finished(op.get_bind())


def downgrade() -> None:
    op.drop_table("config_ops")
    op.drop_index("ix_op_stats_config", table_name="op_stats")
    op.drop_table("op_stats")
