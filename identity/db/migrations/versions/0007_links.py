"""unconfirmed accounts: an index for the retention purge

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # identity.purge.unverified; see Account.__table_args__.
    op.create_index(
        "ix_accounts_unverified",
        "accounts",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("email_verified = false"),
        sqlite_where=sa.text("email_verified = 0"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_accounts_unverified",
        table_name="accounts",
        postgresql_where=sa.text("email_verified = false"),
        sqlite_where=sa.text("email_verified = 0"),
    )
