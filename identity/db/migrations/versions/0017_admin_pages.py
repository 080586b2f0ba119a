"""admin pages: services' secret ages, service owners, resync progress, per-minute sync rollups

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 01:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
LATENCY_BUCKETS = 14


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("secret_set_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("webhook_secret_set_at", sa.DateTime(timezone=True), nullable=True))
    for table in ("deliveries", "notices"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("last_status", sa.Integer(), nullable=True))
            batch.add_column(sa.Column("last_delay_ms", sa.BigInteger(), nullable=True))
    # The age of a secret made before this migration is counted from the service's registration.
    op.execute("UPDATE services SET secret_set_at = created_at WHERE secret_hash IS NOT NULL")
    op.execute("UPDATE services SET webhook_secret_set_at = created_at WHERE webhook_secret IS NOT NULL")
    op.create_table(
        "staff_services",
        sa.Column("staff_id", BIG_ID, nullable=False),
        sa.Column("service_id", BIG_ID, nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("granted_by", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("staff_id", "service_id"),
    )
    op.create_index("ix_staff_services_service_id", "staff_services", ["service_id"])
    op.create_table(
        "resyncs",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("service_id", BIG_ID, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("people", sa.Integer(), nullable=False),
        sa.Column("started_by", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_resyncs_service_id", "resyncs", ["service_id"])
    op.create_table(
        "sync_minutes",
        sa.Column("service_id", BIG_ID, nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ok", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("dead", sa.Integer(), nullable=False),
        sa.Column("backlog", sa.Integer(), nullable=True),
        *[sa.Column(f"latency_{i}", sa.Integer(), nullable=False) for i in range(LATENCY_BUCKETS)],
        sa.ForeignKeyConstraint(["service_id"], ["services.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("service_id", "minute"),
    )
    op.create_index("ix_sync_minutes_minute", "sync_minutes", ["minute"])


def downgrade() -> None:
    op.drop_index("ix_sync_minutes_minute", table_name="sync_minutes")
    op.drop_table("sync_minutes")
    op.drop_index("ix_resyncs_service_id", table_name="resyncs")
    op.drop_table("resyncs")
    op.drop_index("ix_staff_services_service_id", table_name="staff_services")
    op.drop_table("staff_services")
    for table in ("deliveries", "notices"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("last_delay_ms")
            batch.drop_column("last_status")
    with op.batch_alter_table("services") as batch:
        batch.drop_column("webhook_secret_set_at")
        batch.drop_column("secret_set_at")
