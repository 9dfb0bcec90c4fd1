"""The plugin's tables: visits, the studies of each visit, the visit codes (I-Codes)
printed on the Portal Pass, and the browsers that opened a visit with one.

A visit is one patient at one centre on one day, however many studies were done:
its code opens all of them and nothing else. Codes and session ids are stored only
as SHA-256 digests; the clear code exists on the slip, in the email and on the
screen that printed it.
"""
from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Date, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime


class Visit(Base):
    __tablename__ = "radnet_visit"
    __table_args__ = (UniqueConstraint("patient_ref", "visit_date", "location_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_ref: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    visit_date: Mapped[date] = mapped_column(Date)  # the studies' date, as the centre recorded it
    location_key: Mapped[str] = mapped_column(String(40), default="")  # the centre's key; "" when unknown
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class VisitStudy(Base):
    """A study belongs to at most one visit."""

    __tablename__ = "radnet_visit_study"

    id: Mapped[int] = mapped_column(primary_key=True)
    visit_ref: Mapped[int] = mapped_column(ForeignKey("radnet_visit.id", ondelete="CASCADE"), index=True)
    study_ref: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), unique=True)


class ICode(Base):
    """One code issued for a visit. A new one revokes the earlier ones, so a visit has at
    most one code that works; help-desk reactivation moves ``expires_at`` later."""

    __tablename__ = "radnet_icode"

    id: Mapped[int] = mapped_column(primary_key=True)
    visit_ref: Mapped[int] = mapped_column(ForeignKey("radnet_visit.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the normalised code
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)  # expired from this moment on
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reactivated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reactivated_by: Mapped[str | None] = mapped_column(String(40))  # "staff:<account id>"
    issued_by: Mapped[str] = mapped_column(String(40), default="system")  # "system", "staff:<id>", "pacs"


class VisitSession(Base):
    """A browser that opened a visit with its code and the patient's date of birth."""

    __tablename__ = "radnet_visit_session"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the cookie's value
    icode_ref: Mapped[int] = mapped_column(ForeignKey("radnet_icode.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class FailureWindow(Base):
    """Wrong codes typed on the whole site in one ten-minute window: the global brake
    (per code and per address, the core's ``throttle`` table is used)."""

    __tablename__ = "radnet_icode_failures"

    window_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
