"""Every route that serves health information writes an audit event.

The two tables below name every route that could: ``PHI`` (with who may call it and the
address to call) and ``NOT_PHI`` (with why not). A route whose access rule reads or exports
studies, or whose path is under one of ``PHI_PATHS``, must be in one of them, so a new route
fails here until someone decides which it is. Each ``PHI`` route is then called, as a
principal allowed to, over real stored DICOM files, and must write at least one new event.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from support import add_linked_patient, demo_site_file, ingest_file, post_form, sign_in_as

from core import access, clock
from core.app import create_app
from core.audit.models import AuditEvent
from core.identity import sessions
from core.sharing import service as sharing
from core.site import load_site
from core.studies import service as studies
from core.studies import synthetic
from core.studies.dicomweb import AUDIT_WINDOW
from core.studies.exports import service as exports
from core.studies.models import Instance, Series, Study

PASSWORD = "a long unique passphrase"
PHI_RULES = {"studies.read", "studies.export"}
PHI_PATHS = ("/exams", "/dicomweb", "/exports", "/shared", "/activity", "/staff/patients")


@dataclass(frozen=True)
class Call:
    """How to call a PHI route: as whom (patient, staff, share, guest), at which address
    ({study} {series} {sop} {report} {export} {patient} {share} filled in), with which form
    for a POST, and whether it writes once per viewer window (the clock is moved past it)."""

    who: str
    address: str
    form: dict | None = None
    windowed: bool = False


INSTANCE = "/dicomweb/studies/{study}/series/{series}/instances/{sop}"

PHI: dict[str, Call] = {
    # the patient's pages
    "GET /exams": Call("patient", "/exams"),
    "GET /exams/{study_uid}": Call("patient", "/exams/{study}"),
    "GET /exams/{study_uid}/report": Call("patient", "/exams/{study}/report"),
    "GET /exams/{study_uid}/images": Call("patient", "/exams/{study}/images"),
    "GET /exams/{study_uid}/reports/{report_id:int}.pdf": Call("patient", "/exams/{study}/reports/{report}.pdf"),
    "GET /exams/{study_uid}/reports/{report_id:int}/print": Call("patient", "/exams/{study}/reports/{report}/print"),
    "GET /exams/{study_uid}/images/{sop_uid}.jpg": Call("patient", "/exams/{study}/images/{sop}.jpg"),
    "GET /exams/{study_uid}/viewer": Call("patient", "/exams/{study}/viewer"),
    "GET /activity": Call("patient", "/activity"),
    # downloads
    "GET /exports/new": Call("patient", "/exports/new?format=zip&study={study}"),
    "POST /exports": Call("patient", "/exports", form={"format": "jpg", "study": "{study}"}),
    "GET /exports/{public_id}/download": Call("patient", "/exports/{export}/download"),
    # a share's recipient, and a doctor's guest account
    "GET /shared": Call("share", "/shared"),
    "GET /shared/guest": Call("guest", "/shared/guest"),
    "POST /shared/guest/{share_id:int}/open": Call("guest", "/shared/guest/{share}/open", form={}),
    # staff
    "GET /staff": Call("staff", "/staff?q=Example"),
    "GET /staff/patients/{patient_ref}": Call("staff", "/staff/patients/{patient}"),
    "GET /staff/patients/{patient_ref}/disclosures": Call("staff", "/staff/patients/{patient}/disclosures"),
    # DICOMweb: searches, retrieval, metadata
    "GET /dicomweb/studies": Call("patient", "/dicomweb/studies"),
    "GET /dicomweb/series": Call("patient", "/dicomweb/series"),
    "GET /dicomweb/instances": Call("patient", "/dicomweb/instances"),
    "GET /dicomweb/studies/{study_uid}/series": Call("patient", "/dicomweb/studies/{study}/series"),
    "GET /dicomweb/studies/{study_uid}/instances": Call("patient", "/dicomweb/studies/{study}/instances"),
    "GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances":
        Call("patient", "/dicomweb/studies/{study}/series/{series}/instances"),
    "GET /dicomweb/studies/{study_uid}": Call("patient", "/dicomweb/studies/{study}"),
    "GET /dicomweb/studies/{study_uid}/series/{series_uid}": Call("patient", "/dicomweb/studies/{study}/series/{series}"),
    "GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}": Call("patient", INSTANCE),
    "GET /dicomweb/studies/{study_uid}/metadata": Call("patient", "/dicomweb/studies/{study}/metadata"),
    "GET /dicomweb/studies/{study_uid}/series/{series_uid}/metadata":
        Call("patient", "/dicomweb/studies/{study}/series/{series}/metadata"),
    "GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/metadata":
        Call("patient", INSTANCE + "/metadata"),
    # DICOMweb: what a viewer asks for by the hundred (one event per study and window)
    "GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/{frame_list}":
        Call("patient", INSTANCE + "/frames/1", windowed=True),
    "GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulk/{tag}":
        Call("patient", INSTANCE + "/bulk/7FE00010", windowed=True),
    "GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/rendered":
        Call("patient", INSTANCE + "/rendered", windowed=True),
    "GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/{frame}/rendered":
        Call("patient", INSTANCE + "/frames/1/rendered", windowed=True),
    "GET /dicomweb/studies/{study_uid}/thumbnail": Call("patient", "/dicomweb/studies/{study}/thumbnail", windowed=True),
    "GET /dicomweb/studies/{study_uid}/series/{series_uid}/thumbnail":
        Call("patient", "/dicomweb/studies/{study}/series/{series}/thumbnail", windowed=True),
    "GET /dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/thumbnail":
        Call("patient", INSTANCE + "/thumbnail", windowed=True),
}

NOT_PHI: dict[str, str] = {
    "POST /exams/patient": "chooses whose exams this browser lists, then redirects to /exams",
    "GET /exports/{public_id}": "the progress of one's own export: its format, time and state",
    "GET /exports/{public_id}/status": "the same progress, as JSON for its page's script",
    "POST /dicomweb/studies": "STOW-RS: the PACS sends images in (each stored instance is audited)",
    "POST /dicomweb/studies/{study_uid}": "STOW-RS into one study, as above",
    "POST /staff/patients/{patient_ref}/invite": "sends an invitation (audited), then redirects to the patient page",
    "POST /staff/patients/{patient_ref}/invitations/{invitation_id}/resend": "sends an invitation again (audited)",
    "POST /staff/patients/{patient_ref}/unlock/{account_id}": "clears a sign-in delay (audited), then redirects",
    "POST /shared/leave": "ends this browser's share session",
    "GET /shared/left": "says the shared exams were closed in this browser",
    "GET /shared/guest/signin": "a guest's sign-in form",
    "POST /shared/guest/signin": "emails a guest a sign-in code",
    "POST /shared/guest/signin/code": "checks a guest's sign-in code (audited), then redirects",
}


def route_keys(app) -> dict[str, str]:
    """"METHOD path" of every route of ``app`` (inside included routers too) -> its access rule."""
    found = {}
    for route in access.flatten(app.routes):
        if isinstance(route, APIRoute):
            for method in sorted(route.methods - {"HEAD"}):
                found[f"{method} {route.path}"] = access.declared_rule(route)
    return found


def may_serve_phi(key: str, rule: str | None) -> bool:
    path = key.split(" ", 1)[1]
    return rule in PHI_RULES or any(path == prefix or path.startswith(prefix + "/") for prefix in PHI_PATHS)


def test_every_route_that_may_serve_health_information_is_in_a_table(app, tmp_path):
    """The test site's app (core and fixture plugin) and the demo site's (every built-in plugin)."""
    routes = {**route_keys(create_app(load_site(demo_site_file(tmp_path)))), **route_keys(app)}
    assert not set(PHI) & set(NOT_PHI)
    unclassified = sorted(key for key, rule in routes.items() if may_serve_phi(key, rule)
                          and key not in PHI and key not in NOT_PHI)
    assert unclassified == [], "add each to PHI (and check it writes an audit event) or to NOT_PHI, with why"
    stale = sorted(key for key in {**PHI, **NOT_PHI} if key not in routes)
    assert stale == [], "these routes are gone: take them out of the tables"


@pytest.fixture
def world(app, session, runtime, tmp_path, make_account, frozen_clock):
    """A patient with a CT (two frames per image, a released report, a ready export), staff,
    a doctor's guest account, and a share of the CT to the doctor opened in a browser."""
    patient_account = make_account(email="alex@example.test", name="Alex Example", password=PASSWORD, patient=False)
    patient = add_linked_patient(session, patient_account.id, issuer="T", patient_id="COV-1", family_name="Example",
                                 given_name="Alex", birth_date=date(1980, 1, 2))
    make_account(email="jo.staff@example.test", name="Jo Staff", role="staff", patient=False, password=PASSWORD)
    guest = make_account(email="dr.rivera@example.test", name="", role="guest", patient=False, password=PASSWORD)
    session.commit()
    spec = synthetic.StudySpec(patient_id="COV-1", issuer="T", rows=16, columns=16, instances=2, frames=2,
                               study_date=date(2026, 2, 20), description="CT CHEST")
    for path in synthetic.write(synthetic.study(spec), tmp_path / "study"):
        assert ingest_file(session, runtime, path).outcome == "stored"
    study = session.scalar(select(Study).where(Study.study_uid == spec.study_uid))
    report = studies.add_report(session, runtime=runtime, study=study, text="The lungs are clear.", flags=[],
                                signed_at=clock.now() - timedelta(hours=1))
    session.commit()
    instance, series = session.execute(select(Instance, Series).join(Series, Instance.series_ref == Series.id)
                                       .where(Series.study_ref == study.id).order_by(Instance.id)).first()
    owner = access.Principal(kind="account", id=str(patient_account.id), roles=frozenset({"user"}),
                             scope=frozenset({str(patient.id)}))
    export, _new = exports.ask(session, runtime, owner, format_name="zip", study_uids=[study.study_uid],
                               language="en", acknowledged=True)
    session.commit()
    assert exports.run(runtime, export.id) == "ready"
    share = sharing.create(session, runtime, owner, nickname="For Dr Rivera", study_uids=[study.study_uid],
                           acknowledged=True, allow_download=True, recipient_email="dr.rivera@example.test").share
    session.commit()

    browsers = {who: TestClient(app, base_url="https://testserver") for who in ("patient", "staff", "share", "guest")}
    sign_in_as(browsers["patient"], "alex@example.test", PASSWORD)
    sign_in_as(browsers["staff"], "jo.staff@example.test", PASSWORD)
    browsers["share"].cookies.set(access.SHARE_COOKIE, sharing.open_share(session, runtime, share, client="t"))
    browsers["guest"].cookies.set(sessions.COOKIE, sessions.start(session, account=guest, site=runtime.site))
    session.commit()
    values = {"study": study.study_uid, "series": series.series_uid, "sop": instance.sop_uid, "report": report.id,
              "export": export.public_id, "patient": patient.id, "share": share.id}
    return browsers, values


def _last_seq(session) -> int:
    return session.scalar(select(func.max(AuditEvent.seq))) or 0


def test_every_phi_route_writes_an_audit_event(session, world):
    browsers, values = world
    silent, refused = [], []
    # the viewer's routes last: each moves the clock past the window, which other browsers would idle through
    for key, call in sorted(PHI.items(), key=lambda item: item[1].windowed):
        if call.windowed:
            clock.advance(AUDIT_WINDOW + timedelta(minutes=1))
        before = _last_seq(session)
        address = call.address.format(**values)
        browser = browsers[call.who]
        if call.form is None:
            answer = browser.get(address, follow_redirects=False)
        else:
            form = {name: value.format(**values) for name, value in call.form.items()}
            answer = post_form(browser, address, form, follow_redirects=False)
        if answer.status_code >= 400:
            refused.append(f"{key}: {answer.status_code} for {call.who}")
        elif _last_seq(session) <= before:
            silent.append(key)
    assert refused == []
    assert silent == [], "these routes served health information without writing an audit event"
