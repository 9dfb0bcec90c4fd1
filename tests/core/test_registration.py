"""Self-registration in four steps, and asking the help desk for an account: each
rule has a test that would fail without it."""
import hashlib
import re
from contextlib import contextmanager
from datetime import date, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker
from support import last_code, make_site, messages_to, post_form

from core import clock
from core.app import build_runtime, create_app
from core.audit.models import AuditEvent
from core.identity import registration, service
from core.identity.models import Account, AccountRequest, PatientLink, RegistrationDraft, Throttle, WebSession
from core.identity.registration import DRAFT_COOKIE, Details
from core.studies.models import Patient, Study

pytestmark = pytest.mark.usefixtures("frozen_clock")  # 2026-03-01 09:30 UTC
PASSWORD = "a long unique passphrase"
EMAIL = "maria@example.test"
DETAILS = {"name": "María García López", "birth_day": "28", "birth_month": "2", "birth_year": "1984",
           "email": EMAIL, "mobile": ""}
GENERIC_FAILURE = "We could not match these details to a record of ours."


def add_patient(session, *, patient_id="MRN-100", family="García López", given="María", born=date(1984, 2, 28),
                issuer="HOSP", accession="ACC-100", email=None):
    patient = Patient(issuer=issuer, patient_id=patient_id, family_name=family, given_name=given, birth_date=born,
                      email=email, created_at=clock.now())
    session.add(patient)
    session.flush()
    if accession:
        session.add(Study(patient_ref=patient.id, study_uid=f"1.2.826.0.1.9.{patient.id}",
                          accession_number=accession, created_at=clock.now()))
    session.commit()
    return patient


@contextmanager
def client_for(tmp_path, database_url, session, **overrides):
    """A client of a site with other settings, sharing the test's transaction."""
    site = make_site(tmp_path / "custom", database=database_url, **overrides)
    runtime = build_runtime(site)
    runtime.sessions = sessionmaker(bind=session.bind, join_transaction_mode="create_savepoint",
                                    expire_on_commit=False, info={"plugins": runtime.pm, "runtime": runtime})
    with TestClient(create_app(site, runtime), base_url="https://testserver") as client:
        yield client


def details(client, **changes):
    return post_form(client, "/register", {**DETAILS, **changes}, follow_redirects=False)


def verify(client, **changes):
    data = {"last_name": "García López", "kind": "patient_id", "number": "MRN-100", **changes}
    return post_form(client, "/register/verify", data, follow_redirects=False)


def enter_code(client, code):
    return post_form(client, "/register/email", {"code": code}, follow_redirects=False)


def choose_password(client, password=PASSWORD, confirmation=None):
    data = {"password": password, "confirmation": password if confirmation is None else confirmation}
    return post_form(client, "/register/password", data, follow_redirects=False)


def through_step_3(client, session, email=EMAIL):
    assert details(client, email=email).headers["location"] == "/register/verify"
    assert verify(client).headers["location"] == "/register/email"
    assert enter_code(client, last_code(session, email)).headers["location"] == "/register/password"


def actions(session) -> list[str]:
    return session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)).all()


def accounts(session) -> int:
    return session.scalar(select(func.count(Account.id)))


# -- step 1 ----------------------------------------------------------------------------

def test_step_1_asks_for_details_with_labels_and_autocomplete(client):
    page = client.get("/register").text
    assert "Step 1 of 4" in page
    for name, autocomplete in (("name", "name"), ("birth_day", "bday-day"), ("birth_month", "bday-month"),
                               ("birth_year", "bday-year"), ("email", "email"), ("mobile", "tel")):
        assert f'<label for="{name}">' in page and f'autocomplete="{autocomplete}"' in page
    assert 'name="csrf_token"' in page
    # the reader's locale decides the order: month first in English, day first in Spanish
    assert page.index('id="birth_month"') < page.index('id="birth_day"')
    spanish = client.get("/register", headers={"Accept-Language": "es"}).text
    assert spanish.index('id="birth_day"') < spanish.index('id="birth_month"') and ">febrero<" in spanish


@pytest.mark.parametrize("changes, field, message", [
    ({"name": "  "}, "name", "Enter your full name."),
    ({"birth_day": ""}, "birth_date", "Enter your date of birth: day, month and year."),
    ({"birth_day": "30"}, "birth_date", "This date does not exist."),
    ({"birth_year": "84"}, "birth_date", "Enter the year with four digits"),
    ({"birth_day": "x"}, "birth_date", "with numbers only"),
    ({"birth_year": "2026", "birth_month": "3", "birth_day": "2"}, "birth_date", "must be in the past"),
    ({"email": "maria-at-example"}, "email", "Enter an email address such as"),
    ({"mobile": "call me"}, "mobile", "Enter a mobile number, such as"),
])
def test_step_1_explains_each_wrong_field(client, session, changes, field, message):
    answer = details(client, **changes)
    assert answer.status_code == 200 and message in answer.text
    assert 'role="alert"' in answer.text and f'id="{field}-error"' in answer.text
    assert re.search(rf'aria-describedby="[^"]*\b{field}-error\b', answer.text)  # the field points at its error
    assert session.scalar(select(func.count()).select_from(RegistrationDraft)) == 0
    assert DRAFT_COOKIE not in client.cookies


def test_step_1_keeps_what_was_typed(client):
    page = details(client, email="bad", name="María García López").text
    assert 'value="María García López"' in page and '<option value="2" selected>' in page


def test_the_draft_cookie_is_a_host_cookie_and_only_its_hash_is_stored(client, session):
    answer = details(client, mobile="+34 600 123 456")
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{DRAFT_COOKIE}=") and "Secure" in cookie and "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower() and "Path=/" in cookie and "Domain" not in cookie
    token = client.cookies[DRAFT_COOKIE]
    assert len(token) >= 43
    draft = session.scalars(select(RegistrationDraft)).one()
    assert draft.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert (draft.name, draft.email, draft.birth_date, draft.mobile) == (
        "María García López", EMAIL, date(1984, 2, 28), "+34600123456")
    assert draft.expires_at == clock.now() + timedelta(hours=1)


def test_starting_again_replaces_the_draft(client, session):
    details(client)
    details(client, email="other@example.test")
    assert session.scalars(select(RegistrationDraft.email)).all() == ["other@example.test"]


def test_steps_cannot_be_skipped(client, session):
    assert client.get("/register/email", follow_redirects=False).headers["location"] == "/register"
    details(client)
    for url in ("/register/email", "/register/password"):
        assert client.get(url, follow_redirects=False).headers["location"] == "/register/verify"
    assert "Step 2 of 4" in client.get("/register/verify").text
    assert choose_password(client).headers["location"] == "/register/verify"
    assert accounts(session) == 0


def test_the_draft_expires_after_an_hour(client, session, frozen_clock):
    add_patient(session)
    details(client)
    frozen_clock.advance(timedelta(minutes=61))
    page = client.get("/register/verify")
    assert 'id="notice-gone"' in page.text and "Start again" in page.text
    assert 'id="notice-gone"' in verify(client).text
    assert session.scalar(select(func.count()).select_from(RegistrationDraft)) == 0
    assert messages_to(session, EMAIL) == []


# -- step 2 ----------------------------------------------------------------------------

def test_verification_by_patient_id_sends_a_code(client, session):
    patient = add_patient(session)
    details(client)
    page = client.get("/register/verify").text
    assert "Step 2 of 4" in page and 'autocomplete="family-name"' in page
    # no accents, another case, other spaces: still the same last name
    assert verify(client, last_name="  garcia   LOPEZ ").headers["location"] == "/register/email"
    draft = session.scalars(select(RegistrationDraft)).one()
    assert draft.patient_ref == patient.id
    [message] = messages_to(session, EMAIL)
    assert re.search(r"\b\d{6}\b", message.body_text) and "confirm your email address" in message.body_text
    assert "registration.verified" in actions(session)


def test_verification_by_accession_number(client, session):
    patient = add_patient(session)
    details(client)
    assert verify(client, kind="accession_number", number="ACC-100").headers["location"] == "/register/email"
    assert session.scalars(select(RegistrationDraft.patient_ref)).one() == patient.id


@pytest.mark.parametrize("changes", [
    {"last_name": "Garcia"}, {"number": "MRN-101"}, {"kind": "accession_number", "number": "MRN-100"},
    {"last_name": ""},
])
def test_a_failed_verification_says_the_same_whatever_was_wrong(client, session, changes):
    add_patient(session)
    details(client)
    answer = verify(client, **changes)
    assert answer.status_code == 200 and GENERIC_FAILURE in answer.text and 'role="alert"' in answer.text
    assert session.scalars(select(RegistrationDraft.patient_ref)).one() is None
    assert actions(session)[-1] == "registration.verification_failed"
    assert messages_to(session, EMAIL) == []


def test_a_wrong_birth_date_fails_like_the_rest(client, session):
    add_patient(session)
    details(client, birth_day="27")
    assert GENERIC_FAILURE in verify(client).text


def test_verification_is_throttled_per_draft_and_per_address(client, session, frozen_clock):
    add_patient(session)
    details(client)
    for _ in range(3):
        assert GENERIC_FAILURE in verify(client, number="WRONG").text
    verify(client, number="WRONG")  # the 4th failure starts a delay
    answer = verify(client)  # right this time, but too soon
    assert "Too many attempts" in answer.text
    assert session.scalars(select(RegistrationDraft.patient_ref)).one() is None
    assert "registration.throttled" in actions(session)
    details(client)  # a new draft does not escape the delay of the address
    assert "Too many attempts" in verify(client).text
    keys = session.scalars(select(Throttle.key)).all()
    assert "ip:testclient" in keys and any(k.startswith("register:") for k in keys)
    frozen_clock.advance(timedelta(seconds=3))
    assert verify(client).headers["location"] == "/register/email"


def test_only_the_numbers_the_site_allows(tmp_path, database_url, session):
    add_patient(session)
    with client_for(tmp_path, database_url, session, identity={"verify_with": ["patient_id"]}) as client:
        details(client)
        page = client.get("/register/verify").text
        assert 'type="radio"' not in page and "Accession number" not in page and "Patient ID" in page
        assert GENERIC_FAILURE in verify(client, kind="accession_number", number="ACC-100").text
        assert verify(client).headers["location"] == "/register/email"


def test_a_plugin_challenge_must_be_answered(tmp_path, database_url, session):
    add_patient(session)
    plugins = {"fixture": {"favourite_colour_challenge": True}}
    with client_for(tmp_path, database_url, session, plugins=plugins) as client:
        details(client)
        page = client.get("/register/verify").text
        assert '<label for="challenge_favourite_colour">Your favourite colour</label>' in page
        assert GENERIC_FAILURE in verify(client, challenge_favourite_colour="red").text
        assert GENERIC_FAILURE in verify(client).text  # no answer
        assert verify(client, challenge_favourite_colour=" Blue ").headers["location"] == "/register/email"


def test_a_plugin_check_can_refuse_with_its_message(client, session):
    add_patient(session, issuer="REFUSE")
    details(client)
    page = verify(client).text
    assert 'id="notice-refused"' in page and "Please call the help desk to open your account." in page
    assert session.scalars(select(RegistrationDraft.patient_ref)).one() is None
    assert messages_to(session, EMAIL) == []
    assert actions(session)[-1] == "registration.refused"


def test_minimum_age_at_step_1(tmp_path, database_url, session):
    add_patient(session, patient_id="CHILD", born=date(2008, 3, 2))
    with client_for(tmp_path, database_url, session, identity={"minimum_age": 18}) as client:
        page = details(client, birth_day="2", birth_month="3", birth_year="2008").text  # 18 tomorrow
        assert 'id="notice-too_young"' in page and "under 18" in page and "parent or guardian" in page
        assert DRAFT_COOKIE not in client.cookies
        assert details(client, birth_day="1", birth_month="3", birth_year="2008").headers["location"] == \
            "/register/verify"  # 18 today


def test_minimum_age_at_verification(session, site, tmp_path, database_url):
    """Step 2 applies it too, whatever the draft says (a draft is only ever made by step 1 today)."""
    add_patient(session, patient_id="CHILD", born=date(2010, 5, 5))
    older = make_site(tmp_path / "age", database=database_url, identity={"minimum_age": 16})
    token = registration.start_draft(session, details=Details("Kid García López", date(2010, 5, 5), EMAIL, None),
                                     language="en")
    draft = registration.find_draft(session, token)
    result = registration.verify(session, site=older, draft=draft, kind="patient_id", number="CHILD",
                                 last_name="García López", answers={}, ip="1.2.3.4")
    assert result.outcome == "too_young" and draft.patient_ref is None
    assert registration.verify(session, site=site, draft=draft, kind="patient_id", number="CHILD",
                               last_name="García López", answers={}, ip="1.2.3.4").outcome == "verified"


def test_self_registration_can_be_turned_off(tmp_path, database_url, session):
    add_patient(session)
    with client_for(tmp_path, database_url, session, identity={"self_registration": False}) as client:
        page = client.get("/register").text
        assert 'id="notice-closed"' in page and 'href="/register/request"' in page and "Step 1" not in page
        assert 'id="notice-closed"' in details(client).text
        assert session.scalar(select(func.count()).select_from(RegistrationDraft)) == 0
        assert 'id="notice-closed"' in client.get("/register/verify").text
        assert 'href="/register"' not in client.get("/signin").text
        assert client.get("/register/request").status_code == 200


# -- step 3 ----------------------------------------------------------------------------

def test_the_email_code_page(client, session):
    add_patient(session)
    details(client)
    verify(client)
    page = client.get("/register/email").text
    assert "Step 3 of 4" in page and EMAIL in page and "valid for 10 minutes" in page
    assert 'autocomplete="one-time-code"' in page and 'action="/register/email/new"' in page


def test_a_wrong_code_then_the_right_one(client, session):
    add_patient(session)
    details(client)
    verify(client)
    code = last_code(session, EMAIL)
    wrong = f"{(int(code) + 1) % 1000000:06d}"
    assert "This code is not right" in enter_code(client, wrong).text
    assert enter_code(client, f" {code[:3]} {code[3:]} ").headers["location"] == "/register/password"
    assert session.scalars(select(RegistrationDraft)).one().email_checked_at == clock.now()


def test_five_wrong_codes_use_the_code_up(client, session, frozen_clock):
    add_patient(session)
    details(client)
    verify(client)
    code = last_code(session, EMAIL)
    wrong = f"{(int(code) + 1) % 1000000:06d}"
    answers = [enter_code(client, wrong).text for _ in range(5)]
    assert all("This code is not right" in a for a in answers[:4]) and "Too many wrong codes" in answers[4]
    assert "Too many wrong codes" in enter_code(client, code).text  # even the right one, now
    frozen_clock.advance(timedelta(seconds=61))
    sent = post_form(client, "/register/email/new", follow_redirects=False)
    assert sent.headers["location"] == "/register/email?sent=1"
    assert "We have sent you a new code." in client.get("/register/email?sent=1").text
    new = last_code(session, EMAIL)
    if new != code:
        assert "This code is not right" in enter_code(client, code).text  # the old code no longer works
    assert enter_code(client, new).headers["location"] == "/register/password"


def test_the_code_expires(client, session, frozen_clock):
    add_patient(session)
    details(client)
    verify(client)
    code = last_code(session, EMAIL)
    frozen_clock.advance(timedelta(minutes=10, seconds=1))
    assert "This code has expired" in enter_code(client, code).text
    assert session.scalars(select(RegistrationDraft)).one().email_checked_at is None


def test_new_codes_are_rate_limited(client, session, frozen_clock):
    add_patient(session)
    details(client)
    verify(client)
    assert "Too many attempts" in post_form(client, "/register/email/new").text  # one a minute
    assert len(messages_to(session, EMAIL)) == 1
    for _ in range(4):
        frozen_clock.advance(timedelta(seconds=61))
        assert post_form(client, "/register/email/new", follow_redirects=False).status_code == 303
    assert len(messages_to(session, EMAIL)) == 5
    frozen_clock.advance(timedelta(seconds=61))
    assert "Too many attempts" in post_form(client, "/register/email/new").text  # five an hour
    details(client)  # starting again does not send more
    assert verify(client).headers["location"] == "/register/email"
    assert len(messages_to(session, EMAIL)) == 5
    frozen_clock.advance(timedelta(hours=1))
    details(client)
    verify(client)
    assert len(messages_to(session, EMAIL)) == 6


def _step_3_page(client, session, email, patient_id="MRN-100"):
    details(client, email=email)
    verify(client, number=patient_id)
    return client.get("/register/email").text.replace(email, "EMAIL")


def test_the_same_page_for_new_and_existing_accounts(client, session, make_account):
    add_patient(session)
    add_patient(session, patient_id="MRN-200", accession="ACC-200")
    make_account(email="taken@example.test", patient=False)
    owner = make_account(email="owner@example.test", patient=False)  # already has MRN-200 as "self"
    mrn_200 = session.scalar(select(Patient).where(Patient.patient_id == "MRN-200"))
    session.add(PatientLink(account_id=owner.id, patient_ref=mrn_200.id, relationship="self", created_at=clock.now()))
    session.commit()

    new = _step_3_page(client, session, "new@example.test")
    taken = _step_3_page(client, session, "taken@example.test")
    registered = _step_3_page(client, session, "again@example.test", patient_id="MRN-200")
    assert new == taken == registered
    assert re.search(r"\b\d{6}\b", messages_to(session, "new@example.test")[0].body_text)
    for email in ("taken@example.test", "again@example.test"):
        [message] = messages_to(session, email)
        assert "You already have an account" in message.subject and "/password/forgot" in message.body_text
        assert not re.search(r"\b\d{6}\b", message.body_text)
    # and a guessed code is answered as for anyone
    assert "This code is not right" in enter_code(client, "123456").text


# -- step 4 ----------------------------------------------------------------------------

def test_step_4_creates_the_account_and_signs_in(client, session):
    patient = add_patient(session)
    client.cookies.set("filmless_lang", "es")
    through_step_3(client, session)
    assert 'autocomplete="new-password"' in client.get("/register/password").text
    answer = choose_password(client)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    assert any(c.startswith("__Host-filmless_session=") for c in answer.headers.get_list("set-cookie"))
    account = service.account_by_email(session, EMAIL)
    assert account.name == "María García López" and account.language == "es"
    assert account.email_verified_at == clock.now() and account.password_hash.startswith("$argon2id$")
    link = session.scalars(select(PatientLink).where(PatientLink.account_id == account.id)).one()
    assert (link.patient_ref, link.relationship) == (patient.id, "self")
    assert session.scalar(select(func.count()).select_from(RegistrationDraft)) == 0
    assert DRAFT_COOKIE not in client.cookies
    assert 'id="signed-in"' in client.get("/").text
    assert "registration.completed" in actions(session)


@pytest.mark.parametrize("password, confirmation, message", [
    (PASSWORD, "a long unique passphrasE", "The two passwords are not the same"),
    ("short", "short", "Use at least 8 characters"),
    ("password1", "password1", "too common"),
])
def test_step_4_refuses_a_bad_password(client, session, password, confirmation, message):
    add_patient(session)
    through_step_3(client, session)
    answer = choose_password(client, password, confirmation)
    assert answer.status_code == 200 and message in answer.text and 'role="alert"' in answer.text
    assert accounts(session) == 0 and session.scalar(select(func.count()).select_from(RegistrationDraft)) == 1


def test_a_double_submit_creates_one_account(client, session):
    add_patient(session)
    through_step_3(client, session)
    assert "Step 4 of 4" in client.get("/register/password").text
    draft_cookie = client.cookies[DRAFT_COOKIE]
    assert choose_password(client).status_code == 303
    before = accounts(session)
    client.cookies.set(DRAFT_COOKIE, draft_cookie, domain="testserver.local")  # the same form, sent again
    again = choose_password(client)
    assert again.status_code == 200 and 'id="notice-gone"' in again.text and "already finished" in again.text
    assert accounts(session) == before
    assert session.scalar(select(func.count()).select_from(WebSession)) == 1


def test_finishing_needs_a_checked_email(session):
    add_patient(session)
    token = registration.start_draft(session, details=Details("María García López", date(1984, 2, 28), EMAIL, None),
                                     language="en")
    with pytest.raises(registration.RegistrationGone):
        registration.finish(session, token=token, password=PASSWORD, confirmation=PASSWORD, language="en")
    with pytest.raises(registration.RegistrationGone):
        registration.finish(session, token=None, password=PASSWORD, confirmation=PASSWORD, language="en")


# -- asking the help desk --------------------------------------------------------------------

REQUEST = {"name": "Ana Ruiz", "birth_day": "3", "birth_month": "7", "birth_year": "1950",
           "email": "ana@example.test", "mobile": "+34 600 111 222", "text": "Scan in Toledo, May"}


def test_requesting_an_account(client, session):
    page = client.get("/register/request").text
    assert "within 3 business days" in page and 'autocomplete="tel"' in page
    answer = post_form(client, "/register/request", REQUEST, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/register/request/sent"
    assert "will call you within 3 business days" in client.get("/register/request/sent").text
    ticket = session.scalars(select(AccountRequest)).one()
    assert (ticket.status, ticket.name, ticket.birth_date, ticket.email, ticket.mobile, ticket.details) == (
        "open", "Ana Ruiz", date(1950, 7, 3), "ana@example.test", "+34600111222", "Scan in Toledo, May")
    [message] = messages_to(session, "ana@example.test")
    assert "3 days" in message.body_text
    assert actions(session)[-1] == "account_request.created"


def test_a_request_needs_a_phone_number(client, session):
    answer = post_form(client, "/register/request", {**REQUEST, "mobile": ""})
    assert "so that the help desk can call you" in answer.text and 'id="mobile-error"' in answer.text
    assert session.scalars(select(AccountRequest)).all() == []


def test_a_request_is_answered_the_same_for_an_existing_account(client, session, make_account):
    make_account(email="ana@example.test", patient=False)
    answer = post_form(client, "/register/request", REQUEST, follow_redirects=False)
    assert answer.headers["location"] == "/register/request/sent"
    assert len(session.scalars(select(AccountRequest)).all()) == 1


def test_requests_are_rate_limited_per_address(client, session, frozen_clock):
    for n in range(3):
        post_form(client, "/register/request", {**REQUEST, "email": f"a{n}@example.test"})
    answer = post_form(client, "/register/request", REQUEST, follow_redirects=False)
    assert answer.status_code == 303  # the 4th is stored, and starts a delay
    refused = post_form(client, "/register/request", REQUEST, follow_redirects=False)
    assert refused.status_code == 200 and "Too many attempts" in refused.text
    assert len(session.scalars(select(AccountRequest)).all()) == 4
    frozen_clock.advance(timedelta(seconds=3))
    assert post_form(client, "/register/request", REQUEST, follow_redirects=False).status_code == 303
