"""resize on plan change: plans' VM size and data disk, deployments' resize and its states

Revision ID: 0032
Revises: 0031
Create Date: 2026-11-24 09:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0032'
down_revision = '0031'
branch_labels = None
depends_on = None

OLD_STATES = (
    'requested', 'preparing', 'creating_vm', 'starting_vm', 'configuring_access', 'creating_disk',
    'attaching_disk', 'preparing_disk', 'running_setup', 'running', 'rolling_back', 'failed', 'stopping',
    'destroying', 'removed', 'suspending', 'suspended', 'resuming',
)
NEW_STATES = OLD_STATES + ('resizing_vm', 'growing_disk')


def _states(states):
    return 'state IN (' + ', '.join(f"'{s}'" for s in states) + ')'


def upgrade():
    op.add_column('plans', sa.Column('vm_size', sa.JSON(), nullable=True))
    op.add_column('plans', sa.Column('data_disk_gib', sa.Integer(), nullable=True))
    with op.batch_alter_table('deployments') as batch:
        batch.add_column(sa.Column('resize_to', sa.JSON(), nullable=True))
        batch.drop_constraint(op.f('ck_deployments_deployment_state'), type_='check')
        batch.create_check_constraint(op.f('ck_deployments_deployment_state'), _states(NEW_STATES))


def downgrade():
    with op.batch_alter_table('deployments') as batch:
        batch.drop_constraint(op.f('ck_deployments_deployment_state'), type_='check')
        batch.create_check_constraint(op.f('ck_deployments_deployment_state'), _states(OLD_STATES))
        batch.drop_column('resize_to')
    op.drop_column('plans', 'data_disk_gib')
    op.drop_column('plans', 'vm_size')
