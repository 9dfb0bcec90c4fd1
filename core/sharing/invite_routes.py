"""Pages for sharing by email and by Quick Share code, the doctor's Quick Share form, and a
guest's sign-in and list of shares. Thin: parse, call ``invites`` or ``quick``, render.

A guest's pages are reached by the guest's own session even while one of their shares is
open in the same browser (the share cookie wins everywhere else, see ``core.access``), so
``guest_rule`` resolves the guest from the account cookie alone and asks the gate about it.
"""
from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

from babel import dates
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from core import access, clock, i18n
from core.audit import service as audit
from core.db import DbSession
from core.i18n import gettext as _
from core.identity import sessions
from core.identity.routes.registration import date_parts
from core.identity.routes.signin import client_ip, set_session_cookie, wait_message
from core.sharing import invites, quick, service
from core.sharing.models import Share
from core.sharing.routes import ShareForm, qr_code, share_options
from core.studies import pages, queries
from core.web import language_of, render

router = APIRouter()
SHARE = [access.rule("sharing.create")]
# pages with a secret (code, password, link) or exams: never kept, never sent on as a referrer
PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
REFUSED = {"not_found": 403, "password": 403, "throttled": 429}  # other refusals: revoked or expired, 410
Text = Annotated[str, Form()]
Texts = Annotated[list[str], Form()]


def guest_rule():
    """Like ``access.rule("sharing.guest")``, for the guest of the account cookie."""

    def guest_of(request: Request) -> access.Principal:
        runtime = request.app.state.runtime
        with runtime.sessions() as session:
            found = sessions.find(session, token=request.cookies.get(sessions.COOKIE), site=runtime.site)
            principal = sessions.principal_for(session, found)
            session.commit()
        return principal

    async def check(request: Request) -> access.Principal:
        await access.check_csrf(request)
        principal = await run_in_threadpool(guest_of, request)
        if not access.can(request.app.state.runtime.pm, principal, "sharing.guest"):
            raise HTTPException(status_code=403)
        return principal

    check.access_action = "sharing.guest"
    return Depends(check)


GUEST = guest_rule()
Guest = Annotated[access.Principal, GUEST]


def _page(request: Request, template: str, status_code: int = 200, **context) -> Response:
    response = render(request, template, status_code=status_code, **context)
    response.headers.update(PRIVATE)
    return response


def _picker(request: Request, session) -> dict:
    """The exams to pick from: the active patient's (if this account may share them), or all
    that a recipient allowed to re-share sees."""
    runtime, principal = request.app.state.runtime, access.current_principal(request)
    rows, may_share = [], True
    if principal.kind == "account":
        web_session = sessions.find(session, token=request.cookies.get(sessions.COOKIE), site=runtime.site)
        active = pages.patient_choice(session, principal, web_session).active
        patient_ref = active.id if active is not None else None
        may_share = active is None or patient_ref in invites.shareable_patients(session, principal)
    else:  # a recipient whose share may be shared further
        patient_ref = session.get(Share, int(principal.id)).patient_ref
    if may_share and patient_ref is not None:
        exams = pages.exam_list(session, principal, patient_ref if principal.kind == "account" else None,
                                pages.ExamFilters.parse())
        rows = [row for group in exams.groups for row in group.rows]
        audit.record(session, actor=service.actor_of(principal), action="studies.listed",
                     subject=f"patient:{patient_ref}", detail={"count": len(rows), "page": "share"})
        session.commit()
    sharing = runtime.site.config.sharing
    now, zone = clock.now(), ZoneInfo(runtime.site.config.site.timezone)
    return {"rows": rows, "may_share": may_share, "options": share_options(runtime), "max_days": sharing.max_days,
            "quick_hours": sharing.quick_code_hours, "message_max": invites.MESSAGE_MAX,
            "today": now.astimezone(zone).date().isoformat(),
            "last_day": (now + timedelta(days=sharing.max_days)).astimezone(zone).date().isoformat()
            if sharing.max_days else ""}


def _new_form(request: Request, study: list[str]) -> ShareForm:
    sharing = request.app.state.runtime.site.config.sharing
    defaults = [option.name for option in share_options(request.app.state.runtime) if option.default]
    return ShareForm(studies=list(dict.fromkeys(study)), options=defaults, password=False,
                     days=str(min(sharing.default_days, sharing.max_days or sharing.default_days)))


def _on(value: str) -> bool:
    return value == "yes"


def _form_page(request: Request, session, template: str, form: ShareForm, status_code: int = 200, **context):
    if session.in_transaction():
        session.rollback()  # nothing of a refused share stays
    return _page(request, template, status_code=status_code, form=form, **_picker(request, session), **context)


# -- share by email -------------------------------------------------------------------------------

@router.get("/shares/email", response_class=HTMLResponse, dependencies=SHARE)
def email_form(request: Request, session: DbSession, study: Annotated[list[str], Query()] = []):  # noqa: B006
    return _form_page(request, session, "sharing/email_form.html", _new_form(request, study),
                      mail={"language": language_of(request)})


@router.post("/shares/email", dependencies=SHARE)
def share_by_email(request: Request, session: DbSession, study: Texts = [], email: Text = "",  # noqa: B006
                   message: Text = "", language: Text = "", nickname: Text = "", password: Text = "",
                   expiry: Text = "days", days: Text = "", until: Text = "", download: Text = "",
                   hide_details: Text = "", acknowledge: Text = "", option: Texts = []):  # noqa: B006
    runtime, principal = request.app.state.runtime, access.current_principal(request)
    language = language if language in runtime.site.config.site.languages else language_of(request)
    form = ShareForm(studies=list(dict.fromkeys(study)), nickname=nickname[:200], password=_on(password),
                     expiry=expiry, days=days[:10], until=until[:10], download=_on(download),
                     hide_details=_on(hide_details), options=option, acknowledged=_on(acknowledge))
    mail = {"email": email.strip()[:254], "message": message[:invites.MESSAGE_MAX * 2], "language": language}
    known = {each.name for each in share_options(runtime)}
    try:
        sent = invites.share_by_email(
            session, runtime, principal, recipient_email=email, message=message, language=language,
            study_uids=form.studies, nickname=form.nickname, with_password=form.password,
            expires_at=form.expires_at(runtime, clock.now()), allow_download=form.download,
            hide_details=form.hide_details, acknowledged=form.acknowledged,
            options={name: name in form.options for name in sorted(known)})
    except queries.NotFound:
        raise HTTPException(status_code=404) from None
    except service.ShareError as refusal:
        return _form_page(request, session, "sharing/email_form.html", form, status_code=422, mail=mail,
                          problem=refusal.message)
    session.commit()
    return _page(request, "sharing/email_sent.html", sent=sent, share=sent.created.share,
                 password=sent.created.password, language_name=i18n.LANGUAGE_NAMES.get(language, language))


# -- Quick Share ----------------------------------------------------------------------------------

@router.get("/shares/quick", response_class=HTMLResponse, dependencies=SHARE)
def quick_form(request: Request, session: DbSession, study: Annotated[list[str], Query()] = []):  # noqa: B006
    return _form_page(request, session, "sharing/quick_form.html", _new_form(request, study))


@router.post("/shares/quick", dependencies=SHARE)
def quick_share(request: Request, session: DbSession, study: Texts = [], nickname: Text = "",  # noqa: B006
                download: Text = "", hide_details: Text = "", acknowledge: Text = "",
                option: Texts = []):  # noqa: B006
    runtime, principal = request.app.state.runtime, access.current_principal(request)
    form = ShareForm(studies=list(dict.fromkeys(study)), nickname=nickname[:200], download=_on(download),
                     hide_details=_on(hide_details), options=option, acknowledged=_on(acknowledge))
    known = {each.name for each in share_options(runtime)}
    try:
        made = quick.create(session, runtime, principal, study_uids=form.studies, nickname=form.nickname,
                            allow_download=form.download, hide_details=form.hide_details,
                            acknowledged=form.acknowledged, options={name: name in form.options for name in sorted(known)})
    except queries.NotFound:
        raise HTTPException(status_code=404) from None
    except service.ShareError as refusal:
        return _form_page(request, session, "sharing/quick_form.html", form, status_code=422,
                          problem=refusal.message)
    session.commit()
    address = f"{runtime.site.config.site.base_url}/s"
    return _page(request, "sharing/quick_code.html", made=made, address=address,
                 qr=qr_code(f"{address}?code={made.code}"))


def _months() -> list[tuple[int, str]]:
    names = dates.get_month_names("wide", locale=i18n.current_language())
    return [(number, names[number]) for number in range(1, 13)]


def _birth_date(day: str, month: str, year: str) -> date | None:
    try:
        return date(int(year), int(month), int(day)) if len(year.strip()) == 4 else None
    except ValueError:
        return None


def _quick_open_page(request: Request, status_code: int = 200, **context) -> Response:
    return _page(request, "sharing/quick_open.html", status_code=status_code, months=_months(),
                 date_parts=date_parts(i18n.current_language()), **context)


@router.get("/s", response_class=HTMLResponse, dependencies=[access.public])
def quick_open_form(request: Request, code: str = ""):
    return _quick_open_page(request, values={"code": quick.normalise(code)[:quick.CODE_LENGTH]})


@router.post("/s", dependencies=[access.public])
def quick_open(request: Request, session: DbSession, code: Text = "", birth_day: Text = "",
               birth_month: Text = "", birth_year: Text = ""):
    runtime = request.app.state.runtime
    values = {"code": code.strip()[:20], "birth_day": birth_day, "birth_month": birth_month, "birth_year": birth_year}
    born = _birth_date(birth_day, birth_month, birth_year)
    if not quick.normalise(code) or born is None:
        return _quick_open_page(request, status_code=422, values=values,
                                error=_("Enter the code and the patient's date of birth: day, month and year."))
    try:
        token = quick.open_by_code(session, runtime, code=code, birth_date=born, client=client_ip(request))
    except service.ShareError as refusal:
        session.commit()  # the failure counts, and is in the audit trail
        return _quick_open_page(request, status_code=REFUSED.get(refusal.kind, 410), values=values,
                                error=refusal.message)
    session.commit()
    return _open_share_response(request, session, token)


def _open_share_response(request: Request, session, token: str) -> Response:
    """To the recipient's view, with the new share session (ending the one this browser had)."""
    if earlier := request.cookies.get(access.SHARE_COOKIE):
        service.end_session(session, earlier)
        session.commit()
    response = RedirectResponse("/shared", status_code=303)
    hours = request.app.state.runtime.site.config.sharing.session_hours
    response.set_cookie(access.SHARE_COOKIE, token, max_age=hours * 3600, secure=True, httponly=True,
                        samesite="lax", path="/")
    response.headers.update(PRIVATE)
    return response


# -- guests: sign in with an emailed code, then the list of shares ----------------------------------

@router.get("/shared/guest/signin", response_class=HTMLResponse, dependencies=[access.public])
def guest_signin_form(request: Request):
    return _page(request, "sharing/email_guest_signin.html", email="")


@router.post("/shared/guest/signin", dependencies=[access.public])
def guest_send_code(request: Request, session: DbSession, email: Text = ""):
    email = email.strip()
    if not email:
        return _page(request, "sharing/email_guest_signin.html", status_code=422, email="",
                     error=_("Enter the email address the shares were sent to."))
    invites.send_guest_code(session, request.app.state.runtime, email=email, ip=client_ip(request))
    session.commit()
    return _page(request, "sharing/email_guest_code.html", email=email)


@router.post("/shared/guest/signin/code", dependencies=[access.public])
def guest_check_code(request: Request, session: DbSession, email: Text = "", code: Text = ""):
    runtime = request.app.state.runtime
    result = invites.check_guest_code(session, runtime, email=email, code=code, ip=client_ip(request))
    if result.outcome != "signed_in":
        session.commit()  # the failure and the throttle count must be kept
        errors = {"throttled": wait_message(result.wait),
                  "expired": _("This code has expired. Ask for a new one."),
                  "too_many": _("Too many wrong codes. Ask for a new one.")}
        return _page(request, "sharing/email_guest_code.html", email=email.strip(),
                     error=errors.get(result.outcome, _("This code is not right. Please check it and try again.")))
    token = sessions.start(session, account=result.account, site=runtime.site,
                           replacing=request.cookies.get(sessions.COOKIE))
    session.commit()
    response = RedirectResponse("/shared/guest", status_code=303)
    set_session_cookie(response, token, runtime.site)
    return response


@router.get("/shared/guest", response_class=HTMLResponse)
def guest_shares(request: Request, session: DbSession, guest: Guest):
    listed = invites.shares_for_guest(session, guest)
    session.commit()
    return _page(request, "sharing/email_guest_list.html", listed=listed, study_day=pages.study_day,
                 patient_name=pages.patient_name)


@router.post("/shared/guest/{share_id:int}/open")
def guest_open(request: Request, session: DbSession, guest: Guest, share_id: int, password: Text = ""):
    try:
        token = invites.open_for_guest(session, request.app.state.runtime, guest, share_id, password=password,
                                       client=client_ip(request))
    except queries.NotFound:
        raise HTTPException(status_code=404) from None
    except service.ShareError as refusal:
        session.commit()
        listed = invites.shares_for_guest(session, guest)
        session.commit()
        return _page(request, "sharing/email_guest_list.html", status_code=REFUSED.get(refusal.kind, 410), listed=listed,
                     study_day=pages.study_day, patient_name=pages.patient_name, error=refusal.message,
                     error_share=share_id)
    session.commit()
    return _open_share_response(request, session, token)
