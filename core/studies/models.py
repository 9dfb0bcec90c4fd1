"""The study store's records: patients, studies, series, instances and reports.

The DICOM files themselves live in the blob store (``core.studies.blobs``); a row
here points at its blob by key. Release times are decided when a study or report
arrives (``service``) and stored, so that every listing filters in SQL.
"""
from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import JSON, BigInteger, Date, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime


class Patient(Base):
    """A person as one practice knows them: identified by (issuer, patient_id).

    ``person_ref`` points at another record of the same person at another practice
    (set by staff); whoever may see one record sees them all."""

    __tablename__ = "patient"
    __table_args__ = (UniqueConstraint("issuer", "patient_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    issuer: Mapped[str] = mapped_column(String(64), default="")
    patient_id: Mapped[str] = mapped_column(String(64), index=True)  # QIDO and sign-up search it without issuer
    family_name: Mapped[str] = mapped_column(String(100))
    given_name: Mapped[str] = mapped_column(String(100), default="")
    birth_date: Mapped[date | None] = mapped_column(Date)
    sex: Mapped[str] = mapped_column(String(16), default="")
    email: Mapped[str | None] = mapped_column(String(254))
    mobile: Mapped[str | None] = mapped_column(String(32))
    person_ref: Mapped[int | None] = mapped_column(ForeignKey("patient.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_ref: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    accession_number: Mapped[str | None] = mapped_column(String(64), index=True)
    study_date: Mapped[date | None] = mapped_column(Date, index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(200), default="")
    modalities: Mapped[str] = mapped_column(String(64), default="")  # "CT" or "CT\\SR", as QIDO returns
    body_part: Mapped[str] = mapped_column(String(64), default="")
    location: Mapped[str] = mapped_column(String(200), default="")  # the performing Institution Name
    referring_physician: Mapped[str] = mapped_column(String(200), default="")
    series_count: Mapped[int] = mapped_column(Integer, default=0)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    # images reach patient-side principals from here (completion, or a plugin's later vote)
    images_release_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    images_release_rule: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_ref: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(String(200), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_ref: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer, default=1)
    blob_key: Mapped[str] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    header: Mapped[dict] = mapped_column(JSON)  # DICOM JSON of the header, bulk values left out
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Report(Base):
    """A signed report of a study: text, or a PDF kept in the blob store.

    ``release_at`` is when patient-side principals may read it: the latest of its
    signing and every ``report_release_at`` vote; ``release_rule`` and
    ``release_law`` name the vote that decided it, if any."""

    __tablename__ = "report"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_ref: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    source_uid: Mapped[str | None] = mapped_column(String(64), unique=True)  # SOP UID or the API caller's id
    category: Mapped[str] = mapped_column(String(32), default="radiology")
    flags: Mapped[list] = mapped_column(JSON, default=list)  # e.g. ["possible_malignancy"]
    title: Mapped[str] = mapped_column(String(200), default="")
    author: Mapped[str] = mapped_column(String(200), default="")
    text: Mapped[str | None] = mapped_column(Text)
    pdf_blob_key: Mapped[str | None] = mapped_column(String(200))
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    release_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    release_rule: Mapped[str] = mapped_column(String(200), default="")
    release_law: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
