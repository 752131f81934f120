"""runs.context_factor: whole calibration models / the sum of their ops, measured in the run

Plain ADD / DROP COLUMN (SQLite >= 3.35 has both): a batch rebuild of ``runs`` would drop and
recreate the table, and with foreign keys on, that cascades into its measurements.

Revision ID: 0006_context_factor
Revises: 0005_table_summaries
"""
import sqlalchemy as sa
from alembic import op

revision = "0006_context_factor"
down_revision = "0005_table_summaries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("context_factor", sa.Float(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE runs DROP COLUMN context_factor")
    else:
        op.drop_column("runs", "context_factor")
