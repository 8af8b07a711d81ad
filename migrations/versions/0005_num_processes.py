"""fine_tuning_jobs.num_processes (training processes a job asks for; null: the worker's GPUs, or 1)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 09:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('fine_tuning_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('num_processes', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('fine_tuning_jobs', schema=None) as batch_op:
        batch_op.drop_column('num_processes')
