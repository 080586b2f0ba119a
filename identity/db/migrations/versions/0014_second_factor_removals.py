"""support's requests to remove a person's second factor, waiting for a supervisor

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 23:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "second_factor_removals",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", BIG_ID, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(length=64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(length=64), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_second_factor_removals_account_id", "second_factor_removals", ["account_id"])
    op.create_index("ix_second_factor_removals_status", "second_factor_removals", ["status"])
    op.create_index(
        "ux_second_factor_removals_pending",
        "second_factor_removals",
        ["account_id"],
        unique=True,
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ux_second_factor_removals_pending", table_name="second_factor_removals")
    op.drop_index("ix_second_factor_removals_status", table_name="second_factor_removals")
    op.drop_index("ix_second_factor_removals_account_id", table_name="second_factor_removals")
    op.drop_table("second_factor_removals")
