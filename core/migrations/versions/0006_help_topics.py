"""help topics: what a help-desk ticket is about, and what it refers to

Revision ID: 0006_help_topics
Revises: 0005_sharing
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0006_help_topics'
down_revision = '0005_sharing'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the server defaults fill the rows already there: every earlier ticket asked for an account
    with op.batch_alter_table('account_request', schema=None) as batch_op:
        batch_op.add_column(sa.Column('topic', sa.String(length=20), server_default='account', nullable=False))
        batch_op.add_column(sa.Column('reference', sa.String(length=80), server_default='', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('account_request', schema=None) as batch_op:
        batch_op.drop_column('reference')
        batch_op.drop_column('topic')
