"""Quick Share: a short code the patient reads out to a doctor. Nothing here knows of HTTP.

A code of 8 characters from an alphabet without look-alikes (``ABCD-EFGH``, about 40
bits) is far too short to stand alone, so it opens its share only together with the
patient's date of birth. It is stored only as SHA-256 (``Share.quick_code_hash``) and
lives ``sharing.quick_code_hours``: the share ends with it. Wrong tries are slowed down
per code, per address and, against guessing spread over many addresses, for the whole
site; a wrong code and a right code with a wrong date get the same answer.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import clock
from core.access import Principal
from core.audit import service as audit
from core.i18n import gettext as _
from core.identity import security
from core.identity.models import Throttle
from core.sharing import invites, service
from core.sharing.models import Share
from core.studies import queries
from core.studies.models import Patient

CODE_ALPHABET = service.PASSWORD_ALPHABET  # no 0/O, 1/I/L: read aloud or typed by hand
CODE_LENGTH = 8
SITE_FAILURES_PER_HOUR = 100  # wrong tries from everyone together before Quick Share pauses


@dataclass
class QuickShare:
    share: Share
    code: str  # "ABCD-EFGH", shown once
    expires_at: datetime


def new_code() -> str:
    letters = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return f"{letters[:4]}-{letters[4:]}"


def normalise(code: str) -> str:
    """What was typed, without spaces or hyphens, in capitals."""
    return "".join(c for c in (code or "").upper() if c.isalnum())


def code_digest(code: str) -> str:
    return security.digest(f"quick-share:{normalise(code)}")


def create(session: Session, runtime, principal: Principal, *, study_uids: list[str], nickname: str = "",
           allow_download: bool = False, hide_details: bool = False, acknowledged: bool = False,
           options: dict | None = None) -> QuickShare:
    """A share of ``study_uids`` behind a new Quick Share code. Raises ``ShareError``."""
    if principal.kind != "account":
        raise service.ShareError(_("Sign in to share your exams."))
    if not study_uids:
        raise service.ShareError(_("Choose at least one exam to share."))
    invites.check_may_share(session, principal, study_uids)
    patient = session.get(Patient, queries.study(session, principal, study_uids[0]).patient_ref)
    if patient.birth_date is None:
        raise service.ShareError(_("A Quick Share code needs your date of birth, which we do not have. "
                                   "Send a share link instead."))
    now = clock.now()
    expires_at = now + timedelta(hours=runtime.site.config.sharing.quick_code_hours)
    if runtime.site.config.sharing.max_days:
        expires_at = min(expires_at, now + timedelta(days=runtime.site.config.sharing.max_days))
    created = service.create(session, runtime, principal, nickname=nickname.strip() or _("Quick Share"),
                             study_uids=study_uids, expires_at=expires_at, allow_download=allow_download,
                             hide_details=hide_details, acknowledged=acknowledged, options=options)
    code = new_code()
    while _find(session, code, open_only=True) is not None:  # two live shares never share a code
        code = new_code()
    created.share.quick_code_hash = code_digest(code)
    session.flush()
    return QuickShare(share=created.share, code=code, expires_at=expires_at)


def _find(session: Session, code: str, *, open_only: bool = False) -> Share | None:
    query = select(Share).where(Share.quick_code_hash == code_digest(code))
    if open_only:
        query = query.where(Share.revoked_at.is_(None), Share.expires_at > clock.now())
    return session.scalars(query.order_by(Share.created_at.desc(), Share.id.desc()).limit(1)).first()


def _site_key(now: datetime) -> str:
    return f"quick-share-site:{now:%Y%m%d%H}"


def _site_wait(session: Session, now: datetime) -> int:
    """Seconds until the next hour once the whole site has had too many wrong tries this hour."""
    row = session.get(Throttle, _site_key(now))
    if row is None or row.failures < SITE_FAILURES_PER_HOUR:
        return 0
    return int((now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1) - now).total_seconds()) + 1


def open_by_code(session: Session, runtime, *, code: str, birth_date: date | None, client: str) -> str:
    """Open the share of ``code`` if ``birth_date`` is its patient's; the recipient session's
    cookie value. Raises ``ShareError``: ``throttled``, ``not_found`` (wrong code or date: one
    answer for both), or, once both were right, ``revoked`` or ``expired``."""
    now = clock.now()
    keys = [f"quick-share-code:{code_digest(code)[:40]}", f"quick-share-ip:{client}"]
    wait = security.wait_seconds(session, keys) or _site_wait(session, now)
    if wait:
        raise service.ShareError(security.too_many_attempts(max(1, -(-wait // 60))), "throttled")
    share = _find(session, code) if len(normalise(code)) == CODE_LENGTH else None
    patient = session.get(Patient, share.patient_ref) if share is not None else None
    if patient is None or birth_date is None or patient.birth_date != birth_date:
        security.record_failure(session, [*keys, _site_key(now)])
        audit.record(session, actor=f"ip:{client}", action="share.quick_code_failed",
                     subject=f"share:{share.id}" if share is not None else "share:unknown")
        raise service.ShareError(_("This code and date of birth do not open a share. Check both with the "
                                   "patient and try again."), "not_found")
    security.clear_failures(session, keys[:1])
    return service.open_share(session, runtime, share, client=client)  # says so if revoked or expired
