"""The patient's exam pages: My exams (filters, grouping, the proxy's choice), one exam's
visit summary, report and images tabs, the report as PDF and printable page, single
images as JPG; who sees what, held reports and images, audit events and headers."""
from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from sqlalchemy import select

from core import clock
from core.identity.models import PatientLink
from core.studies import report_pdf, service, synthetic
from core.studies.models import Instance, Patient, Report, Series, Study
from support import add_linked_patient, audit_events, post_form, sign_in_as

PASSWORD = "a long unique passphrase"


def _patient_of(session, account) -> Patient:
    link = session.scalar(select(PatientLink).where(PatientLink.account_id == account.id,
                                                    PatientLink.relationship == "self"))
    return session.get(Patient, link.patient_ref)


def _add_study(session, runtime, tmp_path, patient: Patient, *, series: int = 1, instances: int = 2,
               **fields) -> Study:
    spec = synthetic.StudySpec(patient_id=patient.patient_id, issuer=patient.issuer, rows=32, columns=32,
                               series=series, instances=instances, **fields)
    for path in synthetic.write(synthetic.study(spec), tmp_path / spec.study_uid):
        assert service.ingest(session, path, runtime=runtime).outcome == "stored"
    return session.scalar(select(Study).where(Study.study_uid == spec.study_uid))


def _add_report(session, runtime, study: Study, text: str, *, flags=(), signed_at=None, **fields) -> Report:
    report = service.add_report(session, runtime=runtime, study=study, text=text, flags=list(flags),
                                signed_at=signed_at or clock.now() - timedelta(hours=1), **fields)
    session.commit()
    return report


def _first_image(session, study: Study) -> Instance:
    return session.scalar(select(Instance).join(Series, Series.id == Instance.series_ref)
                          .where(Series.study_ref == study.id, Instance.rows.is_not(None))
                          .order_by(Series.series_number, Instance.instance_number))


@pytest.fixture
def alex(make_account):
    return make_account(email="alex@example.test", name="Alex Example", password=PASSWORD)


@pytest.fixture
def lee(make_account):
    return make_account(email="lee@example.test", name="Lee Other", password=PASSWORD)


@pytest.fixture
def alex_exams(session, runtime, tmp_path, alex, frozen_clock):
    """Alex's CT (with a released report), MR (no report) and an older chest X-ray."""
    patient = _patient_of(session, alex)
    ct = _add_study(session, runtime, tmp_path, patient, description="CT CHEST", modality="CT", body_part="CHEST",
                    study_date=date(2026, 2, 20), series=2)
    mr = _add_study(session, runtime, tmp_path, patient, description="MR KNEE", modality="MR", body_part="KNEE",
                    study_date=date(2025, 6, 1))
    xray = _add_study(session, runtime, tmp_path, patient, description="XR CHEST", modality="CR", body_part="CHEST",
                      study_date=date(2024, 3, 3))
    report = _add_report(session, runtime, ct, "The lungs are clear.", title="CT report", author="Muñoz^Inés")
    return {"patient": patient, "ct": ct, "mr": mr, "xray": xray, "report": report}


def _exam_titles(page: str) -> list[str]:
    return re.findall(r'<a href="/exams/[0-9.]+">([^<]+)</a>', page.split('class="exam-list"', 1)[-1])


# -- My exams ---------------------------------------------------------------------------------------

def test_my_exams_lists_only_the_patients_own_studies_newest_first(client, session, runtime, tmp_path, alex,
                                                                   lee, alex_exams):
    _add_study(session, runtime, tmp_path, _patient_of(session, lee), description="LEE ONLY CT")
    sign_in_as(client, "alex@example.test", PASSWORD)

    answer = client.get("/exams")

    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    assert _exam_titles(answer.text) == ["CT CHEST", "MR KNEE", "XR CHEST"]
    assert "LEE ONLY CT" not in answer.text
    assert "Feb 20, 2026" in answer.text and "CT scan" in answer.text and "X-ray" in answer.text
    assert "Filmless Demo Imaging" in answer.text  # the location
    assert answer.text.count("Images available") == 3
    assert answer.text.count("Report ready") == 1 and answer.text.count("No report yet") == 2
    [event] = audit_events(session, "studies.listed")
    assert event.actor == f"account:{alex.id}" and event.subject == f"patient:{alex_exams['patient'].id}"
    assert event.detail["count"] == 3


def test_filters_by_date_range_and_kind_of_exam(client, alex_exams):
    sign_in_as(client, "alex@example.test", PASSWORD)

    assert _exam_titles(client.get("/exams?kind=MR").text) == ["MR KNEE"]
    assert _exam_titles(client.get("/exams?kind=XR").text) == ["XR CHEST"]  # CR counts as an X-ray
    in_2025 = client.get("/exams?date_from=2025-01-01&date_to=2025-12-31")
    assert _exam_titles(in_2025.text) == ["MR KNEE"] and "1 exam matches." in in_2025.text
    assert _exam_titles(client.get("/exams?date_from=2025-01-01").text) == ["CT CHEST", "MR KNEE"]
    swapped = client.get("/exams?date_from=2025-12-31&date_to=2025-01-01")  # given backwards: still meant
    assert _exam_titles(swapped.text) == ["MR KNEE"]

    unknown = client.get("/exams?kind=ZZ")  # not a kind of exam: ignored, everything shown
    assert _exam_titles(unknown.text) == ["CT CHEST", "MR KNEE", "XR CHEST"]
    offered = re.findall(r'<option value="(\w+)"', unknown.text.split('id="kind"')[1].split("</select>")[0])
    assert offered == ["CT", "MR", "XR"]  # only the kinds this patient has
    assert "No exams match these filters." in client.get("/exams?kind=US").text

    empty = client.get("/exams?date_from=2020-01-01&date_to=2020-12-31")
    assert "No exams match these filters." in empty.text and _exam_titles(empty.text) == []

    wrong = client.get("/exams?date_from=yesterday")
    assert "is not a date" in wrong.text and len(_exam_titles(wrong.text)) == 3


def test_exams_grouped_by_body_part(client, alex_exams):
    sign_in_as(client, "alex@example.test", PASSWORD)

    page = client.get("/exams?group=body_part").text

    headings = re.findall(r'<h2 id="group-\d+">([^<]+)</h2>', page)
    assert headings == ["Chest", "Knee"]  # in the order of each part's latest exam
    chest = page.split('>Chest</h2>')[1].split('>Knee</h2>')[0]
    assert chest.index("CT CHEST") < chest.index("XR CHEST") and "MR KNEE" not in chest
    grouped_ct = client.get("/exams?group=body_part&kind=CT").text
    assert _exam_titles(grouped_ct) == ["CT CHEST"]
    assert '<a href="/exams?kind=CT">Newest first</a>' in grouped_ct  # switching keeps the filter
    assert '<a href="/exams?kind=MR&amp;group=body_part">Grouped by body part</a>' in client.get("/exams?kind=MR").text


def test_empty_states(client, session, make_account, alex):
    sign_in_as(client, "alex@example.test", PASSWORD)
    nothing = client.get("/exams").text
    assert "There are no exams here yet." in nothing and 'name="kind"' not in nothing  # nothing to filter
    make_account(email="staff@example.test", name="Jo Staff", role="staff", patient=False, password=PASSWORD)
    client.cookies.clear()
    sign_in_as(client, "staff@example.test", PASSWORD)
    page = client.get("/exams").text
    assert "No patient is linked to your account yet" in page and 'href="/staff"' in page


def test_my_exams_is_in_the_menu_of_people_with_patients_only(client, make_account, alex):
    sign_in_as(client, "alex@example.test", PASSWORD)
    home = client.get("/").text
    assert '<a href="/exams">My exams</a>' in home and 'class="button" href="/exams"' in home
    make_account(email="staff@example.test", name="Jo Staff", role="staff", patient=False, password=PASSWORD)
    client.cookies.clear()
    sign_in_as(client, "staff@example.test", PASSWORD)
    assert 'href="/exams"' not in client.get("/").text


def test_the_exam_list_in_spanish(client, alex_exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    client.get("/language/es")
    page = client.get("/exams").text
    assert "Mis exámenes" in page and "Imágenes disponibles" in page and "Informe listo" in page
    assert "20 feb 2026" in page


# -- the proxy's choice -------------------------------------------------------------------------------

@pytest.fixture
def guardian(session, runtime, tmp_path, make_account, frozen_clock):
    account = make_account(email="sam@example.test", name="Sam Example", password=PASSWORD)
    own = _patient_of(session, account)
    child = add_linked_patient(session, account.id, "guardian", issuer="T", patient_id="CHILD-1",
                               family_name="Example", given_name="Riley", birth_date=date(2018, 5, 6))
    session.commit()
    _add_study(session, runtime, tmp_path, own, description="SAM OWN MR", modality="MR")
    _add_study(session, runtime, tmp_path, child, description="RILEY WRIST XR", modality="CR")
    return {"account": account, "own": own, "child": child}


def test_a_proxy_chooses_whose_exams_to_see(client, session, guardian, lee):
    sign_in_as(client, "sam@example.test", PASSWORD)
    first = client.get("/exams").text
    assert _exam_titles(first) == ["SAM OWN MR"]  # their own record comes first
    options = re.findall(r'<option value="(\d+)"[^>]*>([^<]+)</option>', first.split('id="patient"')[1])
    assert [name for _, name in options] == ["Sam Example", "Riley Example"]

    answer = post_form(client, "/exams/patient", {"patient": str(guardian["child"].id)}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/exams"
    assert _exam_titles(client.get("/exams").text) == ["RILEY WRIST XR"]
    assert "Chosen now" in client.get("/patients").text  # the same choice as the identity picker

    stranger = _patient_of(session, lee)
    assert post_form(client, "/exams/patient", {"patient": str(stranger.id)}).status_code == 404
    assert post_form(client, "/exams/patient", {"patient": "x"}).status_code == 404
    assert _exam_titles(client.get("/exams").text) == ["RILEY WRIST XR"]


def test_choosing_a_patient_needs_the_csrf_token(client, guardian):
    sign_in_as(client, "sam@example.test", PASSWORD)
    answer = client.post("/exams/patient", data={"patient": str(guardian["child"].id)})
    assert answer.status_code == 403


# -- one exam ------------------------------------------------------------------------------------------

def test_visit_summary(client, session, alex, alex_exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    ct = alex_exams["ct"]

    answer = client.get(f"/exams/{ct.study_uid}")

    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    page = answer.text
    assert 'aria-current="page">Visit summary</a>' in page
    for expected in ("February 20, 2026", "10:15", "CT CHEST", "CT scan", "Chest", "Filmless Demo Imaging",
                     "Robin Referrer", "2 series, 4 images", "Patient: Alex Example"):
        assert expected in page, expected
    priors = page.split("Previous exams of the same body part")[1]
    assert "XR CHEST" in priors and "MR KNEE" not in priors
    [event] = audit_events(session, "study.viewed")
    assert (event.actor, event.subject, event.detail) == (f"account:{alex.id}", f"study:{ct.id}", {"tab": "summary"})


def test_report_tab_pdf_and_printable_view_of_a_text_report(client, session, alex, alex_exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    ct, report = alex_exams["ct"], alex_exams["report"]

    tab = client.get(f"/exams/{ct.study_uid}/report")
    assert tab.status_code == 200 and tab.headers["cache-control"] == "no-store"
    assert "The lungs are clear." in tab.text and "Signed by Inés Muñoz on" in tab.text
    assert f'href="/exams/{ct.study_uid}/reports/{report.id}/print"' in tab.text
    assert audit_events(session, "report.viewed")[-1].detail == {"reports": [report.id]}

    printable = client.get(f"/exams/{ct.study_uid}/reports/{report.id}/print")
    assert printable.status_code == 200 and printable.headers["cache-control"] == "no-store"
    assert "The lungs are clear." in printable.text and "Alex Example" in printable.text

    pdf = client.get(f"/exams/{ct.study_uid}/reports/{report.id}.pdf?download=1")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["content-disposition"] == f'attachment; filename="report-2026-02-20-{report.id}.pdf"'
    assert pdf.headers["cache-control"] == "no-store"
    assert pdf.content.startswith(b"%PDF-1.4") and b"(The lungs are clear.) Tj" in pdf.content
    assert b"Mu\\361oz" in pdf.content  # "Muñoz" in WinAnsi
    [event] = audit_events(session, "report.downloaded")
    assert event.subject == f"study:{ct.id}" and event.detail == {"report": report.id, "format": "pdf",
                                                                   "attachment": True}


def test_a_pdf_report_is_served_from_the_store(client, session, runtime, tmp_path, alex, alex_exams):
    mr = alex_exams["mr"]
    spec = synthetic.StudySpec(patient_id=alex_exams["patient"].patient_id, issuer="T", study_uid=mr.study_uid)
    original = synthetic.minimal_pdf("Knee report")
    [path] = synthetic.write([synthetic.pdf_report(spec, original)], tmp_path / "pdf")
    assert service.ingest(session, path, runtime=runtime).ok
    report = session.scalar(select(Report).where(Report.study_ref == mr.id))
    sign_in_as(client, "alex@example.test", PASSWORD)

    tab = client.get(f"/exams/{mr.study_uid}/report").text
    assert "This report is a PDF document." in tab and "Open PDF" in tab
    opened = client.get(f"/exams/{mr.study_uid}/reports/{report.id}.pdf")
    assert opened.content == original
    assert opened.headers["content-disposition"].startswith("inline; filename=")
    assert audit_events(session, "report.downloaded")[-1].detail["attachment"] is False


def test_images_tab(client, session, alex, alex_exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    ct = alex_exams["ct"]

    page = client.get(f"/exams/{ct.study_uid}/images").text

    series = session.scalars(select(Series).where(Series.study_ref == ct.id).order_by(Series.series_number)).all()
    for one in series:
        assert f'src="/dicomweb/studies/{ct.study_uid}/series/{one.series_uid}/thumbnail"' in page
        assert f'href="/exams/{ct.study_uid}/viewer?series={one.series_uid}"' in page
    image = _first_image(session, ct)
    assert f'href="/exams/{ct.study_uid}/images/{image.sop_uid}.jpg?download=1"' in page
    assert page.count(".jpg?download=1") == 4
    assert audit_events(session, "study.viewed")[-1].detail == {"tab": "images"}


def test_single_image_as_jpg(client, session, alex, alex_exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    ct = alex_exams["ct"]
    image = _first_image(session, ct)
    address = f"/exams/{ct.study_uid}/images/{image.sop_uid}.jpg"

    shown = client.get(address)
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/jpeg"
    assert shown.content[:3] == b"\xff\xd8\xff" and "content-disposition" not in shown.headers
    assert shown.headers["cache-control"] == "no-store"
    assert audit_events(session, "image.viewed")[-1].detail == {"sop_uid": image.sop_uid, "frame": 1}

    saved = client.get(address + "?download=1")
    assert saved.headers["content-disposition"] == 'attachment; filename="image-1.jpg"'
    [event] = audit_events(session, "image.downloaded")
    assert event.actor == f"account:{alex.id}" and event.subject == f"study:{ct.id}"
    assert client.get(address + "?frame=2").status_code == 404  # a single-frame image


def test_a_frame_of_a_clip_as_jpg(client, session, runtime, tmp_path, alex, frozen_clock):
    clip = _add_study(session, runtime, tmp_path, _patient_of(session, alex), description="US ABDOMEN", modality="US",
                      instances=1, frames=3, photometric="RGB")
    image = _first_image(session, clip)
    sign_in_as(client, "alex@example.test", PASSWORD)
    assert "3 frames: the JPG shows the first" in client.get(f"/exams/{clip.study_uid}/images").text

    third = client.get(f"/exams/{clip.study_uid}/images/{image.sop_uid}.jpg?frame=3&download=1")

    assert third.status_code == 200 and third.content[:3] == b"\xff\xd8\xff"
    assert third.headers["content-disposition"] == 'attachment; filename="image-1-frame-3.jpg"'
    first = client.get(f"/exams/{clip.study_uid}/images/{image.sop_uid}.jpg").content
    assert first != third.content  # the frames differ, so the pictures do
    assert client.get(f"/exams/{clip.study_uid}/images/{image.sop_uid}.jpg?frame=4").status_code == 404


def test_an_item_that_is_not_a_picture_answers_422_with_a_reason(client, session, runtime, tmp_path, alex_exams):
    mr = alex_exams["mr"]
    spec = synthetic.StudySpec(patient_id=alex_exams["patient"].patient_id, issuer="T", study_uid=mr.study_uid)
    sr = synthetic.text_report(spec, "Knee findings.")
    [path] = synthetic.write([sr], tmp_path / "sr")
    assert service.ingest(session, path, runtime=runtime).ok
    sign_in_as(client, "alex@example.test", PASSWORD)

    answer = client.get(f"/exams/{mr.study_uid}/images/{sr.SOPInstanceUID}.jpg")

    assert answer.status_code == 422
    assert "This image cannot be shown as a JPG" in answer.text and "document, not an image" in answer.text
    assert audit_events(session, "image.viewed") == []


def test_another_patients_exam_is_not_found_anywhere(client, session, runtime, tmp_path, lee, alex_exams):
    ct, report = alex_exams["ct"], alex_exams["report"]
    image = _first_image(session, ct)
    sign_in_as(client, "lee@example.test", PASSWORD)
    for address in (f"/exams/{ct.study_uid}", f"/exams/{ct.study_uid}/report", f"/exams/{ct.study_uid}/images",
                    f"/exams/{ct.study_uid}/reports/{report.id}.pdf",
                    f"/exams/{ct.study_uid}/reports/{report.id}/print",
                    f"/exams/{ct.study_uid}/images/{image.sop_uid}.jpg", "/exams/1.2.3.4.5"):
        answer = client.get(address)
        assert answer.status_code == 404, address
        assert "lungs are clear" not in answer.text and "CT CHEST" not in answer.text
    # a report of one's own study cannot be reached through another's study either
    own = _add_study(session, runtime, tmp_path, _patient_of(session, lee), description="LEE CT")
    assert client.get(f"/exams/{own.study_uid}/reports/{report.id}.pdf").status_code == 404
    assert client.get(f"/exams/{own.study_uid}/images/{image.sop_uid}.jpg").status_code == 404
    assert audit_events(session, "report.downloaded") == [] and audit_events(session, "image.viewed") == []


def test_the_anonymous_reach_no_exam_page(client, alex_exams):
    ct = alex_exams["ct"]
    for address in ("/exams", f"/exams/{ct.study_uid}", f"/exams/{ct.study_uid}/report"):
        assert client.get(address).status_code == 403


# -- held reports and images ---------------------------------------------------------------------------

def test_a_held_report_stays_hidden_until_its_release(client, session, runtime, make_account, alex, alex_exams):
    mr = alex_exams["mr"]
    held = _add_report(session, runtime, mr, "Small joint effusion.", flags=["fixture_hold"],
                       signed_at=clock.now() - timedelta(hours=1))
    assert held.release_at == clock.now() + timedelta(hours=71)
    sign_in_as(client, "alex@example.test", PASSWORD)
    urls = {"tab": f"/exams/{mr.study_uid}/report", "print": f"/exams/{mr.study_uid}/reports/{held.id}/print",
            "pdf": f"/exams/{mr.study_uid}/reports/{held.id}.pdf"}

    listing = client.get("/exams").text
    assert "Report available on March 4, 2026 as required by the Fixture Act" in listing
    tab = client.get(urls["tab"])
    assert "Report available on March 4, 2026 as required by the Fixture Act" in tab.text
    assert "Small joint effusion" not in tab.text and "Small joint effusion" not in client.get(f"/exams/{mr.study_uid}").text
    assert client.get(urls["print"]).status_code == 404 and client.get(urls["pdf"]).status_code == 404

    clock.advance(timedelta(hours=71, seconds=1))
    sign_in_as(client, "alex@example.test", PASSWORD)  # the session timed out meanwhile
    assert "Small joint effusion." in client.get(urls["tab"]).text
    assert "Small joint effusion." in client.get(urls["print"]).text
    assert client.get(urls["pdf"]).status_code == 200
    assert "Report ready" in client.get("/exams").text.split("MR KNEE")[1]


def test_staff_open_any_exam_and_read_a_held_report(client, session, runtime, make_account, alex_exams):
    mr = alex_exams["mr"]
    held = _add_report(session, runtime, mr, "Small joint effusion.", flags=["fixture_hold"])
    staff = make_account(email="staff@example.test", name="Jo Staff", role="staff", patient=False, password=PASSWORD)
    sign_in_as(client, "staff@example.test", PASSWORD)

    tab = client.get(f"/exams/{mr.study_uid}/report")

    assert tab.status_code == 200 and "Small joint effusion." in tab.text
    assert f'href="/staff/patients/{mr.patient_ref}"' in tab.text  # back to the help desk's patient page
    assert client.get(f"/exams/{mr.study_uid}/reports/{held.id}/print").status_code == 200
    assert audit_events(session, "report.viewed")[-1].actor == f"account:{staff.id}"


def test_held_images_show_their_date_and_no_pictures(client, session, runtime, tmp_path, alex, frozen_clock):
    study = _add_study(session, runtime, tmp_path, _patient_of(session, alex), description="HOLD IMAGES")
    image = _first_image(session, study)
    sign_in_as(client, "alex@example.test", PASSWORD)

    assert "Images on March 2, 2026" in client.get("/exams").text
    tab = client.get(f"/exams/{study.study_uid}/images").text
    assert "Images available on March 2, 2026" in tab and "/thumbnail" not in tab
    assert client.get(f"/exams/{study.study_uid}/images/{image.sop_uid}.jpg").status_code == 404

    clock.advance(timedelta(hours=24))
    sign_in_as(client, "alex@example.test", PASSWORD)
    assert "/thumbnail" in client.get(f"/exams/{study.study_uid}/images").text


# -- the PDF writer -------------------------------------------------------------------------------------

def _objects_at_their_offsets(pdf: bytes) -> bool:
    xref = int(pdf.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    table = pdf[xref:].split(b"\n")
    count = int(table[1].split()[1])
    offsets = [int(line.split()[0]) for line in table[3:2 + count]]
    return all(pdf[offset:].startswith(b"%d 0 obj" % number) for number, offset in enumerate(offsets, 1))


def test_the_pdf_writer_wraps_breaks_pages_and_keeps_accents():
    paragraph = "Pequeña lesión ¿benigna? " * 40
    pdf = report_pdf.document(title="Informe · ñ", head=[report_pdf.Line("Clínica", "F2", 15, 20)],
                              text="\n\n".join([paragraph] * 12), running="Paciente", footer="Página %(page)s de %(pages)s")
    assert pdf.startswith(b"%PDF-1.4") and pdf.endswith(b"%%EOF\n")
    assert _objects_at_their_offsets(pdf)
    pages = int(re.search(rb"/Type /Pages /Kids \[[^\]]*\] /Count (\d+)", pdf).group(1))
    assert pages >= 3 and b"(P\\341gina 3 de %d)" % pages in pdf
    assert b"/Encoding /WinAnsiEncoding" in pdf and b"Peque\\361a lesi\\363n \\277benigna?" in pdf
    width = report_pdf.LETTER[0] - 2 * report_pdf.MARGIN
    for line in report_pdf.wrap(paragraph.strip(), "F1", 10.5, width):
        assert report_pdf.text_width(line, "F1", 10.5) <= width
    assert report_pdf.winansi("ok → 漢") == "ok ? ?"
    assert report_pdf.wrap("x" * 500, "F1", 10, 100)[0] == "x" * 20  # a word too long for a line is cut


# -- the demo's exams ----------------------------------------------------------------------------------

def test_the_demo_exams_go_through_ingest(session, runtime, frozen_clock):
    from core.identity import service as identity
    from core.studies import demo, queries
    from core.access import Principal

    identity.seed_demo(session)
    demo.seed(session, runtime)

    alex = session.scalar(select(Patient).where(Patient.patient_id == "DEMO-1001"))
    principal = Principal(kind="account", id="1", scope=frozenset({str(alex.id)}))
    studies = session.scalars(queries.studies(session, principal)).all()
    assert sorted(study.modalities for study in studies) == ["CR\\SR", "CT\\SR", "DOC\\MR", "US"]
    assert all(study.description and study.instance_count for study in studies)
    by_kind = {study.modalities: study for study in studies}
    ultrasound = queries.reports(session, principal, by_kind["US"])
    assert ultrasound.readable == [] and ultrasound.held_until == clock.now() + timedelta(days=3, hours=-1)
    assert ultrasound.held_law
    assert session.scalar(select(Instance.frames).join(Series).where(Series.study_ref == by_kind["US"].id)) == 12
    assert [len(queries.reports(session, principal, by_kind[kind]).readable) for kind in ("CT\\SR", "DOC\\MR")] == [1, 1]
    riley = session.scalar(select(Patient).where(Patient.patient_id == "DEMO-1002"))
    assert session.scalar(select(Study.instance_count).where(Study.patient_ref == riley.id)) == 3


def test_a_share_that_hides_patient_details_shows_no_name(session, alex_exams):
    from core.access import Principal
    from core.studies import pages

    ct = alex_exams["ct"]
    hiding = Principal(kind="share", id="9", scope=frozenset({f"study:{ct.id}", "hide_details"}))
    showing = Principal(kind="share", id="9", scope=frozenset({f"study:{ct.id}"}))

    assert pages.study_header(session, hiding, ct.study_uid).patient is None
    assert pages.patient_name(pages.study_header(session, showing, ct.study_uid).patient) == "Alex Example"
