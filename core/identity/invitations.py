"""Invitations and the people who have access to a patient.

An invitation is an emailed, single-use link that lets a person use the portal
for one patient: as the patient, or as their guardian, carer or family, with the
permissions the inviter chose. Only the token's SHA-256 is stored. Patients (and
guardians) invite and remove people for their patients; staff invite for any
patient. Plain functions taking a Session; no HTTP."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core import clock
from core.audit import service as audit
from core.i18n import gettext as _
from core.identity.models import PERMISSIONS, RELATIONSHIPS, Account, Invitation, PatientLink
from core.identity.security import digest, new_token, password_problem
from core.identity.service import AccountError, account_by_email, create_account, normalise_email
from core.studies.models import Patient

MANAGING = ("self", "guardian")  # the links that may invite people for a patient and remove them
EMAIL_SHAPE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class NotAcceptable(Exception):
    """The invitation cannot be accepted this way; ``reason`` says why:
    "used", "expired", "account_exists" or "other_account"."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def relationship_labels() -> dict[str, str]:
    return {"self": _("The patient"), "guardian": _("Parent or guardian"), "carer": _("Carer"),
            "family": _("Family member")}


def permission_labels() -> dict[str, str]:
    return {"view_images": _("See images"), "view_reports": _("Read reports"), "share": _("Share exams"),
            "download": _("Download images"), "payments": _("Pay bills")}


def patient_name(patient: Patient) -> str:
    return " ".join(part for part in (patient.given_name, patient.family_name) if part)


def _actor(account: Account | None) -> str:
    return f"account:{account.id}" if account is not None else "system"


# -- sending ------------------------------------------------------------------

def invite(session: Session, *, site, inviter: Account | None, email: str, name: str, patient: Patient,
           relationship: str, permissions: list[str], language: str) -> Invitation:
    """Invite ``email`` to use the portal for ``patient``. Inviting the same address for
    the same patient again replaces the earlier unused invitation (its link stops working)."""
    email = normalise_email(email)
    if len(email) > 254 or not EMAIL_SHAPE.match(email):
        raise AccountError(_("Please enter a valid email address."))
    if relationship not in RELATIONSHIPS:
        raise AccountError(_("Please choose how this person is related to the patient."))
    chosen = [p for p in PERMISSIONS if p in set(permissions)]
    if not chosen:
        raise AccountError(_("Please choose at least one thing this person may do."))
    if _has_access(session, email, patient.id):
        raise AccountError(_("This person already has access to this patient."))
    if language not in site.config.site.languages:
        language = site.config.site.default_language
    earlier = session.scalars(select(Invitation).where(
        Invitation.email == email, Invitation.patient_ref == patient.id, Invitation.accepted_at.is_(None))
        .order_by(Invitation.id)).all()
    invitation = earlier[0] if earlier else Invitation(email=email, patient_ref=patient.id, created_at=clock.now())
    for duplicate in earlier[1:]:
        session.delete(duplicate)
    invitation.name = name.strip()[:200]
    invitation.relationship = relationship
    invitation.permissions = chosen
    invitation.language = language
    invitation.invited_by = inviter.id if inviter is not None else None
    session.add(invitation)
    _new_link(session, site=site, invitation=invitation, inviter=inviter, patient=patient)
    audit.record(session, actor=_actor(inviter), action="invitation.sent", subject=f"invitation:{invitation.id}",
                 detail={"patient": patient.id, "relationship": relationship, "permissions": chosen,
                         "replaced": bool(earlier)})
    return invitation


def _new_link(session: Session, *, site, invitation: Invitation, inviter: Account | None, patient: Patient | None) -> str:
    """A fresh token and expiry (the old link stops working), then the email."""
    from core import notify

    token = new_token()
    hours = site.config.identity.invitation_valid_hours
    invitation.token_hash = digest(token)
    invitation.expires_at = clock.now() + timedelta(hours=hours)
    session.flush()
    # staff invite in the organisation's name (the email names the site); a patient or guardian in their own
    inviter_name = inviter.name if inviter is not None and inviter.role == "user" else ""
    notify.send_email(session, to=invitation.email, template="invitation", language=invitation.language,
                      link=f"{site.config.site.base_url}/invite/{token}", inviter_name=inviter_name,
                      patient_name=patient_name(patient) if patient is not None else "", hours=hours)
    return token


def renew(session: Session, *, site, invitation: Invitation, actor: str) -> None:
    """Send an unused invitation again with a new link and a new expiry."""
    if invitation.accepted_at is not None:
        return
    inviter = session.get(Account, invitation.invited_by) if invitation.invited_by else None
    patient = session.get(Patient, invitation.patient_ref) if invitation.patient_ref else None
    _new_link(session, site=site, invitation=invitation, inviter=inviter, patient=patient)
    audit.record(session, actor=actor, action="invitation.renewed", subject=f"invitation:{invitation.id}",
                 detail={"patient": invitation.patient_ref})


def renew_for_email(session: Session, *, site=None, email: str) -> bool:
    """"Forgot password" for someone who never accepted their invitation: when ``email``
    has no account but unused invitations (expired or not), send each again. True if any was."""
    site = site or session.info["runtime"].site
    email = normalise_email(email)
    if account_by_email(session, email) is not None:
        return False
    waiting = session.scalars(select(Invitation).where(Invitation.email == email, Invitation.accepted_at.is_(None))
                              .order_by(Invitation.id)).all()
    for invitation in waiting:
        renew(session, site=site, invitation=invitation, actor=f"email:{digest(email)[:16]}")
    return bool(waiting)


def renew_expired(session: Session, *, site, token: str, ip: str) -> None:
    """The expired page's "send me a new invitation": only to the address it was sent to,
    and only for an expired, unused one. Says nothing either way."""
    found = look_up(session, token)
    if found.state == "expired":
        renew(session, site=site, invitation=found.invitation, actor=f"ip:{ip}")


# -- accepting ----------------------------------------------------------------

@dataclass
class Found:
    state: str  # "valid", "expired", "used" or "unknown"
    invitation: Invitation | None = None


def look_up(session: Session, token: str) -> Found:
    invitation = session.scalar(select(Invitation).where(Invitation.token_hash == digest(token or "")))
    if invitation is None:
        return Found("unknown")
    if invitation.accepted_at is not None:
        return Found("used", invitation)
    if invitation.expires_at <= clock.now():
        return Found("expired", invitation)
    return Found("valid", invitation)


def _claim(session: Session, invitation: Invitation) -> None:
    """Mark the invitation used, once: of two requests racing, only one gets it."""
    now = clock.now()
    claimed = session.execute(
        update(Invitation).where(Invitation.id == invitation.id, Invitation.accepted_at.is_(None),
                                 Invitation.expires_at > now).values(accepted_at=now),
        execution_options={"synchronize_session": False}).rowcount
    session.refresh(invitation)
    if not claimed:
        raise NotAcceptable("used" if invitation.accepted_at is not None else "expired")


def accept_with_new_account(session: Session, *, invitation: Invitation, name: str, password: str,
                            confirm: str, language: str) -> Account:
    """Create the invited person's account (the link proves the email) and give it access."""
    if not name.strip():
        raise AccountError(_("Please enter your name."))
    if password != confirm:
        raise AccountError(_("The two passwords are not the same."))
    if problem := password_problem(password, email=invitation.email, name=name):
        raise AccountError(problem)
    if account_by_email(session, invitation.email) is not None:
        raise NotAcceptable("account_exists")
    _claim(session, invitation)
    account = create_account(session, email=invitation.email, name=name, how="invitation", password=password,
                             language=language, email_verified=True)
    _grant(session, invitation, account)
    return account


def accept_for_account(session: Session, *, invitation: Invitation, account: Account) -> None:
    """An existing account, signed in, accepts an invitation sent to its own address."""
    if normalise_email(account.email) != invitation.email:
        raise NotAcceptable("other_account")
    _claim(session, invitation)
    _grant(session, invitation, account)


def _grant(session: Session, invitation: Invitation, account: Account) -> None:
    invitation.account_id = account.id
    if invitation.patient_ref is not None and session.scalar(select(PatientLink).where(
            PatientLink.account_id == account.id, PatientLink.patient_ref == invitation.patient_ref)) is None:
        # an existing link (e.g. the person's own record) is kept as it is, never narrowed
        session.add(PatientLink(account_id=account.id, patient_ref=invitation.patient_ref,
                                relationship=invitation.relationship, permissions=list(invitation.permissions),
                                created_at=clock.now()))
    session.flush()
    audit.record(session, actor=f"account:{account.id}", action="invitation.accepted",
                 subject=f"invitation:{invitation.id}",
                 detail={"patient": invitation.patient_ref, "relationship": invitation.relationship,
                         "permissions": list(invitation.permissions)})


# -- people with access ---------------------------------------------------------

@dataclass
class PatientAccess:
    """Who can use the portal for one patient, and who has been invited."""

    patient: Patient
    links: list[tuple[PatientLink, Account]] = field(default_factory=list)
    pending: list[Invitation] = field(default_factory=list)


def _has_access(session: Session, email: str, patient_ref: int) -> bool:
    return session.scalar(select(PatientLink.id).join(Account, Account.id == PatientLink.account_id).where(
        Account.email == email, PatientLink.patient_ref == patient_ref)) is not None


def access_to(session: Session, patient: Patient) -> PatientAccess:
    links = session.execute(select(PatientLink, Account).join(Account, Account.id == PatientLink.account_id)
                            .where(PatientLink.patient_ref == patient.id).order_by(PatientLink.id)).all()
    pending = session.scalars(select(Invitation).where(Invitation.patient_ref == patient.id,
                                                       Invitation.accepted_at.is_(None))
                              .order_by(Invitation.id)).all()
    return PatientAccess(patient, [tuple(row) for row in links], list(pending))


def managed_patients(session: Session, account_id: int) -> list[Patient]:
    """The patients this account may invite people for: itself, and those it is guardian of."""
    return list(session.scalars(select(Patient).join(PatientLink, PatientLink.patient_ref == Patient.id).where(
        PatientLink.account_id == account_id, PatientLink.relationship.in_(MANAGING)).order_by(Patient.id)))


def may_manage(session: Session, account_id: int, patient_ref: int) -> bool:
    return session.scalar(select(PatientLink.id).where(
        PatientLink.account_id == account_id, PatientLink.patient_ref == patient_ref,
        PatientLink.relationship.in_(MANAGING))) is not None


def removable_link(session: Session, *, account_id: int, patient_ref: int, link_id: int) -> PatientLink | None:
    """Another person's proxy link to a patient this account manages. The patient's own
    link and the account's own link are never removed here."""
    link = session.get(PatientLink, link_id)
    if link is None or link.patient_ref != patient_ref or link.account_id == account_id or link.relationship == "self":
        return None
    return link if may_manage(session, account_id, patient_ref) else None


def revoke(session: Session, *, actor: Account, link: PatientLink) -> None:
    audit.record(session, actor=_actor(actor), action="access.revoked", subject=f"patient:{link.patient_ref}",
                 detail={"account": link.account_id, "relationship": link.relationship,
                         "permissions": list(link.permissions or [])})
    session.delete(link)
    session.flush()
