"""Report release delayed by state law (plugins/radnet_icode/release.py).

A report of a study done at a Texas centre and signed now stays out of reach of
everyone on the patient's side — the patient's account (pages, PDF download, DICOMweb,
an export of the study), a visit opened with the I-Code, and a share the patient made —
until 4 days after signing, and is there at once after; a New York study's report is
there at signing; staff see everything all along. Rules match by jurisdiction, category
and flag, the latest wins, business days count Monday to Friday in the site's time
zone, and the audit trail names the rule and the jurisdiction.
"""
from __future__ import annotations

import io
import zipfile
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from radnet_support import CENTRES
from support import audit_events, ingest_file, make_site, sign_in_as

from core import clock
from core.access import Principal
from core.identity import sessions
from core.identity.models import PatientLink
from core.sharing import service as sharing
from core.studies import queries, service, synthetic
from core.studies.exports import service as exports
from core.studies.models import Patient, Report, Study
from plugins.radnet_icode import release, visits
from plugins.radnet_icode import service as radnet
from plugins.radnet_icode.settings import ReleaseRule

PASSWORD = "a long unique passphrase"
TOKEN = "radnet-release-pacs-token"
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
SIGNED = datetime(2026, 3, 2, 17, 0, tzinfo=timezone.utc)  # Monday 9 am in Los Angeles
FINDINGS = "Small nodule in the right upper lobe."
PUBLISHED_POLICY = [
    {"name": "Texas reports 4 days after signing", "jurisdictions": ["TX"], "delay_days": 4, "law": "Texas SB 922"},
    {"name": "California reports 4 days after signing", "jurisdictions": ["CA"], "delay_days": 4,
     "law": "California SB 1419"},
]
TEXAS_STATUTE = [
    {"name": "Texas sensitive results, possible malignancy", "jurisdictions": ["TX"], "flags": ["possible_malignancy"],
     "delay_days": 3, "law": "Texas Occupations Code §159.0062"},
    {"name": "Texas sensitive results, genetic", "jurisdictions": ["TX"], "categories": ["genetic"], "delay_days": 3,
     "law": "Texas Occupations Code §159.0062"},
]


def radnet_site(tmp_path, database_url, rules):
    return make_site(tmp_path, database=database_url, fixture=False,
                     site={"name": "Portal Pass Test", "timezone": "America/Los_Angeles", "languages": ["en", "es"]},
                     studies={"pacs_token": TOKEN},
                     plugins={"radnet_icode": {"locations": CENTRES, "release_rules": rules}})


@pytest.fixture
def site(request, tmp_path, database_url):
    """The site of the group's published policy, or of the rules a test gives:
    ``@pytest.mark.parametrize("site", [RULES], indirect=True, ids=["name"])``."""
    return radnet_site(tmp_path, database_url, getattr(request, "param", PUBLISHED_POLICY))


@pytest.fixture
def at_signing(frozen_clock):
    clock.freeze(SIGNED)
    return clock


@pytest.fixture
def people(session, make_account, at_signing):
    patient_account = make_account(email="tess@example.test", name="Tess Tejas", password=PASSWORD)
    make_account(email="staff@example.test", name="Sam Staff", role="staff", patient=False, password=PASSWORD)
    link = session.scalar(select(PatientLink).where(PatientLink.account_id == patient_account.id))
    return {"account": patient_account, "patient": session.get(Patient, link.patient_ref)}


@pytest.fixture
def record(session, at_signing) -> Patient:
    """A patient record without an account (the rule tests need no one signed in)."""
    patient = Patient(issuer="T", patient_id="RAD-REC-1", family_name="Tejas", given_name="Rae", created_at=clock.now())
    session.add(patient)
    session.commit()
    return patient


class Exam:
    """A study ingested from synthetic DICOM: one CT image and a signed structured report."""

    def __init__(self, session, runtime, folder, patient: Patient, institution: str, signed: datetime = SIGNED):
        spec = synthetic.StudySpec(patient_id=patient.patient_id, issuer=patient.issuer, institution=institution,
                                   instances=1)
        self.images = synthetic.study(spec)
        self.sr = synthetic.text_report(spec, FINDINGS, signed=signed.strftime("%Y%m%d%H%M%S"))
        for path in synthetic.write([*self.images, self.sr], folder / spec.study_uid):
            assert ingest_file(session, runtime, path).outcome == "stored"
        session.commit()
        self.study = session.scalar(select(Study).where(Study.study_uid == spec.study_uid))
        self.report = session.scalar(select(Report).where(Report.study_ref == self.study.id))
        self.uid = spec.study_uid
        self.sr_path = (f"/dicomweb/studies/{self.uid}/series/{self.sr.SeriesInstanceUID}"
                        f"/instances/{self.sr.SOPInstanceUID}")


def browser(app) -> TestClient:
    return TestClient(app, base_url="https://testserver")


def signed_in(app, email: str) -> TestClient:
    client = browser(app)
    sign_in_as(client, email, PASSWORD)
    return client


def reach(client: TestClient, exam: Exam) -> dict[str, bool]:
    """Where this browser finds the report: its page, its PDF download, the SR instance by WADO-RS,
    in the study's metadata, and by a QIDO-RS search."""
    page = client.get(f"/exams/{exam.uid}/report")
    assert page.status_code == 200, page.text[:500]
    metadata = client.get(f"/dicomweb/studies/{exam.uid}/metadata")
    search = client.get("/dicomweb/instances", params={"SOPClassUID": exam.sr.SOPClassUID})
    return {
        "report page": FINDINGS in page.text,
        "pdf download": client.get(f"/exams/{exam.uid}/reports/{exam.report.id}.pdf?download=1").status_code == 200,
        "wado": client.get(exam.sr_path).status_code == 200,
        "metadata": exam.sr.SOPInstanceUID in metadata.text,
        "qido": exam.sr.SOPInstanceUID in search.text,
    }


def account_principal(session, runtime, account) -> Principal:
    token = sessions.start(session, account=account, site=runtime.site)
    return sessions.principal_for(session, sessions.find(session, token=token, site=runtime.site))


def exported_report(session, runtime, principal, exam: Exam) -> bool:
    """Whether a ZIP export of the study made for ``principal`` holds the report's DICOM file."""
    export, new = exports.ask(session, runtime, principal, format_name="zip", study_uids=[exam.uid], language="en",
                              acknowledged=True)
    session.commit()
    assert new
    assert exports.run(runtime, export.id) == "ready"
    session.expire_all()
    with zipfile.ZipFile(exports.file_of(runtime, session.get(type(export), export.id))) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    images = [name for name, data in files.items() if exam.images[0].SOPInstanceUID.encode() in data]
    assert images, "the export holds the study's image"
    return any(exam.sr.SOPInstanceUID.encode() in data for data in files.values())


def visit_browser(app, session, runtime, exam: Exam) -> TestClient:
    """A browser that opened the exam's visit with its I-Code (the plugin's own visit session)."""
    visit = radnet.visit_for_study_uid(session, site=runtime.site, study_uid=exam.uid)
    issued = radnet.reissue(session, site=runtime.site, visit=visit, by="staff:test")
    token = radnet.open_visit(session, site=runtime.site, icode=issued.icode, ip="203.0.113.9")
    session.commit()
    client = browser(app)
    client.cookies.set(visits.COOKIE, token)
    return client


def share_browser(app, token: str) -> TestClient:
    """The browser of someone the patient sent the share link to."""
    client = browser(app)
    opened = client.get(f"/s/{token}", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/shared", opened.text[:500]
    return client


def patient_side(app, session, runtime, people, exam: Exam, share_token: str) -> dict[str, bool]:
    """Every way the patient's side might reach the report, now."""
    found = {f"account {way}": seen for way, seen in reach(signed_in(app, "tess@example.test"), exam).items()}
    found["account export"] = exported_report(session, runtime, account_principal(session, runtime,
                                                                                  people["account"]), exam)
    visit = Principal(kind="visit", id="v-1", scope=frozenset({f"study:{exam.study.id}"}))
    found["visit principal reports"] = bool(queries.reports(session, visit, exam.study).readable)
    found["visit principal instances"] = exam.sr.SOPInstanceUID in {
        instance.sop_uid for instance, _series in session.execute(queries.instances(session, visit, exam.study))}
    found.update({f"I-Code {way}": seen for way, seen in reach(visit_browser(app, session, runtime, exam),
                                                               exam).items()})
    found.update({f"share {way}": seen for way, seen in reach(share_browser(app, share_token), exam).items()})
    return found


def test_a_texas_report_is_hidden_from_the_patient_side_until_four_days_after_signing(
        app, session, runtime, tmp_path, people):
    exam = Exam(session, runtime, tmp_path, people["patient"], "North Austin Imaging")
    released = SIGNED + timedelta(days=4)
    assert (exam.report.signed_at, exam.report.release_at) == (SIGNED, released)
    assert (exam.report.release_rule, exam.report.release_law) == ("Texas reports 4 days after signing (TX)",
                                                                    "Texas SB 922")
    share = sharing.create(session, runtime, account_principal(session, runtime, people["account"]),
                           nickname="Dr Ortiz", study_uids=[exam.uid], allow_download=True, acknowledged=True)
    session.commit()

    hidden = patient_side(app, session, runtime, people, exam, share.token)
    assert not any(hidden.values()), hidden
    page = signed_in(app, "tess@example.test").get(f"/exams/{exam.uid}/report").text
    assert "Report available on March 6, 2026 as required by Texas SB 922" in page
    staff = signed_in(app, "staff@example.test")
    assert reach(staff, exam) == dict.fromkeys(("report page", "pdf download", "wado", "metadata", "qido"), True)

    clock.freeze(released - timedelta(seconds=1))
    still_hidden = patient_side(app, session, runtime, people, exam, share.token)
    assert not any(still_hidden.values()), still_hidden

    clock.advance(timedelta(seconds=1))
    visible = patient_side(app, session, runtime, people, exam, share.token)
    assert all(visible.values()), visible
    assert set(visible) == set(hidden)


def test_a_new_york_report_is_there_at_signing(app, session, runtime, tmp_path, people):
    exam = Exam(session, runtime, tmp_path, people["patient"], "Brooklyn Heights Radiology")
    assert (exam.report.release_at, exam.report.release_rule, exam.report.release_law) == (SIGNED, "", "")
    assert all(reach(signed_in(app, "tess@example.test"), exam).values())
    visit = Principal(kind="visit", id="v-2", scope=frozenset({f"study:{exam.study.id}"}))
    assert [report.id for report in queries.reports(session, visit, exam.study).readable] == [exam.report.id]


def test_the_decision_is_audited_with_its_rule_and_jurisdiction(session, runtime, tmp_path, record):
    texas = Exam(session, runtime, tmp_path, record, "North Austin Imaging")
    california = Exam(session, runtime, tmp_path, record, "westside imaging center ")
    new_york = Exam(session, runtime, tmp_path, record, "Brooklyn Heights Radiology")
    decisions = {event.subject: event.detail for event in audit_events(session, "report.stored")}
    assert decisions[f"study:{texas.study.id}"]["rule"] == "Texas reports 4 days after signing (TX)"
    assert decisions[f"study:{california.study.id}"]["rule"] == "California reports 4 days after signing (CA)"
    assert decisions[f"study:{new_york.study.id}"]["rule"] == "signed"
    assert california.report.release_at == SIGNED + timedelta(days=4)  # names compared without case or spaces


def test_a_study_of_no_known_centre_is_released_at_signing(session, runtime, tmp_path, record):
    exam = Exam(session, runtime, tmp_path, record, "Somewhere Else Imaging")
    assert (exam.report.release_at, exam.report.release_rule) == (SIGNED, "")


# -- which rules apply, and when they release ----------------------------------------------------

def report_at(session, runtime, study: Study, **fields) -> Report:
    """A report stored through the core's reports service (as the reports API does)."""
    report = service.add_report(session, runtime=runtime, study=study, signed_at=fields.pop("signed_at", SIGNED),
                                text="Findings.", **fields)
    session.commit()
    return report


def studies_by_state(session, runtime, tmp_path, patient: Patient, states=("CA", "TX", "NY")) -> dict[str, Study]:
    """One small study at the centre of each of ``states``."""
    found = {}
    for centre in (centre for centre in CENTRES if centre["state"] in states):
        spec = synthetic.StudySpec(patient_id=patient.patient_id, issuer=patient.issuer, instances=1, rows=16,
                                   columns=16, institution=centre["name"])
        for path in synthetic.write(synthetic.study(spec), tmp_path / centre["key"]):
            assert ingest_file(session, runtime, path).outcome == "stored"
        found[centre["state"]] = session.scalar(select(Study).where(Study.study_uid == spec.study_uid))
    return found


@pytest.mark.parametrize("site", [TEXAS_STATUTE], indirect=True, ids=["statute"])
@pytest.mark.parametrize("state, category, flags, held_by", [
    ("TX", "radiology", [], None),
    ("TX", "radiology", ["possible_malignancy"], "Texas sensitive results, possible malignancy (TX)"),
    ("TX", "radiology", ["follow_up", "possible_malignancy"], "Texas sensitive results, possible malignancy (TX)"),
    ("TX", "genetic", [], "Texas sensitive results, genetic (TX)"),
    ("TX", "pathology", ["follow_up"], None),
    ("NY", "radiology", ["possible_malignancy"], None),
    ("CA", "genetic", [], None),
])
def test_the_narrower_texas_statute_holds_only_sensitive_results_for_three_days(
        session, runtime, tmp_path, record, state, category, flags, held_by):
    study = studies_by_state(session, runtime, tmp_path, record, [state])[state]
    report = report_at(session, runtime, study, category=category, flags=flags)
    if held_by is None:
        assert (report.release_at, report.release_rule, report.release_law) == (SIGNED, "", "")
    else:
        assert (report.release_at, report.release_rule, report.release_law) == (
            SIGNED + timedelta(days=3), held_by, "Texas Occupations Code §159.0062")


LAYERED = [
    {"name": "every TX report a day", "jurisdictions": ["TX", "CA"], "delay_days": 1, "law": "Law A"},
    {"name": "TX urgent flags, 30 hours", "jurisdictions": ["TX"], "flags": ["urgent", "critical"],
     "delay_days": 1, "delay_hours": 6, "law": "Law B"},
    {"name": "TX and NY pathology, 2 business days", "jurisdictions": ["TX", "NY"], "categories": ["pathology"],
     "delay_days": 2, "business_days": True, "law": "Law C"},
]


@pytest.mark.parametrize("site", [LAYERED], indirect=True, ids=["layered"])
def test_the_latest_of_the_matching_rules_wins(session, runtime, tmp_path, record):
    studies = studies_by_state(session, runtime, tmp_path, record)

    def decided(state, **fields):
        report = report_at(session, runtime, studies[state], **fields)
        return report.release_at - SIGNED, report.release_rule, report.release_law

    assert decided("TX") == (timedelta(days=1), "every TX report a day (TX)", "Law A")
    assert decided("CA", flags=["urgent"]) == (timedelta(days=1), "every TX report a day (CA)", "Law A")
    assert decided("TX", flags=["critical"]) == (timedelta(hours=30), "TX urgent flags, 30 hours (TX)", "Law B")
    # Monday 9 am + 2 business days is Wednesday 9 am: later than a day, earlier than 30 hours + a day
    assert decided("TX", category="pathology") == (timedelta(days=2), "TX and NY pathology, 2 business days (TX)",
                                                   "Law C")
    assert decided("NY", category="pathology", flags=["urgent"])[1] == "TX and NY pathology, 2 business days (NY)"
    assert decided("NY", flags=["urgent"]) == (timedelta(0), "", "")


def local(*parts) -> datetime:
    return datetime(*parts, tzinfo=LOS_ANGELES)


def business(days: int, hours: int = 0) -> ReleaseRule:
    return ReleaseRule(name="business", jurisdictions=["TX"], delay_days=days, delay_hours=hours,
                       business_days=True, law="Law")


@pytest.mark.parametrize("signed, days, hours, expected", [
    # Friday 4 pm + 2 business days = Tuesday 4 pm, across the change to summer time (March 8, 2026);
    # it is already Saturday in UTC when signed, which must not count
    (local(2026, 3, 6, 16, 0), 2, 0, local(2026, 3, 10, 16, 0)),
    (local(2026, 3, 7, 11, 30), 1, 0, local(2026, 3, 9, 11, 30)),  # Saturday + 1: Monday
    (local(2026, 3, 8, 23, 0), 1, 0, local(2026, 3, 9, 23, 0)),  # Sunday + 1: Monday
    (local(2026, 3, 2, 9, 0), 5, 0, local(2026, 3, 9, 9, 0)),  # a whole working week
    (local(2026, 10, 30, 16, 0), 1, 3, local(2026, 11, 2, 19, 0)),  # back to winter time; hours added after
    (local(2026, 3, 4, 9, 0), 0, 5, local(2026, 3, 4, 14, 0)),  # hours only
])
def test_business_days_count_weekdays_of_the_sites_time_zone_at_the_same_local_time(signed, days, hours, expected):
    at = release.release_time(business(days, hours), signed.astimezone(timezone.utc), "America/Los_Angeles")
    assert at == expected and at.tzinfo == timezone.utc
    assert at.astimezone(LOS_ANGELES).strftime("%A %H:%M") == expected.strftime("%A %H:%M")


def test_calendar_days_are_whole_days_from_the_signing():
    rule = ReleaseRule(name="plain", jurisdictions=["TX"], delay_days=4, law="Law")
    signed = local(2026, 3, 6, 16, 0).astimezone(timezone.utc)
    assert release.release_time(rule, signed, "America/Los_Angeles") == signed + timedelta(days=4)


BUSINESS = [{"name": "TX two business days", "jurisdictions": ["TX"], "delay_days": 2, "business_days": True,
             "law": "Texas Occupations Code §159.0062"}]


@pytest.mark.parametrize("site", [BUSINESS], indirect=True, ids=["business"])
def test_a_report_signed_on_friday_afternoon_is_released_on_tuesday_afternoon(
        app, session, runtime, tmp_path, people):
    friday = local(2026, 3, 6, 16, 0).astimezone(timezone.utc)
    clock.freeze(friday)
    exam = Exam(session, runtime, tmp_path, people["patient"], "North Austin Imaging", signed=friday)
    tuesday = local(2026, 3, 10, 16, 0)
    assert exam.report.release_at == tuesday
    assert "Report available on March 10, 2026 as required by Texas Occupations Code §159.0062" in signed_in(
        app, "tess@example.test").get(f"/exams/{exam.uid}/report").text
    clock.freeze(tuesday - timedelta(seconds=1))
    assert not any(reach(signed_in(app, "tess@example.test"), exam).values())
    clock.freeze(tuesday)
    assert all(reach(signed_in(app, "tess@example.test"), exam).values())


def test_the_report_instance_read_back_is_the_one_that_was_held(app, session, runtime, tmp_path, people):
    """After release the patient's WADO-RS answer is the stored SR itself, not something else."""
    exam = Exam(session, runtime, tmp_path, people["patient"], "North Austin Imaging")
    clock.freeze(SIGNED + timedelta(days=4))
    answer = signed_in(app, "tess@example.test").get(exam.sr_path, headers={"Accept": "multipart/related; "
                                                                                      "type=\"application/dicom\""})
    assert answer.status_code == 200
    body = answer.content.split(b"\r\n\r\n", 1)[1]
    assert pydicom.dcmread(io.BytesIO(body), force=True).SOPInstanceUID == exam.sr.SOPInstanceUID
