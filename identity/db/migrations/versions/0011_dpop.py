"""DPoP (RFC 9449): tokens and codes bound to a key, used proofs, services that require DPoP;
services that require signed request objects (RFC 9101)

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("require_dpop", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("require_signed_request_object", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("dpop_jkt", sa.String(length=64), nullable=True))
    with op.batch_alter_table("authorization_codes") as batch:
        batch.add_column(sa.Column("dpop_jkt", sa.String(length=64), nullable=True))
    op.create_table(
        "dpop_proofs",
        sa.Column("jti_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("jti_hash"),
    )
    with op.batch_alter_table("dpop_proofs") as batch:
        batch.create_index(batch.f("ix_dpop_proofs_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_table("dpop_proofs")
    with op.batch_alter_table("authorization_codes") as batch:
        batch.drop_column("dpop_jkt")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("dpop_jkt")
    with op.batch_alter_table("services") as batch:
        batch.drop_column("require_signed_request_object")
        batch.drop_column("require_dpop")
