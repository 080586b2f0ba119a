"""throttles: whether the latest attempt was refused

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("throttles") as batch:
        batch.add_column(sa.Column("refused", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("throttles") as batch:
        batch.drop_column("refused")
