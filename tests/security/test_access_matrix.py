"""The authorization matrix: every route of the demo site (every plugin enabled) asked by every
kind of principal, each answer compared with the one declared in ``EXPECTED``.

The people and their data are made with the real services: patient A (with study X, its report,
an export, a share of X opened in a browser, a visit code of X opened at ``/visit``), patient B
(with a study of their own), A's guardian, staff, help desk, an administrator and the PACS's
bearer token. Every address is filled with A's objects, so a cell says what each principal may
do to A's things. State-changing requests carry a valid CSRF token (the check must reach the
access decision) and run after every read, each from a fresh sign-in and, where the request
destroys something (a share revoked, a link removed, a request closed), on a fresh copy of it.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import date, timedelta

import httpx
import pytest
import yaml
from fastapi.routing import APIRoute
from sqlalchemy import select
from support import CSRF_COOKIE, add_linked_patient, demo_site_file, ingest_file, invite_path, write_site

from core import access, clock
from core.identity import invitations, sessions
from core.identity.models import AccountRequest, PatientLink
from core.sharing import service as sharing
from core.site import load_site
from core.studies import service as studies
from core.studies import synthetic
from core.studies.exports import service as exports
from core.studies.models import Instance, Patient, Series, Study

PRINCIPALS = ("anon", "A", "B", "proxy", "share", "visit", "staff", "help", "admin", "pacs")

# One row per route (its method and path as the app declares them), one code per principal:
#   an  anonymous (a browser with only its CSRF cookie)      sh  a browser that opened A's share of X
#   A   patient A, signed in                                 vi  a browser that opened X's I-Code at /visit
#   B   patient B (another patient), signed in               st / hd / ad  staff, help desk, administrator
#   px  A's guardian (a proxy: a linked account)             pc  the PACS's bearer token, no cookie
# Codes: o = passed the gate (2xx, 3xx, or a 4xx other than 401/403/404 for a missing or wrong field),
#        d = refused (401/403), h = not found (404: not there for this principal), - = not asked (why: above).
# A comment line says something about the rows below it.
TABLE = """
#  an A  B  px sh vi st hd ad pc route
# static files and the public pages: the same for everyone
   o  o  o  o  o  o  o  o  o  o  GET /static
   o  o  o  o  o  o  o  o  o  o  GET /
   o  o  o  o  o  o  o  o  o  o  GET /language/{code}
   o  o  o  o  o  o  o  o  o  o  GET /branding.css
   o  o  o  o  o  o  o  o  o  o  GET /healthz
   o  o  o  o  o  o  o  o  o  o  GET /signin
   o  o  o  o  o  o  o  o  o  o  GET /signin/code
   o  o  o  o  o  o  o  o  o  o  GET /password/forgot
   o  o  o  o  o  o  o  o  o  o  GET /password/forgot/sent
   o  o  o  o  o  o  o  o  o  o  GET /password/reset/{token}
   o  o  o  o  o  o  o  o  o  o  GET /activate/{token}
   o  o  o  o  o  o  o  o  o  o  GET /register
   o  o  o  o  o  o  o  o  o  o  GET /register/verify
   o  o  o  o  o  o  o  o  o  o  GET /register/email
   o  o  o  o  o  o  o  o  o  o  GET /register/password
   o  o  o  o  o  o  o  o  o  o  GET /register/request
   o  o  o  o  o  o  o  o  o  o  GET /register/request/sent
# the account's own pages: any signed-in account, never a share, a visit or the PACS
   d  o  o  o  d  d  o  o  o  d  GET /account
   d  o  o  o  d  d  o  o  o  d  GET /account/email/code
   d  o  o  o  d  d  o  o  o  d  GET /account/two-factor
   d  o  o  o  d  d  o  o  o  d  GET /patients
# an invitation's link is public (its token is the capability); managing one's people is the account's
   o  o  o  o  o  o  o  o  o  o  GET /invite/renewed
   o  o  o  o  o  o  o  o  o  o  GET /invite/{token}
   d  o  o  o  d  d  o  o  o  d  GET /account/people
# proxy: its own link is not one it may remove (404). B: 403 for any patient it does not
# manage, existing or not (pinned by tests/core/test_invitations.py; it names nothing)
   d  o  d  h  d  d  d  d  d  d  GET /account/people/{patient_ref}/remove/{link_id}
# the practice's pages: staff.any, helpdesk.queue, admin.only
   d  d  d  d  d  d  o  o  o  d  GET /staff
   d  d  d  d  d  d  o  o  o  d  GET /staff/patients/{patient_ref}
   d  d  d  d  d  d  d  o  o  d  GET /staff/requests
   d  d  d  d  d  d  d  o  o  d  GET /staff/requests/{request_id}
   d  d  d  d  d  d  d  d  o  d  GET /outbox
# sharing: accounts (staff pass the gate but may share only their own patients' exams)
   d  o  o  o  d  d  o  o  o  d  GET /shares/email
   d  o  o  o  d  d  o  o  o  d  GET /shares/quick
# Quick Share's code page, and a doctor's guest sign-in: public
   o  o  o  o  o  o  o  o  o  o  GET /s
   o  o  o  o  o  o  o  o  o  o  GET /shared/guest/signin
# a doctor's guest account only (sharing.guest), not one of these principals
   d  d  d  d  d  d  d  d  d  d  GET /shared/guest
# the study store, scoped by core/studies/queries.py: B never sees A's X (404); the PACS token
# reads everything (studies.read), pages included
   d  o  o  o  o  o  o  o  o  o  GET /exams
   d  o  h  o  o  o  o  o  o  o  GET /exams/{study_uid}
   d  o  h  o  o  o  o  o  o  o  GET /exams/{study_uid}/report
   d  o  h  o  o  o  o  o  o  o  GET /exams/{study_uid}/images
   d  o  h  o  o  o  o  o  o  o  GET /exams/{study_uid}/reports/{report_id:int}.pdf
   d  o  h  o  o  o  o  o  o  o  GET /exams/{study_uid}/reports/{report_id:int}/print
   d  o  h  o  o  o  o  o  o  o  GET /exams/{study_uid}/images/{sop_uid}.jpg
   d  o  h  o  o  o  o  o  o  o  GET /exams/{study_uid}/viewer
   d  o  o  o  o  o  o  o  o  o  GET /dicomweb/studies
   d  o  o  o  o  o  o  o  o  o  GET /dicomweb/series
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}/series
   d  o  o  o  o  o  o  o  o  o  GET /dicomweb/instances
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}/instances
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}/series/{series_uid}
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}/metadata
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}/series/{series_uid}/metadata
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/metadata
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/{frame_list}
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulk/{tag}
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/rendered
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/{frame}/rendered
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}/thumbnail
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}/series/{series_uid}/thumbnail
   d  o  h  o  o  o  o  o  o  o  GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/thumbnail
# exports: an export is its owner's alone (staff and the proxy get 404); the PACS does not export
   d  o  h  o  o  o  o  o  o  d  GET /exports/new
   d  o  h  h  h  h  h  h  h  d  GET /exports/{public_id}
   d  o  h  h  h  h  h  h  h  d  GET /exports/{public_id}/status
   d  o  h  h  h  h  h  h  h  d  GET /exports/{public_id}/download
   d  o  o  o  d  d  o  o  o  d  GET /shares/new
   d  o  o  o  d  d  o  o  o  d  GET /shares
# a share is its owner's: the proxy and staff get 404
   d  o  h  h  d  d  h  h  h  d  GET /shares/{share_id:int}/revoke
# the share's token is the capability: whoever holds it may open it
   o  o  o  o  o  o  o  o  o  o  GET /s/{token}
# only a share's session has a /shared
   h  h  h  h  o  h  h  h  h  h  GET /shared
   o  o  o  o  o  o  o  o  o  o  GET /shared/left
   d  o  o  o  d  d  o  o  o  d  GET /activity
   d  d  d  d  d  d  o  o  o  d  GET /staff/patients/{patient_ref}/disclosures
# the plugins: /visit/exams without a visit session redirects to /visit
   o  o  o  o  o  o  o  o  o  o  GET /schedule/
   o  o  o  o  o  o  o  o  o  o  GET /visit
   o  o  o  o  o  o  o  o  o  o  GET /visit/exams
   o  o  o  o  o  o  o  o  o  o  GET /visit/help
   o  o  o  o  o  o  o  o  o  o  GET /visit/help/sent
   o  o  o  o  o  o  o  o  o  o  GET /visit/radnet.css
   o  o  o  o  o  o  o  o  o  o  GET /visit/radnet.js
   o  o  o  o  o  o  o  o  o  o  GET /visit/centre
   o  o  o  o  o  o  o  o  o  o  GET /clinicians/
   o  o  o  o  o  o  o  o  o  o  GET /billing/
   o  o  o  o  o  o  o  o  o  o  GET /upload/
# state-changing requests (a valid CSRF token, a fresh sign-in each, empty forms but where
# FORMS names A's objects); "o" includes 4xx answers to a missing field
   o  o  o  o  o  o  o  o  o  o  POST /signin
   o  o  o  o  o  o  o  o  o  o  POST /signin/code
   o  o  o  o  o  o  o  o  o  o  POST /signout
   d  o  o  o  d  d  o  o  o  d  POST /signout/everywhere
   o  o  o  o  o  o  o  o  o  o  POST /password/forgot
   o  o  o  o  o  o  o  o  o  o  POST /password/reset/{token}
   o  o  o  o  o  o  o  o  o  o  POST /activate/{token}
   o  o  o  o  o  o  o  o  o  o  POST /register
   o  o  o  o  o  o  o  o  o  o  POST /register/verify
   o  o  o  o  o  o  o  o  o  o  POST /register/email
   o  o  o  o  o  o  o  o  o  o  POST /register/email/new
   o  o  o  o  o  o  o  o  o  o  POST /register/password
   o  o  o  o  o  o  o  o  o  o  POST /register/request
   d  o  o  o  d  d  o  o  o  d  POST /account/name
   d  o  o  o  d  d  o  o  o  d  POST /account/mobile
   d  o  o  o  d  d  o  o  o  d  POST /account/notifications
   d  o  o  o  d  d  o  o  o  d  POST /account/language
   d  o  o  o  d  d  o  o  o  d  POST /account/password
   d  o  o  o  d  d  o  o  o  d  POST /account/email
   d  o  o  o  d  d  o  o  o  d  POST /account/email/code
   d  o  o  o  d  d  o  o  o  d  POST /account/two-factor/start
   d  o  o  o  d  d  o  o  o  d  POST /account/two-factor/confirm
   d  o  o  o  d  d  o  o  o  d  POST /account/two-factor/disable
   d  o  o  o  d  d  o  o  o  d  POST /account/two-factor/recovery-codes
   d  o  h  o  d  d  h  h  h  d  POST /patients
   o  o  o  o  o  o  o  o  o  o  POST /invite/{token}
   d  o  o  o  d  d  o  o  o  d  POST /invite/{token}/accept
   o  o  o  o  o  o  o  o  o  o  POST /invite/{token}/renew
   d  o  o  o  d  d  o  o  o  d  POST /account/people/invite
# B: 403 as above (any patient it does not manage)
   d  o  d  o  d  d  d  d  d  d  POST /account/people/{patient_ref}/invitations/{invitation_id}/resend
   d  o  d  o  d  d  d  d  d  d  POST /account/people/{patient_ref}/remove/{link_id}
   d  d  d  d  d  d  o  o  o  d  POST /staff/patients/{patient_ref}/invite
   d  d  d  d  d  d  o  o  o  d  POST /staff/patients/{patient_ref}/invitations/{invitation_id}/resend
   d  d  d  d  d  d  o  o  o  d  POST /staff/patients/{patient_ref}/unlock/{account_id}
   d  d  d  d  d  d  d  o  o  d  POST /staff/requests/{request_id}/invite
   d  d  d  d  d  d  d  o  o  d  POST /staff/requests/{request_id}/close
# B: 404 for A's X; staff: 422 (the service refuses, no share is made)
   d  o  h  o  d  d  o  o  o  d  POST /shares/email
   d  o  h  o  d  d  o  o  o  d  POST /shares/quick
   o  o  o  o  o  o  o  o  o  o  POST /s
   o  o  o  o  o  o  o  o  o  o  POST /shared/guest/signin
   o  o  o  o  o  o  o  o  o  o  POST /shared/guest/signin/code
   d  d  d  d  d  d  d  d  d  d  POST /shared/guest/{share_id:int}/open
   d  o  h  o  d  d  h  h  h  d  POST /exams/patient
# STOW and the reports API: staff, admin and the PACS (studies.store); not the help desk
   d  d  d  d  d  d  o  d  o  o  POST /dicomweb/studies
   d  d  d  d  d  d  o  d  o  o  POST /dicomweb/studies/{study_uid}
   d  d  d  d  d  d  o  d  o  o  POST /api/reports
   d  o  h  o  o  o  o  o  o  d  POST /exports
   d  o  h  o  d  d  h  h  h  d  POST /shares
   d  o  h  h  d  d  h  h  h  d  POST /shares/{share_id:int}/revoke
   o  o  o  o  o  o  o  o  o  o  POST /s/{token}
   o  o  o  o  o  o  o  o  o  o  POST /shared/leave
   o  o  o  o  o  o  o  o  o  o  POST /visit
   o  o  o  o  o  o  o  o  o  o  POST /visit/leave
   o  o  o  o  o  o  o  o  o  o  POST /visit/register
   o  o  o  o  o  o  o  o  o  o  POST /visit/help
   d  d  d  d  d  d  o  o  o  d  POST /visit/staff/visits/{visit_id:int}/pass
   d  d  d  d  d  d  d  o  o  d  POST /visit/staff/icodes/{icode_id:int}/reactivate
# staff and admin pass the gate; a browser's form body is refused with 415 (JSON only)
   d  d  d  d  d  d  o  d  o  o  POST /api/visits/icode
   o  o  o  o  o  o  o  o  o  o  POST /visit/centre
"""
EXPECTED: dict[str, str] = {
    " ".join(line.split()[len(PRINCIPALS):]): " ".join(line.split()[:len(PRINCIPALS)])
    for line in TABLE.splitlines() if line.strip() and not line.startswith("#")}

CODES = {"o", "d", "h", "-"}
CSRF = "matrix-csrf-token"
TOKEN = "no-such-token"  # links that are not A's objects (reset, activation): any value
PACS_TOKEN = "demo-pacs-token"  # sites/demo.yaml's studies.pacs_token
BORN = date(1980, 1, 2)
# Addresses that need a query string to get past their first check.
QUERY = {
    "GET /exports/new": "?format=zip&study={study_uid}",
    "GET /staff": "?q=Example",
}
# Forms that name A's objects (an empty one would stop at "not found" before saying anything).
FORMS = {
    "POST /exports": {"format": "zip", "study": "{study_uid}", "acknowledge": "yes"},
    "POST /exams/patient": {"patient": "{patient_ref}"},
    "POST /patients": {"patient": "{patient_ref}"},
    "POST /shares": {"study": "{study_uid}", "nickname": "Matrix", "acknowledge": "yes", "expiry": "days",
                     "days": "7"},
    "POST /shares/email": {"study": "{study_uid}", "nickname": "Matrix", "acknowledge": "yes",
                           "email": "dr.matrix@example.test", "expiry": "days", "days": "7"},
    "POST /shares/quick": {"study": "{study_uid}", "nickname": "Matrix", "acknowledge": "yes"},
}


def demo_site(tmp_path, database_url):
    """The demo site (every built-in plugin) on the shared, migrated test database."""
    path = demo_site_file(tmp_path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["database"] = database_url
    return load_site(write_site(tmp_path, data, "demo.yaml"))


@pytest.fixture
def site(tmp_path, database_url):
    return demo_site(tmp_path, database_url)


def route_keys(app) -> dict[str, str]:
    """"METHOD path" of every route and mount of ``app`` -> its address (path parameters unfilled)."""
    found = {}
    for route in access.flatten(app.routes):
        if isinstance(route, APIRoute):
            for method in sorted(route.methods - {"HEAD"}):
                found[f"{method} {route.path}"] = route.path
        else:  # a mount (static files): one address inside it
            found[f"GET {route.path}"] = route.path + "/filmless.css"
    return found


def outcome(status: int) -> str:
    if status in (401, 403):
        return "d"
    if status == 404:
        return "h"
    if status < 400 or (400 <= status < 500 and status != 405):
        return "o"
    return f"!{status}"  # a server error or a wrong method: never expected


@dataclass
class World:
    """A's world and everyone's credentials. ``values`` fill the addresses' path parameters;
    ``accounts`` are by principal ("A", "staff"...) and by email; ``credentials`` the cookie each
    principal's browser holds for reads."""

    session: object
    runtime: object
    app: object
    make_account: object
    values: dict = field(default_factory=dict)
    accounts: dict = field(default_factory=dict)
    credentials: dict = field(default_factory=dict)
    browser: httpx.AsyncClient | None = None
    loop: asyncio.AbstractEventLoop | None = None
    owner: access.Principal | None = None  # patient A's principal, for the services
    share: object = None
    share_token: str = ""
    invitation_token: str = ""
    visit: object = None
    study_b: Study | None = None

    # -- credentials ----------------------------------------------------------------------------
    def send(self, who: str, method: str, url: str, form: dict | None = None, fresh: bool = False):
        """One request as ``who`` from a browser holding only that principal's cookies (or the
        PACS with its token); ``fresh`` signs in anew (for requests that end their session)."""
        browser = self.browser
        browser.cookies.clear()
        headers = {}
        if who == "pacs":
            headers["Authorization"] = f"Bearer {PACS_TOKEN}"
        else:
            browser.cookies.set(CSRF_COOKIE, CSRF)
            form = {**(form or {}), "csrf_token": CSRF} if method != "GET" else form
            if who != "anon":
                browser.cookies.set(*(self.fresh_credential(who) if fresh else self.credentials[who]))
        return self.loop.run_until_complete(
            browser.request(method, url, data=form, headers=headers, follow_redirects=False))

    def fresh_credential(self, who: str) -> tuple[str, str]:
        from plugins.radnet_icode import service as icode_service
        from plugins.radnet_icode import visits

        session, runtime = self.session, self.runtime
        if who == "share":
            value = (access.SHARE_COOKIE, sharing.open_share(session, runtime, self.share, client="matrix"))
        elif who == "visit":
            issued = icode_service.reissue(session, site=runtime.site, visit=self.visit, by="staff:matrix")
            token = icode_service.open_visit(session, site=runtime.site, icode=issued.icode, ip="matrix")
            value = (visits.COOKIE, token)
        else:
            value = (sessions.COOKIE, sessions.start(session, account=self.accounts[who], site=runtime.site))
        session.commit()
        return value

    # -- fresh copies of what a request destroys ------------------------------------------------------
    def fresh_share(self) -> dict:
        share = sharing.create(self.session, self.runtime, self.owner, nickname="Another copy",
                               study_uids=[self.values["study_uid"]], acknowledged=True).share
        self.session.commit()
        return {"share_id": share.id}

    def fresh_link(self) -> dict:
        """Another person's link to A's patient (what "remove" removes)."""
        number = len(self.accounts)
        other = self.make_account(email=f"carer{number}@example.test", name="Casey Carer", role="user")
        link = PatientLink(account_id=other.id, patient_ref=self.values["patient_ref"], relationship="carer",
                           created_at=clock.now())
        self.session.add(link)
        self.session.commit()
        return {"link_id": link.id}

    def fresh_request(self) -> dict:
        ticket = AccountRequest(name="Robin Request", birth_date=BORN, email="robin@example.test", mobile=None,
                                details="", language="en", status="open", topic="account", reference="",
                                created_at=clock.now())
        self.session.add(ticket)
        self.session.commit()
        return {"request_id": ticket.id}

    def fresh_invitation(self) -> dict:
        """An invitation for a patient with nothing in the store (accepting it grants nothing that matters)."""
        number = len(self.accounts) + self.session.scalar(select(Patient.id).order_by(Patient.id.desc()).limit(1))
        patient = Patient(issuer="T", patient_id=f"EMPTY-{number}", family_name="Empty", given_name="Ed",
                          birth_date=BORN, created_at=clock.now())
        self.session.add(patient)
        self.session.flush()
        invitations.invite(self.session, site=self.runtime.site, inviter=None, email=f"ed{number}@example.test",
                           name="Ed Empty", patient=patient, relationship="family", permissions=["view_images"],
                           language="en")
        self.session.commit()
        return {"token": invite_path(self.session, f"ed{number}@example.test").rsplit("/", 1)[-1]}


# What a state-changing request destroys, made afresh for each principal that sends it.
FRESH = {
    "POST /shares/{share_id:int}/revoke": World.fresh_share,
    "POST /account/people/{patient_ref}/remove/{link_id}": World.fresh_link,
    "POST /staff/requests/{request_id}/invite": World.fresh_request,
    "POST /staff/requests/{request_id}/close": World.fresh_request,
    "POST /invite/{token}": World.fresh_invitation,
    "POST /invite/{token}/accept": World.fresh_invitation,
    "POST /invite/{token}/renew": World.fresh_invitation,
}
# Where ``{token}`` is a real link of A's world rather than any value.
TOKENS = {"/s/{token}": "share_token", "/invite/{token}": "invitation_token"}


def address(world: World, key: str, path: str, values: dict) -> str:
    """``path`` with A's objects in its parameters, and the query string it needs."""
    token_of = next((attr for prefix, attr in TOKENS.items() if path.startswith(prefix)), None)
    filled = {"token": getattr(world, token_of) if token_of else TOKEN, **values}
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda match: str(filled[match.group(1)]), path) + \
        QUERY.get(key, "").format(**filled)


@pytest.fixture
def world(app, session, runtime, tmp_path, frozen_clock):
    from core.identity import service as identity

    from plugins.radnet_icode import service as icode_service
    from plugins.radnet_icode import visits

    def make_account(email, name, role):
        # no password: sessions are started directly (hashing one is the slowest thing here)
        account = identity.create_account(session, email=email, name=name, role=role, how="staff",
                                          email_verified=True)
        world.accounts[email] = account
        return account

    world = World(session=session, runtime=runtime, app=app, make_account=make_account)
    # an asynchronous client on the app itself: a thousand requests, each without a thread of its own
    world.loop = asyncio.new_event_loop()
    world.browser = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                      base_url="https://testserver")
    a = make_account("alex@example.test", "Alex Example", "user")
    b = make_account("blair@example.test", "Blair Other", "user")
    guardian = make_account("gale@example.test", "Gale Guardian", "user")
    accounts = {"A": a, "B": b, "proxy": guardian,
                "staff": make_account("sam.staff@example.test", "Sam Staff", "staff"),
                "help": make_account("hal.help@example.test", "Hal Help", "helpdesk"),
                "admin": make_account("ada.admin@example.test", "Ada Admin", "admin")}
    patient_a = add_linked_patient(session, a.id, issuer="T", patient_id="MX-A", family_name="Example",
                                   given_name="Alex", birth_date=BORN)
    add_linked_patient(session, b.id, issuer="T", patient_id="MX-B", family_name="Other", given_name="Blair",
                       birth_date=date(1975, 6, 7))
    link = PatientLink(account_id=guardian.id, patient_ref=patient_a.id, relationship="guardian",
                       created_at=clock.now())
    session.add(link)
    session.commit()

    def ingest(spec, folder):
        for path in synthetic.write(synthetic.study(spec), tmp_path / folder):
            assert ingest_file(session, runtime, path).outcome == "stored"
        session.commit()
        return session.scalar(select(Study).where(Study.study_uid == spec.study_uid))

    # X: a CR at a Texas centre of the radnet plugin (so it has a visit), its report long released
    study = ingest(synthetic.StudySpec(patient_id="MX-A", issuer="T", family_name="Example", given_name="Alex",
                                       birth_date=BORN, institution="North Austin Imaging", modality="CR",
                                       description="XR CHEST", instances=1, rows=16, columns=16,
                                       study_date=date(2026, 2, 1)), "x")
    study_b = ingest(synthetic.StudySpec(patient_id="MX-B", issuer="T", family_name="Other", given_name="Blair",
                                         birth_date=date(1975, 6, 7), instances=1, rows=16, columns=16,
                                         study_date=date(2026, 2, 2), description="CT HEAD"), "y")
    report = studies.add_report(session, runtime=runtime, study=study, text="The lungs are clear.", flags=[],
                                signed_at=clock.now() - timedelta(days=20))
    session.commit()
    instance, series = session.execute(select(Instance, Series).join(Series, Instance.series_ref == Series.id)
                                       .where(Series.study_ref == study.id).order_by(Instance.id)).first()
    world.owner = access.Principal(kind="account", id=str(a.id), roles=frozenset({"user"}),
                                   scope=frozenset({str(patient_a.id)}))
    export, _new = exports.ask(session, runtime, world.owner, format_name="zip", study_uids=[study.study_uid],
                               language="en", acknowledged=True)
    session.commit()
    assert exports.run(runtime, export.id) == "ready"
    created = sharing.create(session, runtime, world.owner, nickname="For Dr Rivera", study_uids=[study.study_uid],
                             acknowledged=True, allow_download=True, recipient_email="dr.rivera@example.test")
    world.share, world.share_token = created.share, created.token
    invitation = invitations.invite(session, site=runtime.site, inviter=a, email="friend@example.test",
                                    name="Frankie Friend", patient=patient_a, relationship="family",
                                    permissions=["view_images"], language="en")
    session.commit()
    world.invitation_token = invite_path(session, "friend@example.test").rsplit("/", 1)[-1]
    world.visit = visits.visit_of_study(session, study.id)
    issued = icode_service.reissue(session, site=runtime.site, visit=world.visit, by="staff:matrix")
    session.commit()
    world.values = {
        "study_uid": study.study_uid, "series_uid": series.series_uid, "sop_uid": instance.sop_uid,
        "report_id": report.id, "public_id": export.public_id, "share_id": created.share.id,
        "patient_ref": patient_a.id, "invitation_id": invitation.id, "account_id": a.id, "link_id": link.id,
        "visit_id": world.visit.id, "icode_id": issued.icode.id, "code": "es", "frame_list": "1", "frame": "1",
        "tag": "7FE00010", **world.fresh_request()}
    world.accounts = {**world.accounts, **accounts}

    # the visit is opened the way a person opens it: its code and the patient's date of birth at /visit
    opened = world.send("anon", "POST", "/visit", {"code": issued.code, "birth_day": str(BORN.day),
                                                    "birth_month": str(BORN.month), "birth_year": str(BORN.year)})
    assert opened.status_code == 303 and opened.headers["location"] == "/visit/exams", opened.text[:300]
    world.credentials = {
        "share": (access.SHARE_COOKIE, sharing.open_share(session, runtime, created.share, client="matrix")),
        "visit": (visits.COOKIE, opened.cookies[visits.COOKIE]),
        **{who: (sessions.COOKIE, sessions.start(session, account=account, site=runtime.site))
           for who, account in accounts.items()}}
    session.commit()
    world.study_b = study_b
    yield world
    world.loop.run_until_complete(world.browser.aclose())
    world.loop.close()


def ask(world: World, who: str, key: str, path: str):
    """``key``'s request as ``who``: reads with the principals' one sign-in each, state-changing
    requests from a fresh sign-in and on fresh copies of what they destroy."""
    method = key.split(" ", 1)[0]
    values = dict(world.values)
    fresh = method != "GET"
    if fresh and key in FRESH:
        values.update(FRESH[key](world))
    form = {name: value.format(**values) for name, value in FORMS.get(key, {}).items()}
    return world.send(who, method, address(world, key, path, values), form, fresh=fresh)


def test_every_route_is_in_the_table(app):
    routes = route_keys(app)
    missing = sorted(set(routes) - set(EXPECTED))
    assert missing == [], "add a row for each new route to EXPECTED (its expected answer per principal)"
    assert sorted(set(EXPECTED) - set(routes)) == [], "these routes are gone: take their rows out"
    malformed = [key for key, row in EXPECTED.items() if len(row.split()) != len(PRINCIPALS)
                 or set(row.split()) - CODES]
    assert malformed == []


def test_every_principal_gets_the_declared_answer_from_every_route(world):
    routes = {key: path for key, path in route_keys(world.app).items() if key in EXPECTED}
    # reads first, with each principal's one sign-in; then the state-changing requests
    order = sorted(routes, key=lambda key: not key.startswith("GET "))
    observed, allowed, refused, errors = {}, [], [], []
    for key in order:
        codes = []
        for who, expected in zip(PRINCIPALS, EXPECTED[key].split()):
            if expected == "-":
                codes.append("-")
                continue
            status = ask(world, who, key, routes[key]).status_code
            got = outcome(status)
            codes.append(got)
            wrong = f"{key} as {who}: expected {expected}, got {got} ({status})"
            if got.startswith("!"):
                errors.append(wrong)
            elif got != expected:
                (allowed if got == "o" else refused).append(wrong)
        observed[key] = "  ".join(codes)
    # what was seen, in the table's layout, to compare with it (or to copy a new row from)
    table = "\n".join(f"   {codes}  {key}" for key, codes in observed.items())
    assert errors == [], "server errors:\n" + "\n".join(errors) + "\n" + table
    assert allowed == [], "unexpected allows (a principal got further than the table says):\n" + \
        "\n".join(allowed) + "\n" + table
    assert refused == [], "refusals the table does not declare:\n" + "\n".join(refused) + "\n" + table


OBJECTS = {"study_uid", "series_uid", "sop_uid", "report_id", "public_id", "share_id"}


def test_patient_b_finds_none_of_patient_a_s_things(world):
    """B naming A's study, series, instance, report, export or share gets 404, never 403 (which would
    say that it exists); B's searches and activity hold nothing of A's, while B's own study is there."""
    routes = route_keys(world.app)
    naming = sorted(key for key, path in routes.items() if EXPECTED[key].split()[PRINCIPALS.index("A")] == "o"
                    and (set(re.findall(r"\{(\w+)", path)) & OBJECTS or "{study_uid}" in str(FORMS.get(key))))
    assert len(naming) >= 30
    answers = {key: ask(world, "B", key, routes[key]).status_code for key in naming}
    assert {key: status for key, status in answers.items() if status != 404} == {}

    x, y = world.values["study_uid"], world.study_b.study_uid
    for search in (f"/dicomweb/studies?StudyInstanceUID={x}", f"/dicomweb/series?StudyInstanceUID={x}",
                   f"/dicomweb/instances?StudyInstanceUID={x}"):
        found = world.send("B", "GET", search)
        assert found.status_code in (200, 204) and x not in found.text
        assert x in world.send("A", "GET", search).text  # the same search finds it for A
    for page in ("/exams", "/dicomweb/studies", "/shares", "/activity"):
        mine, theirs = world.send("A", "GET", page), world.send("B", "GET", page)
        assert mine.status_code == theirs.status_code == 200
        assert x not in theirs.text and "XR CHEST" not in theirs.text and "For Dr Rivera" not in theirs.text
    assert "For Dr Rivera" in world.send("A", "GET", "/shares").text
    assert "For Dr Rivera" in world.send("A", "GET", "/activity").text  # A's audit rows, which B's page lacks
    assert world.send("B", "GET", f"/exams/{y}").status_code == 200
    assert world.send("B", "GET", f"/dicomweb/studies/{y}/metadata").status_code == 200
