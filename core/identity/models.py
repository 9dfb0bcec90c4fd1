"""Accounts, their links to patients, sessions, one-time codes, invitations,
account requests and sign-in throttling. Secrets are stored only as hashes."""
from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Date, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime

ROLES = ("user", "staff", "helpdesk", "admin", "guest")  # "user": a patient and/or proxy portal user;
# "guest": a doctor who was sent shares by email (core/sharing/invites.py)
RELATIONSHIPS = ("self", "guardian", "carer", "family")
PERMISSIONS = ("view_images", "view_reports", "share", "download", "payments")


class Account(Base):
    __tablename__ = "account"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)  # stored lower-cased
    name: Mapped[str] = mapped_column(String(200))
    mobile: Mapped[str | None] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(20), default="user")
    password_hash: Mapped[str | None] = mapped_column(String(200))  # None until activated
    language: Mapped[str] = mapped_column(String(5), default="en")
    notify_email: Mapped[bool] = mapped_column(Boolean, default=True)
    notify_sms: Mapped[bool] = mapped_column(Boolean, default=False)
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    totp_enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    totp_last_step: Mapped[int | None] = mapped_column(Integer)  # the last accepted code's time step
    email_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PatientLink(Base):
    """A portal user's access to one patient: themselves, or as guardian, carer or family."""

    __tablename__ = "patient_link"
    __table_args__ = (UniqueConstraint("account_id", "patient_ref"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"), index=True)
    patient_ref: Mapped[int] = mapped_column(ForeignKey("patient.id"), index=True)
    relationship: Mapped[str] = mapped_column(String(20), default="self")
    permissions: Mapped[list[str]] = mapped_column(JSON, default=lambda: list(PERMISSIONS))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WebSession(Base):
    """A signed-in browser. The cookie holds a random id; only its SHA-256 is stored."""

    __tablename__ = "web_session"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(20), default="signed_in")  # or "second_factor"
    active_patient_ref: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the absolute time-out


class OneTimeCode(Base):
    """A code or link token sent by email/SMS: single use, hashed, short-lived, few tries."""

    __tablename__ = "one_time_code"

    id: Mapped[int] = mapped_column(primary_key=True)
    purpose: Mapped[str] = mapped_column(String(30), index=True)  # email_check, sign_in, reset, activation
    code_hash: Mapped[str] = mapped_column(String(64), index=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"))
    email: Mapped[str | None] = mapped_column(String(254))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RecoveryCode(Base):
    __tablename__ = "recovery_code"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Invitation(Base):
    """An emailed, single-use link that lets a person use the portal for a patient."""

    __tablename__ = "invitation"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    patient_ref: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))
    relationship: Mapped[str] = mapped_column(String(20), default="self")
    permissions: Mapped[list[str]] = mapped_column(JSON, default=lambda: list(PERMISSIONS))
    language: Mapped[str] = mapped_column(String(5), default="en")
    invited_by: Mapped[int | None] = mapped_column(ForeignKey("account.id", ondelete="SET NULL"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("account.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RegistrationDraft(Base):
    """A self-registration in progress (steps 1-4), found by a hashed cookie token."""

    __tablename__ = "registration_draft"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    birth_date: Mapped[date] = mapped_column(Date)
    email: Mapped[str] = mapped_column(String(254))
    mobile: Mapped[str | None] = mapped_column(String(32))
    language: Mapped[str] = mapped_column(String(5), default="en")
    patient_ref: Mapped[int | None] = mapped_column(ForeignKey("patient.id"))  # set once verified
    email_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


HELP_TOPICS = ("account", "sign_in", "visit_code", "other")  # the core's; plugins may store others


class AccountRequest(Base):
    """A help-desk ticket: a patient who could not verify online asking for an account
    (``topic`` "account"), or another question for the help desk (``HELP_TOPICS``).
    ``reference`` names what the ticket is about, e.g. "icode:12", for the plugin that made it."""

    __tablename__ = "account_request"

    id: Mapped[int] = mapped_column(primary_key=True)
    topic: Mapped[str] = mapped_column(String(20), default="account", server_default="account")
    reference: Mapped[str] = mapped_column(String(80), default="", server_default="")
    name: Mapped[str] = mapped_column(String(200))
    birth_date: Mapped[date | None] = mapped_column(Date)
    email: Mapped[str] = mapped_column(String(254))
    mobile: Mapped[str | None] = mapped_column(String(32))
    details: Mapped[str] = mapped_column(Text, default="")
    language: Mapped[str] = mapped_column(String(5), default="en")
    status: Mapped[str] = mapped_column(String(20), default="open")  # open, invited, closed
    handled_by: Mapped[int | None] = mapped_column(ForeignKey("account.id", ondelete="SET NULL"))
    handled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Throttle(Base):
    """Failed attempts per key (``account:<email>``, ``ip:<address>``): delays grow, nothing locks forever."""

    __tablename__ = "throttle"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime)
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
