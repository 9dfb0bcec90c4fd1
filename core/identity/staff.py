"""Staff and help-desk work: finding a patient, their linked portal users and
invitations, unlocking a sign-in, and the queue of account requests from patients
who could not verify online. Every look at a patient's record is audited (PHI)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from core import clock
from core.audit import service as audit
from core.i18n import N_
from core.i18n import gettext as _
from core.identity import invitations
from core.identity.models import PERMISSIONS, Account, AccountRequest, Invitation, PatientLink
from core.identity.security import clear_failures
from core.identity.service import AccountError, throttle_keys
from core.studies.models import Patient, Study

MAX_RESULTS = 50


def _actor(staff: Account) -> str:
    return f"account:{staff.id}"


# -- finding patients -----------------------------------------------------------

def find_patients(session: Session, *, staff: Account, query: str) -> list[Patient]:
    """By birth date (YYYY-MM-DD), patient ID, accession number, or every word of the name."""
    query = " ".join(query.split())
    if not query:
        return []
    try:
        born = date.fromisoformat(query)
    except ValueError:
        born = None
    if born is not None:
        condition = Patient.birth_date == born
    else:
        by_accession = select(Study.patient_ref).where(func.lower(Study.accession_number) == query.lower())
        by_name = [or_(func.lower(Patient.family_name).contains(word, autoescape=True),
                       func.lower(Patient.given_name).contains(word, autoescape=True))
                   for word in query.lower().split()]
        condition = or_(func.lower(Patient.patient_id) == query.lower(), Patient.id.in_(by_accession),
                        and_(*by_name))
    found = list(session.scalars(select(Patient).where(condition)
                                 .order_by(Patient.family_name, Patient.given_name, Patient.id).limit(MAX_RESULTS)))
    audit.record(session, actor=_actor(staff), action="staff.patients_searched", subject="patients",
                 detail={"results": [p.id for p in found]})
    return found


def patients_by_id(session: Session, *, staff: Account, patient_id: str) -> list[Patient]:
    """The records with this patient ID (several issuers may use the same one)."""
    found = list(session.scalars(select(Patient).where(func.lower(Patient.patient_id) == patient_id.strip().lower())
                                 .order_by(Patient.issuer, Patient.id)))
    audit.record(session, actor=_actor(staff), action="staff.patients_searched", subject="patients",
                 detail={"results": [p.id for p in found]})
    return found


@dataclass
class PatientRecord:
    patient: Patient
    studies: list[Study]
    access: invitations.PatientAccess


def view_patient(session: Session, *, staff: Account, patient_ref: int) -> PatientRecord | None:
    patient = session.get(Patient, patient_ref)
    if patient is None:
        return None
    studies = list(session.scalars(select(Study).where(Study.patient_ref == patient.id)
                                   .order_by(Study.study_date.desc(), Study.id)))
    audit.record(session, actor=_actor(staff), action="staff.patient_viewed", subject=f"patient:{patient.id}")
    return PatientRecord(patient, studies, invitations.access_to(session, patient))


# -- acting for a patient ---------------------------------------------------------

def linked_account(session: Session, *, patient_ref: int, account_id: int) -> Account | None:
    linked = session.scalar(select(PatientLink.id).where(PatientLink.patient_ref == patient_ref,
                                                         PatientLink.account_id == account_id))
    return session.get(Account, account_id) if linked is not None else None


def unlock_sign_in(session: Session, *, staff: Account, account: Account) -> None:
    """Forget the account's failed sign-ins, so its next attempt is not delayed.
    (The per-address delays stay: they protect against whoever is guessing.)"""
    clear_failures(session, throttle_keys(account.email, "")[:1])
    audit.record(session, actor=_actor(staff), action="staff.sign_in_unlocked", subject=f"account:{account.id}")


def resend_invitation(session: Session, *, site, staff: Account, patient_ref: int, invitation_id: int) -> bool:
    invitation = session.get(Invitation, invitation_id)
    if invitation is None or invitation.patient_ref != patient_ref or invitation.accepted_at is not None:
        return False
    invitations.renew(session, site=site, invitation=invitation, actor=_actor(staff))
    return True


# -- the help desk's queue ------------------------------------------------------------

TOPIC_LABELS = {"account": N_("Account request"), "sign_in": N_("Trouble signing in"),
                "visit_code": N_("Visit code"), "other": N_("Other question")}


def topic_label(topic: str) -> str:
    """What a ticket is about, translated; a plugin's own topic shows as it is stored."""
    return _(TOPIC_LABELS[topic]) if topic in TOPIC_LABELS else topic


def open_requests(session: Session) -> list[AccountRequest]:
    return list(session.scalars(select(AccountRequest).where(AccountRequest.status == "open")
                                .order_by(AccountRequest.created_at, AccountRequest.id)))


def age_in_days(request: AccountRequest) -> int:
    return (clock.now() - request.created_at).days


def invite_for_request(session: Session, *, site, staff: Account, request: AccountRequest,
                       patient: Patient) -> Invitation:
    """The person was verified by phone: invite them, as the patient, to their record."""
    if request.status != "open":
        raise AccountError(_("This request has already been handled."))
    if request.topic != "account":  # other questions are answered, then closed with a note
        raise AccountError(_("Only a request for an account can be answered with an invitation."))
    invitation = invitations.invite(session, site=site, inviter=staff, email=request.email, name=request.name,
                                    patient=patient, relationship="self", permissions=list(PERMISSIONS),
                                    language=request.language)
    _handled(request, staff, "invited")
    audit.record(session, actor=_actor(staff), action="helpdesk.request_invited",
                 subject=f"account_request:{request.id}",
                 detail={"patient": patient.id, "invitation": invitation.id, "verified_by": "phone"})
    return invitation


def close_request(session: Session, *, staff: Account, request: AccountRequest, note: str) -> None:
    if request.status != "open":
        raise AccountError(_("This request has already been handled."))
    if not note.strip():
        raise AccountError(_("Please write why the request is closed."))
    _handled(request, staff, "closed")
    request.note = note.strip()
    audit.record(session, actor=_actor(staff), action="helpdesk.request_closed",
                 subject=f"account_request:{request.id}")


def _handled(request: AccountRequest, staff: Account, status: str) -> None:
    request.status = status
    request.handled_by = staff.id
    request.handled_at = clock.now()
