"""grid_fits: a v2 grid's fit stored by content hash, so that a restarted server does not refit

Revision ID: 0010_grid_fits
Revises: 0009_validation_idempotency_key
"""
import sqlalchemy as sa
from alembic import op

revision = "0010_grid_fits"
down_revision = "0009_validation_idempotency_key"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "grid_fits",
        sa.Column("id", PK, nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("device_id", PK, nullable=False),
        sa.Column("space_id", PK, nullable=False),
        sa.Column("config_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("n_ops", sa.Integer(), nullable=False),
        sa.Column("predicted", sa.LargeBinary(), nullable=False),
        sa.Column("meta", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["space_id"], ["spaces.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("content_hash"),
    )
    op.create_index("ix_grid_fits_config", "grid_fits", ["device_id", "space_id", "config_id"])


def downgrade() -> None:
    op.drop_index("ix_grid_fits_config", table_name="grid_fits")
    op.drop_table("grid_fits")
