"""Forgot password, the emailed reset link, and the activation link of an account
opened at the scan. Mounted by the registration router."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from core import access
from core.db import DbSession
from core.i18n import gettext as _
from core.identity import recovery, registration, service, sessions
from core.identity.routes.signin import client_ip, set_session_cookie, wait_message
from core.web import render

router = APIRouter()
Text = Annotated[str, Form()]
LINKS = {"reset": "/password/reset/", "activation": "/activate/"}


def notice_page(request: Request, kind: str, **context):
    """One page for the short answers of registration and recovery (see the template's kinds)."""
    return render(request, "identity/register_notice.html", kind=kind, **context)


# -- forgot password -----------------------------------------------------------------------

@router.get("/password/forgot", response_class=HTMLResponse, dependencies=[access.public])
def forgot_form(request: Request):
    return render(request, "identity/register_forgot.html", email="", error="")


@router.post("/password/forgot", dependencies=[access.public])
def forgot(request: Request, session: DbSession, email: Text = ""):
    site = request.app.state.runtime.site
    if not registration.EMAIL_SHAPE.match(service.normalise_email(email)):
        return render(request, "identity/register_forgot.html", email=email.strip(),
                      error=_("Enter an email address such as name@example.com."))
    wait = recovery.request_reset(session, site=site, email=email, ip=client_ip(request))
    session.commit()
    if wait:
        return render(request, "identity/register_forgot.html", email=email.strip(), error=wait_message(wait))
    return RedirectResponse("/password/forgot/sent", status_code=303)


@router.get("/password/forgot/sent", response_class=HTMLResponse, dependencies=[access.public])
def forgot_sent(request: Request):
    identity = request.app.state.runtime.site.config.identity
    return notice_page(request, "reset_sent", minutes=identity.reset_valid_minutes)


# -- choosing a password through a link ------------------------------------------------------

def _link_form(request: Request, purpose: str, token: str, error: str = ""):
    heading = _("Choose a new password") if purpose == "reset" else _("Choose your password")
    return render(request, "identity/register_password.html", step=None, action=LINKS[purpose] + token,
                  heading=heading, error=error)


def _show_link(request: Request, session, purpose: str, token: str):
    found = recovery.look_up(session, purpose=purpose, token=token)
    if not found.ok:
        return notice_page(request, "link_gone", purpose=purpose)
    return _link_form(request, purpose, token)


def _use_link(request: Request, session, purpose: str, token: str, password: str, confirmation: str):
    """The account whose password was set, or the page to show instead."""
    try:
        account = recovery.choose_password(session, purpose=purpose, token=token, password=password,
                                           confirmation=confirmation, ip=client_ip(request))
    except recovery.LinkGone:
        return None, notice_page(request, "link_gone", purpose=purpose)
    except service.AccountError as exc:
        session.rollback()
        return None, _link_form(request, purpose, token, error=str(exc))
    return account, None


@router.get("/password/reset/{token}", response_class=HTMLResponse, dependencies=[access.public])
def reset_form(request: Request, session: DbSession, token: str):
    return _show_link(request, session, "reset", token)


@router.post("/password/reset/{token}", dependencies=[access.public])
def reset(request: Request, session: DbSession, token: str, password: Text = "", confirmation: Text = ""):
    account, instead = _use_link(request, session, "reset", token, password, confirmation)
    if instead:
        return instead
    session.commit()
    response = RedirectResponse("/signin?done=password_changed", status_code=303)
    response.delete_cookie(sessions.COOKIE, secure=True, httponly=True, samesite="lax", path="/")
    return response


@router.get("/activate/{token}", response_class=HTMLResponse, dependencies=[access.public])
def activate_form(request: Request, session: DbSession, token: str):
    return _show_link(request, session, "activation", token)


@router.post("/activate/{token}", dependencies=[access.public])
def activate(request: Request, session: DbSession, token: str, password: Text = "", confirmation: Text = ""):
    site = request.app.state.runtime.site
    account, instead = _use_link(request, session, "activation", token, password, confirmation)
    if instead:
        return instead
    cookie = sessions.start(session, account=account, site=site)
    session.commit()
    response = RedirectResponse("/", status_code=303)
    set_session_cookie(response, cookie, site)
    return response
