"""the request id that caused a change, on its outbox event, deliveries and notices

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 01:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

TABLES = ("outbox", "deliveries", "notices")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("request_id", sa.String(length=128), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("request_id")
