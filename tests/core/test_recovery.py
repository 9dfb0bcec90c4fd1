"""Forgot password, reset links, and accounts opened at the scan with their
activation links: each rule has a test that would fail without it."""
import re
from datetime import date, timedelta

import pytest
from sqlalchemy import select
from support import make_site, messages_to, post_form, sign_in_as

from core import clock
from core.audit.models import AuditEvent
from core.identity import recovery, registration, service
from core.identity.models import Account, OneTimeCode, PatientLink, WebSession
from core.identity.security import digest, verify_password
from core.identity.sessions import COOKIE
from core.studies.models import Patient

pytestmark = pytest.mark.usefixtures("frozen_clock")  # 2026-03-01 09:30 UTC
PASSWORD = "a long unique passphrase"
NEW_PASSWORD = "another quite long passphrase"
RESET_LINK = re.compile(r"http://127\.0\.0\.1:8000/password/reset/([A-Za-z0-9_-]{43})")
ACTIVATION_LINK = re.compile(r"http://127\.0\.0\.1:8000/activate/([A-Za-z0-9_-]{43})")


def forgot(client, email):
    return post_form(client, "/password/forgot", {"email": email}, follow_redirects=False)


def reset_token(session, email) -> str:
    return RESET_LINK.findall(messages_to(session, email)[-1].body_text)[-1]


def new_password(client, url, password=NEW_PASSWORD, confirmation=None):
    data = {"password": password, "confirmation": password if confirmation is None else confirmation}
    return post_form(client, url, data, follow_redirects=False)


def actions(session) -> list[str]:
    return session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)).all()


def signed_in(client) -> bool:
    return 'id="signed-in"' in client.get("/").text


# -- forgot password -------------------------------------------------------------------------

def test_forgot_password_emails_a_reset_link(client, session, make_account):
    make_account(email="pat@example.test")
    assert 'autocomplete="username"' in client.get("/password/forgot").text
    answer = forgot(client, " PAT@example.test ")
    assert answer.status_code == 303 and answer.headers["location"] == "/password/forgot/sent"
    [message] = messages_to(session, "pat@example.test")
    token = reset_token(session, "pat@example.test")
    code = session.scalars(select(OneTimeCode).where(OneTimeCode.purpose == "reset")).one()
    assert code.code_hash == digest(token) and token not in str(code.payload)  # stored hashed only
    assert code.expires_at == clock.now() + timedelta(minutes=30)
    assert "30 minutes" in message.body_text
    assert "password.reset_requested" in actions(session)


def test_forgot_password_answers_the_same_for_unknown_addresses(client, session, make_account):
    make_account(email="pat@example.test")
    known, unknown = forgot(client, "pat@example.test"), forgot(client, "nobody@example.test")
    assert known.headers["location"] == unknown.headers["location"] == "/password/forgot/sent"
    assert messages_to(session, "nobody@example.test") == []
    page = client.get("/password/forgot/sent").text
    assert "If an account exists for the address you gave" in page and "30 minutes" in page


def test_forgot_password_renews_an_unused_invitation(client, session):
    from core.identity import invitations

    patient = Patient(issuer="T", patient_id="INV-1", family_name="Ruiz", given_name="Ana", created_at=clock.now())
    session.add(patient)
    session.flush()
    invitation = invitations.invite(session, site=session.info["runtime"].site, inviter=None,
                                    email="carer@example.test", name="Carer", patient=patient, relationship="carer",
                                    permissions=["view_images"], language="en")
    session.commit()
    first_hash = invitation.token_hash
    forgot(client, "carer@example.test")
    session.refresh(invitation)
    assert invitation.token_hash != first_hash and len(messages_to(session, "carer@example.test")) == 2
    assert "invitation.renewed" in actions(session)


def test_forgot_password_for_an_account_never_activated_sends_a_new_activation(client, session):
    account = service.create_account(session, email="scan@example.test", name="Scan Patient", how="at_scan")
    session.commit()
    forgot(client, "scan@example.test")
    [message] = messages_to(session, "scan@example.test")
    assert ACTIVATION_LINK.search(message.body_text) and not RESET_LINK.search(message.body_text)
    assert session.scalars(select(OneTimeCode.purpose).where(OneTimeCode.account_id == account.id)).all() == \
        ["activation"]


def test_demo_accounts_cannot_be_reset_outside_a_demo_site(client, session):
    service.create_account(session, email="patient@demo.filmless.test", name="Alex Demo", how="staff",
                           password="filmless-demo-patient", check_password=False)
    session.commit()
    forgot(client, "patient@demo.filmless.test")
    assert messages_to(session, "patient@demo.filmless.test") == []


def test_forgot_password_is_rate_limited_per_address_asked_for(session, site):
    for n in range(4):  # from four IP addresses
        assert recovery.request_reset(session, site=site, email="x@example.test", ip=f"10.0.0.{n}") == 0
    assert recovery.request_reset(session, site=site, email="X@example.test", ip="10.0.0.9") > 0
    assert recovery.request_reset(session, site=site, email="y@example.test", ip="10.0.0.9") == 0
    assert "password.reset_throttled" in actions(session)


def test_forgot_password_is_rate_limited_per_ip_address(client, session, make_account, frozen_clock):
    make_account(email="pat@example.test")
    for n in range(4):
        forgot(client, f"someone{n}@example.test")
    answer = forgot(client, "pat@example.test")
    assert answer.status_code == 200 and "Too many attempts" in answer.text
    assert messages_to(session, "pat@example.test") == []
    frozen_clock.advance(timedelta(seconds=3))
    assert forgot(client, "pat@example.test").status_code == 303
    assert len(messages_to(session, "pat@example.test")) == 1


def test_forgot_password_needs_an_address(client):
    answer = post_form(client, "/password/forgot", {"email": "pat"})
    assert "Enter an email address" in answer.text and 'aria-describedby="email-hint email-error"' in answer.text


# -- the reset link --------------------------------------------------------------------------

def test_a_reset_link_sets_the_password_and_ends_every_session(client, app, session, make_account):
    from fastapi.testclient import TestClient

    account = make_account(email="pat@example.test")
    with TestClient(app, base_url="https://testserver") as elsewhere:
        sign_in_as(elsewhere, "pat@example.test", PASSWORD)
        assert signed_in(elsewhere)
        forgot(client, "pat@example.test")
        url = f"/password/reset/{reset_token(session, 'pat@example.test')}"
        page = client.get(url).text
        assert "Choose a new password" in page and 'autocomplete="new-password"' in page and f'action="{url}"' in page
        answer = new_password(client, url)
        assert answer.status_code == 303 and answer.headers["location"] == "/signin?done=password_changed"
        assert "Your password has been changed" in client.get("/signin?done=password_changed").text
        assert not signed_in(elsewhere)
    session.refresh(account)
    assert verify_password(account.password_hash, NEW_PASSWORD) and not verify_password(account.password_hash, PASSWORD)
    assert session.scalars(select(WebSession).where(WebSession.account_id == account.id)).all() == []
    assert {"account.password_changed", "password.reset"} <= set(actions(session))
    sign_in_as(client, "pat@example.test", NEW_PASSWORD)


def test_a_reset_link_works_once(client, session, make_account):
    make_account(email="pat@example.test")
    forgot(client, "pat@example.test")
    url = f"/password/reset/{reset_token(session, 'pat@example.test')}"
    assert new_password(client, url).status_code == 303
    again = new_password(client, url, password="a third long passphrase")
    assert again.status_code == 200 and "expired or was already used" in again.text
    assert 'href="/password/forgot"' in again.text
    assert "expired or was already used" in client.get(url).text
    account = service.account_by_email(session, "pat@example.test")
    session.refresh(account)
    assert verify_password(account.password_hash, NEW_PASSWORD)


def test_a_reset_link_expires(client, session, make_account, frozen_clock):
    make_account(email="pat@example.test")
    forgot(client, "pat@example.test")
    url = f"/password/reset/{reset_token(session, 'pat@example.test')}"
    frozen_clock.advance(timedelta(minutes=30, seconds=1))
    assert "expired or was already used" in client.get(url).text
    assert "expired or was already used" in new_password(client, url).text
    sign_in_as(client, "pat@example.test", PASSWORD)  # unchanged


def test_only_the_latest_reset_link_works(client, session, make_account):
    make_account(email="pat@example.test")
    forgot(client, "pat@example.test")
    first = reset_token(session, "pat@example.test")
    forgot(client, "pat@example.test")
    assert "expired or was already used" in client.get(f"/password/reset/{first}").text
    assert "Choose a new password" in client.get(f"/password/reset/{reset_token(session, 'pat@example.test')}").text


def test_an_unknown_reset_link(client):
    assert "expired or was already used" in client.get(f"/password/reset/{'x' * 43}").text


@pytest.mark.parametrize("password, confirmation, message", [
    (NEW_PASSWORD, NEW_PASSWORD + "!", "The two passwords are not the same"),
    ("12345678", "12345678", "too common"),
])
def test_a_reset_refuses_a_bad_password_and_keeps_the_link(client, session, make_account, password, confirmation,
                                                           message):
    make_account(email="pat@example.test")
    forgot(client, "pat@example.test")
    url = f"/password/reset/{reset_token(session, 'pat@example.test')}"
    answer = new_password(client, url, password, confirmation)
    assert answer.status_code == 200 and message in answer.text and 'role="alert"' in answer.text
    assert new_password(client, url).status_code == 303


# -- accounts opened at the scan -----------------------------------------------------------

def scan_patient(session, *, email="scan@example.test", born=date(1970, 1, 1), patient_id="SCAN-1"):
    patient = Patient(issuer="T", patient_id=patient_id, family_name="Ruiz", given_name="Ana", birth_date=born,
                      email=email, mobile="+34 600 000 001", created_at=clock.now())
    session.add(patient)
    session.flush()
    return patient


@pytest.fixture
def scan_site(tmp_path, database_url):
    return make_site(tmp_path / "scan", database=database_url,
                     identity={"accounts_at_scan": True, "minimum_age": 16, "invitation_valid_hours": 48})


def test_no_account_at_scan_unless_the_site_says_so(session, site):
    assert registration.activate_at_scan(session, site=site, patient=scan_patient(session)) is None
    assert messages_to(session, "scan@example.test") == []


def test_an_account_at_scan_gets_an_activation_link(session, scan_site):
    patient = scan_patient(session, email=" Scan@Example.test")
    account = registration.activate_at_scan(session, site=scan_site, patient=patient)
    assert (account.email, account.name, account.password_hash, account.mobile) == (
        "scan@example.test", "Ana Ruiz", None, "+34600000001")
    link = session.scalars(select(PatientLink).where(PatientLink.account_id == account.id)).one()
    assert (link.patient_ref, link.relationship) == (patient.id, "self")
    [message] = messages_to(session, "scan@example.test")
    assert ACTIVATION_LINK.search(message.body_text) and "2 days" in message.body_text
    assert {"account.created", "account.activation_sent"} <= set(actions(session))
    assert registration.activate_at_scan(session, site=scan_site, patient=patient) is None  # once only


def test_no_account_at_scan_without_email_for_a_minor_or_for_a_taken_address(session, scan_site, make_account):
    make_account(email="parent@example.test", patient=False)
    for patient in (scan_patient(session, email=None, patient_id="A"),
                    scan_patient(session, email="not an address", patient_id="B"),
                    scan_patient(session, email="kid@example.test", born=date(2012, 1, 1), patient_id="C"),
                    scan_patient(session, email="parent@example.test", patient_id="D")):
        assert registration.activate_at_scan(session, site=scan_site, patient=patient) is None
    assert session.scalars(select(Account.email)).all() == ["parent@example.test"]


def test_the_activation_link_sets_the_password_and_signs_in(client, session, scan_site):
    registration.activate_at_scan(session, site=scan_site, patient=scan_patient(session))
    session.commit()
    token = ACTIVATION_LINK.findall(messages_to(session, "scan@example.test")[-1].body_text)[-1]
    page = client.get(f"/activate/{token}").text
    assert "Choose your password" in page and f'action="/activate/{token}"' in page
    answer = new_password(client, f"/activate/{token}")
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    assert client.cookies.get(COOKIE) and signed_in(client)
    account = service.account_by_email(session, "scan@example.test")
    session.refresh(account)
    assert verify_password(account.password_hash, NEW_PASSWORD) and account.email_verified_at == clock.now()
    assert "account.activated" in actions(session)
    again = new_password(client, f"/activate/{token}", password="a third long passphrase")
    assert "expired or was already used" in again.text  # once only


def test_the_activation_link_expires(client, session, scan_site, frozen_clock):
    registration.activate_at_scan(session, site=scan_site, patient=scan_patient(session))
    session.commit()
    token = ACTIVATION_LINK.findall(messages_to(session, "scan@example.test")[-1].body_text)[-1]
    frozen_clock.advance(timedelta(hours=48, seconds=1))
    page = client.get(f"/activate/{token}").text
    assert "expired or was already used" in page and 'href="/password/forgot"' in page
    assert "expired or was already used" in new_password(client, f"/activate/{token}").text
    assert service.account_by_email(session, "scan@example.test").password_hash is None


def test_a_reset_link_is_not_an_activation_link(client, session, make_account):
    make_account(email="pat@example.test")
    forgot(client, "pat@example.test")
    token = reset_token(session, "pat@example.test")
    assert "expired or was already used" in new_password(client, f"/activate/{token}").text
    assert not signed_in(client)


def test_the_owner_is_told_when_a_password_is_replaced(session, make_account):
    from core.identity import service

    account = make_account(email="owner@example.test")
    service.set_password(session, account, "another long passphrase", actor="test")
    [message] = messages_to(session, "owner@example.test")
    assert "password" in message.subject.lower() and "signed out" in message.body_text
