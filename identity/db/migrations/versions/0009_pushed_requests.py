"""pushed authorization requests (RFC 9126), and services that must push theirs

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("require_par", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table(
        "pushed_requests",
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("service_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("request_hash"),
    )
    with op.batch_alter_table("pushed_requests") as batch:
        batch.create_index(batch.f("ix_pushed_requests_expires_at"), ["expires_at"], unique=False)
        batch.create_index(batch.f("ix_pushed_requests_service_id"), ["service_id"], unique=False)


def downgrade() -> None:
    op.drop_table("pushed_requests")
    with op.batch_alter_table("services") as batch:
        batch.drop_column("require_par")
