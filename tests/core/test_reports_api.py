"""``POST /api/reports``: a RIS or PACS (bearer token) or staff posts a signed report as JSON
(text or base64 PDF) or multipart; release rules apply; the caller's id makes a repeat
harmless; bad input is a clear 422, an unknown study 404, a stranger 401/403."""
from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from support import audit_events, csrf_token, ingest_file, make_site, sign_in_as

from core.access import Principal
from core.studies import queries, synthetic
from core.studies.models import Report, Study

TOKEN = "pacs-token-for-tests-0123"
SIGNED = "2026-01-15T12:00:00Z"


@pytest.fixture
def site(tmp_path, database_url):
    return make_site(tmp_path, database=database_url, studies={"pacs_token": TOKEN})


@pytest.fixture
def pacs(app):
    return TestClient(app, base_url="https://testserver", headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
def study(session, runtime, tmp_path) -> Study:
    spec = synthetic.StudySpec(patient_id="RP-1", instances=1)
    for path in synthetic.write(synthetic.study(spec), tmp_path / "study"):
        assert ingest_file(session, runtime, path).ok
    return session.scalar(select(Study).where(Study.study_uid == spec.study_uid))


def report_of(session, source_uid: str) -> Report:
    return session.scalar(select(Report).where(Report.source_uid == source_uid))


def test_a_text_report_is_stored_once_and_released_when_signed(pacs, session, study):
    body = {"study_uid": study.study_uid, "id": "RIS-1001", "text": "No acute findings.", "signed_at": SIGNED,
            "title": "CT chest", "author": "Dr Reader", "category": "radiology"}
    created = pacs.post("/api/reports", json=body)
    assert created.status_code == 201, created.text
    assert created.json() == {"id": "RIS-1001", "release_at": "2026-01-15T12:00:00+00:00",
                              "release_rule": "signed", "release_law": ""}
    report = report_of(session, "RIS-1001")
    assert report.text == "No acute findings." and report.author == "Dr Reader" and report.study_ref == study.id
    again = pacs.post("/api/reports", json={**body, "text": "Changed"})
    assert again.status_code == 200 and again.json()["id"] == "RIS-1001"
    assert session.scalar(select(Report.text).where(Report.source_uid == "RIS-1001")) == "No acute findings."
    assert [e.actor for e in audit_events(session, "report.stored")][-1:] == ["pacs:pacs"]


def test_a_flagged_report_is_held_by_the_sites_rules(pacs, session, study):
    held = pacs.post("/api/reports", json={"study_uid": study.study_uid, "id": "RIS-1002", "text": "Mass.",
                                           "signed_at": "2026-01-15T12:00:00+01:00", "flags": ["fixture_hold"]})
    assert held.status_code == 201
    release = datetime.fromisoformat(held.json()["release_at"])
    assert release == datetime(2026, 1, 15, 11, tzinfo=timezone.utc) + timedelta(hours=72)
    assert held.json()["release_rule"] == "fixture 72 h" and held.json()["release_law"] == "the Fixture Act"


def test_a_pdf_report_as_base64_or_as_a_file_part(pacs, app, session, runtime, study, make_account):
    pdf = synthetic.minimal_pdf("Signed report")
    as_json = pacs.post("/api/reports", json={"study_uid": study.study_uid, "id": "RIS-2001", "signed_at": SIGNED,
                                              "pdf_base64": base64.b64encode(pdf).decode()})
    assert as_json.status_code == 201, as_json.text
    stored = report_of(session, "RIS-2001")
    with runtime.blobs.open(stored.pdf_blob_key) as handle:
        assert handle.read() == pdf
    make_account(email="staff@example.test", role="staff", patient=False)
    staff = TestClient(app, base_url="https://testserver")
    sign_in_as(staff, "staff@example.test", "a long unique passphrase")
    as_file = staff.post("/api/reports", files={"pdf": ("report.pdf", pdf, "application/pdf")},
                         data={"study_uid": study.study_uid, "id": "RIS-2002", "signed_at": SIGNED,
                               "flags": "fixture_hold, urgent", "csrf_token": csrf_token(staff)})
    assert as_file.status_code == 201, as_file.text
    assert report_of(session, "RIS-2002").flags == ["fixture_hold", "urgent"]
    assert report_of(session, "RIS-2002").pdf_blob_key


@pytest.mark.parametrize("change, words", [
    ({"signed_at": "yesterday"}, "signed_at"),
    ({"signed_at": None}, "signed_at"),
    ({"study_uid": ""}, "study_uid"),
    ({"text": None}, "either text or a PDF"),
    ({"pdf_base64": base64.b64encode(b"%PDF-1.4 x").decode()}, "either text or a PDF"),
    ({"text": None, "pdf_base64": "%%%"}, "base64"),
    ({"text": None, "pdf_base64": base64.b64encode(b"hello").decode()}, "not a PDF"),
    ({"flags": "urgent"}, "flags"),
    ({"colour": "red"}, "colour"),
])
def test_bad_input_is_a_clear_422(pacs, study, change, words):
    body = {"study_uid": study.study_uid, "id": "RIS-3001", "text": "Fine.", "signed_at": SIGNED, **change}
    answer = pacs.post("/api/reports", json={k: v for k, v in body.items() if v is not None or k != "text"})
    assert answer.status_code == 422 and words in answer.json()["detail"], answer.text


def test_unknown_studies_strangers_and_other_bodies(pacs, app, study, make_account):
    body = {"study_uid": "1.2.3.4.999", "id": "RIS-4001", "text": "Fine.", "signed_at": SIGNED}
    missing = pacs.post("/api/reports", json=body)
    assert missing.status_code == 404 and "Study Instance UID" in missing.json()["detail"]
    assert pacs.post("/api/reports", content=b"{not json", headers={"Content-Type": "application/json"}).status_code \
        == 422
    assert pacs.post("/api/reports", content=b"text", headers={"Content-Type": "text/plain"}).status_code == 415
    stranger = TestClient(app, base_url="https://testserver", headers={"Authorization": "Bearer not-the-token"})
    assert stranger.post("/api/reports", json={**body, "study_uid": study.study_uid}).status_code == 401
    make_account(email="pat@example.test")
    patient = TestClient(app, base_url="https://testserver")
    sign_in_as(patient, "pat@example.test", "a long unique passphrase")
    assert patient.post("/api/reports", json={**body, "study_uid": study.study_uid},
                        headers={"X-CSRF-Token": csrf_token(patient)}).status_code == 403


def test_a_report_posted_before_its_sr_arrives_keeps_the_instance_hidden(frozen_clock, pacs, session, runtime,
                                                                         study, tmp_path):
    spec = synthetic.StudySpec(patient_id="RP-1", study_uid=study.study_uid)
    sr = synthetic.text_report(spec, "Findings.", signed="20260301090000")
    posted = pacs.post("/api/reports", json={"study_uid": study.study_uid, "id": str(sr.SOPInstanceUID),
                                             "text": "Findings.", "signed_at": "2026-03-01T09:00:00Z",
                                             "flags": ["fixture_hold"]})
    assert posted.status_code == 201
    [path] = synthetic.write([sr], tmp_path / "sr")
    assert ingest_file(session, runtime, path).ok
    assert session.scalar(select(Report).where(Report.study_ref == study.id, Report.source_uid == sr.SOPInstanceUID))
    patient_side = Principal(kind="share", id="1", scope=frozenset({f"study:{study.id}"}))
    visible = {i.sop_uid for i, _s in session.execute(queries.instances(session, patient_side, study))}
    assert sr.SOPInstanceUID not in visible and len(visible) == 1
