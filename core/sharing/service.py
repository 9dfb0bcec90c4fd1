"""Making, opening and revoking shares. Nothing here knows of HTTP.

A share's link token (256 random bits) and its recipients' session ids are stored
only as SHA-256; its password, generated and shown once, only as argon2id. Wrong
passwords are slowed down per share and per address (``identity.security``
throttles), and every opening is audited with the share's nickname and recipient,
so that the patient's activity page can say who looked.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core import clock
from core.access import SHARE_COOKIE as COOKIE  # noqa: F401  (routes set it)
from core.access import Principal
from core.audit import service as audit
from core.i18n import format_datetime
from core.i18n import gettext as _
from core.plugins import call_each
from core.identity import security
from core.sharing.models import Share, ShareSession
from core.studies import queries
from core.studies.models import Study

PASSWORD_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L: read aloud or copied by hand


class ShareError(Exception):
    """A share cannot be made or opened; ``message`` says why in the reader's language.
    ``kind``: invalid, not_found, revoked, expired, password, throttled."""

    def __init__(self, message: str, kind: str = "invalid"):
        super().__init__(message)
        self.message, self.kind = message, kind


@dataclass
class Created:
    share: Share
    token: str  # for the link, shown once
    password: str | None  # shown once, to be sent separately


def new_password() -> str:
    return "-".join("".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(4)) for _ in range(3))


def as_generated(typed: str) -> str:
    """A password as ``new_password`` wrote it, however it was typed (case, spaces, dashes)."""
    letters = "".join(char for char in typed.upper() if char.isalnum())
    return "-".join(letters[start:start + 4] for start in range(0, len(letters), 4))


def actor_of(principal: Principal) -> str:
    return f"{principal.kind}:{principal.id}"


# -- making ---------------------------------------------------------------------------------------

def create(session: Session, runtime, principal: Principal, *, nickname: str, study_uids: list[str],
           portfolio: bool = False, patient_ref: int | None = None, with_password: bool = False,
           expires_at: datetime | None = None, allow_download: bool = False, allow_reshare: bool = False,
           hide_details: bool = False, acknowledged: bool = False, recipient_email: str | None = None,
           options: dict | None = None) -> Created:
    """A new share of ``study_uids`` (or of ``patient_ref``'s whole portfolio) by a signed-in
    patient or proxy, or a re-share by a recipient whose share allows it. Raises ``ShareError``."""
    nickname = " ".join(nickname.split())[:100]
    if not nickname:
        raise ShareError(_("Give the share a nickname, so that you can recognise it later."))
    if not acknowledged:
        raise ShareError(_("Please tick the box to confirm that you understand what you are sharing."))
    now = clock.now()
    _check_expiry(runtime, expires_at, now)
    parent = None
    if principal.kind == "share":
        parent = session.get(Share, int(principal.id))
        if parent is None or not parent.allow_reshare or "reshare" not in principal.scope:
            raise ShareError(_("This share does not allow sharing it further."))
        portfolio = portfolio and parent.portfolio
        patient_ref = parent.patient_ref
        allow_download, hide_details = allow_download and parent.allow_download, hide_details or parent.hide_details
        allow_reshare = False  # a re-share goes no further
        if parent.expires_at and (expires_at is None or expires_at > parent.expires_at):
            expires_at = parent.expires_at
    elif principal.kind != "account":
        raise ShareError(_("Sign in to share your exams."))
    studies = [] if portfolio else _studies(session, principal, study_uids)
    if not portfolio and not studies:
        raise ShareError(_("Choose at least one exam to share."))
    if patient_ref is None:
        patient_ref = studies[0].patient_ref if studies else None
    allowed = queries.patient_refs(session, principal) if principal.kind == "account" else {patient_ref}
    # a re-share's studies were found through the share's own scope (one may be of another record of
    # the same person); an account's must be of its own patients (staff accounts see every study)
    if patient_ref not in allowed or (principal.kind == "account"
                                      and any(study.patient_ref not in allowed for study in studies)):
        raise queries.NotFound(str(patient_ref))
    token = security.new_token()
    password = new_password() if with_password else None
    owner = parent.owner_account if parent else int(principal.id)
    share = Share(token_hash=security.digest(token), owner_account=owner, patient_ref=patient_ref,
                  parent_ref=parent.id if parent else None, created_by=actor_of(principal), nickname=nickname,
                  portfolio=portfolio, study_refs=sorted(study.id for study in studies),
                  password_hash=security.hash_password(password) if password else None,
                  allow_download=allow_download, allow_reshare=allow_reshare, hide_details=hide_details,
                  options=options or {}, recipient_email=(recipient_email or "").strip().lower() or None,
                  created_at=now, expires_at=expires_at, times_opened=0)
    session.add(share)
    session.flush()
    audit.record(session, actor=actor_of(principal), action="share.created", subject=f"patient:{patient_ref}",
                 detail={"share": share.id, "nickname": nickname, "studies": share.study_refs,
                         "portfolio": portfolio, "recipient": share.recipient_email, "parent": share.parent_ref,
                         "download": allow_download, "hide_details": hide_details,
                         "expires_at": expires_at.isoformat() if expires_at else None})
    call_each(runtime.pm, "share_created", strict=False, share=share)  # an observer never stops the share
    return Created(share=share, token=token, password=password)


def _studies(session: Session, principal: Principal, study_uids: list[str]) -> list[Study]:
    return [queries.study(session, principal, uid) for uid in dict.fromkeys(study_uids)]


def _check_expiry(runtime, expires_at: datetime | None, now: datetime) -> None:
    cap = runtime.site.config.sharing.max_days
    if expires_at is not None and expires_at <= now:
        raise ShareError(_("Choose an expiry date in the future."))
    if cap and (expires_at is None or expires_at > now + timedelta(days=cap)):
        raise ShareError(_("A share can last at most %(days)s days here.", days=cap))


# -- opening --------------------------------------------------------------------------------------

def find_by_token(session: Session, token: str) -> Share | None:
    return session.scalar(select(Share).where(Share.token_hash == security.digest(token))) if token else None


def check_open(share: Share | None) -> Share:
    """The share if it may be opened now, else ``ShareError`` saying plainly why not."""
    if share is None:
        raise ShareError(_("This link is not valid. Check that you copied all of it, or ask for a new one."),
                         "not_found")
    if share.revoked_at is not None or (share.parent_ref and _parent_closed(share)):
        raise ShareError(_("This share was turned off by the person who shared it. Ask them for a new link."),
                         "revoked")
    if share.expires_at is not None and share.expires_at <= clock.now():
        raise ShareError(_("This share expired on %(when)s. Ask the person who shared it for a new link.",
                           when=format_datetime(share.expires_at, "long")), "expired")
    return share


def _parent_closed(share: Share) -> bool:
    from sqlalchemy.orm import object_session

    parent = object_session(share).get(Share, share.parent_ref)
    try:
        check_open(parent)
    except ShareError:
        return True
    return False


def open_share(session: Session, runtime, share: Share, *, password: str = "", client: str = "") -> str:
    """Check ``password`` (if the share has one) and start a recipient session; returns its
    cookie value. Raises ``ShareError`` (``password``, ``throttled``, or why it cannot open)."""
    check_open(share)
    if share.password_hash:
        keys = [f"share-password:{share.id}", f"share-password-ip:{client}"]
        wait = security.wait_seconds(session, keys)
        if wait:
            raise ShareError(security.too_many_attempts(max(1, -(-wait // 60))), "throttled")
        if not security.verify_password(share.password_hash, as_generated(password)):
            security.record_failure(session, keys)
            audit.record(session, actor=f"ip:{client}", action="share.password_failed", subject=f"share:{share.id}")
            raise ShareError(_("That password is not right. Check it with the person who shared the link."),
                             "password")
        security.clear_failures(session, [keys[0]])
    now = clock.now()
    token = security.new_token()
    hours = runtime.site.config.sharing.session_hours
    ends = now + timedelta(hours=hours)
    if share.expires_at is not None:
        ends = min(ends, share.expires_at)
    session.add(ShareSession(id_hash=security.digest(token), share_ref=share.id, created_at=now, last_seen_at=now,
                             expires_at=ends))
    share.times_opened += 1
    share.last_opened_at = now
    audit.record(session, actor=f"share:{share.id}", action="share.opened", subject=f"patient:{share.patient_ref}",
                 detail={"share": share.id, "nickname": share.nickname, "recipient": share.recipient_email,
                         "studies": share.study_refs, "portfolio": share.portfolio})
    session.flush()
    call_each(runtime.pm, "share_opened", strict=False, share=share)
    return token


def principal_for(session: Session, token: str | None) -> Principal | None:
    """The principal of a recipient's session cookie, or None if it is not (or no longer) valid."""
    if not token:
        return None
    found = session.get(ShareSession, security.digest(token))
    if found is None:
        return None
    share = session.get(Share, found.share_ref)
    try:
        check_open(share)
    except ShareError:
        found = None
    if found is None or found.expires_at <= clock.now():
        session.execute(delete(ShareSession).where(ShareSession.id_hash == security.digest(token)))
        return None
    return Principal(kind="share", id=str(share.id), scope=scope_of(share))


def scope_of(share: Share) -> frozenset[str]:
    scope = {f"patient:{share.patient_ref}"} if share.portfolio else {f"study:{ref}" for ref in share.study_refs}
    scope |= {flag for flag, on in (("download", share.allow_download), ("reshare", share.allow_reshare),
                                    ("hide_details", share.hide_details)) if on}
    scope |= {f"option:{name}" for name, on in (share.options or {}).items() if on}
    return frozenset(scope)


def end_session(session: Session, token: str) -> None:
    session.execute(delete(ShareSession).where(ShareSession.id_hash == security.digest(token)))


# -- managing -------------------------------------------------------------------------------------

def shares_of(session: Session, account_id: int) -> list[Share]:
    """Every share made for the account's patients, re-shares included (``parent_ref``), newest first."""
    return list(session.scalars(select(Share).where(Share.owner_account == account_id)
                                .order_by(Share.created_at.desc(), Share.id.desc())))


def revoke(session: Session, principal: Principal, share_id: int) -> Share:
    """Turn a share off (and its re-shares with it); its recipients' sessions end at once."""
    share = session.get(Share, share_id)
    if share is None or principal.kind != "account" or share.owner_account != int(principal.id):
        raise queries.NotFound(str(share_id))
    now = clock.now()
    closing = [share, *session.scalars(select(Share).where(Share.parent_ref == share.id, Share.revoked_at.is_(None)))]
    for each in closing:
        each.revoked_at = each.revoked_at or now
        session.execute(delete(ShareSession).where(ShareSession.share_ref == each.id))
        audit.record(session, actor=actor_of(principal), action="share.revoked", subject=f"patient:{each.patient_ref}",
                     detail={"share": each.id, "nickname": each.nickname})
    session.flush()
    return share
