"""The pages of visit codes: typing a code (``/visit``), the exams of the opened visit,
closing it, help with a code, the staff's Portal Pass and reactivation, and the PACS's
``POST /api/visits/icode``. Thin: parse, call ``service``/``desk``, render.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import IntegrityError

from core import access, i18n
from core.audit import service as audit
from core.db import DbSession
from core.i18n import gettext as _
from core.identity import registration
from core.identity.models import Account, AccountRequest
from core.identity.routes.registration import date_parts
from core.identity.routes.signin import client_ip, wait_message
from core.notify import render_in
from core.studies import pages
from core.web import render
from plugins.radnet_icode import desk, locations, service, visits
from plugins.radnet_icode.assets import SCRIPT, STYLE
from plugins.radnet_icode.models import ICode, Visit

router = APIRouter()
PUBLIC = [access.public]
STAFF = [access.rule("staff.any")]
HELPDESK = [access.rule("helpdesk.queue")]
PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
Text = Annotated[str, Form()]


def date_context() -> dict:
    """What the three-part date of birth needs: its parts in the reader's order, the month names."""
    from babel import dates

    language = i18n.current_language()
    months = dates.get_month_names("wide", locale=language)
    return {"date_parts": date_parts(language), "months": [(n, months[n]) for n in range(1, 13)]}


def _site(request: Request):
    return request.app.state.runtime.site


def _settings(request: Request):
    return service.settings_of(_site(request))


def _page(request: Request, template: str, status_code: int = 200, **context) -> Response:
    response = render(request, template, status_code=status_code, **context)
    response.headers.update(PRIVATE)
    return response


def _forget_visit(response: Response) -> Response:
    response.delete_cookie(visits.COOKIE, path="/", secure=True, httponly=True, samesite="lax")
    return response


def _adds_to_account(principal) -> bool:
    """A patient's portal account gets the visit; the staff's own accounts never do."""
    return principal.kind == "account" and "user" in principal.roles


# -- the code's page ---------------------------------------------------------------------------------

def _code_page(request: Request, values: dict | None = None, error: str = "", status_code: int = 200,
               notice: str = "") -> Response:
    return _page(request, "radnet_icode/enter.html", status_code=status_code, values=values or {}, error=error,
                 notice=notice, age=_settings(request).age_of_majority,
                 adds_to_account=_adds_to_account(access.current_principal(request)), **date_context())


@router.get("/visit", response_class=HTMLResponse, dependencies=PUBLIC)
def code_form(request: Request, left: str = ""):
    return _code_page(request, notice=_("You have closed the visit. This browser no longer shows its exams.")
                      if left else "")


@router.post("/visit", response_class=HTMLResponse, dependencies=PUBLIC)
def enter_code(request: Request, session: DbSession, code: Text = "", birth_day: Text = "", birth_month: Text = "",
               birth_year: Text = "", view: Text = ""):
    site, principal = _site(request), access.current_principal(request)
    values = {"code": code[:40], "birth_day": birth_day[:2], "birth_month": birth_month[:2],
              "birth_year": birth_year[:4]}
    born, problem = registration.read_birth_date(site, birth_day, birth_month, birth_year)
    if not code.strip():
        problem = _("Enter the I-Code printed on your Portal Pass.")
    if problem:
        return _code_page(request, values, problem, status_code=422)
    ip = client_ip(request)
    checked = service.check_code(session, typed=code, birth_date=born, ip=ip)
    session.commit()  # the failure counts and the audit event stay whatever happens next
    if checked.outcome == "throttled":
        return _code_page(request, values, wait_message(checked.wait), status_code=429)
    if checked.outcome == "wrong":
        return _code_page(request, values, _("We could not open a visit with this I-Code and date of birth. "
                                             "Check both against your Portal Pass and try again."), status_code=422)
    if checked.outcome in ("expired", "replaced"):
        return _page(request, "radnet_icode/expired.html", status_code=410, values=values, icode=checked.icode,
                     replaced=checked.outcome == "replaced")
    if _adds_to_account(principal) and view != "yes":
        linking = service.link_to_account(session, site=site, account_id=int(principal.id), icode=checked.icode,
                                          ip=ip)
        session.commit()
        if linking.outcome in ("linked", "already"):
            return RedirectResponse(f"/exams?icode={linking.outcome}", status_code=303)
        return _page(request, "radnet_icode/not_linked.html", outcome=linking.outcome, values=values,
                     age=_settings(request).age_of_majority)
    visits.end_session(session, request.cookies.get(visits.COOKIE))  # a visit opened before in this browser
    token = service.open_visit(session, site=site, icode=checked.icode, ip=ip)
    session.commit()
    response = RedirectResponse("/visit/exams", status_code=303)
    response.set_cookie(visits.COOKIE, token, max_age=_settings(request).icode_session_hours * 3600, secure=True,
                        httponly=True, samesite="lax", path="/")
    response.headers.update(PRIVATE)
    return response


# -- the opened visit --------------------------------------------------------------------------------

@router.get("/visit/exams", response_class=HTMLResponse, dependencies=PUBLIC)
def visit_exams(request: Request, session: DbSession):
    principal = access.current_principal(request)
    if principal.kind != "visit":
        if visits.COOKIE not in request.cookies:
            return RedirectResponse("/visit", status_code=303)
        return _forget_visit(_page(request, "radnet_icode/ended.html", status_code=410))
    icode = session.get(ICode, int(principal.id))
    visit = session.get(Visit, icode.visit_ref)
    exams = pages.exam_list(session, principal, None, pages.ExamFilters.parse())
    audit.record(session, actor=f"visit:{icode.id}", action="studies.listed", subject=f"patient:{visit.patient_ref}",
                 detail={"count": exams.count, "visit": visit.id})
    session.commit()
    return _page(request, "radnet_icode/exams.html", visit=visit, icode=icode, exams=exams,
                 centre=_settings(request).location(visit.location_key), phone_link=locations.phone_link,
                 self_registration=_site(request).config.identity.self_registration)


@router.post("/visit/leave", dependencies=PUBLIC)
def leave_visit(request: Request, session: DbSession):
    visits.end_session(session, request.cookies.get(visits.COOKIE))
    session.commit()
    return _forget_visit(RedirectResponse("/visit?left=1", status_code=303))


@router.post("/visit/register", dependencies=PUBLIC)
def register_from_visit(request: Request, session: DbSession):
    """"Create an account": this browser leaves the visit (its account will show every visit)."""
    visits.end_session(session, request.cookies.get(visits.COOKIE))
    session.commit()
    return _forget_visit(RedirectResponse(f"/register?proof={service.PROOF}", status_code=303))


# -- help -------------------------------------------------------------------------------------------------

def _help_page(request: Request, values: dict | None = None, errors: dict | None = None, error: str = "",
               status_code: int = 200) -> Response:
    settings = _settings(request)
    centre = locations.location_of_request(request, settings)
    values = values or {}
    values.setdefault("topic", "visit_code")
    return _page(request, "radnet_icode/help.html", status_code=status_code, values=values, errors=errors or {},
                 error=error, topics=service.help_topics(), centre=centre,
                 phone=locations.help_phone(settings, centre), phone_link=locations.phone_link, **date_context())


@router.get("/visit/help", response_class=HTMLResponse, dependencies=PUBLIC)
def help_form(request: Request, topic: str = ""):
    return _help_page(request, {"topic": topic} if topic in service.HELP_TOPICS else None)


@router.post("/visit/help", response_class=HTMLResponse, dependencies=PUBLIC)
def ask_for_help(request: Request, session: DbSession, topic: Text = "visit_code", name: Text = "",
                 birth_day: Text = "", birth_month: Text = "", birth_year: Text = "", email: Text = "",
                 mobile: Text = "", code: Text = "", text: Text = "", prefill: Text = ""):
    site = _site(request)
    values = dict(topic=topic, name=name, birth_day=birth_day, birth_month=birth_month, birth_year=birth_year,
                  email=email, mobile=mobile, code=code[:40], text=text)
    if prefill:  # from the "expired" page: the code and the date of birth are already typed
        values["text"] = text or _("Please reactivate my I-Code.")
        return _help_page(request, values)
    found, errors = registration.read_details(site, name=name, day=birth_day, month=birth_month, year=birth_year,
                                              email=email, mobile=mobile, mobile_required=True, text=text)
    if errors:
        return _help_page(request, values, errors, status_code=422)
    wait = service.ask_for_help(session, site=site, details=found, topic=topic, typed_code=code,
                                language=i18n.current_language(), ip=client_ip(request))
    session.commit()
    if wait:
        return _help_page(request, values, error=wait_message(wait), status_code=429)
    return RedirectResponse("/visit/help/sent", status_code=303)


@router.get("/visit/help/sent", response_class=HTMLResponse, dependencies=PUBLIC)
def help_sent(request: Request):
    return _page(request, "radnet_icode/help_sent.html", days=_site(request).config.identity.request_account_days)


# -- the staff: Portal Pass and reactivation --------------------------------------------------------------

def _staff(request: Request, session) -> Account:
    return session.get(Account, int(access.current_principal(request).id))


@router.post("/visit/staff/visits/{visit_id:int}/pass", response_class=HTMLResponse, dependencies=STAFF)
def print_pass(request: Request, session: DbSession, visit_id: int, language: Text = "en"):
    runtime = request.app.state.runtime
    try:
        slip = desk.print_pass(session, site=runtime.site, staff=_staff(request, session), visit_id=visit_id,
                               language=language)
    except LookupError:
        raise HTTPException(status_code=404) from None
    visit = session.get(Visit, visit_id)
    session.commit()
    page = render_in(runtime, "radnet_icode/slip.html", slip.language,
                     {"slip": slip, "patient_ref": visit.patient_ref, "age": _settings(request).age_of_majority}, html=True)
    return HTMLResponse(page, headers={**PRIVATE, "Content-Language": slip.language})


@router.post("/visit/staff/icodes/{icode_id:int}/reactivate", response_class=HTMLResponse, dependencies=HELPDESK)
def reactivate(request: Request, session: DbSession, icode_id: int, confirm: Text = "", ticket: Text = ""):
    icode = session.get(ICode, icode_id)
    if icode is None:
        raise HTTPException(status_code=404)
    visit = session.get(Visit, icode.visit_ref)
    request_row = session.get(AccountRequest, int(ticket)) if ticket.isdigit() else None
    back = f"/staff/requests/{request_row.id}" if request_row else f"/staff/patients/{visit.patient_ref}"
    try:
        if request_row is not None and request_row.status != "open":
            raise desk.DeskError(_("This request has already been handled."))
        if confirm != "yes":
            raise desk.DeskError(_("Tick the box to confirm that you want to reactivate this I-Code."))
        desk.reactivate(session, site=_site(request), staff=_staff(request, session), icode=icode, ticket=request_row)
    except (desk.DeskError, ValueError) as problem:
        session.rollback()
        return _page(request, "radnet_icode/desk_problem.html", status_code=422, message=str(problem), back=back)
    session.commit()
    if request_row is not None:
        return RedirectResponse("/staff/requests?done=closed", status_code=303)
    return RedirectResponse(f"/staff/patients/{visit.patient_ref}?icode=reactivated", status_code=303)


# -- the PACS ------------------------------------------------------------------------------------------

@router.post("/api/visits/icode", dependencies=[access.rule("studies.store")])
async def api_reissue(request: Request):
    """A new code for the visit of a study (the front desk's system prints it): {"study_uid": "..."}
    answers {"icode", "expires_at", "visit"}. Earlier codes of that visit stop working."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        # a browser's form post (its body already read by the CSRF check) is not this API's input
        raise HTTPException(status_code=415, detail=_("Send the body as application/json."))
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(status_code=422, detail=_("The body is not valid JSON.")) from None
    study_uid = body.get("study_uid") if isinstance(body, dict) else None
    if not isinstance(study_uid, str) or not 0 < len(study_uid) <= 64:
        raise HTTPException(status_code=422, detail=_("Send {\"study_uid\": \"...\"}."))
    principal = access.current_principal(request)
    by = "pacs" if principal.kind == "pacs" else f"staff:{principal.id}"
    return await run_in_threadpool(_reissue_for_study, request.app.state.runtime, study_uid, by)


def _reissue_for_study(runtime, study_uid: str, by: str) -> JSONResponse:
    for _attempt in range(2):
        with runtime.sessions() as session:
            try:
                visit = service.visit_for_study_uid(session, site=runtime.site, study_uid=study_uid)
                if visit is None:
                    raise HTTPException(status_code=404, detail=_("No study with this Study Instance UID is held."))
                issued = service.reissue(session, site=runtime.site, visit=visit, by=by)
                session.commit()
            except IntegrityError:  # the study's visit was being made at the same moment: once more
                session.rollback()
                continue
        return JSONResponse({"icode": issued.code, "expires_at": issued.icode.expires_at.isoformat(),
                             "visit": visit.id}, status_code=200, headers={"Cache-Control": "no-store"})
    raise HTTPException(status_code=409)


# -- the plugin's own style and script (the pages' policy allows only this site's files) ------------------

@router.get("/visit/radnet.css", dependencies=PUBLIC)
def style():
    return Response(STYLE, media_type="text/css", headers={"Cache-Control": "max-age=300"})


@router.get("/visit/radnet.js", dependencies=PUBLIC)
def script():
    return Response(SCRIPT, media_type="text/javascript", headers={"Cache-Control": "max-age=300"})
