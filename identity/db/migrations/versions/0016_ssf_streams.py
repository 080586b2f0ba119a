"""Shared Signals streams: one per member service, its SETs are notices

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 01:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ssf_streams",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("stream_id", sa.String(length=36), nullable=False),
        sa.Column("service_id", BIG_ID, nullable=False),
        sa.Column("delivery_method", sa.String(length=40), nullable=False),
        sa.Column("endpoint_url", sa.String(length=2000), nullable=True),
        sa.Column("authorization_header", sa.Text(), nullable=True),
        sa.Column("events_requested", sa.JSON(), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_verification_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("stream_id"),
        sa.UniqueConstraint("service_id"),
    )


def downgrade() -> None:
    op.drop_table("ssf_streams")
