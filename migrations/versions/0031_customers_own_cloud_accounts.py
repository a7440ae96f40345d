"""customers own cloud accounts

Revision ID: 0031
Revises: 0030
Create Date: 2026-11-24 08:17:01.278430

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0031'
down_revision = '0030'
branch_labels = None
depends_on = None


def upgrade():
    # batch mode: SQLite (the embedded default) adds foreign keys by copying the table
    with op.batch_alter_table('cloud_accounts') as batch:
        batch.add_column(sa.Column('owner_id', sa.Uuid(), nullable=True))
        batch.create_index(op.f('ix_cloud_accounts_owner_id'), ['owner_id'], unique=False)
        batch.create_foreign_key(op.f('fk_cloud_accounts_owner_id_organisations'), 'organisations', ['owner_id'], ['id'], ondelete='RESTRICT')
    for table in ('orders', 'subscriptions'):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column('own_cloud_account_id', sa.Uuid(), nullable=True))
            batch.create_foreign_key(op.f(f'fk_{table}_own_cloud_account_id_cloud_accounts'), 'cloud_accounts', ['own_cloud_account_id'], ['id'], ondelete='RESTRICT')
    op.add_column('price_components', sa.Column('infrastructure', sa.Boolean(), server_default=sa.text('false'), nullable=False))


def downgrade():
    op.drop_column('price_components', 'infrastructure')
    for table in ('subscriptions', 'orders'):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(op.f(f'fk_{table}_own_cloud_account_id_cloud_accounts'), type_='foreignkey')
            batch.drop_column('own_cloud_account_id')
    with op.batch_alter_table('cloud_accounts') as batch:
        batch.drop_constraint(op.f('fk_cloud_accounts_owner_id_organisations'), type_='foreignkey')
        batch.drop_index(op.f('ix_cloud_accounts_owner_id'))
        batch.drop_column('owner_id')
