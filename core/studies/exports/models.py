"""One row per export asked for: who asked, what, and how far its job has got."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime

# queued -> running -> ready -> expired, or -> failed. A running export whose worker died
# goes back to queued (service.requeue).
ACTIVE = ("queued", "running")


class Export(Base):
    __tablename__ = "export"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)  # random: in addresses and file names
    owner: Mapped[str] = mapped_column(String(80), index=True)  # "<principal kind>:<id>": only they may fetch it
    request_key: Mapped[str] = mapped_column(String(64), index=True)  # same ask, same key: reuse a running job
    format: Mapped[str] = mapped_column(String(32))
    study_refs: Mapped[list] = mapped_column(JSON)
    options: Mapped[dict] = mapped_column(JSON, default=dict)  # series_uid, sop_uid, window
    language: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(10), default="queued", index=True)
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(String(500), default="")  # for the person who asked, in their language
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
