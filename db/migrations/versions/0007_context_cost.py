"""runs.context_us_per_mb: what each MB of an op's weights costs inside a whole model, measured in the run

Plain ADD / DROP COLUMN, as 0006 (a batch rebuild of ``runs`` on SQLite cascades into its measurements).

Revision ID: 0007_context_cost
Revises: 0006_context_factor
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_context_cost"
down_revision = "0006_context_factor"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("context_us_per_mb", sa.Float(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE runs DROP COLUMN context_us_per_mb")
    else:
        op.drop_column("runs", "context_us_per_mb")
