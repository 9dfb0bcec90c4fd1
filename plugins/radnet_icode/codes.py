"""The visit codes themselves: making, reading, storing and judging them.

A code is 12 characters in three groups of four (``PASS-2345-WXYZ``) from an
alphabet without the characters people confuse (no 0/O, 1/I/L): 31 ** 12, about
7.9e17 codes. It is typed in any case, with or without dashes or spaces; only the
SHA-256 of its normalised form (upper case, nothing but letters and digits) is stored.
A code works from its issue until ``expires_at`` (not at that moment), unless a newer
code of the same visit revoked it.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import clock
from core.audit import service as audit
from plugins.radnet_icode.models import ICode, Visit

ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
LENGTH, GROUP = 12, 4
# A code given by hand (the demo's, or one printed before the portal existed) must be one
# that could have been made here: 12 characters of ALPHABET.
GIVEN_SHAPE = re.compile(rf"^[{ALPHABET}]{{{LENGTH}}}$")


def new_code() -> str:
    return grouped("".join(secrets.choice(ALPHABET) for _ in range(LENGTH)))


def normalise(typed: str) -> str:
    """What a person typed, as compared: upper case, without dashes, spaces or other separators."""
    return re.sub(r"[^A-Z0-9]", "", (typed or "").upper())


def grouped(code: str) -> str:
    plain = normalise(code)
    return "-".join(plain[i:i + GROUP] for i in range(0, len(plain), GROUP))


def digest(code: str) -> str:
    return hashlib.sha256(normalise(code).encode("ascii")).hexdigest()


def find(session: Session, typed: str) -> ICode | None:
    """The code row for what was typed (whatever its state), or None."""
    plain = normalise(typed)
    if len(plain) != LENGTH:
        return None
    return session.scalar(select(ICode).where(ICode.code_hash == digest(plain)))


# -- state -----------------------------------------------------------------------------------

def works(icode: ICode, now: datetime | None = None) -> bool:
    return icode.revoked_at is None and (now or clock.now()) < icode.expires_at


@dataclass
class Status:
    state: str  # "active", "expired" or "revoked"
    at: datetime  # active: until; expired: since; revoked: since


def status_of(icode: ICode, now: datetime | None = None) -> Status:
    if icode.revoked_at is not None:
        return Status("revoked", icode.revoked_at)
    if (now or clock.now()) >= icode.expires_at:
        return Status("expired", icode.expires_at)
    return Status("active", icode.expires_at)


def current(session: Session, visit_ref: int) -> ICode | None:
    """The visit's latest code (the one not revoked), if any."""
    return session.scalar(select(ICode).where(ICode.visit_ref == visit_ref)
                          .order_by(ICode.issued_at.desc(), ICode.id.desc()).limit(1))


def actor_of(by: str) -> str:
    """The audit trail's name for who issued or reactivated a code ("staff:7" is account 7)."""
    return f"account:{by.removeprefix('staff:')}" if by.startswith("staff:") else by


# -- issuing ------------------------------------------------------------------------------------

@dataclass
class Issued:
    icode: ICode
    code: str  # in clear, grouped: shown or sent once, never stored


class CodeTaken(ValueError):
    """A code given by hand is already another visit's."""


def issue(session: Session, *, visit: Visit, valid_days: int, by: str, code: str | None = None) -> Issued:
    """A new code for ``visit``, valid ``valid_days``; the visit's earlier codes stop working.
    ``code`` sets a known code (the demo's) instead of a random one."""
    now = clock.now()
    if code is not None:
        code = normalise(code)
        if not GIVEN_SHAPE.match(code):
            raise ValueError("a given code is 12 letters or digits")
        taken = session.scalar(select(ICode).where(ICode.code_hash == digest(code)))
        if taken is not None and taken.visit_ref != visit.id:
            raise CodeTaken(grouped(code))
        if taken is not None:  # the same visit's code again: make it the current one
            session.delete(taken)
            session.flush()
    else:
        code = normalise(new_code())
    for earlier in session.scalars(select(ICode).where(ICode.visit_ref == visit.id, ICode.revoked_at.is_(None))):
        earlier.revoked_at = now
    icode = ICode(visit_ref=visit.id, code_hash=digest(code), issued_at=now,
                  expires_at=now + timedelta(days=valid_days), issued_by=by)
    session.add(icode)
    session.flush()
    audit.record(session, actor=actor_of(by), action="icode.issued",
                 subject=f"patient:{visit.patient_ref}",
                 detail={"visit": visit.id, "icode": icode.id, "expires_at": icode.expires_at})
    return Issued(icode, grouped(code))


def reactivate(session: Session, *, icode: ICode, valid_days: int, by: str) -> None:
    """Make an expired code work again for ``valid_days`` from now (the help desk's decision)."""
    now = clock.now()
    before = icode.expires_at
    icode.expires_at = now + timedelta(days=valid_days)
    icode.reactivated_at, icode.reactivated_by = now, by
    visit = session.get(Visit, icode.visit_ref)
    audit.record(session, actor=actor_of(by), action="icode.reactivated", subject=f"patient:{visit.patient_ref}",
                 detail={"visit": visit.id, "icode": icode.id, "expired_at": before, "expires_at": icode.expires_at})
