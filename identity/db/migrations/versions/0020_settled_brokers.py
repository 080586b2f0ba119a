"""the memory-only broker whose start was dealt with: services' topics queued again once per broker, not once per worker

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 08:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "settled_brokers",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("cluster_id", sa.String(length=255), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("settled_brokers")
