"""a removed service's closed rights requests are kept, naming the service they were addressed to

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 17:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rights_requests") as batch:
        batch.add_column(sa.Column("removed_service_client_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("removed_service_name", sa.String(length=200), nullable=True))


def downgrade() -> None:
    # Requests kept from removed services would read as addressed to the hub: they go.
    op.execute("DELETE FROM rights_requests WHERE removed_service_client_id IS NOT NULL")
    with op.batch_alter_table("rights_requests") as batch:
        batch.drop_column("removed_service_name")
        batch.drop_column("removed_service_client_id")
