"""The patient's side of the audit trail: "My activity" (own sign-ins, shares made and opened
with nickname and recipient, views and downloads, staff and emergency access; paged, filtered
by kind and date, in the reader's language and the site's time zone; proxies see their
patients' records, nobody sees anyone else's) and the accounting of disclosures for staff
(printable page and CSV, with recipient, what and purpose; itself audited)."""
from __future__ import annotations

import csv
import html
import io
import re
from datetime import date, datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from support import add_linked_patient, audit_events, sign_in_as

from core import access, clock
from core.access import Principal
from core.audit import service as audit
from core.identity.models import PatientLink
from core.sharing import service as sharing
from core.studies import service as studies
from core.studies import synthetic
from core.studies.models import Patient, Study

PASSWORD = "a long unique passphrase"
DOCTOR = "dr.rivera@example.test"


def _patient_of(session, account) -> Patient:
    link = session.scalar(select(PatientLink).where(PatientLink.account_id == account.id,
                                                    PatientLink.relationship == "self"))
    return session.get(Patient, link.patient_ref)


def _add_study(session, runtime, tmp_path, patient: Patient, **fields) -> Study:
    spec = synthetic.StudySpec(patient_id=patient.patient_id, issuer=patient.issuer, rows=16, columns=16,
                               instances=1, **fields)
    for path in synthetic.write(synthetic.study(spec), tmp_path / spec.study_uid):
        assert studies.ingest(session, path, runtime=runtime).outcome == "stored"
    session.commit()
    return session.scalar(select(Study).where(Study.study_uid == spec.study_uid))


def _principal(account, *patients) -> Principal:
    return Principal(kind="account", id=str(account.id), roles=frozenset({account.role}),
                     scope=frozenset(str(patient.id) for patient in patients))


def _browser(app, email: str | None = None, **headers) -> TestClient:
    browser = TestClient(app, base_url="https://testserver", headers=headers)
    if email:
        sign_in_as(browser, email, PASSWORD)
    return browser


def _share(session, runtime, account, patient, studies_, nickname="For Dr Rivera", recipient=DOCTOR, **options):
    made = sharing.create(session, runtime, _principal(account, patient), nickname=nickname,
                          study_uids=[study.study_uid for study in studies_], acknowledged=True,
                          recipient_email=recipient, **options)
    session.commit()
    return made.share


def _recipient(app, session, runtime, share) -> TestClient:
    """A second browser that opened ``share`` (as its link would)."""
    token = sharing.open_share(session, runtime, share, client="203.0.113.9")
    session.commit()
    browser = _browser(app)
    browser.cookies.set(access.SHARE_COOKIE, token)
    return browser


def _entries(page: str) -> list[str]:
    """Each entry of the activity list as one line of text."""
    items = re.findall(r'<li class="activity-entry panel">(.*?)</li>', page, re.S)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", item)).split()) for item in items]


@pytest.fixture
def alex(make_account):
    return make_account(email="alex@example.test", name="Alex Example", password=PASSWORD)


@pytest.fixture
def staff_member(make_account):
    return make_account(email="jo.staff@example.test", name="Jo Staff", role="staff", patient=False)


@pytest.fixture
def exams(session, runtime, tmp_path, alex, frozen_clock):
    patient = _patient_of(session, alex)
    ct = _add_study(session, runtime, tmp_path, patient, description="CT CHEST", study_date=date(2026, 2, 20))
    mr = _add_study(session, runtime, tmp_path, patient, description="MR KNEE", modality="MR",
                    study_date=date(2025, 6, 1))
    studies.add_report(session, runtime=runtime, study=ct, text="The lungs are clear.", flags=[],
                       signed_at=clock.now() - timedelta(hours=1))
    session.commit()
    return {"patient": patient, "ct": ct, "mr": mr}


# -- My activity ------------------------------------------------------------------------------------

def test_the_patient_sees_who_opened_a_share_and_what_the_recipient_looked_at(app, client, session, runtime,
                                                                                alex, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    assert client.get(f"/exams/{exams['ct'].study_uid}").status_code == 200
    share = _share(session, runtime, alex, exams["patient"], [exams["ct"], exams["mr"]])
    clock.advance(timedelta(minutes=20))
    doctor = _recipient(app, session, runtime, share)
    assert doctor.get(f"/exams/{exams['mr'].study_uid}/images").status_code == 200

    page = client.get("/activity")

    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    entries = _entries(page.text)
    recipient = f"{DOCTOR}, with the share “For Dr Rivera”"
    assert entries[0].startswith("Mar 1, 2026, 10:50:00") and "Views" in entries[0]  # Madrid time, newest first
    assert f"{recipient} Looked at the images MR KNEE · Jun 1, 2025" in entries[0]
    assert f"{recipient} Opened the share “For Dr Rivera” CT CHEST · Feb 20, 2026; MR KNEE · Jun 1, 2025" in entries[1]
    assert f"You Created the share “For Dr Rivera” for {DOCTOR}" in entries[2] and "10:30:00" in entries[2]
    assert "You Looked at the exam CT CHEST · Feb 20, 2026" in entries[3]
    assert "You Signed in" in entries[-1] and "Sign-ins" in entries[-1]
    assert "Looked at the list of exams" not in page.text  # the patient did not open it
    [viewed] = audit_events(session, "activity.viewed")
    assert viewed.actor == viewed.subject == f"account:{alex.id}"


def test_filters_by_kind_and_by_day_in_the_sites_time_zone(app, client, session, runtime, alex, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)  # 2026-03-01 10:30 in Madrid
    clock.advance(timedelta(days=2))
    sign_in_as(client, "alex@example.test", PASSWORD)
    client.get(f"/exams/{exams['ct'].study_uid}")
    _share(session, runtime, alex, exams["patient"], [exams["ct"]], nickname="Physio")

    signins = _entries(client.get("/activity?kind=signins").text)
    assert [entry.split(" Sign-ins ")[0] for entry in signins] == ["Mar 3, 2026, 10:30:00 AM", "Mar 1, 2026, 10:30:00 AM"]
    shares = _entries(client.get("/activity?kind=shares").text)
    assert len(shares) == 1 and "Created the share “Physio”" in shares[0]
    assert [e for e in _entries(client.get("/activity?kind=views").text)] == [
        "Mar 3, 2026, 10:30:00 AM Views You Looked at the exam CT CHEST · Feb 20, 2026"]
    first_day = _entries(client.get("/activity?date_from=2026-03-01&date_to=2026-03-01").text)
    assert len(first_day) == 1 and "Signed in" in first_day[0]
    later = _entries(client.get("/activity?date_from=2026-03-02").text)
    assert len(later) == 3 and sum("Signed in" in entry for entry in later) == 1
    # 23:30 UTC on 3 March is already 4 March in Madrid
    clock.freeze(datetime(2026, 3, 3, 23, 30, tzinfo=timezone.utc))
    sign_in_as(client, "alex@example.test", PASSWORD)
    assert len(_entries(client.get("/activity?date_from=2026-03-04&date_to=2026-03-04").text)) == 1
    assert _entries(client.get("/activity?date_from=2026-03-05").text) == []
    assert "Nothing matches these filters." in client.get("/activity?date_from=2026-03-05").text
    wrong = client.get("/activity?date_from=someday&kind=nonsense")
    assert "is not a date" in wrong.text and len(_entries(wrong.text)) == 5  # the rest still applies


def test_pages_of_twenty_five_and_repeats_told_once(client, session, alex, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    for number in range(30):  # alternating, so that no two in a row are the same
        clock.advance(timedelta(seconds=10))
        audit.record(session, actor=f"account:{alex.id}", action="study.viewed" if number % 2 else "report.viewed",
                     subject=f"study:{exams['ct'].id}")
    for _ in range(3):  # a viewer's requests: told as one entry
        clock.advance(timedelta(seconds=10))
        audit.record(session, actor=f"account:{alex.id}", action="dicomweb.frames", subject=f"study:{exams['mr'].id}")
    session.commit()

    first = client.get("/activity?kind=views")
    entries = _entries(first.text)
    assert len(entries) == 23  # 25 events, the last three in one entry
    assert "Looked at the images (3 times, from 3/1/26, 10:35 AM)" in entries[0] and "MR KNEE" in entries[0]
    assert '<a href="/activity?kind=views&amp;page=2" rel="next">Older</a>' in first.text and 'rel="prev"' not in first.text
    second = client.get("/activity?kind=views&page=2")
    assert len(_entries(second.text)) == 8 and "Page 2" in second.text
    assert 'href="/activity?kind=views" rel="prev"' in second.text and 'rel="next"' not in second.text
    assert _entries(client.get("/activity?kind=views&page=9").text) == []
    assert len(_entries(client.get("/activity?kind=views&page=x").text)) == 23  # not a page number: the first


def test_staff_and_emergency_access_are_shown_as_such(app, client, session, runtime, alex, staff_member, exams):
    staff = _browser(app, "jo.staff@example.test")
    assert staff.get(f"/staff/patients/{exams['patient'].id}").status_code == 200
    assert staff.get(f"/exams/{exams['ct'].study_uid}/report").status_code == 200
    audit.record(session, actor="breakglass:7", action="breakglass.opened", subject=f"patient:{exams['patient'].id}",
                 detail={"reason": "Emergency care"})
    session.commit()
    sign_in_as(client, "alex@example.test", PASSWORD)

    entries = _entries(client.get("/activity?kind=staff").text)

    assert len(entries) == 3
    assert "A clinician using emergency access Emergency access Patient record of Alex Example" in entries[0]
    assert "Jo Staff (staff) Read the report CT CHEST" in entries[1]
    assert "Jo Staff (staff) Opened the patient record" in entries[2]
    assert all("Staff and emergency access" in entry for entry in entries)
    assert not any("Jo Staff" in entry for entry in _entries(client.get("/activity?kind=views").text))


def test_a_proxy_sees_the_records_they_act_for_and_nobody_sees_anyone_elses(app, client, session, runtime,
                                                                             tmp_path, make_account, alex, exams):
    parent = make_account(email="parent@example.test", name="Sam Parent", password=PASSWORD)
    child = add_linked_patient(session, parent.id, relationship="guardian", issuer="T", patient_id="CHILD-1",
                               family_name="Parent", given_name="Kim", birth_date=date(2015, 5, 5))
    session.commit()
    xray = _add_study(session, runtime, tmp_path, child, description="XR WRIST", modality="CR")
    share = _share(session, runtime, parent, child, [xray], nickname="Kim's wrist", recipient=None)
    _recipient(app, session, runtime, share).get(f"/exams/{xray.study_uid}")
    sign_in_as(client, "alex@example.test", PASSWORD)
    client.get(f"/exams/{exams['ct'].study_uid}")
    parent_browser = _browser(app, "parent@example.test")

    seen = "\n".join(_entries(parent_browser.get("/activity").text))

    assert "Someone with the share “Kim's wrist” Looked at the exam XR WRIST" in seen
    assert "Records of Kim Parent" in seen  # several patients: whose record each line is about
    assert "CT CHEST" not in seen and "Alex" not in seen
    alex_sees = "\n".join(_entries(client.get("/activity").text))
    assert "XR WRIST" not in alex_sees and "Kim" not in alex_sees and "Records of" not in alex_sees
    assert "Sam Parent" not in alex_sees


def test_only_accounts_have_an_activity_page_and_its_menu_entry(app, client, session, runtime, alex, exams):
    assert client.get("/activity").status_code == 403
    share = _share(session, runtime, alex, exams["patient"], [exams["ct"]])
    assert _recipient(app, session, runtime, share).get("/activity").status_code == 403
    sign_in_as(client, "alex@example.test", PASSWORD)
    assert '<a href="/activity">My activity</a>' in client.get("/exams").text


def test_in_spanish_with_spanish_dates(app, session, runtime, alex, exams):
    browser = _browser(app, "alex@example.test")
    browser.get("/language/es")
    _share(session, runtime, alex, exams["patient"], [exams["ct"]], nickname="Para la Dra. Rivera")

    page = browser.get("/activity")

    assert "<h1>Mi actividad</h1>" in page.text and '<a href="/activity">Mi actividad</a>' in page.text
    entries = _entries(page.text)
    assert "Usted Creó el enlace compartido «Para la Dra. Rivera» para dr.rivera@example.test" in entries[0]
    assert "1 mar 2026" in entries[0] and "10:30:00" in entries[0]
    assert "CT CHEST · 20 feb 2026" in entries[0]
    assert "Usted Inició sesión" in entries[1] and "Inicios de sesión" in entries[1]


# -- the accounting of disclosures ------------------------------------------------------------------------

@pytest.fixture
def disclosed(app, session, runtime, alex, staff_member, exams, make_account):
    """Alex looked at her own exam, her guardian-proxy too; a doctor opened a share and looked
    at an image; staff opened her record; someone used emergency access."""
    proxy = make_account(email="proxy@example.test", name="Pat Proxy", password=PASSWORD, patient=False)
    session.add(PatientLink(account_id=proxy.id, patient_ref=exams["patient"].id, relationship="carer",
                            created_at=clock.now()))
    session.commit()
    _browser(app, "alex@example.test").get(f"/exams/{exams['ct'].study_uid}")
    _browser(app, "proxy@example.test").get(f"/exams/{exams['ct'].study_uid}")
    clock.advance(timedelta(days=1))
    share = _share(session, runtime, alex, exams["patient"], [exams["ct"]], nickname="=HYPERLINK(\"x\")")
    _recipient(app, session, runtime, share).get(f"/exams/{exams['ct'].study_uid}/report")
    clock.advance(timedelta(days=1))
    _browser(app, "jo.staff@example.test").get(f"/staff/patients/{exams['patient'].id}")
    audit.record(session, actor="breakglass:3", action="breakglass.opened", subject=f"study:{exams['mr'].id}",
                 detail={"clinician": "Dr Emergency", "reason": "Unconscious patient"})
    session.commit()
    return exams


def test_the_accounting_lists_every_disclosure_with_recipient_what_and_purpose(app, session, disclosed):
    staff = _browser(app, "jo.staff@example.test")
    patient = disclosed["patient"]

    page = staff.get(f"/staff/patients/{patient.id}/disclosures")

    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    rows = [" ".join(re.sub(r"<[^>]+>", " ", row).split())
            for row in re.findall(r"<tr>(.*?)</tr>", page.text.split("<tbody>")[1], re.S)]
    share = f"Share “=HYPERLINK(&#34;x&#34;)” {DOCTOR}"
    assert rows == [
        f"3/2/26, 10:30 AM {share} CT CHEST · Feb 20, 2026 Opened the share “=HYPERLINK(&#34;x&#34;)” shared by the patient",
        f"3/2/26, 10:30 AM {share} CT CHEST · Feb 20, 2026 Read the report shared by the patient",
        "3/3/26, 10:30 AM Jo Staff jo.staff@example.test Patient record of Alex Example Opened the patient record "
        "treatment / operations",
        "3/3/26, 10:30 AM Dr Emergency MR KNEE · Jun 1, 2025 Emergency access emergency access",
    ]
    assert "Pat Proxy" not in page.text and "2 disclosures" not in page.text and "4 disclosures" in page.text
    assert "Feb 29, 2020 to Mar 3, 2026" not in page.text and "Mar 3, 2020 to Mar 3, 2026" in page.text
    [event] = audit_events(session, "disclosures.exported")
    assert event.subject == f"patient:{patient.id}" and event.detail["rows"] == 4
    assert event.detail["format"] == "html"
    assert f'href="/staff/patients/{patient.id}/disclosures"' in staff.get(f"/staff/patients/{patient.id}").text


def test_the_accounting_as_csv_for_a_period(app, session, disclosed):
    staff = _browser(app, "jo.staff@example.test")
    patient = disclosed["patient"]

    answer = staff.get(f"/staff/patients/{patient.id}/disclosures?from=2026-03-02&to=2026-03-02&format=csv")

    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["content-disposition"] == (
        f'attachment; filename="disclosures-patient-{patient.id}-2026-03-02-2026-03-02.csv"')
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert rows[0] == ["Date and time", "Recipient", "Recipient's email", "What", "Action", "Purpose"]
    assert rows[1] == ["2026-03-02T10:30:00+01:00", "Share “=HYPERLINK(\"x\")”", DOCTOR,
                       "CT CHEST · Feb 20, 2026", "Opened the share “=HYPERLINK(\"x\")”", "shared by the patient"]
    assert len(rows) == 3 and rows[2][4] == "Read the report"
    [event] = audit_events(session, "disclosures.exported")
    assert event.detail == {"from": "2026-03-02", "to": "2026-03-02", "rows": 2, "format": "csv"}
    staff.get("/language/es")
    spanish = staff.get(f"/staff/patients/{patient.id}/disclosures?from=2026-03-03&format=csv")
    header, *body = list(csv.reader(io.StringIO(spanish.text)))
    assert header == ["Fecha y hora", "Destinatario", "Correo del destinatario", "Qué", "Acción", "Finalidad"]
    assert [row[5] for row in body] == ["tratamiento / operaciones", "acceso de emergencia",
                                        "tratamiento / operaciones"]  # the first accounting is an access too
    assert body[2][4] == "Preparó un registro de divulgaciones"


def test_a_cell_a_spreadsheet_would_run_is_quoted():
    from core.audit.activity import Disclosure
    from core.audit.routes import disclosures_csv

    row = Disclosure(at=datetime(2026, 1, 1, tzinfo=timezone.utc), recipient="=cmd|' /C calc'!A0",
                     recipient_email="@evil", what="+1", doing="-1", purpose="fine")
    [_header, cells] = list(csv.reader(io.StringIO(disclosures_csv([row], "UTC"))))
    assert cells == ["2026-01-01T00:00:00+00:00", "'=cmd|' /C calc'!A0", "'@evil", "'+1", "'-1", "fine"]


def test_only_staff_get_the_accounting_and_only_of_a_real_patient(app, client, session, alex, staff_member, exams):
    patient = exams["patient"]
    sign_in_as(client, "alex@example.test", PASSWORD)
    assert client.get(f"/staff/patients/{patient.id}/disclosures").status_code == 403
    staff = _browser(app, "jo.staff@example.test")
    assert staff.get("/staff/patients/999999/disclosures").status_code == 404
    page = staff.get(f"/staff/patients/{patient.id}/disclosures?from=2026-01-01&to=2026-01-31")
    assert "No disclosures in this period." in page.text and "Jan 1, 2026 to Jan 31, 2026" in page.text
    staff.get("/language/es")
    spanish = staff.get(f"/staff/patients/{patient.id}/disclosures")
    assert "<h1>Registro de divulgaciones</h1>" in spanish.text and "1 divulgación" in spanish.text
    assert "Preparó un registro de divulgaciones" in spanish.text  # the one asked for just before
