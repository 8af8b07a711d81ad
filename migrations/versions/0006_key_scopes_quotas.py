"""api_keys: scope, expiry, last use, requests per minute and concurrent generations; projects: quotas
(queued jobs, storage bytes)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 10:00:00
"""
import sqlalchemy as sa
from alembic import op

import chatforge.db.models

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scope', sa.String(length=16), server_default='full', nullable=False))
        batch_op.add_column(sa.Column('expires_at', chatforge.db.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_used_at', chatforge.db.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('rpm', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('max_streams', sa.Integer(), nullable=True))
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.add_column(sa.Column('max_queued_jobs', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('max_storage_bytes', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('projects', schema=None) as batch_op:
        batch_op.drop_column('max_storage_bytes')
        batch_op.drop_column('max_queued_jobs')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        for name in ('max_streams', 'rpm', 'last_used_at', 'expires_at', 'scope'):
            batch_op.drop_column(name)
