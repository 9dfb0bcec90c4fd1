"""Invitation links (accept, expired, used) and the people page, where a patient or
guardian sees who has access to their patients, invites someone and removes access."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from core import access, clock, i18n
from core.audit import service as audit
from core.db import DbSession
from core.i18n import gettext as _
from core.identity import invitations, sessions
from core.identity.models import PERMISSIONS, Account, Invitation, PatientLink
from core.identity.routes.signin import client_ip, set_session_cookie
from core.identity.service import AccountError, account_by_email
from core.studies.models import Patient
from core.web import render

router = APIRouter()
PROXY_RELATIONSHIPS = ("guardian", "carer", "family")  # a patient invites others, never a second "self"


# -- the link -----------------------------------------------------------------

@router.get("/invite/renewed", response_class=HTMLResponse, dependencies=[access.public])
def renewed(request: Request):
    return render(request, "identity/invitation_renewed.html")


def _signed_in_account(request: Request, session) -> Account | None:
    principal = access.current_principal(request)
    return session.get(Account, int(principal.id)) if principal.kind == "account" else None


def _invitation_page(request: Request, session, token: str, found: invitations.Found, *, error: str = "",
                     name: str | None = None, status_code: int = 200):
    """The page for a link in any state. Unknown and expired links get the same page."""
    if found.state in ("unknown", "expired"):
        return render(request, "identity/invitation_expired.html", token=token, status_code=status_code)
    if found.state == "used":
        return render(request, "identity/invitation_used.html", status_code=status_code)
    invitation = found.invitation
    signed_in = _signed_in_account(request, session)
    if signed_in is not None:
        mode = "accept" if signed_in.email == invitation.email else "other_account"
    else:
        mode = "sign_in_first" if account_by_email(session, invitation.email) else "new_account"
    patient = session.get(Patient, invitation.patient_ref) if invitation.patient_ref else None
    return render(request, "identity/invitation_accept.html", token=token, mode=mode, invitation=invitation,
                  patient_name=invitations.patient_name(patient) if patient else "",
                  relationship=invitations.relationship_labels().get(invitation.relationship, ""),
                  permissions=[invitations.permission_labels()[p] for p in invitation.permissions],
                  name=invitation.name if name is None else name, error=error, status_code=status_code)


@router.get("/invite/{token}", response_class=HTMLResponse, dependencies=[access.public])
def invitation_page(request: Request, session: DbSession, token: str):
    return _invitation_page(request, session, token, invitations.look_up(session, token))


@router.post("/invite/{token}", dependencies=[access.public])
def accept_with_new_account(request: Request, session: DbSession, token: str, name: Annotated[str, Form()] = "",
                            password: Annotated[str, Form()] = "", confirm: Annotated[str, Form()] = ""):
    """Create the invited person's account, give it access and sign it in."""
    found = invitations.look_up(session, token)
    if found.state != "valid" or access.current_principal(request).kind == "account" \
            or account_by_email(session, found.invitation.email):
        return _invitation_page(request, session, token, found)  # e.g. a second click of the same button
    runtime = request.app.state.runtime
    try:
        account = invitations.accept_with_new_account(session, invitation=found.invitation, name=name,
                                                      password=password, confirm=confirm,
                                                      language=i18n.current_language())
    except AccountError as exc:
        session.rollback()
        return _invitation_page(request, session, token, found, error=str(exc), name=name, status_code=422)
    except invitations.NotAcceptable:
        session.rollback()
        return _invitation_page(request, session, token, invitations.look_up(session, token))
    audit.record(session, actor=f"account:{account.id}", action="signin.succeeded", subject=f"account:{account.id}",
                 detail={"ip": client_ip(request), "how": "invitation"})
    session_token = sessions.start(session, account=account, site=runtime.site,
                                   replacing=request.cookies.get(sessions.COOKIE))
    session.commit()
    response = RedirectResponse("/", status_code=303)
    set_session_cookie(response, session_token, runtime.site)
    return response


@router.post("/invite/{token}/accept", dependencies=[access.rule("account.self")])
def accept_signed_in(request: Request, session: DbSession, token: str):
    """A signed-in account accepts an invitation sent to its own email address."""
    found = invitations.look_up(session, token)
    account = _signed_in_account(request, session)
    if found.state != "valid":
        return _invitation_page(request, session, token, found)
    try:
        invitations.accept_for_account(session, invitation=found.invitation, account=account)
    except invitations.NotAcceptable:
        session.rollback()
        return _invitation_page(request, session, token, invitations.look_up(session, token))
    session.commit()
    return RedirectResponse("/", status_code=303)


@router.post("/invite/{token}/renew", dependencies=[access.public])
def renew(request: Request, session: DbSession, token: str):
    """Always the same answer: whether anything was sent is told only to the invited address."""
    invitations.renew_expired(session, site=request.app.state.runtime.site, token=token, ip=client_ip(request))
    session.commit()
    return RedirectResponse("/invite/renewed", status_code=303)


# -- people with access ---------------------------------------------------------

def _account(request: Request, session) -> Account:
    return session.get(Account, int(access.current_principal(request).id))


def _managed_patient(session, account: Account, patient_ref: int) -> Patient:
    """The patient, if this account may invite and remove people for it (403 otherwise)."""
    if not invitations.may_manage(session, account.id, patient_ref):
        raise HTTPException(status_code=403)
    return session.get(Patient, patient_ref)


def _people_page(request: Request, session, account: Account, *, form: dict | None = None, error: str = "",
                 notice: str = "", status_code: int = 200):
    runtime = request.app.state.runtime
    patients = invitations.managed_patients(session, account.id)
    overview = []
    for patient in patients:
        found = invitations.access_to(session, patient)
        found.links = [(link, person) for link, person in found.links if person.id != account.id]
        overview.append(found)
    form = form or {"permissions": ["view_images", "view_reports"], "language": i18n.current_language()}
    return render(request, "identity/invitation_people.html", overview=overview, patients=patients, form=form,
                  error=error, notice=notice, now=clock.now(), patient_name=invitations.patient_name,
                  relationships=invitations.relationship_labels(), relationship_choices=PROXY_RELATIONSHIPS,
                  permission_labels=invitations.permission_labels(), permission_choices=PERMISSIONS,
                  email_languages=runtime.site.config.site.languages, status_code=status_code)


@router.get("/account/people", response_class=HTMLResponse, dependencies=[access.rule("account.self")])
def people(request: Request, session: DbSession, done: str = ""):
    notices = {"invited": _("The invitation is on its way. The link works for %(hours)s hours.",
                            hours=request.app.state.runtime.site.config.identity.invitation_valid_hours),
               "resent": _("The invitation has been sent again with a new link."),
               "removed": _("Their access has been removed.")}
    return _people_page(request, session, _account(request, session), notice=notices.get(done, ""))


@router.post("/account/people/invite", dependencies=[access.rule("account.self")])
def invite(request: Request, session: DbSession, patient: Annotated[int, Form()],
           name: Annotated[str, Form()] = "", email: Annotated[str, Form()] = "",
           relationship: Annotated[str, Form()] = "", permissions: Annotated[list[str], Form()] = [],
           language: Annotated[str, Form()] = "en"):
    account = _account(request, session)
    record = _managed_patient(session, account, patient)
    form = {"patient": patient, "name": name, "email": email, "relationship": relationship,
            "permissions": permissions, "language": language}
    try:
        if relationship not in PROXY_RELATIONSHIPS:
            raise AccountError(_("Please choose how this person is related to the patient."))
        if not name.strip():
            raise AccountError(_("Please enter the person's name."))
        invitations.invite(session, site=request.app.state.runtime.site, inviter=account, email=email, name=name,
                           patient=record, relationship=relationship, permissions=permissions, language=language)
    except AccountError as exc:
        session.rollback()
        return _people_page(request, session, account, form=form, error=str(exc), status_code=422)
    session.commit()
    return RedirectResponse("/account/people?done=invited", status_code=303)


@router.post("/account/people/{patient_ref}/invitations/{invitation_id}/resend",
             dependencies=[access.rule("account.self")])
def resend(request: Request, session: DbSession, patient_ref: int, invitation_id: int):
    account = _account(request, session)
    _managed_patient(session, account, patient_ref)
    invitation = session.get(Invitation, invitation_id)
    if invitation is None or invitation.patient_ref != patient_ref:
        raise HTTPException(status_code=404)
    invitations.renew(session, site=request.app.state.runtime.site, invitation=invitation,
                      actor=f"account:{account.id}")
    session.commit()
    return RedirectResponse("/account/people?done=resent", status_code=303)


def _removable(request: Request, session, patient_ref: int, link_id: int):
    account = _account(request, session)
    patient = _managed_patient(session, account, patient_ref)
    link = invitations.removable_link(session, account_id=account.id, patient_ref=patient_ref, link_id=link_id)
    return account, patient, link


@router.get("/account/people/{patient_ref}/remove/{link_id}", response_class=HTMLResponse,
            dependencies=[access.rule("account.self")])
def confirm_removal(request: Request, session: DbSession, patient_ref: int, link_id: int):
    account, patient, link = _removable(request, session, patient_ref, link_id)
    if link is None:
        raise HTTPException(status_code=404)
    return render(request, "identity/invitation_remove.html", link=link, person=session.get(Account, link.account_id),
                  patient_name=invitations.patient_name(patient),
                  relationship=invitations.relationship_labels().get(link.relationship, ""))


@router.post("/account/people/{patient_ref}/remove/{link_id}", dependencies=[access.rule("account.self")])
def remove(request: Request, session: DbSession, patient_ref: int, link_id: int):
    account, _patient, link = _removable(request, session, patient_ref, link_id)
    if link is None and session.get(PatientLink, link_id) is not None:
        raise HTTPException(status_code=403)  # the patient's own link, or this account's
    if link is not None:  # None: already removed by a second click, nothing more to do
        invitations.revoke(session, actor=account, link=link)
        session.commit()
    return RedirectResponse("/account/people?done=removed", status_code=303)
