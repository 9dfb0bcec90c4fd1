"""sharing: shares and their recipients' sessions

Revision ID: 0005_sharing
Revises: 0004_exports
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

import core.db


revision = '0005_sharing'
down_revision = '0004_exports'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('share',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('owner_account', sa.Integer(), nullable=False),
    sa.Column('patient_ref', sa.Integer(), nullable=False),
    sa.Column('parent_ref', sa.Integer(), nullable=True),
    sa.Column('created_by', sa.String(length=80), nullable=False),
    sa.Column('nickname', sa.String(length=100), nullable=False),
    sa.Column('portfolio', sa.Boolean(), nullable=False),
    sa.Column('study_refs', sa.JSON(), nullable=False),
    sa.Column('password_hash', sa.String(length=200), nullable=True),
    sa.Column('allow_download', sa.Boolean(), nullable=False),
    sa.Column('allow_reshare', sa.Boolean(), nullable=False),
    sa.Column('hide_details', sa.Boolean(), nullable=False),
    sa.Column('options', sa.JSON(), nullable=False),
    sa.Column('recipient_email', sa.String(length=254), nullable=True),
    sa.Column('quick_code_hash', sa.String(length=64), nullable=True),
    sa.Column('created_at', core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('times_opened', sa.Integer(), nullable=False),
    sa.Column('last_opened_at', core.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['owner_account'], ['account.id'], name=op.f('fk_share_owner_account_account'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['parent_ref'], ['share.id'], name=op.f('fk_share_parent_ref_share')),
    sa.ForeignKeyConstraint(['patient_ref'], ['patient.id'], name=op.f('fk_share_patient_ref_patient')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_share')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_share_token_hash'))
    )
    op.create_index(op.f('ix_share_owner_account'), 'share', ['owner_account'], unique=False)
    op.create_index(op.f('ix_share_patient_ref'), 'share', ['patient_ref'], unique=False)
    op.create_index(op.f('ix_share_parent_ref'), 'share', ['parent_ref'], unique=False)
    op.create_index(op.f('ix_share_recipient_email'), 'share', ['recipient_email'], unique=False)
    op.create_index(op.f('ix_share_quick_code_hash'), 'share', ['quick_code_hash'], unique=False)
    op.create_table('share_session',
    sa.Column('id_hash', sa.String(length=64), nullable=False),
    sa.Column('share_ref', sa.Integer(), nullable=False),
    sa.Column('created_at', core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['share_ref'], ['share.id'], name=op.f('fk_share_session_share_ref_share'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id_hash', name=op.f('pk_share_session'))
    )
    op.create_index(op.f('ix_share_session_share_ref'), 'share_session', ['share_ref'], unique=False)


def downgrade() -> None:
    op.drop_table('share_session')
    op.drop_table('share')
