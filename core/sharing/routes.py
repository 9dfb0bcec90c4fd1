"""The share-link pages: make a share, see it once (link, QR code, password), manage and
turn off shares; and the recipient's side: open a link (with its password), the list of
exams shared with them, and leaving.

The link's token and the password exist in clear only in the answer to ``POST /shares``.
A recipient's browser gets a ``__Host-`` cookie whose session ``core.access`` turns into
a share principal; from there, the exam pages, the viewer and DICOMweb scope it through
``core.studies.queries`` like anyone else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

import segno
from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from sqlalchemy import select

from core import access, clock
from core.audit import service as audit
from core.db import DbSession
from core.i18n import gettext as _
from core.identity import sessions
from core.sharing import service
from core.sharing.models import Share
from core.studies import pages, queries
from core.studies.models import Study
from core.web import render

router = APIRouter()
CREATE = [access.rule("sharing.create")]
OWNER = [access.rule("account.self")]
PUBLIC = [access.public]
# the pages of a share hold its secrets or its exams: never kept, never sent on as a referrer
PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


def _page(request: Request, template: str, status_code: int = 200, **context) -> Response:
    response = render(request, template, status_code=status_code, **context)
    response.headers.update(PRIVATE)
    return response


def share_options(runtime) -> list:
    """The plugins' extra options (``core.ShareOption``), in plugin order."""
    return [option for found in runtime.pm.hook.share_options(runtime=runtime) for option in (found or [])]


# -- the form ------------------------------------------------------------------------------------

@dataclass
class ShareForm:
    """What the share form holds, as typed: parsed from the request, and shown again on a problem."""

    studies: list[str] = field(default_factory=list)
    portfolio: bool = False
    patient: str = ""
    nickname: str = ""
    password: bool = True
    expiry: str = "days"  # days | date | never
    days: str = ""
    until: str = ""
    download: bool = False
    reshare: bool = False
    hide_details: bool = False
    options: list[str] = field(default_factory=list)
    acknowledged: bool = False

    def expires_at(self, runtime, now: datetime) -> datetime | None:
        """The moment the share ends; ``ShareError`` for a number or date that cannot be used.
        A date means to the end of that day in the site's time zone (within the site's cap)."""
        config = runtime.site.config
        if self.expiry == "never":
            return None
        if self.expiry == "date":
            try:
                day = date.fromisoformat(self.until.strip())
            except ValueError:
                raise service.ShareError(_("Choose the last day the share may be opened.")) from None
            zone = ZoneInfo(config.site.timezone)
            ends = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
            cap = config.sharing.max_days
            if cap and day <= (now + timedelta(days=cap)).astimezone(zone).date():
                ends = min(ends, now + timedelta(days=cap))
            return ends
        try:
            days = int(self.days.strip())
        except ValueError:
            raise service.ShareError(_("Say for how many days the share may be opened.")) from None
        if days < 1:
            raise service.ShareError(_("Say for how many days the share may be opened."))
        return now + timedelta(days=min(days, 3650))


def _form_of(data) -> ShareForm:
    def on(name: str) -> bool:
        return data.get(name) == "yes"

    return ShareForm(studies=list(dict.fromkeys(data.getlist("study"))), portfolio=on("portfolio"),
                     patient=str(data.get("patient", "")), nickname=str(data.get("nickname", ""))[:200],
                     password=on("password"), expiry=str(data.get("expiry", "days")),
                     days=str(data.get("days", ""))[:10], until=str(data.get("until", ""))[:10],
                     download=on("download"), reshare=on("reshare"), hide_details=on("hide_details"),
                     options=list(data.getlist("option")), acknowledged=on("acknowledge"))


@dataclass
class Sharer:
    """Who is sharing, and from which exams: a patient (or proxy), or a recipient re-sharing."""

    exams: pages.ExamList | None
    patient_ref: int | None = None  # the patient whose whole portfolio may be shared
    parent: Share | None = None  # for a re-share

    @property
    def rows(self) -> list:
        return [row for group in self.exams.groups for row in group.rows] if self.exams else []


def _sharer(request: Request, session) -> Sharer:
    principal = access.current_principal(request)
    filters = pages.ExamFilters.parse()
    if principal.kind == "share":
        parent = session.get(Share, int(principal.id))
        return Sharer(pages.exam_list(session, principal, None, filters),
                      parent.patient_ref if parent.portfolio else None, parent)
    web_session = sessions.find(session, token=request.cookies.get(sessions.COOKIE),
                                site=request.app.state.runtime.site)
    choice = pages.patient_choice(session, principal, web_session)
    if choice.active is None:
        return Sharer(None)
    return Sharer(pages.exam_list(session, principal, choice.active.id, filters), choice.active.id)


def _form_page(request: Request, session, form: ShareForm, problem: str = "", status_code: int = 200) -> Response:
    runtime = request.app.state.runtime
    config, now = runtime.site.config, clock.now()
    zone = ZoneInfo(config.site.timezone)
    cap = config.sharing.max_days
    if session.in_transaction():
        session.rollback()  # nothing of a refused share stays
    sharer = _sharer(request, session)
    parent = sharer.parent
    if not form.days:
        form.days = str(min(config.sharing.default_days, cap or config.sharing.default_days))
    return _page(request, "sharing/new.html", status_code=status_code, form=form, problem=problem, sharer=sharer,
                 parent=parent, options=share_options(runtime), max_days=cap,
                 today=now.astimezone(zone).date().isoformat(),
                 last_day=(now + timedelta(days=cap)).astimezone(zone).date().isoformat() if cap else "")


@router.get("/shares/new", response_class=HTMLResponse, dependencies=CREATE)
def new_share(request: Request, session: DbSession, study: Annotated[list[str], Query()] = []):  # noqa: B006
    defaults = [option.name for option in share_options(request.app.state.runtime) if option.default]
    return _form_page(request, session, ShareForm(studies=list(dict.fromkeys(study)), options=defaults))


def qr_code(link: str) -> Markup:
    """The link as a QR code, an inline SVG (no script, nothing fetched)."""
    return Markup(segno.make(link, error="m").svg_inline(scale=4, border=2, omitsize=True, svgclass="share-qr"))


@router.post("/shares", response_class=HTMLResponse, dependencies=CREATE)
async def create_share(request: Request, session: DbSession):
    form = _form_of(await request.form())  # read here (async); hashing and the database in a worker thread
    return await run_in_threadpool(_create_share, request, session, form)


def _create_share(request: Request, session, form: ShareForm) -> Response:
    runtime, principal = request.app.state.runtime, access.current_principal(request)
    known = {option.name for option in share_options(runtime)}
    try:
        patient_ref = int(form.patient) if form.portfolio and form.patient.isdigit() else None
        created = service.create(
            session, runtime, principal, nickname=form.nickname, study_uids=form.studies,
            portfolio=form.portfolio, patient_ref=patient_ref, with_password=form.password,
            expires_at=form.expires_at(runtime, clock.now()), allow_download=form.download,
            allow_reshare=form.reshare, hide_details=form.hide_details, acknowledged=form.acknowledged,
            options={name: name in form.options for name in sorted(known)})
    except queries.NotFound:
        raise HTTPException(status_code=404) from None
    except service.ShareError as refusal:
        return _form_page(request, session, form, refusal.message, status_code=422)
    session.commit()
    link = f"{runtime.site.config.site.base_url}/s/{created.token}"
    return _page(request, "sharing/created.html", share=created.share, link=link, qr=qr_code(link),
                 password=created.password, studies=_studies_by_id(session, created.share.study_refs),
                 option_labels={option.name: option.label for option in share_options(runtime)})


# -- managing ------------------------------------------------------------------------------------

def _studies_by_id(session, refs) -> dict[int, Study]:
    refs = set(refs)
    return {study.id: study for study in session.scalars(select(Study).where(Study.id.in_(refs)))} if refs else {}


def status_of(share: Share) -> str:
    """active, expired or revoked (a re-share whose original is off is off too)."""
    try:
        service.check_open(share)
    except service.ShareError as closed:
        return closed.kind
    return "active"


@dataclass
class ShareRow:
    share: Share
    status: str
    reshares: list["ShareRow"] = field(default_factory=list)


@router.get("/shares", response_class=HTMLResponse, dependencies=OWNER)
def manage_shares(request: Request, session: DbSession, revoked: str = ""):
    principal = access.current_principal(request)
    found = service.shares_of(session, int(principal.id))
    rows = {share.id: ShareRow(share, status_of(share)) for share in found}
    originals = []
    for share in reversed(found):  # oldest first, so each original's re-shares come oldest first
        row = rows[share.id]
        if share.parent_ref in rows:
            rows[share.parent_ref].reshares.append(row)
        else:
            originals.append(row)
    originals.reverse()
    studies = _studies_by_id(session, {ref for share in found for ref in share.study_refs})
    labels = {option.name: option.label for option in share_options(request.app.state.runtime)}
    return _page(request, "sharing/list.html", rows=originals, studies=studies, option_labels=labels,
                 revoked=revoked == "1")


def _own_share(session, principal, share_id: int) -> Share:
    share = session.get(Share, share_id)
    if share is None or share.owner_account != int(principal.id):
        raise HTTPException(status_code=404)
    return share


@router.get("/shares/{share_id:int}/revoke", response_class=HTMLResponse, dependencies=OWNER)
def confirm_revoke(request: Request, session: DbSession, share_id: int):
    share = _own_share(session, access.current_principal(request), share_id)
    reshares = session.scalars(select(Share).where(Share.parent_ref == share.id, Share.revoked_at.is_(None))).all()
    return _page(request, "sharing/revoke.html", share=share, status=status_of(share), reshares=len(reshares))


@router.post("/shares/{share_id:int}/revoke", dependencies=OWNER)
def revoke_share(request: Request, session: DbSession, share_id: int):
    try:
        service.revoke(session, access.current_principal(request), share_id)
    except queries.NotFound:
        raise HTTPException(status_code=404) from None
    session.commit()
    return RedirectResponse("/shares?revoked=1", status_code=303)


# -- the recipient ---------------------------------------------------------------------------------

def _closed(request: Request, refusal: service.ShareError) -> Response:
    status = 404 if refusal.kind == "not_found" else 410
    return _page(request, "sharing/closed.html", status_code=status, heading=_("This link cannot be opened"),
                 message=refusal.message)


def _opened(request: Request, token: str) -> Response:
    """To the shared exams, with the recipient's session cookie."""
    response = RedirectResponse("/shared", status_code=303)
    hours = request.app.state.runtime.site.config.sharing.session_hours
    response.set_cookie(access.SHARE_COOKIE, token, max_age=hours * 3600, secure=True, httponly=True,
                        samesite="lax", path="/")
    response.headers.update(PRIVATE)
    return response


@router.get("/s/{token}", response_class=HTMLResponse, dependencies=PUBLIC)
def open_link(request: Request, session: DbSession, token: str):
    share = service.find_by_token(session, token)
    try:
        service.check_open(share)
    except service.ShareError as refusal:
        return _closed(request, refusal)
    principal = access.current_principal(request)
    if principal.kind == "share" and principal.id == str(share.id):  # already open in this browser
        return RedirectResponse("/shared", status_code=303)
    if share.password_hash:
        return _page(request, "sharing/password.html", token=token, problem="")
    cookie = service.open_share(session, request.app.state.runtime, share, client=_client(request))
    session.commit()
    return _opened(request, cookie)


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


@router.post("/s/{token}", response_class=HTMLResponse, dependencies=PUBLIC)
def open_with_password(request: Request, session: DbSession, token: str,
                       password: Annotated[str, Form()] = ""):
    share = service.find_by_token(session, token)
    try:
        cookie = service.open_share(session, request.app.state.runtime, service.check_open(share),
                                    password=password[:100], client=_client(request))
    except service.ShareError as refusal:
        if refusal.kind not in ("password", "throttled"):
            return _closed(request, refusal)
        session.commit()  # the failure counts towards the next wait
        return _page(request, "sharing/password.html", status_code=429 if refusal.kind == "throttled" else 403,
                     token=token, problem=refusal.message)
    session.commit()
    return _opened(request, cookie)


@router.get("/shared", response_class=HTMLResponse, dependencies=PUBLIC)
def shared_with_me(request: Request, session: DbSession):
    principal = access.current_principal(request)
    if principal.kind != "share":
        return _gone(request)
    share = session.get(Share, int(principal.id))
    exams = pages.exam_list(session, principal, None, pages.ExamFilters.parse())
    audit.record(session, actor=f"share:{share.id}", action="studies.listed", subject=f"patient:{share.patient_ref}",
                 detail={"count": exams.count, "share": share.id})
    session.commit()
    return _page(request, "sharing/shared.html", share=share, exams=exams,
                 can_reshare=access.can(request.app.state.runtime.pm, principal, "sharing.create"))


def _gone(request: Request) -> Response:
    """A browser whose share session ended (turned off, expired, left) or that never had one."""
    if access.SHARE_COOKIE not in request.cookies:
        return _page(request, "sharing/closed.html", status_code=404, heading=_("No exams are shared with you here"),
                     message=_("To see exams someone shared with you, open the link they sent you."))
    response = _page(request, "sharing/closed.html", status_code=410, heading=_("This share is no longer open"),
                     message=_("It was turned off by the person who shared it, or it expired. "
                               "Ask them for a new link if you still need to see the exams."))
    response.delete_cookie(access.SHARE_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
    return response


@router.post("/shared/leave", dependencies=PUBLIC)
def leave_share(request: Request, session: DbSession):
    token = request.cookies.get(access.SHARE_COOKIE)
    if token:
        service.end_session(session, token)
        session.commit()
    response = RedirectResponse("/shared/left", status_code=303)
    response.delete_cookie(access.SHARE_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
    return response


@router.get("/shared/left", response_class=HTMLResponse, dependencies=PUBLIC)
def left_share(request: Request):
    return _page(request, "sharing/closed.html", heading=_("You have closed the shared exams"),
                 message=_("This browser no longer shows them. To see them again, open the link again."))
