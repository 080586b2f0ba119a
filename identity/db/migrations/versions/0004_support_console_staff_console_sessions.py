"""support console: staff, console sessions

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 12:07:10.142995
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('staff',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('totp_secret', sa.Text(), nullable=False),
    sa.Column('totp_last_step', sa.BigInteger(), nullable=True),
    sa.Column('totp_failures', sa.Integer(), nullable=False),
    sa.Column('totp_locked_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('totp_confirmed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=True),
    sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('account_id')
    )
    op.create_table('console_sessions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('secret_hash', sa.String(length=64), nullable=False),
    sa.Column('staff_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('stage', sa.String(length=8), nullable=False),
    sa.Column('totp_failures', sa.Integer(), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['staff_id'], ['staff.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('secret_hash')
    )
    with op.batch_alter_table('console_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_console_sessions_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_console_sessions_staff_id'), ['staff_id'], unique=False)

    with op.batch_alter_table('services', schema=None) as batch_op:
        batch_op.add_column(sa.Column('first_party', sa.Boolean(), server_default=sa.false(), nullable=False))

    # The console's search (identity.support.search); see Account.__table_args__.
    op.create_index('ix_accounts_email_prefix', 'accounts', ['email'], unique=False, postgresql_ops={'email': 'text_pattern_ops'})
    op.create_index('ix_accounts_phone_number', 'accounts', ['phone_number', 'id'], unique=False, postgresql_ops={'phone_number': 'text_pattern_ops'})
    op.create_index('ix_accounts_family_given', 'accounts', [sa.literal_column('lower(family_name)').label('family_lower'), sa.literal_column('lower(given_name)').label('given_lower'), 'id'], unique=False, postgresql_ops={'family_lower': 'text_pattern_ops', 'given_lower': 'text_pattern_ops'})
    op.create_index('ix_accounts_given_family', 'accounts', [sa.literal_column('lower(given_name)').label('given_lower'), sa.literal_column('lower(family_name)').label('family_lower'), 'id'], unique=False, postgresql_ops={'given_lower': 'text_pattern_ops', 'family_lower': 'text_pattern_ops'})



def downgrade() -> None:
    op.drop_index('ix_accounts_given_family', table_name='accounts')
    op.drop_index('ix_accounts_family_given', table_name='accounts')
    op.drop_index('ix_accounts_phone_number', table_name='accounts')
    op.drop_index('ix_accounts_email_prefix', table_name='accounts')

    with op.batch_alter_table('services', schema=None) as batch_op:
        batch_op.drop_column('first_party')

    with op.batch_alter_table('console_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_console_sessions_staff_id'))
        batch_op.drop_index(batch_op.f('ix_console_sessions_expires_at'))

    op.drop_table('console_sessions')
    op.drop_table('staff')
