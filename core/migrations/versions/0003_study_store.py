"""study store: series, instances, reports

Revision ID: 0003_study_store
Revises: 0002_identity
Create Date: 2026-11-23

Columns added to existing tables get server defaults, so a database with
patients and studies upgrades in place.
"""
from alembic import op
import sqlalchemy as sa

import core.db


revision = '0003_study_store'
down_revision = '0002_identity'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('report',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_ref', sa.Integer(), nullable=False),
    sa.Column('source_uid', sa.String(length=64), nullable=True),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('flags', sa.JSON(), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('author', sa.String(length=200), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('pdf_blob_key', sa.String(length=200), nullable=True),
    sa.Column('signed_at', core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('release_at', core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('release_rule', sa.String(length=200), nullable=False),
    sa.Column('release_law', sa.String(length=200), nullable=False),
    sa.Column('created_at', core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study_ref'], ['study.id'], name=op.f('fk_report_study_ref_study')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_report')),
    sa.UniqueConstraint('source_uid', name=op.f('uq_report_source_uid'))
    )
    with op.batch_alter_table('report', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_report_release_at'), ['release_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_report_study_ref'), ['study_ref'], unique=False)

    op.create_table('series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_ref', sa.Integer(), nullable=False),
    sa.Column('series_uid', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('description', sa.String(length=200), nullable=False),
    sa.Column('body_part', sa.String(length=64), nullable=False),
    sa.Column('instance_count', sa.Integer(), nullable=False),
    sa.Column('created_at', core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study_ref'], ['study.id'], name=op.f('fk_series_study_ref_study')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_series')),
    sa.UniqueConstraint('series_uid', name=op.f('uq_series_series_uid'))
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_study_ref'), ['study_ref'], unique=False)

    op.create_table('instance',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_ref', sa.Integer(), nullable=False),
    sa.Column('sop_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('transfer_syntax', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.Column('columns', sa.Integer(), nullable=True),
    sa.Column('frames', sa.Integer(), nullable=False),
    sa.Column('blob_key', sa.String(length=200), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('header', sa.JSON(), nullable=False),
    sa.Column('created_at', core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['series_ref'], ['series.id'], name=op.f('fk_instance_series_ref_series')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instance')),
    sa.UniqueConstraint('sop_uid', name=op.f('uq_instance_sop_uid'))
    )
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instance_series_ref'), ['series_ref'], unique=False)

    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sex', sa.String(length=16), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('person_ref', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_patient_person_ref'), ['person_ref'], unique=False)
        batch_op.create_index(batch_op.f('ix_patient_patient_id'), ['patient_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_patient_person_ref_patient'), 'patient', ['person_ref'], ['id'])

    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.add_column(sa.Column('study_time', sa.String(length=16), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('modalities', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('body_part', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('location', sa.String(length=200), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('referring_physician', sa.String(length=200), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('series_count', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('instance_count', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('images_release_at', core.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('images_release_rule', sa.String(length=200), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('updated_at', core.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_study_study_date'), ['study_date'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_study_date'))
        batch_op.drop_column('updated_at')
        batch_op.drop_column('images_release_rule')
        batch_op.drop_column('images_release_at')
        batch_op.drop_column('instance_count')
        batch_op.drop_column('series_count')
        batch_op.drop_column('referring_physician')
        batch_op.drop_column('location')
        batch_op.drop_column('body_part')
        batch_op.drop_column('modalities')
        batch_op.drop_column('study_time')

    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_patient_person_ref_patient'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_patient_person_ref'))
        batch_op.drop_index(batch_op.f('ix_patient_patient_id'))
        batch_op.drop_column('person_ref')
        batch_op.drop_column('sex')

    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_series_ref'))

    op.drop_table('instance')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_ref'))

    op.drop_table('series')
    with op.batch_alter_table('report', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_report_study_ref'))
        batch_op.drop_index(batch_op.f('ix_report_release_at'))

    op.drop_table('report')
