"""Secrets done once: passwords (argon2id), random tokens stored as hashes,
one-time codes and sign-in throttling (DESIGN §5)."""
from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import clock
from core.i18n import gettext as _
from core.identity.models import OneTimeCode, Throttle

MIN_PASSWORD, MAX_PASSWORD = 8, 128
_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


# -- passwords ----------------------------------------------------------------

@functools.cache
def _common_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def password_problem(password: str, *, email: str = "", name: str = "") -> str | None:
    """Why a new password is refused (translated), or None. No composition rules."""
    if len(password) < MIN_PASSWORD:
        return _("Use at least %(count)s characters.", count=MIN_PASSWORD)
    if len(password) > MAX_PASSWORD:
        return _("Use at most %(count)s characters.", count=MAX_PASSWORD)
    lowered = password.lower()
    if lowered in _common_passwords() or lowered in {email.lower(), email.lower().split("@")[0], name.lower()}:
        return _("This password is too common or too easy to guess. Please choose another.")
    return None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


_DUMMY_HASH = hash_password("a password that is never anyone's")


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant work whether or not there is an account, so timing tells nothing."""
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


# -- tokens and codes ---------------------------------------------------------

def new_token() -> str:
    """256 random bits, URL-safe: session ids and link tokens."""
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_code(digits: int = 6) -> str:
    return f"{secrets.randbelow(10 ** digits):0{digits}d}"


def issue_code(session: Session, *, purpose: str, minutes: int, account_id: int | None = None,
               email: str | None = None, payload: dict | None = None, code: str | None = None) -> str:
    """Store a new single-use code (replacing earlier unused ones of the same purpose) and return it."""
    for earlier in _open_codes(session, purpose, account_id, email):
        earlier.used_at = clock.now()
    code = code or new_code()
    session.add(OneTimeCode(purpose=purpose, code_hash=digest(code), account_id=account_id, email=email,
                            payload=payload or {}, expires_at=clock.now() + timedelta(minutes=minutes),
                            created_at=clock.now()))
    session.flush()
    return code


def _open_codes(session: Session, purpose: str, account_id: int | None, email: str | None):
    query = select(OneTimeCode).where(OneTimeCode.purpose == purpose, OneTimeCode.used_at.is_(None))
    query = query.where(OneTimeCode.account_id == account_id) if account_id else query.where(OneTimeCode.email == email)
    return session.scalars(query).all()


@dataclass
class CodeCheck:
    ok: bool
    problem: str = ""  # "wrong", "expired", "too_many", "none"
    code: OneTimeCode | None = None


def check_code(session: Session, *, purpose: str, given: str, max_attempts: int,
               account_id: int | None = None, email: str | None = None) -> CodeCheck:
    """Check a typed code against the one open code of this purpose; use it up on success."""
    codes = sorted(_open_codes(session, purpose, account_id, email), key=lambda c: c.created_at)
    if not codes:
        return CodeCheck(False, "none")
    current = codes[-1]
    if current.expires_at <= clock.now():
        return CodeCheck(False, "expired", current)
    if current.attempts >= max_attempts:
        return CodeCheck(False, "too_many", current)
    if not hmac.compare_digest(current.code_hash, digest(given.strip().replace(" ", ""))):
        current.attempts += 1
        return CodeCheck(False, "too_many" if current.attempts >= max_attempts else "wrong", current)
    current.used_at = clock.now()
    return CodeCheck(True, code=current)


def redeem_link(session: Session, *, purpose: str, token: str) -> CodeCheck:
    """A link token (sent by email): found by its hash, single use, not expired."""
    found = session.scalar(select(OneTimeCode).where(OneTimeCode.purpose == purpose,
                                                     OneTimeCode.code_hash == digest(token)))
    if found is None:
        return CodeCheck(False, "none")
    if found.used_at is not None:
        return CodeCheck(False, "used", found)
    if found.expires_at <= clock.now():
        return CodeCheck(False, "expired", found)
    return CodeCheck(True, code=found)


# -- authenticator apps (TOTP) and recovery codes -----------------------------

TOTP_STEP = 30


def accept_app_code(account, code: str) -> bool:
    """The app's code for now (one step of clock drift either way), never one already
    used: the accepted step is remembered, so a code seen over a shoulder is spent."""
    import pyotp

    if not account.totp_secret:
        return False
    totp, now = pyotp.TOTP(account.totp_secret), clock.now()
    current = int(now.timestamp()) // TOTP_STEP
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.at(step * TOTP_STEP), code) and step > (account.totp_last_step or -1):
            account.totp_last_step = step
            return True
    return False


def recovery_code_digest(code: str) -> str:
    """Recovery codes are accepted with or without their hyphen and spaces, in any case."""
    return digest("".join(code.lower().split()).replace("-", ""))


# -- throttling ---------------------------------------------------------------

def too_many_attempts(minutes: int) -> str:
    from core.i18n import ngettext

    return ngettext("Too many attempts. Please wait %(num)d minute and try again.",
                    "Too many attempts. Please wait %(num)d minutes and try again.", minutes)



FREE_FAILURES = 3
MAX_DELAY = timedelta(minutes=15)
FORGET_AFTER = timedelta(hours=24)


def wait_seconds(session: Session, keys: list[str]) -> int:
    """How long any of ``keys`` must still wait before the next attempt (0: go ahead)."""
    now = clock.now()
    rows = session.scalars(select(Throttle).where(Throttle.key.in_(keys))).all()
    waits = [(row.blocked_until - now).total_seconds() for row in rows if row.blocked_until and row.blocked_until > now]
    return int(max(waits, default=0)) + (1 if waits else 0)


def record_failure(session: Session, keys: list[str]) -> None:
    """Each failure past the first few doubles the wait, up to 15 minutes; never a permanent lock."""
    now = clock.now()
    for key in keys:
        row = session.get(Throttle, key)
        if row is None or now - row.last_failure_at > FORGET_AFTER:
            row = row or Throttle(key=key)
            row.failures = 0
            session.add(row)
        row.failures += 1
        row.last_failure_at = now
        extra = row.failures - FREE_FAILURES
        # 2 ** 20 s is past MAX_DELAY already; a larger power would overflow timedelta after ~50 failures
        row.blocked_until = now + min(timedelta(seconds=2 ** min(extra, 20)), MAX_DELAY) if extra > 0 else None
    session.flush()


def clear_failures(session: Session, keys: list[str]) -> None:
    for key in keys:
        row = session.get(Throttle, key)
        if row is not None:
            session.delete(row)
