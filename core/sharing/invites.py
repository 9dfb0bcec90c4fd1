"""Sharing with a doctor by email, and the guest accounts that let that doctor see, in one
list, every share sent to their address. Nothing here knows of HTTP.

The email carries the link only: a password, when the patient asks for one, is shown to
the patient once and never put in the same email. When the site sets
``sharing.guest_accounts``, the recipient also gets a guest account: no password and no
identity check, only a one-time code emailed at each sign-in. A guest's principal (kind
``guest``, see ``core.identity.sessions``) reaches nothing but its list; opening a share
from it starts that share's own recipient session, so each share keeps its own options
(download, hidden details, password).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import clock, notify
from core.access import Principal
from core.audit import service as audit
from core.i18n import gettext as _
from core.identity import security
from core.identity import service as identity
from core.identity.models import Account, PatientLink
from core.sharing import pseudonyms, service
from core.sharing.models import Share
from core.studies import queries
from core.studies.models import Patient, Study

MESSAGE_MAX = 1000  # characters of the patient's own note to the doctor
GUEST_ROLE = "guest"
GUEST_CODE = "guest_sign_in"  # the one-time code's purpose
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


@dataclass
class Sent:
    created: service.Created
    link: str
    guest: Account | None  # the recipient's guest account, when the site makes them


def link_of(runtime, token: str) -> str:
    return f"{runtime.site.config.site.base_url}/s/{token}"


def clean_email(text: str) -> str:
    email = identity.normalise_email(text)
    if len(email) > 254 or not EMAIL.match(email):
        raise service.ShareError(_("Enter the doctor's email address, like name@example.com."))
    return email


def clean_message(text: str) -> str:
    """Plain text, its line breaks kept, other control characters dropped."""
    lines = "".join(c for c in (text or "").replace("\r\n", "\n") if c == "\n" or c.isprintable()).strip()
    if len(lines) > MESSAGE_MAX:
        raise service.ShareError(_("The message can have at most %(count)s characters.", count=MESSAGE_MAX))
    return lines


def shareable_patients(session: Session, principal: Principal) -> set[int]:
    """The patient records an account may share: those it is linked to with the ``share``
    permission (a proxy may only see some), with their other practices' records."""
    links = session.scalars(select(PatientLink).where(PatientLink.account_id == int(principal.id))).all()
    allowed = frozenset(str(link.patient_ref) for link in links if "share" in (link.permissions or []))
    return queries.patient_refs(session, Principal(kind="account", id=principal.id, scope=allowed))


def check_may_share(session: Session, principal: Principal, study_uids: list[str]) -> None:
    """A proxy without the ``share`` permission for a patient cannot share that patient's exams."""
    if principal.kind != "account":
        return  # a recipient's re-share is checked by ``service.create``
    allowed = shareable_patients(session, principal)
    for uid in dict.fromkeys(study_uids):
        if queries.study(session, principal, uid).patient_ref not in allowed:
            raise service.ShareError(_("You may not share this patient's exams."))


def share_by_email(session: Session, runtime, principal: Principal, *, recipient_email: str, message: str = "",
                   language: str, study_uids: list[str], **share_fields) -> Sent:
    """A share of ``study_uids`` for ``recipient_email``, and the email that brings them its link in
    ``language``. ``share_fields`` go to ``service.create``. Raises ``ShareError`` (the caller rolls back)."""
    email, message = clean_email(recipient_email), clean_message(message)
    check_may_share(session, principal, study_uids)
    created = service.create(session, runtime, principal, study_uids=study_uids, recipient_email=email,
                             **share_fields)
    guest = ensure_guest(session, email, language) if runtime.site.config.sharing.guest_accounts else None
    link = link_of(runtime, created.token)
    share = created.share
    sender = session.get(Account, share.owner_account) if principal.kind == "account" else None
    base = runtime.site.config.site.base_url
    notify.send_email(session, to=email, template="share_invitation", language=language, link=link,
                      sender_name=sender.name if sender and not share.hide_details else "", message=message,
                      expires_at=share.expires_at, has_password=bool(created.password),
                      guest_link=f"{base}/shared/guest/signin" if guest else "")
    audit.record(session, actor=service.actor_of(principal), action="share.emailed",
                 subject=f"patient:{share.patient_ref}",
                 detail={"share": share.id, "recipient": email, "language": language, "guest": bool(guest)})
    return Sent(created=created, link=link, guest=guest)


# -- guest accounts -------------------------------------------------------------------------------

def ensure_guest(session: Session, email: str, language: str) -> Account | None:
    """The guest account of ``email``, made if the address has no account yet. An address that
    already has a portal account gets none: its owner signs in as usual and follows the link."""
    account = identity.account_by_email(session, email)
    if account is None:
        return identity.create_account(session, email=email, name="", how="share", role=GUEST_ROLE,
                                       language=language)
    return account if account.role == GUEST_ROLE else None


def guest_by_email(session: Session, email: str) -> Account | None:
    account = identity.account_by_email(session, email)
    return account if account is not None and account.role == GUEST_ROLE else None


def send_guest_code(session: Session, runtime, *, email: str, ip: str) -> None:
    """Email a sign-in code if ``email`` has a guest account; the caller answers the same either way.
    No code is sent while that address or this client is held back for wrong codes, nor, after
    the first few, faster than the throttle allows."""
    account = guest_by_email(session, email)
    sends = [sent_key(email)]  # a few codes, then slower: nobody's inbox is flooded from here
    if account is None or security.wait_seconds(session, [*sends, *guest_keys(email, ip)]):
        return
    security.record_failure(session, sends)
    minutes = runtime.site.config.identity.code_valid_minutes
    code = security.issue_code(session, purpose=GUEST_CODE, account_id=account.id, minutes=minutes)
    notify.send_email(session, to=account.email, template="share_guest_code", language=account.language,
                      code=code, minutes=minutes)


def guest_keys(email: str, ip: str) -> list[str]:
    return [f"guest:{identity.normalise_email(email)}", f"ip:{ip}"]


def sent_key(email: str) -> str:
    return f"guest-code-sent:{identity.normalise_email(email)}"


@dataclass
class GuestSignIn:
    outcome: str  # "signed_in", "wrong", "expired", "too_many", "throttled"
    account: Account | None = None
    wait: int = 0


def check_guest_code(session: Session, runtime, *, email: str, code: str, ip: str) -> GuestSignIn:
    """Check a guest's emailed code; the answer is the same whether or not the address has a guest account."""
    keys = guest_keys(email, ip)
    if wait := security.wait_seconds(session, keys):
        return GuestSignIn("throttled", wait=wait)
    account = guest_by_email(session, email)
    checked = security.check_code(session, purpose=GUEST_CODE, given=code, account_id=account.id,
                                  max_attempts=runtime.site.config.identity.code_attempts) if account else None
    if checked is None or not checked.ok:
        security.record_failure(session, keys)
        audit.record(session, actor=f"ip:{ip}", action="signin.failed",
                     subject=f"account:{account.id}" if account else "guest",
                     detail={"guest": True, "why": checked.problem if checked else "none"})
        problem = checked.problem if checked else "wrong"
        return GuestSignIn(problem if problem in ("expired", "too_many") else "wrong")
    security.clear_failures(session, [keys[0], sent_key(email)])
    account.email_verified_at = account.email_verified_at or clock.now()  # the code proved the address
    audit.record(session, actor=f"account:{account.id}", action="signin.succeeded", subject=f"account:{account.id}",
                 detail={"ip": ip, "guest": True})
    return GuestSignIn("signed_in", account)


@dataclass
class GuestShare:
    """One share on a guest's list: who shared it (unless details are hidden) and which exams."""

    share: Share
    patient: Patient | None
    sender: str
    studies: list[Study] = field(default_factory=list)
    expires_at: datetime | None = None


def recipient_principal(share: Share) -> Principal:
    return Principal(kind="share", id=str(share.id), scope=service.scope_of(share))


def shares_for_guest(session: Session, guest: Principal) -> list[GuestShare]:
    """Every share sent to the guest's address that can be opened now, newest first, with the
    studies its recipient would see. Each patient shown is written to the audit trail."""
    account = session.get(Account, int(guest.id))
    rows = session.scalars(select(Share).where(Share.recipient_email == account.email, Share.revoked_at.is_(None))
                           .order_by(Share.created_at.desc(), Share.id.desc())).all()
    listed = []
    for share in rows:
        try:
            service.check_open(share)
        except service.ShareError:
            continue
        principal = recipient_principal(share)
        studies = list(session.scalars(queries.studies(session, principal).limit(200)))
        hidden = share.hide_details
        if hidden:  # the studies as its recipient sees them (core.sharing.deidentify)
            studies = [pseudonyms.for_principal(session, principal).study(study) for study in studies]
        owner = session.get(Account, share.owner_account)
        listed.append(GuestShare(share=share, patient=None if hidden else session.get(Patient, share.patient_ref),
                                 sender="" if hidden or owner is None else owner.name, studies=studies,
                                 expires_at=share.expires_at))
        audit.record(session, actor=f"guest:{account.id}", action="share.listed", subject=f"patient:{share.patient_ref}",
                     detail={"share": share.id, "nickname": share.nickname, "recipient": account.email})
    return listed


def open_for_guest(session: Session, runtime, guest: Principal, share_id: int, *, password: str = "",
                   client: str = "") -> str:
    """Open one share of the guest's list (its password too, if it has one): the recipient
    session's cookie value. ``queries.NotFound`` if it was not sent to the guest's address."""
    account = session.get(Account, int(guest.id))
    share = session.get(Share, share_id)
    if share is None or account is None or share.recipient_email != account.email:
        raise queries.NotFound(str(share_id))
    return service.open_share(session, runtime, share, password=password, client=client)
