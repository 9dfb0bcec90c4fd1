"""Creating an account in four steps, and asking the help desk for one.
Forgotten passwords and activation links are in ``recovery.py``, mounted here."""
from __future__ import annotations

from typing import Annotated

from babel import dates
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.exc import IntegrityError
from starlette.datastructures import FormData

from core import access, i18n
from core.db import DbSession
from core.i18n import gettext as _
from core.identity import registration, service, sessions
from core.identity.registration import DRAFT_COOKIE, STEPS
from core.identity.routes import recovery
from core.identity.routes.recovery import notice_page
from core.identity.routes.signin import client_ip, set_session_cookie, wait_message
from core.web import render

router = APIRouter()
router.include_router(recovery.router)
STEP_URLS = {1: "/register", 2: "/register/verify", 3: "/register/email", 4: "/register/password"}
Text = Annotated[str, Form()]


async def posted_form(request: Request) -> FormData:
    """The whole form, for fields named by plugins (the step 2 challenges)."""
    return await request.form()


def _site(request: Request):
    return request.app.state.runtime.site


def date_parts(language: str) -> list[str]:
    """"day", "month" and "year" in the order the reader's locale writes dates."""
    pattern = dates.get_date_format("short", locale=language).pattern
    letters = {"day": "d", "month": "M", "year": "y"}
    return sorted(letters, key=lambda part: pattern.find(letters[part]))


def _date_context() -> dict:
    language = i18n.current_language()
    months = dates.get_month_names("wide", locale=language)
    return {"date_parts": date_parts(language), "months": [(n, months[n]) for n in range(1, 13)]}


def _set_draft_cookie(response, token: str) -> None:
    response.set_cookie(DRAFT_COOKIE, token, max_age=int(registration.DRAFT_VALID.total_seconds()),
                        secure=True, httponly=True, samesite="lax", path="/")


def _draft_at(request: Request, session, step: int):
    """(draft, None) when the registration is at ``step``; else (None, the page to show instead)."""
    if not _site(request).config.identity.self_registration:
        return None, notice_page(request, "closed")
    token = request.cookies.get(DRAFT_COOKIE)
    if not token:
        return None, RedirectResponse("/register", status_code=303)
    draft = registration.find_draft(session, token)
    if draft is None:
        session.commit()  # an expired draft was removed
        return None, notice_page(request, "gone")
    at = registration.draft_step(draft)
    if at != step:
        return None, RedirectResponse(STEP_URLS[at], status_code=303)
    return draft, None


# -- step 1 ---------------------------------------------------------------------------

def _details_page(request: Request, values: dict, errors: dict | None = None):
    return render(request, "identity/register_details.html", step=1, steps=STEPS, values=values,
                  errors=errors or {}, **_date_context())


@router.get("/register", response_class=HTMLResponse, dependencies=[access.public])
def details_form(request: Request, session: DbSession):
    if not _site(request).config.identity.self_registration:
        return notice_page(request, "closed")
    values = {}
    if draft := registration.find_draft(session, request.cookies.get(DRAFT_COOKIE)):
        values = {"name": draft.name, "email": draft.email, "mobile": draft.mobile or "",
                  "birth_day": draft.birth_date.day, "birth_month": draft.birth_date.month,
                  "birth_year": draft.birth_date.year}
    return _details_page(request, values)


@router.post("/register", dependencies=[access.public])
def details(request: Request, session: DbSession, name: Text = "", birth_day: Text = "", birth_month: Text = "",
            birth_year: Text = "", email: Text = "", mobile: Text = ""):
    site = _site(request)
    if not site.config.identity.self_registration:
        return notice_page(request, "closed")
    values = dict(name=name, birth_day=birth_day, birth_month=birth_month, birth_year=birth_year,
                  email=email, mobile=mobile)
    found, errors = registration.read_details(site, name=name, day=birth_day, month=birth_month, year=birth_year,
                                              email=email, mobile=mobile)
    if errors:
        return _details_page(request, values, errors)
    if registration.too_young(site, found.birth_date):
        return notice_page(request, "too_young", age=site.config.identity.minimum_age)
    registration.end_draft(session, request.cookies.get(DRAFT_COOKIE))
    token = registration.start_draft(session, details=found, language=i18n.current_language())
    session.commit()
    response = RedirectResponse(STEP_URLS[2], status_code=303)
    _set_draft_cookie(response, token)
    return response


# -- step 2 ---------------------------------------------------------------------------

def _proofs(request: Request) -> list[dict]:
    """The plugins' proofs, translated, in the order they are offered (before the site's kinds)."""
    runtime = request.app.state.runtime
    return [{"name": proof.name, "label": _(str(proof.label)), "hint": _(str(proof.hint)) if proof.hint else ""}
            for proof in registration.proofs(runtime.pm, runtime.site)]


def _verify_page(request: Request, values: dict | None = None, error: str = "", proofs: list[dict] | None = None):
    runtime = request.app.state.runtime
    proofs = _proofs(request) if proofs is None else proofs
    kinds = runtime.site.config.identity.verify_with
    values = dict(values or {})
    values.setdefault("kind", proofs[0]["name"] if proofs else kinds[0])  # the first plugin proof is the default
    return render(request, "identity/register_verify.html", step=2, steps=STEPS, values=values,
                  error=error, kinds=kinds, proofs=proofs,
                  challenges=registration.challenges(runtime.pm, runtime.site))


@router.get("/register/verify", response_class=HTMLResponse, dependencies=[access.public])
def verify_form(request: Request, session: DbSession, proof: str = ""):
    draft, instead = _draft_at(request, session, 2)
    if instead:
        return instead
    proofs = _proofs(request)
    chosen = {"kind": proof} if any(offered["name"] == proof for offered in proofs) else {}
    return _verify_page(request, chosen, proofs=proofs)


@router.post("/register/verify", dependencies=[access.public])
def verify(request: Request, session: DbSession, form: Annotated[FormData, Depends(posted_form)]):
    draft, instead = _draft_at(request, session, 2)
    if instead:
        return instead
    site = _site(request)
    proofs = registration.proofs(request.app.state.runtime.pm, site)
    first = proofs[0].name if proofs else site.config.identity.verify_with[0]
    values = {"last_name": str(form.get("last_name", "")), "number": str(form.get("number", "")),
              "kind": str(form.get("kind", first))}
    answers = {key.removeprefix("challenge_"): str(value) for key, value in form.items()
               if key.startswith("challenge_")}
    result = registration.verify(session, site=site, draft=draft, kind=values["kind"], number=values["number"],
                                 last_name=values["last_name"], answers=answers, ip=client_ip(request))
    session.commit()
    if result.outcome == "verified":
        return RedirectResponse(STEP_URLS[3], status_code=303)
    if result.outcome == "refused":
        return notice_page(request, "refused", message=result.message)
    if result.outcome == "too_young":
        return notice_page(request, "too_young", age=site.config.identity.minimum_age)
    error = wait_message(result.wait) if result.outcome == "throttled" else _(
        "We could not match these details to a record of ours. Please check them against your "
        "appointment letter or report, and your date of birth, and try again.")
    return _verify_page(request, values, error)


# -- step 3 ---------------------------------------------------------------------------

def _email_page(request: Request, draft, error: str = "", notice: str = ""):
    return render(request, "identity/register_email.html", step=3, steps=STEPS, email=draft.email, error=error,
                  notice=notice, minutes=_site(request).config.identity.code_valid_minutes)


@router.get("/register/email", response_class=HTMLResponse, dependencies=[access.public])
def email_form(request: Request, session: DbSession, sent: str = ""):
    draft, instead = _draft_at(request, session, 3)
    return instead or _email_page(request, draft, notice=_("We have sent you a new code.") if sent else "")


@router.post("/register/email", dependencies=[access.public])
def email_check(request: Request, session: DbSession, code: Text = ""):
    draft, instead = _draft_at(request, session, 3)
    if instead:
        return instead
    outcome = registration.check_email_code(session, site=_site(request), draft=draft, code=code)
    session.commit()
    if outcome == "ok":
        return RedirectResponse(STEP_URLS[4], status_code=303)
    errors = {"wrong": _("This code is not right. Please check it and try again."),
              "too_many": _("Too many wrong codes. Please ask for a new code below.")}
    return _email_page(request, draft, error=errors.get(
        outcome, _("This code has expired. Please ask for a new code below.")))


@router.post("/register/email/new", dependencies=[access.public])
def new_code(request: Request, session: DbSession):
    draft, instead = _draft_at(request, session, 3)
    if instead:
        return instead
    if wait := registration.send_new_code(session, site=_site(request), draft=draft):
        return _email_page(request, draft, error=wait_message(wait))
    session.commit()
    return RedirectResponse(f"{STEP_URLS[3]}?sent=1", status_code=303)


# -- step 4 ---------------------------------------------------------------------------

def _password_page(request: Request, error: str = ""):
    return render(request, "identity/register_password.html", step=4, steps=STEPS, action=STEP_URLS[4],
                  heading=_("Choose your password"), error=error)


@router.get("/register/password", response_class=HTMLResponse, dependencies=[access.public])
def password_form(request: Request, session: DbSession):
    draft, instead = _draft_at(request, session, 4)
    return instead or _password_page(request)


@router.post("/register/password", dependencies=[access.public])
def password(request: Request, session: DbSession, password: Text = "", confirmation: Text = ""):
    site = _site(request)
    draft, instead = _draft_at(request, session, 4)
    if instead:  # a second submit of this form finds no draft: the "already finished" page
        return instead
    try:
        account = registration.finish(session, token=request.cookies.get(DRAFT_COOKIE), password=password,
                                      confirmation=confirmation, language=i18n.current_language())
    except registration.RegistrationGone:
        return notice_page(request, "gone")
    except service.AccountError as exc:
        session.rollback()
        return _password_page(request, error=str(exc))
    except IntegrityError:  # the same form submitted twice at the same moment
        session.rollback()
        return notice_page(request, "gone")
    token = sessions.start(session, account=account, site=site, replacing=request.cookies.get(sessions.COOKIE))
    session.commit()
    response = RedirectResponse("/", status_code=303)
    set_session_cookie(response, token, site)
    response.delete_cookie(DRAFT_COOKIE, secure=True, httponly=True, samesite="lax", path="/")
    return response


# -- asking the help desk ------------------------------------------------------------------

def _request_page(request: Request, values: dict | None = None, errors: dict | None = None, error: str = ""):
    return render(request, "identity/register_request.html", values=values or {}, errors=errors or {},
                  error=error, **_date_context())


@router.get("/register/request", response_class=HTMLResponse, dependencies=[access.public])
def request_form(request: Request):
    return _request_page(request)


@router.post("/register/request", dependencies=[access.public])
def request_account(request: Request, session: DbSession, name: Text = "", birth_day: Text = "",
                    birth_month: Text = "", birth_year: Text = "", email: Text = "", mobile: Text = "",
                    text: Text = ""):
    site = _site(request)
    values = dict(name=name, birth_day=birth_day, birth_month=birth_month, birth_year=birth_year,
                  email=email, mobile=mobile, text=text)
    found, errors = registration.read_details(site, name=name, day=birth_day, month=birth_month, year=birth_year,
                                              email=email, mobile=mobile, mobile_required=True, text=text)
    if errors:
        return _request_page(request, values, errors)
    if wait := registration.request_account(session, site=site, details=found, language=i18n.current_language(),
                                            ip=client_ip(request)):
        session.commit()
        return _request_page(request, values, error=wait_message(wait))
    session.commit()
    return RedirectResponse("/register/request/sent", status_code=303)


@router.get("/register/request/sent", response_class=HTMLResponse, dependencies=[access.public])
def request_sent(request: Request):
    return notice_page(request, "request_sent", days=_site(request).config.identity.request_account_days)
