"""Share links (issue 7): making a share (the form, the secrets shown once and stored hashed),
the recipient's session limited to exactly the shared studies route by route, no download
unless allowed, revoking and expiry ending live sessions, the password's rate limits,
re-shares under their original, and the whole portfolio including later exams."""
from __future__ import annotations

import base64
import hashlib
import re
from datetime import date, timedelta
from zoneinfo import ZoneInfo

import fixture_plugin
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from support import audit_events, post_form, sign_in_as

from core import clock
from core.access import SHARE_COOKIE
from core.identity.models import PatientLink
from core.identity.security import verify_password
from core.sharing import service as sharing
from core.sharing.models import Share, ShareSession
from core.studies import service, synthetic
from core.studies.models import Instance, Patient, Series, Study

PASSWORD = "a long unique passphrase"
LINK = re.compile(r'id="share-link" type="text" readonly value="https?://[^/"]+(/s/[A-Za-z0-9_-]+)"')
SHARE_PASSWORD = re.compile(r'id="share-password" class="share-password" type="text" readonly value="([A-Z0-9-]+)"')
DICOM_JSON = {"Accept": "application/dicom+json"}


def patient_of(session, account) -> Patient:
    link = session.scalar(select(PatientLink).where(PatientLink.account_id == account.id))
    return session.get(Patient, link.patient_ref)


def add_study(session, runtime, folder, patient: Patient, **fields) -> Study:
    spec = synthetic.StudySpec(patient_id=patient.patient_id, issuer=patient.issuer, rows=32, columns=32,
                               instances=2, **fields)
    for path in synthetic.write(synthetic.study(spec), folder / spec.study_uid):
        assert service.ingest(session, path, runtime=runtime).outcome == "stored"
    session.commit()
    return session.scalar(select(Study).where(Study.study_uid == spec.study_uid))


def first_image(session, study: Study) -> tuple[str, str]:
    """(series UID, SOP instance UID) of the study's first image."""
    instance, series = session.execute(select(Instance, Series).join(Series, Series.id == Instance.series_ref)
                                       .where(Series.study_ref == study.id).order_by(Instance.id)).first()
    return series.series_uid, instance.sop_uid


@pytest.fixture
def alex(frozen_clock, make_account):
    return make_account(email="alex@example.test", name="Alex Example", password=PASSWORD)


@pytest.fixture
def exams(session, runtime, tmp_path, alex, make_account):
    """Alex's CT (with a released report), MR and X-ray; Lee's CT."""
    patient = patient_of(session, alex)
    ct = add_study(session, runtime, tmp_path, patient, description="CT CHEST", modality="CT",
                   study_date=date(2026, 2, 20))
    mr = add_study(session, runtime, tmp_path, patient, description="MR KNEE", modality="MR",
                   study_date=date(2025, 6, 1))
    xray = add_study(session, runtime, tmp_path, patient, description="XR CHEST", modality="CR",
                     study_date=date(2024, 3, 3))
    report = service.add_report(session, runtime=runtime, study=ct, text="The lungs are clear.",
                                signed_at=clock.now() - timedelta(hours=1))
    lee = make_account(email="lee@example.test", name="Lee Other", password=PASSWORD)
    lee_ct = add_study(session, runtime, tmp_path, patient_of(session, lee), description="LEE CT", modality="CT")
    session.commit()
    return {"patient": patient, "ct": ct, "mr": mr, "xray": xray, "report": report, "lee": lee, "lee_ct": lee_ct}


def make_share(client, studies=(), *, expect: int = 200, **fields):
    """Fill in and send the share form as the signed-in ``client``; (link path, password, page)."""
    data = {"nickname": "Dr Lee, knee", "password": "yes", "expiry": "days", "days": "30", "acknowledge": "yes",
            "study": [study.study_uid for study in studies], **fields}
    answer = post_form(client, "/shares", {name: value for name, value in data.items() if value is not None})
    assert answer.status_code == expect, answer.text[:3000]
    if expect != 200:
        return None, None, answer
    found = SHARE_PASSWORD.search(answer.text)
    return LINK.search(answer.text).group(1), found.group(1) if found else None, answer


def recipient(app, address: str = "203.0.113.7") -> TestClient:
    """A second browser, elsewhere (its own cookies and address)."""
    return TestClient(app, base_url="https://testserver", client=(address, 50000))


def open_link(browser, link: str, password: str | None = None):
    answer = browser.get(link, follow_redirects=False)
    if password is not None:
        assert answer.status_code == 200 and 'name="password"' in answer.text, answer.text[:2000]
        answer = post_form(browser, link, {"password": password}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/shared", answer.text[:2000]
    return answer


def titles(page: str) -> list[str]:
    return re.findall(r'<h2><a href="/exams/[0-9.]+">([^<]+)</a></h2>', page)


def the_share(session, link: str) -> Share:
    session.expire_all()
    return sharing.find_by_token(session, link.rsplit("/", 1)[1])


# -- making a share ----------------------------------------------------------------------------------

def test_the_token_has_256_random_bits_and_only_hashes_are_stored(client, session, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)

    link, password, page = make_share(client, [exams["ct"], exams["mr"]])

    token = link.removeprefix("/s/")
    assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) * 8 >= 128
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    assert "<svg" in page.text and 'class="share-qr"' in page.text  # the QR code, inline
    assert "Send it separately from the link" in page.text and 'data-copy="share-link"' in page.text
    share = the_share(session, link)
    assert share.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr([getattr(share, column.key) for column in Share.__table__.columns])
    assert share.password_hash.startswith("$argon2id$") and password not in share.password_hash
    assert verify_password(share.password_hash, password) and re.fullmatch(r"[A-Z2-9]{4}(-[A-Z2-9]{4}){2}", password)
    assert share.study_refs == sorted([exams["ct"].id, exams["mr"].id]) and not share.portfolio
    assert share.expires_at == clock.now() + timedelta(days=30) and share.nickname == "Dr Lee, knee"
    assert (share.allow_download, share.allow_reshare, share.hide_details) == (False, False, False)
    [event] = audit_events(session, "share.created")
    assert event.actor == f"account:{share.owner_account}" and event.detail["share"] == share.id
    # shown once: nothing on the manage page gives the link or the password again
    listed = client.get("/shares").text
    assert token not in listed and password not in listed and "Dr Lee, knee" in listed


def test_the_form_starts_from_the_exams_ticked_and_explains_each_choice(client, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)

    exam_list = client.get("/exams").text
    assert 'formaction="/shares/new"' in exam_list  # the "Share" button of the selection
    assert f'href="/shares/new?study={exams["ct"].study_uid}"' in client.get(f"/exams/{exams['ct'].study_uid}").text

    form = client.get("/shares/new", params={"study": [exams["mr"].study_uid]})

    assert form.status_code == 200
    ticked = re.findall(r'name="study" value="([0-9.]+)" checked', form.text)
    assert ticked == [exams["mr"].study_uid]
    offered = re.findall(r'name="study" value="([0-9.]+)"', form.text)
    assert offered == [exams["ct"].study_uid, exams["mr"].study_uid, exams["xray"].study_uid]  # not Lee's
    assert "All my exams, including future ones" in form.text
    assert 'id="days" name="days" type="number" inputmode="numeric" min="1" max="3650" value="30"' in form.text
    assert 'value="never"' in form.text  # no cap on this site
    assert "For a second opinion (fixture)" in form.text  # the plugin's option
    assert 'name="acknowledge" value="yes" required' in form.text and 'name="csrf_token"' in form.text


@pytest.mark.parametrize(("fields", "message"), [
    ({"nickname": " "}, "Give the share a nickname"),
    ({"acknowledge": None}, "Please tick the box"),
    ({"study": []}, "Choose at least one exam to share."),
    ({"expiry": "date", "until": "soon"}, "Choose the last day the share may be opened."),
    ({"expiry": "days", "days": "0"}, "Say for how many days the share may be opened."),
])
def test_a_share_the_form_cannot_make_says_why_and_keeps_the_answers(client, session, exams, fields, message):
    sign_in_as(client, "alex@example.test", PASSWORD)

    _, _, answer = make_share(client, [exams["ct"]], expect=422, **fields)

    assert message in answer.text and 'role="alert"' in answer.text
    if "study" not in fields:
        assert re.findall(r'name="study" value="([0-9.]+)" checked', answer.text) == [exams["ct"].study_uid]
    assert session.scalar(select(Share.id)) is None and not audit_events(session, "share.created")


def test_nobody_shares_another_patients_exam(client, session, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    make_share(client, [exams["ct"], exams["lee_ct"]], expect=404)
    make_share(client, portfolio="yes", patient=str(patient_of(session, exams["lee"]).id), expect=404)
    assert session.scalar(select(Share.id)) is None


def test_the_site_caps_how_long_a_share_lasts(custom_client, tmp_path):
    from core.identity import service as identity
    from support import add_linked_patient

    client, runtime = custom_client(sharing={"max_days": 10, "default_days": 30})
    with runtime.sessions() as session:
        account = identity.create_account(session, email="cap@example.test", name="Cap Test", password=PASSWORD,
                                          how="staff", email_verified=True)
        patient = add_linked_patient(session, account.id, issuer="T", patient_id="CAP-1", family_name="Test")
        session.commit()
        study = add_study(session, runtime, tmp_path, patient, description="CT CAP")
    sign_in_as(client, "cap@example.test", PASSWORD)

    form = client.get("/shares/new").text
    assert 'id="days" name="days" type="number" inputmode="numeric" min="1" max="10" value="10"' in form
    assert 'value="never"' not in form and "A share can last at most 10 days here." in form

    _, _, refused = make_share(client, [study], expect=422, expiry="never")
    assert "A share can last at most 10 days here." in refused.text
    make_share(client, [study], expect=422, days="11")
    last_day = (clock.now() + timedelta(days=10)).astimezone(ZoneInfo("Europe/Madrid")).date().isoformat()
    link, _, _ = make_share(client, [study], expiry="date", until=last_day)
    with runtime.sessions() as session:
        share = sharing.find_by_token(session, link.rsplit("/", 1)[1])
        assert share.expires_at <= clock.now() + timedelta(days=10)


# -- the recipient -------------------------------------------------------------------------------------

def test_the_recipient_sees_exactly_the_shared_studies_route_by_route(app, client, session, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    link, password, _ = make_share(client, [exams["ct"], exams["mr"]])
    doctor = recipient(app)

    opened = open_link(doctor, link, password)

    cookie = opened.headers["set-cookie"]
    assert cookie.startswith(f"{SHARE_COOKIE}=") and "HttpOnly" in cookie and "Secure" in cookie
    assert "Path=/" in cookie and "SameSite=lax" in cookie and "Max-Age=14400" in cookie
    shared = doctor.get("/shared")
    assert shared.status_code == 200 and shared.headers["cache-control"] == "no-store"
    assert titles(shared.text) == ["CT CHEST", "MR KNEE"]
    assert "You are viewing exams shared with you." in shared.text and 'action="/shared/leave"' in shared.text
    assert "Dr Lee, knee" not in shared.text  # the nickname is the patient's own
    ct, xray, lee_ct = exams["ct"].study_uid, exams["xray"].study_uid, exams["lee_ct"].study_uid
    series_uid, sop_uid = first_image(session, exams["ct"])
    report = exams["report"].id

    for path in (f"/exams/{ct}", f"/exams/{ct}/report", f"/exams/{ct}/images", f"/exams/{ct}/viewer",
                 f"/exams/{ct}/images/{sop_uid}.jpg", f"/exams/{ct}/reports/{report}.pdf",
                 f"/exams/{ct}/reports/{report}/print", f"/dicomweb/studies/{ct}/series/{series_uid}/thumbnail"):
        assert doctor.get(path).status_code == 200, path
    for other in (xray, lee_ct):
        for path in (f"/exams/{other}", f"/exams/{other}/report", f"/exams/{other}/images",
                     f"/exams/{other}/viewer", f"/dicomweb/studies/{other}", f"/dicomweb/studies/{other}/metadata",
                     f"/dicomweb/studies/{other}/thumbnail"):
            assert doctor.get(path, headers=DICOM_JSON if "metadata" in path else {}).status_code == 404, path
    found = doctor.get("/dicomweb/studies", headers=DICOM_JSON).json()
    assert {dataset["0020000D"]["Value"][0] for dataset in found} == {ct, exams["mr"].study_uid}
    assert "The lungs are clear." in doctor.get(f"/exams/{ct}/report").text
    assert "XR CHEST" not in doctor.get("/exams").text and "LEE CT" not in doctor.get("/exams").text
    for path in ("/shares", "/shares/new", "/account"):  # the patient's own pages, and sharing further
        assert doctor.get(path).status_code == 403, path

    # no download: the buttons are not offered, and asking anyway is refused
    images, summary = doctor.get(f"/exams/{ct}/images").text, doctor.get(f"/exams/{ct}").text
    assert "?download=1" not in images and 'action="/exports/new"' not in images
    assert "Download" not in doctor.get(f"/exams/{ct}/report").text and "Share this exam" not in summary
    assert 'id="viewer-save-image"' not in doctor.get(f"/exams/{ct}/viewer").text
    assert doctor.get(f"/exams/{ct}/images/{sop_uid}.jpg?download=1").status_code == 403
    assert doctor.get(f"/exams/{ct}/reports/{report}.pdf?download=1").status_code == 403
    assert doctor.get(f"/exports/new?format=zip&study={ct}").status_code == 403
    assert post_form(doctor, "/exports", {"format": "zip", "study": ct, "acknowledge": "yes"}).status_code == 403
    assert doctor.get(f"/dicomweb/studies/{ct}", headers={"Accept": "multipart/related; type=\"application/dicom\""}
                      ).status_code == 403
    # the viewer's own reads still work
    assert doctor.get(f"/dicomweb/studies/{ct}/series/{series_uid}/metadata", headers=DICOM_JSON).status_code == 200

    share = the_share(session, link)
    assert share.times_opened == 1 and share.last_opened_at == clock.now()
    [opened_event] = audit_events(session, "share.opened")
    assert opened_event.actor == f"share:{share.id}" and opened_event.detail["nickname"] == "Dr Lee, knee"
    listed = [event for event in audit_events(session, "studies.listed") if event.actor == f"share:{share.id}"]
    assert listed and listed[0].detail["count"] == 2
    assert "Opened" in client.get("/shares").text and "1 time" in client.get("/shares").text


def test_a_share_that_allows_download_offers_and_serves_the_files(app, client, session, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    link, _, _ = make_share(client, [exams["ct"]], password=None, download="yes")
    doctor = recipient(app)
    open_link(doctor, link)  # no password: straight in
    ct = exams["ct"].study_uid
    _, sop_uid = first_image(session, exams["ct"])

    assert "?download=1" in doctor.get(f"/exams/{ct}/images").text
    assert 'id="viewer-save-image"' in doctor.get(f"/exams/{ct}/viewer").text
    downloaded = doctor.get(f"/exams/{ct}/images/{sop_uid}.jpg?download=1")
    assert downloaded.status_code == 200 and downloaded.headers["content-disposition"].startswith("attachment")
    assert doctor.get(f"/exports/new?format=zip&study={ct}").status_code == 200
    whole = doctor.get(f"/dicomweb/studies/{ct}", headers={"Accept": "multipart/related; type=\"application/dicom\""})
    assert whole.status_code == 200 and whole.content.count(b"DICM") == 2
    assert doctor.get(f"/dicomweb/studies/{exams['mr'].study_uid}").status_code == 404


def test_opening_again_in_the_same_browser_asks_nothing_more(app, client, session, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    link, password, _ = make_share(client, [exams["ct"]])
    doctor = recipient(app)
    open_link(doctor, link, password)

    again = doctor.get(link, follow_redirects=False)

    assert again.status_code == 303 and again.headers["location"] == "/shared"
    assert the_share(session, link).times_opened == 1


def test_leaving_ends_the_recipients_session(app, client, session, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    link, password, _ = make_share(client, [exams["ct"]])
    doctor = recipient(app)
    open_link(doctor, link, password)

    left = post_form(doctor, "/shared/leave", follow_redirects=False)

    assert left.status_code == 303 and left.headers["location"] == "/shared/left"
    assert SHARE_COOKIE not in doctor.cookies
    assert "You have closed the shared exams" in doctor.get("/shared/left").text
    assert session.scalar(select(ShareSession.id_hash)) is None
    assert doctor.get(f"/exams/{exams['ct'].study_uid}").status_code == 403
    assert doctor.get("/shared").status_code == 404


def test_a_link_that_does_not_exist_says_so(app, exams):
    answer = recipient(app).get("/s/" + "x" * 43)
    assert answer.status_code == 404 and "This link is not valid." in answer.text


# -- revoking and expiry ---------------------------------------------------------------------------------

def test_a_revoked_link_says_so_and_its_live_session_ends_at_the_next_request(app, client, session, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    link, password, _ = make_share(client, [exams["ct"]])
    doctor = recipient(app)
    open_link(doctor, link, password)
    share = the_share(session, link)
    assert doctor.get(f"/exams/{exams['ct'].study_uid}").status_code == 200

    confirm = client.get(f"/shares/{share.id}/revoke")
    assert confirm.status_code == 200 and "Turn off “Dr Lee, knee”?" in confirm.text
    assert 'name="csrf_token"' in confirm.text
    done = post_form(client, f"/shares/{share.id}/revoke", follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/shares?revoked=1"

    assert doctor.get(f"/exams/{exams['ct'].study_uid}").status_code == 403  # the very next request
    refused = doctor.get("/shared")
    assert refused.status_code == 410 and "This share is no longer open" in refused.text
    assert SHARE_COOKIE not in doctor.cookies
    again = recipient(app).get(link)
    assert again.status_code == 410 and "This share was turned off by the person who shared it." in again.text
    assert "Turned off" in client.get("/shares").text
    assert the_share(session, link).revoked_at == clock.now()
    [event] = audit_events(session, "share.revoked")
    assert event.detail == {"share": share.id, "nickname": "Dr Lee, knee"}


def test_an_expired_link_says_so_and_its_live_session_ends(app, client, session, exams, frozen_clock):
    sign_in_as(client, "alex@example.test", PASSWORD)
    link, _, _ = make_share(client, [exams["ct"]], password=None, days="2")
    doctor = recipient(app)
    open_link(doctor, link)
    assert doctor.get(f"/exams/{exams['ct'].study_uid}").status_code == 200

    frozen_clock.advance(timedelta(days=2, seconds=1))

    assert doctor.get(f"/exams/{exams['ct'].study_uid}").status_code == 403
    assert doctor.get("/shared").status_code == 410
    expired = recipient(app).get(link)
    assert expired.status_code == 410 and "This share expired on March 3, 2026" in expired.text
    sign_in_as(client, "alex@example.test", PASSWORD)
    assert "Expired" in client.get("/shares").text
    assert client.get(f"/shares/{the_share(session, link).id}/revoke").text.count("already closed") == 1


def test_the_recipient_session_lasts_the_sites_hours(app, client, session, exams, frozen_clock):
    sign_in_as(client, "alex@example.test", PASSWORD)
    link, _, _ = make_share(client, [exams["ct"]], password=None)
    doctor = recipient(app)
    open_link(doctor, link)

    frozen_clock.advance(timedelta(hours=4, seconds=1))

    assert doctor.get(f"/exams/{exams['ct'].study_uid}").status_code == 403
    open_link(doctor, link)  # the link itself still works: opening it again starts a new session
    assert doctor.get(f"/exams/{exams['ct'].study_uid}").status_code == 200


def test_nobody_sees_or_turns_off_someone_elses_share(client, session, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    link, _, _ = make_share(client, [exams["ct"]])
    share = the_share(session, link)
    client.cookies.clear()
    sign_in_as(client, "lee@example.test", PASSWORD)

    assert "Dr Lee, knee" not in client.get("/shares").text
    assert client.get(f"/shares/{share.id}/revoke").status_code == 404
    assert post_form(client, f"/shares/{share.id}/revoke").status_code == 404
    assert client.get("/shares/999999/revoke").status_code == 404
    assert the_share(session, link).revoked_at is None


# -- wrong passwords -------------------------------------------------------------------------------------

def test_wrong_passwords_are_slowed_down_per_share(app, client, session, exams, frozen_clock):
    sign_in_as(client, "alex@example.test", PASSWORD)
    link, password, _ = make_share(client, [exams["ct"]])
    doctor = recipient(app)
    doctor.get(link)

    for _attempt in range(4):  # three free tries, then a wait
        wrong = post_form(doctor, link, {"password": "AAAA-BBBB-CCCC"}, follow_redirects=False)
        assert wrong.status_code == 403 and "That password is not right." in wrong.text
    slowed = post_form(doctor, link, {"password": password}, follow_redirects=False)
    assert slowed.status_code == 429 and "Too many attempts." in slowed.text
    elsewhere = recipient(app, "198.51.100.9")  # another address: the share itself is slowed down
    elsewhere.get(link)
    assert post_form(elsewhere, link, {"password": password}, follow_redirects=False).status_code == 429
    assert len(audit_events(session, "share.password_failed")) == 4
    assert SHARE_COOKIE not in doctor.cookies

    frozen_clock.advance(timedelta(seconds=3))
    open_link(doctor, link, password.lower().replace("-", " "))  # typed loosely: still right


def test_wrong_passwords_are_slowed_down_per_address(app, client, session, exams, frozen_clock):
    sign_in_as(client, "alex@example.test", PASSWORD)
    links = [make_share(client, [exams["ct"]], nickname=f"share {number}")[:2] for number in range(5)]
    guesser = recipient(app, "192.0.2.66")

    for link, _password in links[:4]:  # one wrong guess at each of four shares
        guesser.get(link)
        assert post_form(guesser, link, {"password": "AAAA-BBBB-CCCC"}).status_code == 403
    link, password = links[4]
    guesser.get(link)
    assert post_form(guesser, link, {"password": password}, follow_redirects=False).status_code == 429
    open_link(recipient(app, "198.51.100.10"), link, password)  # the right person, from elsewhere


# -- re-sharing ------------------------------------------------------------------------------------------

def test_a_reshare_appears_under_its_original_and_revoking_the_original_closes_both(app, client, session, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    link, password, _ = make_share(client, [exams["ct"], exams["mr"]], nickname="Dr Lee", reshare="yes")
    doctor = recipient(app)
    open_link(doctor, link, password)
    shared = doctor.get("/shared").text
    assert 'href="/shares/new"' in shared and "Share these exams" in shared

    form = doctor.get("/shares/new").text
    assert re.findall(r'name="study" value="([0-9.]+)"', form) == [exams["ct"].study_uid, exams["mr"].study_uid]
    assert 'name="reshare"' not in form and 'name="download"' not in form  # the original allows neither
    assert 'name="hide_details"' in form
    re_link, re_password, created = make_share(doctor, [exams["mr"]], nickname="Radiologist friend", download="yes")
    assert "Back to the shared exams" in created.text
    reshare = the_share(session, re_link)
    original = the_share(session, link)
    assert (reshare.parent_ref, reshare.owner_account, reshare.created_by) == (
        original.id, original.owner_account, f"share:{original.id}")
    assert reshare.study_refs == [exams["mr"].id] and not reshare.allow_download and not reshare.allow_reshare
    assert reshare.expires_at == original.expires_at
    friend = recipient(app, "198.51.100.20")
    open_link(friend, re_link, re_password)
    assert titles(friend.get("/shared").text) == ["MR KNEE"]
    assert friend.get(f"/exams/{exams['ct'].study_uid}").status_code == 404

    managed = client.get("/shares").text
    outer = re.search(rf'<li class="share-card panel" id="share-{original.id}">(.*?)</li>\s*</ol>\s*</li>',
                      managed, re.S)
    assert outer and f'id="share-{reshare.id}"' in outer.group(1) and "Radiologist friend" in outer.group(1)
    assert "Shared further by the recipient" in managed
    confirm = client.get(f"/shares/{original.id}/revoke").text
    assert "that share will be turned off too" in confirm

    post_form(client, f"/shares/{original.id}/revoke")

    assert friend.get("/shared").status_code == 410 and doctor.get("/shared").status_code == 410
    assert recipient(app).get(re_link).status_code == 410
    assert the_share(session, re_link).revoked_at is not None
    assert len(audit_events(session, "share.revoked")) == 2


def test_a_reshare_keeps_the_originals_limits(app, client, session, runtime, exams):
    """Hidden details stay hidden, download stays off, and it ends no later than the original."""
    sign_in_as(client, "alex@example.test", PASSWORD)
    link, password, _ = make_share(client, [exams["ct"]], reshare="yes", hide_details="yes", days="5")
    doctor = recipient(app)
    open_link(doctor, link, password)
    assert "stay hidden, as in the share you were given" in doctor.get("/shares/new").text
    original = the_share(session, link)

    reshare = sharing.create(session, runtime, sharing.principal_for(session, doctor.cookies[SHARE_COOKIE]),
                             nickname="further", study_uids=[exams["ct"].study_uid], allow_download=True,
                             allow_reshare=True, hide_details=False, expires_at=None, acknowledged=True).share

    assert (reshare.hide_details, reshare.allow_download, reshare.allow_reshare) == (True, False, False)
    assert reshare.expires_at == original.expires_at == clock.now() + timedelta(days=5)


def test_a_share_without_reshare_cannot_be_shared_further(app, client, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    link, password, _ = make_share(client, [exams["ct"]])
    doctor = recipient(app)
    open_link(doctor, link, password)

    assert "Share these exams" not in doctor.get("/shared").text
    _, _, refused = make_share(doctor, [exams["ct"]], expect=403)
    assert "Not allowed" in refused.text


# -- the whole portfolio -----------------------------------------------------------------------------------

def test_a_portfolio_share_includes_a_study_ingested_later(app, client, session, runtime, tmp_path, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    link, password, _ = make_share(client, portfolio="yes", patient=str(exams["patient"].id), nickname="Everything")
    assert the_share(session, link).portfolio
    doctor = recipient(app)
    open_link(doctor, link, password)
    assert titles(doctor.get("/shared").text) == ["CT CHEST", "MR KNEE", "XR CHEST"]

    later = add_study(session, runtime, tmp_path, exams["patient"], description="US ABDOMEN", modality="US",
                      study_date=date(2026, 2, 28))

    assert titles(doctor.get("/shared").text) == ["US ABDOMEN", "CT CHEST", "MR KNEE", "XR CHEST"]
    assert doctor.get(f"/exams/{later.study_uid}").status_code == 200
    assert doctor.get(f"/exams/{exams['lee_ct'].study_uid}").status_code == 404
    assert "All exams, including future ones" in client.get("/shares").text


# -- pages in Spanish, and the menu -----------------------------------------------------------------------

def test_the_share_pages_speak_spanish(app, client, session, exams):
    sign_in_as(client, "alex@example.test", PASSWORD)
    client.get("/language/es")
    assert 'href="/shares">Compartidos</a>' in client.get("/exams").text

    form = client.get("/shares/new").text
    assert "Compartir exámenes" in form and "Todos mis exámenes, incluidos los futuros" in form
    link, password, created = make_share(client, [exams["ct"]])
    assert "Su enlace está listo" in created.text and "Envíela por separado del enlace" in created.text
    doctor = recipient(app)
    doctor.get("/language/es")
    asked = doctor.get(link)
    assert "Alguien ha compartido exámenes con usted" in asked.text
    wrong = post_form(doctor, link, {"password": "AAAA-BBBB-CCCC"})
    assert "Esa contraseña no es correcta." in wrong.text
    open_link(doctor, link, password)
    assert "Está viendo exámenes que han compartido con usted." in doctor.get("/shared").text
    assert "Activo" in client.get("/shares").text


# -- hooks through the pages -------------------------------------------------------------------------------

def test_the_plugins_option_reaches_the_recipients_scope_and_a_failing_observer_stops_nothing(
        app, client, session, exams, caplog):
    sign_in_as(client, "alex@example.test", PASSWORD)
    fixture_plugin.CALLS["share_created"].clear()

    link, _, _ = make_share(client, [exams["ct"]], password=None, option="fixture_second_opinion",
                            nickname="OBSERVER FAILS")

    share = the_share(session, link)
    assert share.options == {"fixture_second_opinion": True}
    assert "option:fixture_second_opinion" in sharing.scope_of(share)
    assert "plugin 'fixture' failed in share_created" in caplog.text
    assert fixture_plugin.CALLS["share_created"] == [{"share": share.id, "nickname": "OBSERVER FAILS", "parent": None}]
    assert "For a second opinion (fixture)" in client.get("/shares").text
