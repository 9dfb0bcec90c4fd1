"""Sign in (password, then a second factor when needed), sign out, sign out everywhere."""
from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from core import access, i18n
from core.db import DbSession
from core.i18n import gettext as _
from core.identity import service, sessions
from core.identity.security import too_many_attempts
from core.identity.models import Account
from core.web import render, safe_next

router = APIRouter()


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def set_session_cookie(response, token: str, site) -> None:
    response.set_cookie(sessions.COOKIE, token, max_age=site.config.sessions.absolute_hours * 3600,
                        secure=True, httponly=True, samesite="lax", path="/")


def wait_message(seconds: int) -> str:
    minutes = max(1, -(-seconds // 60))
    return too_many_attempts(minutes)


@router.get("/signin", response_class=HTMLResponse, dependencies=[access.public])
def signin_form(request: Request, done: str = "", next: str = "/"):
    notices = {"signed_out": _("You have signed out."),
               "expired": _("Your session ended. Please sign in again."),
               "password_changed": _("Your password has been changed. Please sign in with your new password.")}
    return render(request, "identity/signin.html", notice=notices.get(done, ""), email="", next=safe_next(next))


@router.post("/signin", dependencies=[access.public])
def signin(request: Request, session: DbSession, email: Annotated[str, Form()] = "",
           password: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/"):
    runtime = request.app.state.runtime
    result = service.sign_in(session, site=runtime.site, email=email, password=password, ip=client_ip(request))
    if result.outcome in ("wrong", "throttled"):
        session.commit()  # the failure and the throttle count must be kept
        error = wait_message(result.wait) if result.outcome == "throttled" else \
            _("The email address or password is not right. Please try again.")
        return render(request, "identity/signin.html", status_code=200, error=error, email=email.strip(),
                      next=safe_next(next))
    stage = "signed_in" if result.outcome == "signed_in" else "second_factor"
    token = sessions.start(session, account=result.account, site=runtime.site, stage=stage,
                           replacing=request.cookies.get(sessions.COOKIE))
    if stage == "second_factor" and not result.account.totp_enabled_at:
        service.send_sign_in_code(session, site=runtime.site, account=result.account)
    session.commit()
    after = safe_next(next)
    response = RedirectResponse(after if stage == "signed_in" else f"/signin/code?next={quote(after)}",
                                status_code=303)
    set_session_cookie(response, token, runtime.site)
    if result.account.language in runtime.site.config.site.languages:  # their choice, on any browser
        response.set_cookie(i18n.COOKIE, result.account.language, max_age=365 * 24 * 3600, httponly=True,
                            samesite="lax")
    return response


def _pending_account(request: Request, session) -> Account | None:
    principal = access.current_principal(request)
    return session.get(Account, int(principal.id)) if principal.kind == "second_factor" else None


@router.get("/signin/code", response_class=HTMLResponse, dependencies=[access.public])
def second_factor_form(request: Request, session: DbSession, next: str = "/"):
    account = _pending_account(request, session)
    if account is None:
        return RedirectResponse("/signin", status_code=303)
    return render(request, "identity/signin_code.html", uses_app=bool(account.totp_enabled_at), next=safe_next(next),
                  by_text=bool(account.mobile and account.notify_sms))


@router.post("/signin/code", dependencies=[access.public])
def second_factor(request: Request, session: DbSession, code: Annotated[str, Form()] = "",
                  next: Annotated[str, Form()] = "/"):
    runtime = request.app.state.runtime
    account = _pending_account(request, session)
    if account is None:
        return RedirectResponse("/signin?done=expired", status_code=303)
    outcome = service.check_second_factor(session, site=runtime.site, account=account, code=code,
                                          ip=client_ip(request))
    if outcome != "ok":
        session.commit()
        errors = {"expired": _("This code has expired. Sign in again to get a new one."),
                  "too_many": _("Too many wrong codes. Sign in again to get a new one."),
                  "none": _("This code has expired. Sign in again to get a new one."),
                  "throttled": _("Too many attempts. Please wait a minute and try again.")}
        return render(request, "identity/signin_code.html", uses_app=bool(account.totp_enabled_at),
                      by_text=bool(account.mobile and account.notify_sms), next=safe_next(next), error=errors.get(outcome, _("This code is not right. Please check it and try again.")))
    token = sessions.start(session, account=account, site=runtime.site, replacing=request.cookies.get(sessions.COOKIE))
    session.commit()
    response = RedirectResponse(safe_next(next), status_code=303)
    set_session_cookie(response, token, runtime.site)
    return response


@router.post("/signout", dependencies=[access.public])
def signout(request: Request, session: DbSession):
    if token := request.cookies.get(sessions.COOKIE):
        sessions.end(session, token)
        session.commit()
    response = RedirectResponse("/signin?done=signed_out", status_code=303)
    response.delete_cookie(sessions.COOKIE, secure=True, httponly=True, samesite="lax", path="/")
    return response


@router.post("/signout/everywhere", dependencies=[access.rule("account.self")])
def signout_everywhere(request: Request, session: DbSession):
    principal = access.current_principal(request)
    sessions.end_all(session, account_id=int(principal.id))
    from core.audit import service as audit

    audit.record(session, actor=f"account:{principal.id}", action="signout.everywhere",
                 subject=f"account:{principal.id}")
    session.commit()
    response = RedirectResponse("/signin?done=signed_out", status_code=303)
    response.delete_cookie(sessions.COOKIE, secure=True, httponly=True, samesite="lax", path="/")
    return response
