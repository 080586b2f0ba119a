"""services: public clients, private_key_jwt and native apps; used client assertions

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.alter_column("secret_hash", existing_type=sa.String(length=128), nullable=True)
        batch.add_column(
            sa.Column("token_endpoint_auth_method", sa.String(length=32), server_default="client_secret_basic", nullable=False)
        )
        batch.add_column(sa.Column("application_type", sa.String(length=16), server_default="web", nullable=False))
        batch.add_column(sa.Column("jwks", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("jwks_uri", sa.String(length=2000), nullable=True))
    op.create_table(
        "client_assertions",
        sa.Column("service_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("jti_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("service_id", "jti_hash"),
    )
    with op.batch_alter_table("client_assertions") as batch:
        batch.create_index(batch.f("ix_client_assertions_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_table("client_assertions")
    # A service without a secret keeps one that no secret matches (not a SHA-256 digest).
    op.execute("UPDATE services SET secret_hash = '!' WHERE secret_hash IS NULL")
    with op.batch_alter_table("services") as batch:
        batch.drop_column("jwks_uri")
        batch.drop_column("jwks")
        batch.drop_column("application_type")
        batch.drop_column("token_endpoint_auth_method")
        batch.alter_column("secret_hash", existing_type=sa.String(length=128), nullable=False)
