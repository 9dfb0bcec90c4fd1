"""radnet_icode: visits, their studies, visit codes (I-Codes), visit sessions, the global brake

Revision ID: r001_radnet_icode
Revises:
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa

import core.db

revision = "r001_radnet_icode"
down_revision = None
branch_labels = ("radnet_icode",)
depends_on = "0003_study_store"  # patient and study


def upgrade() -> None:
    op.create_table(
        "radnet_visit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_ref", sa.Integer(), nullable=False),
        sa.Column("visit_date", sa.Date(), nullable=False),
        sa.Column("location_key", sa.String(length=40), nullable=False),
        sa.Column("created_at", core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["patient_ref"], ["patient.id"], name=op.f("fk_radnet_visit_patient_ref_patient")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_radnet_visit")),
        sa.UniqueConstraint("patient_ref", "visit_date", "location_key", name=op.f("uq_radnet_visit_patient_ref")),
    )
    op.create_index(op.f("ix_radnet_visit_patient_ref"), "radnet_visit", ["patient_ref"], unique=False)
    op.create_table(
        "radnet_visit_study",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("visit_ref", sa.Integer(), nullable=False),
        sa.Column("study_ref", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["visit_ref"], ["radnet_visit.id"],
                                name=op.f("fk_radnet_visit_study_visit_ref_radnet_visit"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["study_ref"], ["study.id"], name=op.f("fk_radnet_visit_study_study_ref_study"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_radnet_visit_study")),
        sa.UniqueConstraint("study_ref", name=op.f("uq_radnet_visit_study_study_ref")),
    )
    op.create_index(op.f("ix_radnet_visit_study_visit_ref"), "radnet_visit_study", ["visit_ref"], unique=False)
    op.create_table(
        "radnet_icode",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("visit_ref", sa.Integer(), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("issued_at", core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("reactivated_at", core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("reactivated_by", sa.String(length=40), nullable=True),
        sa.Column("issued_by", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(["visit_ref"], ["radnet_visit.id"], name=op.f("fk_radnet_icode_visit_ref_radnet_visit"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_radnet_icode")),
        sa.UniqueConstraint("code_hash", name=op.f("uq_radnet_icode_code_hash")),
    )
    op.create_index(op.f("ix_radnet_icode_visit_ref"), "radnet_icode", ["visit_ref"], unique=False)
    op.create_table(
        "radnet_visit_session",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("icode_ref", sa.Integer(), nullable=False),
        sa.Column("created_at", core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["icode_ref"], ["radnet_icode.id"],
                                name=op.f("fk_radnet_visit_session_icode_ref_radnet_icode"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_radnet_visit_session")),
    )
    op.create_index(op.f("ix_radnet_visit_session_icode_ref"), "radnet_visit_session", ["icode_ref"], unique=False)
    op.create_table(
        "radnet_icode_failures",
        sa.Column("window_start", core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("window_start", name=op.f("pk_radnet_icode_failures")),
    )


def downgrade() -> None:
    op.drop_table("radnet_icode_failures")
    op.drop_index(op.f("ix_radnet_visit_session_icode_ref"), table_name="radnet_visit_session")
    op.drop_table("radnet_visit_session")
    op.drop_index(op.f("ix_radnet_icode_visit_ref"), table_name="radnet_icode")
    op.drop_table("radnet_icode")
    op.drop_index(op.f("ix_radnet_visit_study_visit_ref"), table_name="radnet_visit_study")
    op.drop_table("radnet_visit_study")
    op.drop_index(op.f("ix_radnet_visit_patient_ref"), table_name="radnet_visit")
    op.drop_table("radnet_visit")
