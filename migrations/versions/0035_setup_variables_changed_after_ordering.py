"""setup variables changed after ordering: the setup script runs again (state reconfiguring)

Revision ID: 0035
Revises: 0034
Create Date: 2026-11-24 10:10:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0035'
down_revision = '0034'
branch_labels = None
depends_on = None

OLD_STATES = (
    'requested', 'preparing', 'creating_vm', 'starting_vm', 'configuring_access', 'creating_disk',
    'attaching_disk', 'preparing_disk', 'running_setup', 'running', 'rolling_back', 'failed', 'stopping',
    'destroying', 'removed', 'suspending', 'suspended', 'resuming', 'resizing_vm', 'growing_disk',
)
NEW_STATES = OLD_STATES + ('reconfiguring',)


def _states(states):
    return 'state IN (' + ', '.join(f"'{s}'" for s in states) + ')'


def upgrade():
    with op.batch_alter_table('deployments') as batch:
        batch.add_column(sa.Column('setup_generation', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('setup_due', sa.Boolean(), server_default=sa.text('false'), nullable=False))
        batch.add_column(sa.Column('setup_error', sa.Text(), nullable=True))
        batch.drop_constraint(op.f('ck_deployments_deployment_state'), type_='check')
        batch.create_check_constraint(op.f('ck_deployments_deployment_state'), _states(NEW_STATES))


def downgrade():
    with op.batch_alter_table('deployments') as batch:
        batch.drop_constraint(op.f('ck_deployments_deployment_state'), type_='check')
        batch.create_check_constraint(op.f('ck_deployments_deployment_state'), _states(OLD_STATES))
        batch.drop_column('setup_error')
        batch.drop_column('setup_due')
        batch.drop_column('setup_generation')
