"""suspension of unpaid machines: suspend after days, suspended subscriptions, deployment states

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-24 01:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

OLD_STATES = (
    'requested', 'preparing', 'creating_vm', 'starting_vm', 'configuring_access', 'creating_disk',
    'attaching_disk', 'preparing_disk', 'running_setup', 'running', 'rolling_back', 'failed', 'stopping',
    'destroying', 'removed',
)
NEW_STATES = OLD_STATES + ('suspending', 'suspended', 'resuming')


def _states(states):
    return 'state IN (' + ', '.join(f"'{s}'" for s in states) + ')'


def upgrade():
    op.add_column('billing_settings', sa.Column('suspend_after_days', sa.Integer(), nullable=False, server_default='14'))
    with op.batch_alter_table('subscriptions') as batch:
        batch.add_column(sa.Column('suspended_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('deployments') as batch:
        batch.drop_constraint(op.f('ck_deployments_deployment_state'), type_='check')
        batch.create_check_constraint(op.f('ck_deployments_deployment_state'), _states(NEW_STATES))


def downgrade():
    with op.batch_alter_table('deployments') as batch:
        batch.drop_constraint(op.f('ck_deployments_deployment_state'), type_='check')
        batch.create_check_constraint(op.f('ck_deployments_deployment_state'), _states(OLD_STATES))
    with op.batch_alter_table('subscriptions') as batch:
        batch.drop_column('suspended_at')
    op.drop_column('billing_settings', 'suspend_after_days')
