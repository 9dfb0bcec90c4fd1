"""The staff's and the help desk's side: a patient's visits and their codes, printing a new
Portal Pass, and reactivating an expired code (from a help request or the patient's page).
Plain functions taking a Session; the routes check who may call them."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy.orm import Session

from core import notify
from core.audit import service as audit
from core.i18n import gettext as _
from core.identity import staff as staff_work
from core.identity.models import Account, AccountRequest
from core.studies.models import Patient, Study
from plugins.radnet_icode import codes, service, visits
from plugins.radnet_icode.models import ICode, Visit


class DeskError(ValueError):
    """Something the staff member can correct or should know; ``str()`` is translated."""


@dataclass
class VisitRow:
    visit: Visit
    centre: object | None  # settings.Location
    studies: list[Study]
    icode: ICode | None
    status: codes.Status | None

    @property
    def reactivatable(self) -> bool:
        return self.status is not None and self.status.state == "expired"


def visit_row(session: Session, *, site, visit: Visit) -> VisitRow:
    icode = codes.current(session, visit.id)
    return VisitRow(visit=visit, centre=service.settings_of(site).location(visit.location_key),
                    studies=visits.studies(session, visit.id), icode=icode,
                    status=codes.status_of(icode) if icode is not None else None)


def visits_of_patient(session: Session, *, site, patient_ref: int) -> list[VisitRow]:
    return [visit_row(session, site=site, visit=visit) for visit in visits.visits_of_patient(session, patient_ref)]


# -- the Portal Pass ----------------------------------------------------------------------------

@dataclass
class Slip:
    """What the printed Portal Pass says; the code exists in clear only here."""

    code: str
    expires_at: datetime
    patient_name: str
    visit_date: date
    centre_name: str
    phone: str
    portal: str  # where to type the code
    language: str
    studies: list[str] = field(default_factory=list)


def print_pass(session: Session, *, site, staff: Account, visit_id: int, language: str, by: str | None = None) -> Slip:
    """A new code for the visit (earlier ones stop working) and the slip that shows it."""
    visit = session.get(Visit, visit_id)
    if visit is None:
        raise LookupError(visit_id)
    issued = service.reissue(session, site=site, visit=visit, by=by or f"staff:{staff.id}")
    audit.record(session, actor=f"account:{staff.id}", action="icode.pass_printed",
                 subject=f"patient:{visit.patient_ref}",
                 detail={"visit": visit.id, "icode": issued.icode.id, "language": language})
    return slip_of(session, site=site, visit=visit, issued=issued, language=language)


def slip_of(session: Session, *, site, visit: Visit, issued: codes.Issued, language: str) -> Slip:
    settings = service.settings_of(site)
    patient = visits.patient_of(session, visit)
    centre = settings.location(visit.location_key)
    offered = site.config.site.languages
    return Slip(code=issued.code, expires_at=issued.icode.expires_at,
                patient_name=" ".join(part for part in (patient.given_name, patient.family_name) if part),
                visit_date=visit.visit_date, centre_name=centre.name if centre else site.config.site.name,
                phone=centre.phone if centre else settings.help_phone,
                portal=f"{site.config.site.base_url}/visit",
                language=language if language in offered else site.config.site.default_language,
                studies=[study.description for study in visits.studies(session, visit.id) if study.description])


# -- reactivation ----------------------------------------------------------------------------------

def reactivate(session: Session, *, site, staff: Account, icode: ICode, ticket: AccountRequest | None = None) -> None:
    """Make an expired code work for another ``icode_valid_days``. From a help request, the person
    who asked is told by email and the request is closed."""
    state = codes.status_of(icode).state
    if state == "revoked":
        raise DeskError(_("This I-Code was replaced by a newer one. Print a new Portal Pass instead."))
    if state != "expired":
        raise DeskError(_("This I-Code still works; there is nothing to reactivate."))
    if ticket is not None and ticket.reference != f"icode:{icode.id}":
        raise DeskError(_("This request is about another I-Code."))
    days = service.settings_of(site).icode_valid_days
    codes.reactivate(session, icode=icode, valid_days=days, by=f"staff:{staff.id}")
    if ticket is None:
        return
    notify.send_email(session, to=ticket.email, template="radnet_icode_reactivated", language=ticket.language,
                      expires_at=icode.expires_at, link=f"{site.config.site.base_url}/visit")
    staff_work.close_request(session, staff=staff, request=ticket,
                             note=f"I-Code reactivated until {icode.expires_at.date().isoformat()}.")


@dataclass
class TicketVisit:
    """The visit a help request is about (its ``reference`` names a code checked with the birth date)."""

    icode: ICode
    row: VisitRow
    patient: Patient


def ticket_visit(session: Session, *, site, ticket: AccountRequest) -> TicketVisit | None:
    icode = service.icode_of_reference(session, getattr(ticket, "reference", ""))
    if icode is None:
        return None
    visit = session.get(Visit, icode.visit_ref)
    return TicketVisit(icode=icode, row=visit_row(session, site=site, visit=visit),
                       patient=visits.patient_of(session, visit))
