"""indexes for the lookups made for every order and every cloud event

Revision ID: 0037
Revises: 0036
Create Date: 2026-11-25 10:00:00.000000

- ``orders.subscription_id``: orders are looked up by their subscription once or twice
  for every order placed (who placed it, for the notification of a ready machine; which
  order a finished deployment fulfils).
- ``deployments.node_id`` and ``deployments.volume_id``: every cloud event (a CloudStack
  event, or what the deployer observed itself) finds its deployment by the machine or the
  disk it names.

Without them each of these lookups read the whole table, so each order and each cloud
event cost more than the one before: with 600 orders, 1,211 scans read 720,000 orders and
613 read 333,000 deployments.
"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0037'
down_revision = '0036'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index('ix_orders_subscription_id', 'orders', ['subscription_id'])
    op.create_index('ix_deployments_node_id', 'deployments', ['node_id'])
    op.create_index('ix_deployments_volume_id', 'deployments', ['volume_id'])


def downgrade():
    op.drop_index('ix_deployments_volume_id', table_name='deployments')
    op.drop_index('ix_deployments_node_id', table_name='deployments')
    op.drop_index('ix_orders_subscription_id', table_name='orders')
