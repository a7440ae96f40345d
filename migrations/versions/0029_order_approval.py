"""order approval: products that need it, orders waiting for approval or rejected, change orders

Revision ID: 0029
Revises: 0028
Create Date: 2026-11-24 07:31:59.611069

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0029'
down_revision = '0028'
branch_labels = None
depends_on = None

OLD_STATUSES = ('pending', 'confirmed', 'fulfilled', 'cancelled', 'failed')
NEW_STATUSES = OLD_STATUSES + ('awaiting_approval', 'rejected')
OLD_KINDS = ('purchase', 'trial')
NEW_KINDS = OLD_KINDS + ('change',)


def _in(column, values):
    return f'{column} IN (' + ', '.join(f"'{v}'" for v in values) + ')'


def upgrade():
    op.add_column('product_versions', sa.Column('requires_approval', sa.Boolean(), server_default=sa.text('false'), nullable=False))
    with op.batch_alter_table('orders') as batch:
        batch.add_column(sa.Column('change_from', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('decided_by_id', sa.Uuid(), nullable=True))
        batch.add_column(sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('rejection_reason', sa.Text(), nullable=True))
        batch.create_foreign_key(op.f('fk_orders_decided_by_id_users'), 'users', ['decided_by_id'], ['id'], ondelete='SET NULL')
        batch.alter_column('status', existing_type=sa.VARCHAR(length=9), type_=sa.VARCHAR(length=17), existing_nullable=False)
        batch.drop_constraint(op.f('ck_orders_status'), type_='check')
        batch.create_check_constraint(op.f('ck_orders_status'), _in('status', NEW_STATUSES))
        batch.drop_constraint(op.f('ck_orders_kind'), type_='check')
        batch.create_check_constraint(op.f('ck_orders_kind'), _in('kind', NEW_KINDS))
    op.create_index('ix_orders_awaiting_approval', 'orders', ['marketplace_id', 'product_id'], unique=False, postgresql_where=sa.text("status = 'awaiting_approval'"), sqlite_where=sa.text("status = 'awaiting_approval'"))


def downgrade():
    op.drop_index('ix_orders_awaiting_approval', table_name='orders')
    with op.batch_alter_table('orders') as batch:
        batch.drop_constraint(op.f('ck_orders_kind'), type_='check')
        batch.create_check_constraint(op.f('ck_orders_kind'), _in('kind', OLD_KINDS))
        batch.drop_constraint(op.f('ck_orders_status'), type_='check')
        batch.create_check_constraint(op.f('ck_orders_status'), _in('status', OLD_STATUSES))
        batch.alter_column('status', existing_type=sa.VARCHAR(length=17), type_=sa.VARCHAR(length=9), existing_nullable=False)
        batch.drop_constraint(op.f('fk_orders_decided_by_id_users'), type_='foreignkey')
        batch.drop_column('rejection_reason')
        batch.drop_column('decided_at')
        batch.drop_column('decided_by_id')
        batch.drop_column('change_from')
    op.drop_column('product_versions', 'requires_approval')
