"""usage: raw records (partitioned by month on PostgreSQL), their idempotency keys, dead letters

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-24 01:00:00.000000

"""
import datetime as dt

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


# revision identifiers, used by Alembic.
revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def _month(year, month):
    return dt.date(year + (month - 1) // 12, (month - 1) % 12 + 1, 1)


def upgrade():
    op.create_table(
        'usage_records',
        sa.Column('marketplace_id', sa.Uuid(), nullable=False),
        sa.Column('vendor_id', sa.Uuid(), nullable=False),
        sa.Column('record_id', sa.String(length=200), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('subscription_id', sa.Uuid(), nullable=False),
        sa.Column('metric', sa.String(length=100), nullable=False),
        sa.Column('quantity', sa.Numeric(precision=24, scale=8), nullable=False),
        sa.Column('attributes', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
        sa.Column('source', sa.String(length=10), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('marketplace_id', 'vendor_id', 'record_id', 'at', name=op.f('pk_usage_records')),
        postgresql_partition_by='RANGE (at)',
    )
    op.create_index(op.f('ix_usage_records_subscription_id'), 'usage_records', ['subscription_id'], unique=False)
    op.create_table(
        'usage_record_ids',
        sa.Column('marketplace_id', sa.Uuid(), nullable=False),
        sa.Column('vendor_id', sa.Uuid(), nullable=False),
        sa.Column('record_id', sa.String(length=200), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('marketplace_id', 'vendor_id', 'record_id', name=op.f('pk_usage_record_ids')),
    )
    op.create_table(
        'usage_dead_letters',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('marketplace_id', sa.Uuid(), nullable=True),
        sa.Column('source', sa.String(length=10), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_dead_letters')),
    )
    op.create_index(op.f('ix_usage_dead_letters_received_at'), 'usage_dead_letters', ['received_at'], unique=False)
    if op.get_bind().dialect.name == 'postgresql':
        # this month and the next two; the worker keeps making them ahead, ingestion on demand
        today = dt.date.today()
        for ahead in range(3):
            start = _month(today.year, today.month + ahead)
            end = _month(start.year, start.month + 1)
            op.execute(
                f"CREATE TABLE IF NOT EXISTS usage_records_y{start:%Y}m{start:%m} PARTITION OF usage_records"
                f" FOR VALUES FROM ('{start.isoformat()} 00:00:00+00') TO ('{end.isoformat()} 00:00:00+00')"
            )


def downgrade():
    op.drop_index(op.f('ix_usage_dead_letters_received_at'), table_name='usage_dead_letters')
    op.drop_table('usage_dead_letters')
    op.drop_table('usage_record_ids')
    op.drop_index(op.f('ix_usage_records_subscription_id'), table_name='usage_records')
    op.drop_table('usage_records')  # its partitions go with it
