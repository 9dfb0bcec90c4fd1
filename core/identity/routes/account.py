"""The signed-in person's own pages: account details, email, password, language,
notifications, two-step sign-in with an authenticator app, and the patient picker."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from core import access, i18n
from core.db import DbSession
from core.i18n import gettext as _
from core.identity import account as service
from core.identity import sessions
from core.identity.models import Account
from core.identity.routes.signin import set_session_cookie
from core.identity.service import AccountError
from core.web import render

router = APIRouter()
SIGNED_IN = [access.rule("account.self")]
TextField = Annotated[str, Form()]


def _account(request: Request, session) -> Account:
    return session.get(Account, int(access.current_principal(request).id))


def _runtime(request: Request):
    return request.app.state.runtime


def _done(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _notices() -> dict[str, str]:
    return {"name": _("Your name is saved."), "mobile": _("Your mobile number is saved."),
            "language": _("Your language is saved."), "notifications": _("Your notification choices are saved."),
            "email": _("Your email address is changed. We have told your old address."),
            "password": _("Your password is changed. You have been signed out on every other device."),
            "two_factor_on": _("Two-step sign-in with an app is on."),
            "two_factor_off": _("Two-step sign-in with an app is off."),
            "chosen": _("The patient is chosen.")}


# -- the account page -----------------------------------------------------------

def _account_page(request: Request, session, account: Account, *, errors: dict | None = None,
                  values: dict | None = None, notice: str = "") -> HTMLResponse:
    return render(request, "identity/account_page.html", account=account, errors=errors or {}, values=values or {},
                  notice=notice, pending_email=service.pending_email_change(session, account=account))


@router.get("/account", response_class=HTMLResponse, dependencies=SIGNED_IN)
def account_page(request: Request, session: DbSession, done: str = ""):
    return _account_page(request, session, _account(request, session), notice=_notices().get(done, ""))


def _save(request: Request, session, section: str, change, values: dict):
    """Run one section's change; on a refusal show the page again with the section's message.
    A refusal is committed too: it may have counted a wrong password or written an audit event."""
    account = _account(request, session)
    try:
        change(account)
    except AccountError as problem:
        session.commit()
        return _account_page(request, session, account, errors={section: str(problem)}, values=values)
    session.commit()
    return _done(f"/account?done={section}#{section}")


@router.post("/account/name", dependencies=SIGNED_IN)
def save_name(request: Request, session: DbSession, name: TextField = ""):
    return _save(request, session, "name", lambda account: service.change_name(session, account=account, name=name),
                 {"name": name})


@router.post("/account/mobile", dependencies=SIGNED_IN)
def save_mobile(request: Request, session: DbSession, mobile: TextField = ""):
    return _save(request, session, "mobile",
                 lambda account: service.change_mobile(session, account=account, mobile=mobile), {"mobile": mobile})


@router.post("/account/notifications", dependencies=SIGNED_IN)
def save_notifications(request: Request, session: DbSession, by_email: TextField = "", by_sms: TextField = ""):
    return _save(request, session, "notifications",
                 lambda account: service.change_notifications(session, account=account, by_email=bool(by_email),
                                                              by_sms=bool(by_sms)), {})


@router.post("/account/language", dependencies=SIGNED_IN)
def save_language(request: Request, session: DbSession, language: TextField = ""):
    offered = _runtime(request).site.config.site.languages
    response = _save(request, session, "language",
                     lambda account: service.change_language(session, account=account, language=language,
                                                             offered=offered), {})
    if isinstance(response, RedirectResponse):  # the cookie makes the choice stick before and after sign-in
        response.set_cookie(i18n.COOKIE, language, max_age=365 * 24 * 3600, httponly=True, samesite="lax")
    return response


@router.post("/account/password", dependencies=SIGNED_IN)
def save_password(request: Request, session: DbSession, current_password: TextField = "",
                  new_password: TextField = ""):
    runtime = _runtime(request)
    account = _account(request, session)
    try:
        service.change_password(session, account=account, current=current_password, new=new_password)
    except AccountError as problem:
        session.commit()
        return _account_page(request, session, account, errors={"password": str(problem)})
    # whoever else knew the old password is signed out; this browser keeps going under a new id
    token = service.rotate_session(session, site=runtime.site, account=account,
                                   token=request.cookies.get(sessions.COOKIE), end_others=True)
    session.commit()
    response = _done("/account?done=password#password")
    set_session_cookie(response, token, runtime.site)
    return response


# -- email: proved by a code sent to the new address ------------------------------------

@router.post("/account/email", dependencies=SIGNED_IN)
def request_email_change(request: Request, session: DbSession, new_email: TextField = "",
                         password: TextField = ""):
    account = _account(request, session)
    try:
        service.request_email_change(session, site=_runtime(request).site, account=account, new_email=new_email,
                                     password=password)
    except AccountError as problem:
        session.commit()
        return _account_page(request, session, account, errors={"email": str(problem)},
                             values={"new_email": new_email})
    session.commit()
    return _done("/account/email/code")


def _email_code_page(request: Request, session, account: Account, error: str = "") -> HTMLResponse:
    return render(request, "identity/account_email_code.html", error=error,
                  new_email=service.pending_email_change(session, account=account),
                  minutes=_runtime(request).site.config.identity.code_valid_minutes)


@router.get("/account/email/code", response_class=HTMLResponse, dependencies=SIGNED_IN)
def email_code_form(request: Request, session: DbSession):
    account = _account(request, session)
    if service.pending_email_change(session, account=account) is None:
        return _done("/account#email")
    return _email_code_page(request, session, account)


@router.post("/account/email/code", dependencies=SIGNED_IN)
def confirm_email_change(request: Request, session: DbSession, code: TextField = ""):
    account = _account(request, session)
    try:
        service.confirm_email_change(session, site=_runtime(request).site, account=account, code=code)
    except AccountError as problem:
        session.commit()  # the wrong try counts
        return _email_code_page(request, session, account, error=str(problem))
    session.commit()
    return _done("/account?done=email#email")


# -- two-step sign-in with an authenticator app ------------------------------------

def _two_factor_page(request: Request, session, account: Account, *, error: str = "", error_in: str = "",
                     notice: str = "") -> HTMLResponse:
    pending = bool(account.totp_secret) and not account.totp_enabled_at
    site_name = _runtime(request).site.config.site.name
    return render(request, "identity/account_two_factor.html", account=account, error=error, error_in=error_in,
                  notice=notice, pending=pending,
                  qr=service.totp_qr_svg(account, site_name) if pending else "",
                  secret=service.grouped_secret(account.totp_secret) if pending else "",
                  recovery_left=service.unused_recovery_codes(session, account=account))


def _recovery_codes_page(request: Request, codes: list[str], *, first: bool) -> HTMLResponse:
    response = render(request, "identity/account_recovery_codes.html", codes=codes, first=first)
    response.headers["Cache-Control"] = "no-store"  # shown once: not kept by the browser either
    return response


@router.get("/account/two-factor", response_class=HTMLResponse, dependencies=SIGNED_IN)
def two_factor_page(request: Request, session: DbSession, done: str = ""):
    return _two_factor_page(request, session, _account(request, session), notice=_notices().get(done, ""))


@router.post("/account/two-factor/start", dependencies=SIGNED_IN)
def start_two_factor(request: Request, session: DbSession):
    account = _account(request, session)
    if not account.totp_enabled_at:  # pressed twice: the same pending secret is kept
        service.start_totp(session, account=account)
        session.commit()
    return _done("/account/two-factor")


@router.post("/account/two-factor/confirm", dependencies=SIGNED_IN)
def confirm_two_factor(request: Request, session: DbSession, code: TextField = ""):
    runtime = _runtime(request)
    account = _account(request, session)
    if account.totp_enabled_at:  # a second submission: the codes were shown the first time
        return _done("/account/two-factor?done=two_factor_on")
    try:
        codes = service.confirm_totp(session, account=account, code=code)
    except AccountError as problem:
        session.commit()
        return _two_factor_page(request, session, account, error=str(problem), error_in="confirm")
    token = service.rotate_session(session, site=runtime.site, account=account,
                                   token=request.cookies.get(sessions.COOKIE))
    session.commit()
    # rendered, not redirected: the codes exist only in this answer
    response = _recovery_codes_page(request, codes, first=True)
    set_session_cookie(response, token, runtime.site)
    return response


@router.post("/account/two-factor/disable", dependencies=SIGNED_IN)
def disable_two_factor(request: Request, session: DbSession, password: TextField = "", code: TextField = ""):
    account = _account(request, session)
    if not account.totp_enabled_at:
        return _done("/account/two-factor?done=two_factor_off")
    try:
        service.disable_totp(session, account=account, password=password, code=code)
    except AccountError as problem:
        session.commit()
        return _two_factor_page(request, session, account, error=str(problem), error_in="disable")
    session.commit()
    return _done("/account/two-factor?done=two_factor_off")


@router.post("/account/two-factor/recovery-codes", dependencies=SIGNED_IN)
def new_recovery_codes(request: Request, session: DbSession, code: TextField = ""):
    account = _account(request, session)
    try:
        codes = service.regenerate_recovery_codes(session, account=account, code=code)
    except AccountError as problem:
        session.commit()
        return _two_factor_page(request, session, account, error=str(problem), error_in="recovery")
    session.commit()
    return _recovery_codes_page(request, codes, first=False)


# -- the patient picker -----------------------------------------------------------

def _web_session(request: Request, session):
    return sessions.find(session, token=request.cookies.get(sessions.COOKIE), site=_runtime(request).site)


@router.get("/patients", response_class=HTMLResponse, dependencies=SIGNED_IN)
def patients_page(request: Request, session: DbSession, done: str = ""):
    account = _account(request, session)
    current = _web_session(request, session)
    return render(request, "identity/account_patients.html", notice=_notices().get(done, ""),
                  linked=service.linked_patients(session, account=account),
                  active=current.active_patient_ref if current else None)


@router.post("/patients", dependencies=SIGNED_IN)
def choose_patient(request: Request, session: DbSession, patient: TextField = ""):
    account = _account(request, session)
    current = _web_session(request, session)
    try:
        service.choose_patient(session, account=account, web_session=current, patient_ref=int(patient))
    except (LookupError, ValueError):
        raise HTTPException(status_code=404) from None  # another person's patient is not there at all
    session.commit()
    return _done("/patients?done=chosen")
