"""Sharing by email (issue 7): the doctor's email in the language the patient picks, with the
link and never the password; and, when the site makes them, guest accounts that sign in with
an emailed code and see only the shares sent to their address."""
from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from support import add_linked_patient, audit_events, make_site, messages_to, post_form, sign_in_as
from test_exports import PASSWORD, account_with_patient, ingest_exam, principal_of

from core import clock
from core.access import SHARE_COOKIE
from core.identity import sessions
from core.identity import service as identity
from core.identity.models import Account, PatientLink
from core.sharing import service
from core.sharing.models import Share

BASE_URL = "https://portal.example.test"
DOCTOR = "dr.ruiz@clinic.example"
LINK = re.compile(re.escape(BASE_URL) + r"/s/([A-Za-z0-9_-]{40,})")


@pytest.fixture
def guests_on() -> bool:
    return True


@pytest.fixture
def site(tmp_path, database_url, guests_on):
    return make_site(tmp_path, database=database_url, sharing={"guest_accounts": guests_on},
                     site={"name": "Test Imaging", "timezone": "Europe/Madrid", "languages": ["en", "es"],
                           "base_url": BASE_URL})


@pytest.fixture
def patient(session, runtime, tmp_path):
    """A signed-up patient with two small exams (real DICOM, ingested)."""
    account, record = account_with_patient(session, "alex@example.test", "INV-1")
    knee, _ = ingest_exam(session, runtime, tmp_path, record, description="MR KNEE", modality="MR", instances=1)
    chest, _ = ingest_exam(session, runtime, tmp_path, record, description="CT CHEST", instances=1)
    return account, record, knee, chest


def second_patient(session):
    """Sam Other, signed up as sam@example.test."""
    account = identity.create_account(session, email="sam@example.test", name="Sam Other", how="staff",
                                      password=PASSWORD, email_verified=True)
    record = add_linked_patient(session, account.id, issuer="T", patient_id="INV-2", family_name="Other",
                                given_name="Sam", birth_date=date(1975, 5, 6))
    session.commit()
    return record


def email_form(study_uids, **fields) -> dict:
    return {"study": study_uids, "email": DOCTOR, "nickname": "Dr Ruiz", "expiry": "days", "days": "30",
            "language": "es", "acknowledge": "yes", **fields}


def send(client, study_uids, **fields):
    return post_form(client, "/shares/email", email_form(study_uids, **fields))


def test_email_reaches_the_doctor_in_the_chosen_language_with_the_link_and_without_the_password(
        client, session, patient):
    account, record, knee, chest = patient
    sign_in_as(client, account.email, PASSWORD)
    form = client.get(f"/shares/email?study={knee.study_uid}")
    assert form.status_code == 200 and "MR KNEE" in form.text and "CT CHEST" in form.text
    assert re.search(r'value="%s" checked' % re.escape(knee.study_uid), form.text)

    answer = send(client, [knee.study_uid], message="Hola doctor,\nle envío la resonancia.", password="yes")
    assert answer.status_code == 200, answer.text[:500]
    assert answer.headers["cache-control"] == "no-store"
    share = session.scalar(select(Share).where(Share.recipient_email == DOCTOR))
    assert share.study_refs == [knee.id] and share.password_hash and share.owner_account == account.id
    password = re.search(r'id="share-password"[^>]*value="([A-Z0-9-]+)"', answer.text).group(1)
    assert security_ok(share.password_hash, password)  # the password shown once is the share's

    [mail] = messages_to(session, DOCTOR)
    assert mail.language == "es"
    assert mail.subject == "Alex Example le ha enviado exámenes a través de Test Imaging"
    assert "Para ver los exámenes, abra este enlace:" in mail.body_text
    assert "le envío la resonancia." in mail.body_text and "le envío la resonancia." in mail.body_html
    assert "También necesitará una contraseña" in mail.body_text
    [token] = set(LINK.findall(mail.body_text))
    assert f"{BASE_URL}/s/{token}" in mail.body_html
    assert service.find_by_token(session, token).id == share.id
    for body in (mail.subject, mail.body_text, mail.body_html):
        assert password not in body and password.replace("-", "") not in body
    assert "MR KNEE" not in mail.body_text  # no health information in the email
    [emailed] = audit_events(session, "share.emailed")
    assert emailed.detail["recipient"] == DOCTOR and emailed.detail["language"] == "es"


def security_ok(stored_hash: str, password: str) -> bool:
    from core.identity import security

    return security.verify_password(stored_hash, password)


def test_the_email_is_in_english_when_chosen_and_hides_the_name_when_the_patient_hides_details(
        client, session, patient):
    account, record, knee, chest = patient
    sign_in_as(client, account.email, PASSWORD)
    client.get("/language/es")
    assert send(client, [chest.study_uid], language="en", hide_details="yes").status_code == 200
    [mail] = messages_to(session, DOCTOR)
    assert mail.language == "en" and mail.subject == "Exams sent to you through Test Imaging"
    assert "To see the exams, open this link:" in mail.body_text
    assert "Alex" not in mail.body_text + mail.body_html + mail.subject
    assert "You will also need a password" not in mail.body_text  # none was asked for


@pytest.mark.parametrize("language, fields, problem", [
    ("es", {"email": "not-an-address"}, "Escriba la dirección de correo electrónico del médico"),
    ("es", {"message": "x" * 1001}, "El mensaje puede tener como máximo 1000 caracteres."),
    ("en", {"acknowledge": ""}, "Please tick the box to confirm"),
    ("en", {"study": []}, "Choose at least one exam to share."),
])
def test_a_refused_email_share_says_why_and_stores_nothing(client, session, patient, language, fields, problem):
    account, record, knee, chest = patient
    sign_in_as(client, account.email, PASSWORD)
    client.get(f"/language/{language}")
    answer = post_form(client, "/shares/email", {**email_form([knee.study_uid]), **fields})
    assert answer.status_code == 422
    assert problem in answer.text
    assert session.scalar(select(Share)) is None and messages_to(session, DOCTOR) == []


def test_another_patients_exam_cannot_be_sent(client, session, runtime, tmp_path, patient):
    account, record, knee, chest = patient
    theirs, _ = ingest_exam(session, runtime, tmp_path, second_patient(session), instances=1)
    sign_in_as(client, account.email, PASSWORD)
    assert send(client, [theirs.study_uid]).status_code == 404
    assert session.scalar(select(Share)) is None and messages_to(session, DOCTOR) == []


def test_a_proxy_without_the_share_permission_cannot_send_by_email(client, session, patient):
    account, record, knee, chest = patient
    link = session.scalar(select(PatientLink).where(PatientLink.account_id == account.id))
    link.permissions = ["view_images", "view_reports"]
    session.commit()
    sign_in_as(client, account.email, PASSWORD)
    assert "You may not share this patient" in client.get("/shares/email").text
    answer = send(client, [knee.study_uid])
    assert answer.status_code == 422 and "You may not share this patient" in answer.text
    assert messages_to(session, DOCTOR) == []


def test_a_recipient_allowed_to_re_share_can_send_what_they_see_by_email(app, session, runtime, patient):
    account, record, knee, chest = patient
    original = service.create(session, runtime, principal_of(account, record), nickname="Dr Lee",
                              study_uids=[knee.study_uid], allow_reshare=True, acknowledged=True)
    cookie = service.open_share(session, runtime, original.share, client="203.0.113.5")
    session.commit()
    with TestClient(app, base_url="https://testserver") as recipient:
        recipient.cookies.set(SHARE_COOKIE, cookie)
        form = recipient.get("/shares/email")
        assert form.status_code == 200 and "MR KNEE" in form.text and "CT CHEST" not in form.text
        assert send(recipient, [knee.study_uid], language="en").status_code == 200
        assert send(recipient, [chest.study_uid], language="en").status_code == 404
    reshare = session.scalar(select(Share).where(Share.recipient_email == DOCTOR))
    assert reshare.parent_ref == original.share.id and reshare.owner_account == account.id
    [mail] = messages_to(session, DOCTOR)
    assert mail.subject == "Exams sent to you through Test Imaging"  # the patient's name is theirs to give


@pytest.mark.parametrize("guests_on", [False])
def test_without_guest_accounts_the_email_offers_no_sign_in(client, session, patient):
    account, record, knee, chest = patient
    sign_in_as(client, account.email, PASSWORD)
    assert send(client, [knee.study_uid], language="en").status_code == 200
    [mail] = messages_to(session, DOCTOR)
    assert "/shared/guest" not in mail.body_text and identity.account_by_email(session, DOCTOR) is None


def test_an_address_with_a_portal_account_gets_no_guest_account(client, session, patient):
    account, record, knee, chest = patient
    identity.create_account(session, email=DOCTOR, name="Dr Ruiz", how="staff", password=PASSWORD)
    session.commit()
    sign_in_as(client, account.email, PASSWORD)
    assert send(client, [knee.study_uid], language="en").status_code == 200
    assert identity.account_by_email(session, DOCTOR).role == "user"
    assert "/shared/guest" not in messages_to(session, DOCTOR)[-1].body_text


# -- guest accounts -------------------------------------------------------------------------------

def guest_sign_in(client, session, email: str = DOCTOR):
    assert post_form(client, "/shared/guest/signin", {"email": email}).status_code == 200
    code = re.findall(r"\b\d{6}\b", messages_to(session, email)[-1].body_text)[-1]
    answer = post_form(client, "/shared/guest/signin/code", {"email": email, "code": code}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/shared/guest", answer.text[:300]
    return answer


def test_a_guest_signs_in_with_a_code_and_sees_only_the_open_shares_sent_to_their_address(
        app, client, session, runtime, tmp_path, patient):
    account, record, knee, chest = patient
    other_record = second_patient(session)
    theirs, _ = ingest_exam(session, runtime, tmp_path, other_record, description="CR HAND", modality="CR",
                            instances=1)
    sign_in_as(client, account.email, PASSWORD)
    assert send(client, [knee.study_uid], language="en").status_code == 200
    assert send(client, [chest.study_uid], language="en", email="someone.else@clinic.example").status_code == 200
    revoked = send(client, [chest.study_uid], language="en", nickname="revoked")
    assert revoked.status_code == 200
    service.revoke(session, principal_of(account, record),
                   session.scalar(select(Share).where(Share.nickname == "revoked")).id)
    session.commit()
    with TestClient(app, base_url="https://testserver") as second:
        sign_in_as(second, "sam@example.test", PASSWORD)
        assert send(second, [theirs.study_uid], language="es", hide_details="yes").status_code == 200

    guest = identity.account_by_email(session, DOCTOR)
    assert guest.role == "guest" and guest.password_hash is None
    assert f"{BASE_URL}/shared/guest/signin" in messages_to(session, DOCTOR)[0].body_text

    with TestClient(app, base_url="https://testserver") as doctor:
        guest_sign_in(doctor, session)
        listing = doctor.get("/shared/guest")
        assert listing.status_code == 200
        assert "Alex Example" in listing.text and "MR KNEE" in listing.text
        assert "The patient chose to hide their details" in listing.text
        assert "CR HAND" not in listing.text  # nor the exam's description (tests/core/test_deidentify.py)
        assert "Sam" not in listing.text  # that patient hid their details
        assert "CT CHEST" not in listing.text  # sent to someone else, or turned off
        assert len(audit_events(session, "share.listed")) == 2
        # a guest reaches nothing but this list
        for path in ("/exams", f"/exams/{knee.study_uid}", "/account", "/shares/new", "/shares/email", "/shares"):
            assert doctor.get(path).status_code == 403, path
        assert doctor.get("/dicomweb/studies").status_code in (401, 403)

        mine = session.scalar(select(Share).where(Share.recipient_email == DOCTOR, Share.hide_details.is_(False),
                                                  Share.revoked_at.is_(None)))
        opened = post_form(doctor, f"/shared/guest/{mine.id}/open", follow_redirects=False)
        assert opened.status_code == 303 and opened.headers["location"] == "/shared"
        assert SHARE_COOKIE in doctor.cookies
        assert doctor.get(f"/exams/{knee.study_uid}").status_code == 200  # as the share's recipient
        assert doctor.get(f"/exams/{chest.study_uid}").status_code == 404
        assert doctor.get("/shared/guest").status_code == 200  # the list is still theirs
        elsewhere = session.scalar(select(Share).where(Share.recipient_email == "someone.else@clinic.example"))
        assert post_form(doctor, f"/shared/guest/{elsewhere.id}/open").status_code == 404


def test_a_guest_opens_a_protected_share_only_with_its_password(app, client, session, patient):
    account, record, knee, chest = patient
    sign_in_as(client, account.email, PASSWORD)
    answer = send(client, [knee.study_uid], language="en", password="yes")
    password = re.search(r'id="share-password"[^>]*value="([A-Z0-9-]+)"', answer.text).group(1)
    share = session.scalar(select(Share))
    with TestClient(app, base_url="https://testserver") as doctor:
        guest_sign_in(doctor, session)
        assert 'name="password"' in doctor.get("/shared/guest").text
        wrong = post_form(doctor, f"/shared/guest/{share.id}/open", {"password": "AAAA-BBBB-CCCC"},
                          follow_redirects=False)
        assert wrong.status_code == 403 and "That password is not right" in wrong.text
        assert SHARE_COOKIE not in doctor.cookies
        right = post_form(doctor, f"/shared/guest/{share.id}/open", {"password": password}, follow_redirects=False)
        assert right.status_code == 303 and SHARE_COOKIE in doctor.cookies


def test_the_guest_sign_in_answers_alike_for_unknown_addresses_and_slows_down_wrong_codes(
        app, client, session, patient, frozen_clock):
    account, record, knee, chest = patient
    sign_in_as(client, account.email, PASSWORD)
    assert send(client, [knee.study_uid], language="en").status_code == 200
    with TestClient(app, base_url="https://testserver") as doctor:
        known = post_form(doctor, "/shared/guest/signin", {"email": DOCTOR})
        unknown = post_form(doctor, "/shared/guest/signin", {"email": "nobody@clinic.example"})
        assert known.status_code == unknown.status_code == 200
        assert known.text.replace(DOCTOR, "@") == unknown.text.replace("nobody@clinic.example", "@")
        assert messages_to(session, "nobody@clinic.example") == []
        assert len(messages_to(session, DOCTOR)) == 2  # the share, then the code

        def attempt(code: str, email: str = DOCTOR):
            return post_form(doctor, "/shared/guest/signin/code", {"email": email, "code": code},
                             follow_redirects=False)

        stranger = attempt("123456", "nobody@clinic.example")
        assert stranger.status_code == 200 and "This code is not right" in stranger.text
        for _ in range(3):
            assert "This code is not right" in attempt("000000").text
        code = re.findall(r"\b\d{6}\b", messages_to(session, DOCTOR)[-1].body_text)[-1]
        assert "Too many attempts" in attempt(code).text  # right, but held back
        clock.advance(timedelta(minutes=1))
        assert attempt(code).status_code == 303


def test_codes_are_not_sent_faster_than_the_throttle_allows(app, client, session, patient, frozen_clock):
    account, record, knee, chest = patient
    sign_in_as(client, account.email, PASSWORD)
    assert send(client, [knee.study_uid], language="en").status_code == 200
    with TestClient(app, base_url="https://testserver") as doctor:
        for _ in range(6):
            assert post_form(doctor, "/shared/guest/signin", {"email": DOCTOR}).status_code == 200
        assert len(messages_to(session, DOCTOR)) == 1 + 4  # the share, then four codes before the address is held back
        clock.advance(timedelta(minutes=15))
        post_form(doctor, "/shared/guest/signin", {"email": DOCTOR})
        assert len(messages_to(session, DOCTOR)) == 6


def test_a_guest_cookie_is_a_guest_principal_with_no_scope(session, patient):
    account, record, knee, chest = patient
    guest = identity.create_account(session, email=DOCTOR, name="", how="share", role="guest")
    link = session.scalar(select(PatientLink).where(PatientLink.account_id == account.id))
    session.add(PatientLink(account_id=guest.id, patient_ref=link.patient_ref, created_at=clock.now()))
    session.flush()
    token = sessions.start(session, account=guest, site=session.info["runtime"].site)
    principal = sessions.principal_for(session, sessions.find(session, token=token, site=session.info["runtime"].site))
    assert principal.kind == "guest" and principal.roles == {"guest"} and not principal.scope
    assert session.get(Account, guest.id).password_hash is None
