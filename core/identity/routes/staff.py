"""Staff pages: find a patient, see and help their portal users (invite, resend,
unlock), and the help desk's queue of account requests."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from core import access, clock, i18n
from core.db import DbSession
from core.i18n import gettext as _
from core.identity import invitations, staff
from core.identity.models import PERMISSIONS, RELATIONSHIPS, Account, AccountRequest
from core.identity.service import AccountError
from core.studies.models import Patient
from core.web import render

router = APIRouter()
STAFF = access.rule("staff.any")
HELPDESK = access.rule("helpdesk.queue")


def _staff_account(request: Request, session) -> Account:
    return session.get(Account, int(access.current_principal(request).id))


# -- patients -----------------------------------------------------------------

@router.get("/staff", response_class=HTMLResponse, dependencies=[STAFF])
def search(request: Request, session: DbSession, q: str = ""):
    results = staff.find_patients(session, staff=_staff_account(request, session), query=q) if q.strip() else None
    session.commit()  # the search is audited
    return render(request, "identity/staff_search.html", q=q, results=results,
                  patient_name=invitations.patient_name, max_results=staff.MAX_RESULTS)


def _patient_page(request: Request, session, patient_ref: int, *, form: dict | None = None, error: str = "",
                  notice: str = "", status_code: int = 200):
    record = staff.view_patient(session, staff=_staff_account(request, session), patient_ref=patient_ref)
    if record is None:
        raise HTTPException(status_code=404)
    session.commit()  # the view is audited even if the page then fails
    patient = record.patient
    form = form or {"name": invitations.patient_name(patient), "email": patient.email or "", "relationship": "self",
                    "permissions": list(PERMISSIONS), "language": i18n.current_language()}
    return render(request, "identity/staff_patient.html", record=record, patient=patient, form=form, error=error,
                  notice=notice, now=clock.now(), patient_name=invitations.patient_name,
                  relationships=invitations.relationship_labels(), relationship_choices=RELATIONSHIPS,
                  permission_labels=invitations.permission_labels(), permission_choices=PERMISSIONS,
                  email_languages=request.app.state.runtime.site.config.site.languages, status_code=status_code)


@router.get("/staff/patients/{patient_ref}", response_class=HTMLResponse, dependencies=[STAFF])
def patient_page(request: Request, session: DbSession, patient_ref: int, done: str = ""):
    notices = {"invited": _("The invitation has been sent."),
               "resent": _("The invitation has been sent again with a new link."),
               "unlocked": _("Sign-in is unlocked: the next attempt will not be delayed.")}
    return _patient_page(request, session, patient_ref, notice=notices.get(done, ""))


@router.post("/staff/patients/{patient_ref}/invite", dependencies=[STAFF])
def invite(request: Request, session: DbSession, patient_ref: int, name: Annotated[str, Form()] = "",
           email: Annotated[str, Form()] = "", relationship: Annotated[str, Form()] = "",
           permissions: Annotated[list[str], Form()] = [], language: Annotated[str, Form()] = "en"):
    patient = session.get(Patient, patient_ref)
    if patient is None:
        raise HTTPException(status_code=404)
    form = {"name": name, "email": email, "relationship": relationship, "permissions": permissions,
            "language": language}
    try:
        if not name.strip():
            raise AccountError(_("Please enter the person's name."))
        invitations.invite(session, site=request.app.state.runtime.site, inviter=_staff_account(request, session),
                           email=email, name=name, patient=patient, relationship=relationship,
                           permissions=permissions, language=language)
    except AccountError as exc:
        session.rollback()
        return _patient_page(request, session, patient_ref, form=form, error=str(exc), status_code=422)
    session.commit()
    return RedirectResponse(f"/staff/patients/{patient_ref}?done=invited", status_code=303)


@router.post("/staff/patients/{patient_ref}/invitations/{invitation_id}/resend", dependencies=[STAFF])
def resend(request: Request, session: DbSession, patient_ref: int, invitation_id: int):
    if not staff.resend_invitation(session, site=request.app.state.runtime.site,
                                   staff=_staff_account(request, session), patient_ref=patient_ref,
                                   invitation_id=invitation_id):
        raise HTTPException(status_code=404)
    session.commit()
    return RedirectResponse(f"/staff/patients/{patient_ref}?done=resent", status_code=303)


@router.post("/staff/patients/{patient_ref}/unlock/{account_id}", dependencies=[STAFF])
def unlock(request: Request, session: DbSession, patient_ref: int, account_id: int):
    account = staff.linked_account(session, patient_ref=patient_ref, account_id=account_id)
    if account is None:
        raise HTTPException(status_code=404)
    staff.unlock_sign_in(session, staff=_staff_account(request, session), account=account)
    session.commit()
    return RedirectResponse(f"/staff/patients/{patient_ref}?done=unlocked", status_code=303)


# -- the help desk's queue ------------------------------------------------------------

@router.get("/staff/requests", response_class=HTMLResponse, dependencies=[HELPDESK])
def queue(request: Request, session: DbSession, done: str = ""):
    notices = {"invited": _("The invitation has been sent and the request is done."),
               "closed": _("The request is closed."),
               "handled": _("This request has already been handled.")}
    waiting = staff.open_requests(session)
    return render(request, "identity/staff_requests.html", requests=waiting, notice=notices.get(done, ""),
                  age=staff.age_in_days, topic_label=staff.topic_label)


def _open_request(session, request_id: int) -> AccountRequest:
    found = session.get(AccountRequest, request_id)
    if found is None:
        raise HTTPException(status_code=404)
    return found


def _request_page(request: Request, session, ticket: AccountRequest, *, patient_id: str = "", error: str = "",
                  note: str = "", status_code: int = 200):
    matches = None
    if patient_id.strip():
        matches = staff.patients_by_id(session, staff=_staff_account(request, session), patient_id=patient_id)
        session.commit()  # the lookup is audited
    return render(request, "identity/staff_request.html", ticket=ticket, patient_id=patient_id, matches=matches,
                  error=error, note=note, age=staff.age_in_days(ticket), patient_name=invitations.patient_name,
                  topic_label=staff.topic_label, status_code=status_code)


@router.get("/staff/requests/{request_id}", response_class=HTMLResponse, dependencies=[HELPDESK])
def request_page(request: Request, session: DbSession, request_id: int, patient_id: str = ""):
    return _request_page(request, session, _open_request(session, request_id), patient_id=patient_id)


@router.post("/staff/requests/{request_id}/invite", dependencies=[HELPDESK])
def invite_for_request(request: Request, session: DbSession, request_id: int, patient: Annotated[int, Form()],
                       verified: Annotated[str, Form()] = "", patient_id: Annotated[str, Form()] = ""):
    ticket = _open_request(session, request_id)
    if ticket.status != "open":
        return RedirectResponse("/staff/requests?done=handled", status_code=303)  # e.g. a second click
    record = session.get(Patient, patient)
    if record is None:
        raise HTTPException(status_code=404)
    if verified != "yes":
        return _request_page(request, session, ticket, patient_id=patient_id, status_code=422,
                             error=_("Confirm that you have verified this person by phone."))
    try:
        staff.invite_for_request(session, site=request.app.state.runtime.site,
                                 staff=_staff_account(request, session), request=ticket, patient=record)
    except AccountError as exc:
        session.rollback()
        return _request_page(request, session, ticket, patient_id=patient_id, error=str(exc), status_code=422)
    session.commit()
    return RedirectResponse("/staff/requests?done=invited", status_code=303)


@router.post("/staff/requests/{request_id}/close", dependencies=[HELPDESK])
def close(request: Request, session: DbSession, request_id: int, note: Annotated[str, Form()] = "",
          confirm: Annotated[str, Form()] = ""):
    ticket = _open_request(session, request_id)
    if ticket.status != "open":
        return RedirectResponse("/staff/requests?done=handled", status_code=303)
    try:
        if confirm != "yes":
            raise AccountError(_("Tick the box to confirm that this request is closed without an invitation."))
        staff.close_request(session, staff=_staff_account(request, session), request=ticket, note=note)
    except AccountError as exc:
        session.rollback()
        return _request_page(request, session, ticket, error=str(exc), note=note, status_code=422)
    session.commit()
    return RedirectResponse("/staff/requests?done=closed", status_code=303)
