"""responses table (OpenAI's Responses API: stored responses and conversation state)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 06:00:00
"""
import sqlalchemy as sa
from alembic import op

import chatforge.db.models

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

UTC = chatforge.db.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table('responses',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('previous_response_id', sa.String(length=64), nullable=True),
    sa.Column('instructions', sa.Text(), nullable=True),
    sa.Column('input_items', sa.JSON(), nullable=False),
    sa.Column('context', sa.JSON(), nullable=False),
    sa.Column('output', sa.JSON(), nullable=False),
    sa.Column('usage', sa.JSON(), nullable=True),
    sa.Column('body', sa.JSON(), nullable=False),
    sa.Column('store', sa.Boolean(), nullable=False),
    sa.Column('created_at', UTC, nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('responses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_responses_project_id'), ['project_id'], unique=False)


def downgrade() -> None:
    op.drop_table('responses')
