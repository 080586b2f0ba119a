"""people's second factor (TOTP and recovery codes); how each session and code was authenticated, and the session's browser

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 21:45:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "second_factors",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("totp_secret", sa.Text(), nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=True),
        sa.Column("recovery_codes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id"),
    )
    with op.batch_alter_table("browser_sessions") as batch_op:
        batch_op.add_column(sa.Column("amr", sa.String(length=32), server_default="pwd", nullable=False))
        batch_op.add_column(sa.Column("user_agent", sa.String(length=300), nullable=True))
    with op.batch_alter_table("authorization_codes") as batch_op:
        batch_op.add_column(sa.Column("amr", sa.String(length=32), server_default="pwd", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("authorization_codes") as batch_op:
        batch_op.drop_column("amr")
    with op.batch_alter_table("browser_sessions") as batch_op:
        batch_op.drop_column("user_agent")
        batch_op.drop_column("amr")
    op.drop_table("second_factors")
