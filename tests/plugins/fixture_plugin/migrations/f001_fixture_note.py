"""fixture plugin: its own table on its own branch

Revision ID: f001_fixture_note
"""
import sqlalchemy as sa
from alembic import op

revision = "f001_fixture_note"
down_revision = None
branch_labels = ("fixture",)
depends_on = "0001_audit_trail"


def upgrade() -> None:
    op.create_table("fixture_note", sa.Column("id", sa.Integer(), primary_key=True),
                    sa.Column("body", sa.String(200), nullable=False))


def downgrade() -> None:
    op.drop_table("fixture_note")
