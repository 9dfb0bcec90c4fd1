"""Signed-in browsers: random ids in ``__Host-`` cookies, stored hashed, idle and
absolute time-outs from the site file, a new id at every sign-in."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core import clock
from core.access import ANONYMOUS, Principal
from core.identity.models import Account, PatientLink, WebSession
from core.identity.security import digest, new_token

COOKIE = "__Host-filmless_session"
TOUCH_EVERY = timedelta(minutes=1)  # fewer writes: idle time is measured to the minute


def start(session: Session, *, account: Account, site, stage: str = "signed_in", replacing: str | None = None) -> str:
    """A new session id for ``account`` (the old one, if any, is ended: no fixation)."""
    if replacing:
        end(session, replacing)
    token = new_token()
    now = clock.now()
    session.add(WebSession(id_hash=digest(token), account_id=account.id, stage=stage, created_at=now,
                           last_seen_at=now, expires_at=now + timedelta(hours=site.config.sessions.absolute_hours)))
    session.flush()
    return token


def find(session: Session, *, token: str | None, site) -> WebSession | None:
    """The live session for a cookie value, or None (expired ones are removed)."""
    if not token:
        return None
    found = session.get(WebSession, digest(token))
    if found is None:
        return None
    now = clock.now()
    idle_limit = timedelta(minutes=site.config.sessions.idle_minutes)
    if found.expires_at <= now or now - found.last_seen_at > idle_limit:
        session.delete(found)
        return None
    if now - found.last_seen_at >= TOUCH_EVERY:
        found.last_seen_at = now
    return found


def end(session: Session, token: str) -> None:
    session.execute(delete(WebSession).where(WebSession.id_hash == digest(token)))


def end_all(session: Session, *, account_id: int) -> int:
    """Sign out everywhere: every session of the account."""
    return session.execute(delete(WebSession).where(WebSession.account_id == account_id)).rowcount


def principal_for(session: Session, web_session: WebSession | None) -> Principal:
    if web_session is None:
        return ANONYMOUS
    account = session.get(Account, web_session.account_id)
    if web_session.stage != "signed_in":
        return Principal(kind="second_factor", id=str(account.id))
    if account.role == "guest":  # reaches only its list of shares (core/sharing/invites.py), no other rule
        return Principal(kind="guest", id=str(account.id), roles=frozenset({"guest"}))
    patients = session.scalars(select(PatientLink.patient_ref).where(PatientLink.account_id == account.id)).all()
    return Principal(kind="account", id=str(account.id), roles=frozenset({account.role}),
                     scope=frozenset(str(p) for p in patients))
