"""background file validation (status_details, progress, lease) and the Uploads API (uploads, parts)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 06:00:00
"""
import sqlalchemy as sa
from alembic import op

import chatforge.db.models

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

UTC = chatforge.db.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('status_details', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('progress', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('forced_format', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('max_length', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('lease_expires_at', UTC, nullable=True))
        batch_op.add_column(sa.Column('enqueued_at', UTC, nullable=True))
        batch_op.create_index('ix_files_status', ['status'], unique=False)

    op.create_table('uploads',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    sa.Column('mime_type', sa.String(length=255), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('file_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', UTC, nullable=False),
    sa.Column('expires_at', UTC, nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_uploads_project_id'), ['project_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_uploads_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_uploads_expires_at'), ['expires_at'], unique=False)

    op.create_table('upload_parts',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('upload_id', sa.String(length=64), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('created_at', UTC, nullable=False),
    sa.ForeignKeyConstraint(['upload_id'], ['uploads.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('upload_parts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_upload_parts_upload_id'), ['upload_id'], unique=False)


def downgrade() -> None:
    op.drop_table('upload_parts')
    op.drop_table('uploads')
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index('ix_files_status')
        for col in ('enqueued_at', 'lease_expires_at', 'attempts', 'max_length', 'forced_format', 'progress',
                    'status_details'):
            batch_op.drop_column(col)
