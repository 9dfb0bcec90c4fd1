"""Shares and the recipients' sessions."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime


class Share(Base):
    """What a patient (or a recipient allowed to re-share) gave someone: studies or the whole
    portfolio, behind a random token stored hashed, with an optional argon2 password."""

    __tablename__ = "share"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    owner_account: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"), index=True)
    patient_ref: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    parent_ref: Mapped[int | None] = mapped_column(ForeignKey("share.id"), index=True)  # a re-share of
    created_by: Mapped[str] = mapped_column(String(80))  # "account:<id>" or, for a re-share, "share:<id>"
    nickname: Mapped[str] = mapped_column(String(100))
    portfolio: Mapped[bool] = mapped_column(Boolean, default=False)  # every study of the patient, future ones too
    study_refs: Mapped[list] = mapped_column(JSON, default=list)
    password_hash: Mapped[str | None] = mapped_column(String(200))
    allow_download: Mapped[bool] = mapped_column(Boolean, default=False)
    allow_reshare: Mapped[bool] = mapped_column(Boolean, default=False)
    hide_details: Mapped[bool] = mapped_column(Boolean, default=False)
    options: Mapped[dict] = mapped_column(JSON, default=dict)  # values of the plugins' share_options
    recipient_email: Mapped[str | None] = mapped_column(String(254), index=True)
    quick_code_hash: Mapped[str | None] = mapped_column(String(64), index=True)  # a Quick Share code, if any
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    times_opened: Mapped[int] = mapped_column(Integer, default=0)
    last_opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ShareSession(Base):
    """A browser that opened a share. The cookie holds a random id; only its SHA-256 is stored."""

    __tablename__ = "share_session"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    share_ref: Mapped[int] = mapped_column(ForeignKey("share.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
