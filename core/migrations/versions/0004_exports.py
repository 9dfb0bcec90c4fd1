"""exports: one row per export job

Revision ID: 0004_exports
Revises: 0003_study_store
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

import core.db


revision = '0004_exports'
down_revision = '0003_study_store'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('export',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('public_id', sa.String(length=32), nullable=False),
    sa.Column('owner', sa.String(length=80), nullable=False),
    sa.Column('request_key', sa.String(length=64), nullable=False),
    sa.Column('format', sa.String(length=32), nullable=False),
    sa.Column('study_refs', sa.JSON(), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('language', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('done', sa.Integer(), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('error', sa.String(length=500), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('expires_at', core.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_export')),
    sa.UniqueConstraint('public_id', name=op.f('uq_export_public_id'))
    )
    op.create_index(op.f('ix_export_owner'), 'export', ['owner'], unique=False)
    op.create_index(op.f('ix_export_request_key'), 'export', ['request_key'], unique=False)
    op.create_index(op.f('ix_export_status'), 'export', ['status'], unique=False)
    op.create_index(op.f('ix_export_expires_at'), 'export', ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_table('export')
