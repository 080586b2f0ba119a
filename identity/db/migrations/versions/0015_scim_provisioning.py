"""SCIM provisioning: a service's SCIM base URL, sealed token and endpoint health; a link's SCIM id

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 01:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch_op:
        batch_op.add_column(sa.Column("scim_base_url", sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column("scim_token", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("scim_token_url", sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column("scim_client_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("scim_failing_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("scim_quarantined_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("scim_last_error", sa.String(length=500), nullable=True))
    with op.batch_alter_table("links") as batch_op:
        batch_op.add_column(sa.Column("scim_id", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("links") as batch_op:
        batch_op.drop_column("scim_id")
    with op.batch_alter_table("services") as batch_op:
        for name in ("scim_last_error", "scim_quarantined_at", "scim_failing_since", "scim_client_id", "scim_token_url", "scim_token", "scim_base_url"):
            batch_op.drop_column(name)
