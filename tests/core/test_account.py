"""The account page, two-step sign-in with an authenticator app, and the patient
picker: each rule has a test that fails without it."""
import hashlib
import re
from datetime import date, timedelta

import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from support import add_linked_patient, last_code, messages_to, post_form, sign_in_as

from core import clock
from core.audit.models import AuditEvent
from core.identity import security, service
from core.identity.models import Account, PatientLink, RecoveryCode, WebSession
from core.identity.sessions import COOKIE
from core.studies.models import Patient

PASSWORD = "a long unique passphrase"
NEW_PASSWORD = "another quite long passphrase"


def fresh(session, account: Account) -> Account:
    session.expire_all()  # the app wrote through its own session
    return session.get(Account, account.id)


def actions(session, account: Account) -> list[str]:
    return session.scalars(select(AuditEvent.action).where(AuditEvent.subject == f"account:{account.id}")
                           .order_by(AuditEvent.seq)).all()


def signed_in(client) -> bool:
    return 'id="signed-in"' in client.get("/").text


def web_session(session, client) -> WebSession | None:
    session.expire_all()
    return session.get(WebSession, hashlib.sha256(client.cookies[COOKIE].encode()).hexdigest())


def app_code(account: Account, at=None) -> str:
    return pyotp.TOTP(account.totp_secret).at(at or clock.now())


def asks_for_a_code(answer) -> bool:
    """Whether a sign-in stopped at the second step (rather than signing in straight away)."""
    return answer.headers["location"].startswith("/signin/code")


def wrong_code(right: str) -> str:
    return "000000" if right != "000000" else "111111"


@pytest.fixture
def pat(client, make_account):
    """A signed-in patient."""
    account = make_account(email="pat@example.test")
    sign_in_as(client, "pat@example.test", PASSWORD)
    return account


# -- who may use these pages ------------------------------------------------------------

ROUTES = [("get", "/account"), ("post", "/account/name"), ("post", "/account/mobile"),
          ("post", "/account/language"), ("post", "/account/notifications"), ("post", "/account/password"),
          ("post", "/account/email"), ("get", "/account/email/code"), ("post", "/account/email/code"),
          ("get", "/account/two-factor"), ("post", "/account/two-factor/start"),
          ("post", "/account/two-factor/confirm"), ("post", "/account/two-factor/disable"),
          ("post", "/account/two-factor/recovery-codes"), ("get", "/patients"), ("post", "/patients")]


@pytest.mark.parametrize("method, url", ROUTES)
def test_account_pages_are_only_for_signed_in_accounts(client, method, url):
    answer = client.get(url) if method == "get" else post_form(client, url, {"name": "X"})
    assert answer.status_code == 403


def test_a_half_signed_in_session_reaches_no_account_page(client, session, make_account, frozen_clock):
    account = make_account()
    account.totp_secret, account.totp_enabled_at = pyotp.random_base32(), clock.now()
    session.commit()
    assert asks_for_a_code(sign_in_as(client, "pat@example.test", PASSWORD))
    assert client.get("/account").status_code == 403
    assert post_form(client, "/account/name", {"name": "Mallory"}).status_code == 403
    assert post_form(client, "/account/two-factor/disable", {"password": PASSWORD}).status_code == 403
    assert fresh(session, account).name == "Pat Example"


def test_account_forms_need_the_csrf_token(client, session, pat):
    answer = client.post("/account/name", data={"name": "Mallory"})
    assert answer.status_code == 403
    assert fresh(session, pat).name == "Pat Example"


def test_core_menu_entries(client, session, make_account):
    assert "/account" not in client.get("/").text
    account = make_account()
    sign_in_as(client, "pat@example.test", PASSWORD)
    page = client.get("/").text
    assert '<a href="/account">My account</a>' in page and '<a href="/patients">' not in page
    add_linked_patient(session, account.id, "guardian", issuer="T", patient_id="CHILD-1",
                       family_name="Example", given_name="Kid", birth_date=date(2018, 5, 6))
    session.commit()
    assert '<a href="/patients">My patients</a>' in client.get("/").text


# -- details ----------------------------------------------------------------------

def test_name_change(client, session, pat):
    page = client.get("/account")
    assert page.status_code == 200 and "Pat Example" in page.text and "pat@example.test" in page.text
    answer = post_form(client, "/account/name", {"name": "  Patricia   Example "}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/account?done=name")
    assert fresh(session, pat).name == "Patricia Example"
    assert "account.name_changed" in actions(session, pat)
    refused = post_form(client, "/account/name", {"name": "   "})
    assert 'role="alert" id="name-error"' in refused.text and 'aria-describedby="name-error"' in refused.text
    assert fresh(session, pat).name == "Patricia Example"


def test_mobile_change_and_removal(client, session, pat):
    post_form(client, "/account/mobile", {"mobile": "+34 600-123 456"})
    assert fresh(session, pat).mobile == "+34600123456"
    assert "account.mobile_changed" in actions(session, pat)
    refused = post_form(client, "/account/mobile", {"mobile": "call me maybe"})
    assert 'id="mobile-error"' in refused.text and fresh(session, pat).mobile == "+34600123456"
    post_form(client, "/account/notifications", {"by_email": "1", "by_sms": "1"})
    assert fresh(session, pat).notify_sms is True
    post_form(client, "/account/mobile", {"mobile": ""})
    account = fresh(session, pat)
    assert account.mobile is None and account.notify_sms is False  # no number, no text messages


def test_notification_preferences(client, session, pat):
    refused = post_form(client, "/account/notifications", {"by_email": "1", "by_sms": "1"})
    assert "Add a mobile number first" in refused.text
    assert fresh(session, pat).notify_sms is False
    post_form(client, "/account/mobile", {"mobile": "600123456"})
    post_form(client, "/account/notifications", {"by_sms": "1"})
    account = fresh(session, pat)
    assert (account.notify_email, account.notify_sms) == (False, True)
    post_form(client, "/account/notifications", {"by_email": "1"})
    account = fresh(session, pat)
    assert (account.notify_email, account.notify_sms) == (True, False)


# -- language ---------------------------------------------------------------------

def test_language_choice_sticks_in_the_cookie_and_the_account(client, session, pat):
    answer = post_form(client, "/account/language", {"language": "es"}, follow_redirects=False)
    assert answer.status_code == 303 and "filmless_lang=es" in answer.headers["set-cookie"]
    assert fresh(session, pat).language == "es"
    assert '<html lang="es">' in client.get("/account", headers={"Accept-Language": "en"}).text
    refused = post_form(client, "/account/language", {"language": "fr"}, follow_redirects=False)
    assert refused.status_code == 200 and "filmless_lang" not in refused.headers.get("set-cookie", "")
    assert fresh(session, pat).language == "es"


def test_the_header_language_switch_is_kept_in_the_account(client, session, pat):
    client.get("/language/es", params={"next": "/account"})
    assert fresh(session, pat).language == "es"
    client.get("/language/fr")
    assert fresh(session, pat).language == "es"
    post_form(client, "/signout")
    assert client.get("/language/en", follow_redirects=False).status_code == 303  # anonymous: cookie only
    assert fresh(session, pat).language == "es"


# -- email ------------------------------------------------------------------------

def ask_for_email_change(client, new_email, password=PASSWORD):
    return post_form(client, "/account/email", {"new_email": new_email, "password": password},
                     follow_redirects=False)


def test_email_change_needs_the_code_sent_to_the_new_address(client, session, pat, frozen_clock):
    answer = ask_for_email_change(client, " New@Example.test ")
    assert answer.status_code == 303 and answer.headers["location"] == "/account/email/code"
    assert fresh(session, pat).email == "pat@example.test"  # nothing changes before the code
    assert "new@example.test" in client.get("/account/email/code").text
    code = last_code(session, "new@example.test")
    wrong = post_form(client, "/account/email/code", {"code": wrong_code(code)})
    assert "not right" in wrong.text and 'id="code-error"' in wrong.text
    assert fresh(session, pat).email == "pat@example.test"
    done = post_form(client, "/account/email/code", {"code": code}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].startswith("/account?done=email")
    account = fresh(session, pat)
    assert account.email == "new@example.test" and account.email_verified_at == frozen_clock.now()
    assert "account.email_changed" in actions(session, pat)
    told = messages_to(session, "pat@example.test")[-1]
    assert "email address" in told.subject and "n•••@example.test" in told.body_text
    again = post_form(client, "/account/email/code", {"code": code})
    assert "no email change waiting" in again.text  # a double submission does no harm
    sign_in_as(client, "new@example.test", PASSWORD)


def test_email_change_needs_the_current_password(client, session, pat):
    refused = ask_for_email_change(client, "new@example.test", password="not my password")
    assert refused.status_code == 200 and "current password is not right" in refused.text
    assert messages_to(session, "new@example.test") == []
    assert "account.reauth_failed" in actions(session, pat)


def test_email_change_code_expires(client, session, pat, frozen_clock):
    ask_for_email_change(client, "new@example.test")
    code = last_code(session, "new@example.test")
    frozen_clock.advance(timedelta(minutes=10, seconds=1))
    assert client.get("/account/email/code", follow_redirects=False).status_code == 303  # nothing waiting now
    late = post_form(client, "/account/email/code", {"code": code})
    assert "expired" in late.text
    assert fresh(session, pat).email == "pat@example.test"


def test_email_change_code_allows_few_tries(client, session, pat, frozen_clock):
    ask_for_email_change(client, "new@example.test")
    code = last_code(session, "new@example.test")
    for _ in range(5):
        post_form(client, "/account/email/code", {"code": wrong_code(code)})
        frozen_clock.advance(timedelta(minutes=1))  # past the growing delay: only the try limit is left
    assert "Too many wrong codes" in post_form(client, "/account/email/code", {"code": code}).text
    assert fresh(session, pat).email == "pat@example.test"


def test_wrong_email_change_codes_slow_down(client, session, pat, frozen_clock):
    ask_for_email_change(client, "new@example.test")
    code = last_code(session, "new@example.test")
    for _ in range(4):
        post_form(client, "/account/email/code", {"code": wrong_code(code)})
    assert "Too many attempts" in post_form(client, "/account/email/code", {"code": code}).text
    assert fresh(session, pat).email == "pat@example.test"
    frozen_clock.advance(timedelta(seconds=3))
    assert post_form(client, "/account/email/code", {"code": code}, follow_redirects=False).status_code == 303


def test_an_address_in_use_is_refused_only_once_its_code_is_given(client, session, make_account, pat):
    make_account(email="taken@example.test", name="Other Person", patient=False)
    answer = ask_for_email_change(client, "taken@example.test")
    assert answer.status_code == 303  # same answer as for a free address: no one learns it has an account
    page = client.get("/account/email/code").text
    assert "already" not in page
    code = last_code(session, "taken@example.test")
    refused = post_form(client, "/account/email/code", {"code": code})
    assert "Another account already uses taken@example.test" in refused.text
    assert fresh(session, pat).email == "pat@example.test"
    assert "account.email_change_refused" in actions(session, pat)


# -- password ---------------------------------------------------------------------

def change_password(client, current=PASSWORD, new=NEW_PASSWORD):
    return post_form(client, "/account/password", {"current_password": current, "new_password": new},
                     follow_redirects=False)


def test_password_change_needs_the_current_password(client, session, pat):
    refused = change_password(client, current="a wrong guess at it")
    assert refused.status_code == 200 and "current password is not right" in refused.text
    assert security.verify_password(fresh(session, pat).password_hash, PASSWORD)


def test_password_change_refuses_common_passwords(client, session, pat):
    refused = change_password(client, new="password123")
    assert "too common" in refused.text
    assert security.verify_password(fresh(session, pat).password_hash, PASSWORD)


def test_wrong_current_passwords_slow_down(client, session, pat, frozen_clock):
    for _ in range(4):
        change_password(client, current="a wrong guess at it")
    assert "Too many attempts" in change_password(client).text
    assert security.verify_password(fresh(session, pat).password_hash, PASSWORD)
    frozen_clock.advance(timedelta(seconds=3))
    assert change_password(client).status_code == 303


def test_password_change_signs_out_other_devices_and_renews_this_session(client, app, session, pat):
    other = TestClient(app, base_url="https://testserver")
    sign_in_as(other, "pat@example.test", PASSWORD)
    assert signed_in(other)
    before = client.cookies[COOKIE]
    answer = change_password(client)
    assert answer.status_code == 303 and f"{COOKIE}=" in answer.headers["set-cookie"]
    assert client.cookies[COOKIE] != before
    assert session.get(WebSession, hashlib.sha256(before.encode()).hexdigest()) is None
    assert signed_in(client) and not signed_in(other)
    assert "account.password_changed" in actions(session, pat)
    post_form(client, "/signout")
    assert post_form(client, "/signin", {"email": "pat@example.test", "password": PASSWORD}).status_code == 200
    sign_in_as(client, "pat@example.test", NEW_PASSWORD)


def test_password_change_keeps_the_chosen_patient(client, session, pat):
    chosen = session.scalar(select(PatientLink.patient_ref).where(PatientLink.account_id == pat.id))
    post_form(client, "/patients", {"patient": str(chosen)})
    change_password(client)
    assert web_session(session, client).active_patient_ref == chosen


def test_sign_out_everywhere_is_offered_with_a_confirmation(client, pat):
    page = client.get("/account").text
    form = page[page.index('action="/signout/everywhere"'):]
    assert 'name="confirm" value="1" required' in form[:form.index("</form>")]


# -- two-step sign-in with an authenticator app ---------------------------------------

def turn_on_app(client, session, account) -> tuple[Account, list[str]]:
    post_form(client, "/account/two-factor/start")
    account = fresh(session, account)
    page = post_form(client, "/account/two-factor/confirm", {"code": app_code(account)})
    assert page.status_code == 200, page.text
    return fresh(session, account), re.findall(r"<code>([0-9a-f]{5}-[0-9a-f]{5})</code>", page.text)


def test_app_set_up_shows_a_qr_code_and_keeps_the_secret_pending(client, session, pat, frozen_clock):
    assert "Set up an authenticator app" in client.get("/account/two-factor").text
    assert post_form(client, "/account/two-factor/start", follow_redirects=False).status_code == 303
    account = fresh(session, pat)
    secret = account.totp_secret
    assert secret and account.totp_enabled_at is None
    page = client.get("/account/two-factor").text
    assert "<svg" in page and 'viewBox="' in page
    assert " ".join(secret[i:i + 4] for i in range(0, len(secret), 4)) in page
    post_form(client, "/account/two-factor/start")
    assert fresh(session, pat).totp_secret == secret  # a second press keeps what the app scanned
    uri = pyotp.TOTP(secret).provisioning_uri(name="pat@example.test", issuer_name="Test Imaging")
    assert "secret=" + secret in uri
    # until confirmed, signing in asks for no code
    post_form(client, "/signout")
    assert not asks_for_a_code(sign_in_as(client, "pat@example.test", PASSWORD))


def test_app_is_turned_on_only_with_a_right_code(client, session, pat, frozen_clock):
    post_form(client, "/account/two-factor/start")
    account = fresh(session, pat)
    refused = post_form(client, "/account/two-factor/confirm", {"code": wrong_code(app_code(account))})
    assert 'id="confirm-error"' in refused.text and fresh(session, pat).totp_enabled_at is None
    stale = app_code(account, frozen_clock.now() - timedelta(minutes=5))
    if stale != app_code(account):
        post_form(client, "/account/two-factor/confirm", {"code": stale})
        assert fresh(session, pat).totp_enabled_at is None
    before = client.cookies[COOKIE]
    shown = post_form(client, "/account/two-factor/confirm", {"code": app_code(account)})
    assert shown.status_code == 200 and shown.headers["cache-control"] == "no-store"
    codes = re.findall(r"<code>([0-9a-f]{5}-[0-9a-f]{5})</code>", shown.text)
    assert len(set(codes)) == 10 and "only time we show them" in shown.text
    account = fresh(session, pat)
    assert account.totp_enabled_at == frozen_clock.now()
    stored = set(session.scalars(select(RecoveryCode.code_hash).where(RecoveryCode.account_id == pat.id)))
    assert stored == {security.recovery_code_digest(code) for code in codes}  # only hashes are kept
    assert "account.second_factor_enabled" in actions(session, pat)
    assert client.cookies[COOKIE] != before and signed_in(client)  # a new session id after the change
    assert session.get(WebSession, hashlib.sha256(before.encode()).hexdigest()) is None
    again = post_form(client, "/account/two-factor/confirm", {"code": app_code(account)}, follow_redirects=False)
    assert again.status_code == 303  # a second submission shows no new codes
    assert set(session.scalars(select(RecoveryCode.code_hash).where(RecoveryCode.account_id == pat.id))) == stored


def test_wrong_app_codes_on_the_account_pages_slow_down(client, session, pat, frozen_clock):
    post_form(client, "/account/two-factor/start")
    account = fresh(session, pat)
    for _ in range(4):
        post_form(client, "/account/two-factor/confirm", {"code": wrong_code(app_code(account))})
    assert "Too many attempts" in post_form(client, "/account/two-factor/confirm", {"code": app_code(account)}).text
    assert fresh(session, pat).totp_enabled_at is None
    assert actions(session, pat).count("account.second_factor_code_failed") == 4
    frozen_clock.advance(timedelta(seconds=3))
    assert post_form(client, "/account/two-factor/confirm", {"code": app_code(account)}).status_code == 200
    assert fresh(session, pat).totp_enabled_at


def test_sign_in_with_the_app_and_with_a_recovery_code_once(client, session, pat, frozen_clock):
    account, codes = turn_on_app(client, session, pat)
    post_form(client, "/signout")
    assert asks_for_a_code(sign_in_as(client, "pat@example.test", PASSWORD))
    assert not signed_in(client) and "authenticator app" in client.get("/signin/code").text
    frozen_clock.advance(timedelta(seconds=45))
    done = post_form(client, "/signin/code", {"code": app_code(account)}, follow_redirects=False)
    assert done.status_code == 303 and signed_in(client)

    post_form(client, "/signout")
    sign_in_as(client, "pat@example.test", PASSWORD)
    done = post_form(client, "/signin/code", {"code": codes[0].upper()}, follow_redirects=False)
    assert done.status_code == 303 and signed_in(client)
    assert "account.recovery_code_used" in actions(session, pat)

    post_form(client, "/signout")
    sign_in_as(client, "pat@example.test", PASSWORD)
    reused = post_form(client, "/signin/code", {"code": codes[0]})
    assert "not right" in reused.text and not signed_in(client)
    assert post_form(client, "/signin/code", {"code": codes[1]}, follow_redirects=False).status_code == 303


def test_wrong_app_codes_at_sign_in_slow_down(client, session, pat, frozen_clock):
    account, codes = turn_on_app(client, session, pat)
    frozen_clock.advance(timedelta(seconds=30))  # the code that turned the app on is spent
    post_form(client, "/signout")
    sign_in_as(client, "pat@example.test", PASSWORD)
    for _ in range(4):
        assert "not right" in post_form(client, "/signin/code", {"code": wrong_code(app_code(account))}).text
    assert "Too many attempts" in post_form(client, "/signin/code", {"code": app_code(account)}).text
    assert not signed_in(client)
    frozen_clock.advance(timedelta(seconds=3))
    assert post_form(client, "/signin/code", {"code": app_code(account)}, follow_redirects=False).status_code == 303


def test_turning_the_app_off_needs_the_password_and_a_code(client, session, pat, frozen_clock):
    account, codes = turn_on_app(client, session, pat)
    disable = "/account/two-factor/disable"
    refused = post_form(client, disable, {"password": "not my password", "code": app_code(account)})
    assert "current password is not right" in refused.text and fresh(session, pat).totp_enabled_at
    refused = post_form(client, disable, {"password": PASSWORD, "code": wrong_code(app_code(account))})
    assert 'id="disable-error"' in refused.text and fresh(session, pat).totp_enabled_at
    done = post_form(client, disable, {"password": PASSWORD, "code": codes[3]}, follow_redirects=False)
    assert done.status_code == 303
    account = fresh(session, pat)
    assert account.totp_secret is None and account.totp_enabled_at is None
    assert session.scalars(select(RecoveryCode).where(RecoveryCode.account_id == pat.id)).all() == []
    assert "account.second_factor_disabled" in actions(session, pat)
    post_form(client, "/signout")
    assert not asks_for_a_code(sign_in_as(client, "pat@example.test", PASSWORD))


def test_new_recovery_codes_need_an_app_code_and_replace_the_old_ones(client, session, pat, frozen_clock):
    account, old = turn_on_app(client, session, pat)
    frozen_clock.advance(timedelta(seconds=30))
    url = "/account/two-factor/recovery-codes"
    refused = post_form(client, url, {"code": old[0]})  # a recovery code is not enough here
    assert 'id="recovery-error"' in refused.text
    assert len(session.scalars(select(RecoveryCode).where(RecoveryCode.account_id == pat.id)).all()) == 10
    shown = post_form(client, url, {"code": app_code(account)})
    new = re.findall(r"<code>([0-9a-f]{5}-[0-9a-f]{5})</code>", shown.text)
    assert len(new) == 10 and not set(new) & set(old)
    stored = set(session.scalars(select(RecoveryCode.code_hash).where(RecoveryCode.account_id == pat.id)))
    assert stored == {security.recovery_code_digest(code) for code in new}
    assert "account.recovery_codes_replaced" in actions(session, pat)
    assert "10 unused recovery codes" in client.get("/account/two-factor").text


def test_a_site_that_requires_a_second_step_still_lets_the_app_be_turned_off(custom_client, frozen_clock):
    client, runtime = custom_client(identity={"second_factor": "required"})
    with runtime.sessions() as session:
        account = service.create_account(session, email="pat@example.test", name="Pat", password=PASSWORD,
                                         how="staff", email_verified=True)
        account.totp_secret, account.totp_enabled_at = pyotp.random_base32(), clock.now()
        session.commit()
    sign_in_as(client, "pat@example.test", PASSWORD)
    assert post_form(client, "/signin/code", {"code": app_code(account)}, follow_redirects=False).status_code == 303
    page = client.get("/account/two-factor").text
    assert "we will email you a code each time you sign in" in page
    frozen_clock.advance(timedelta(seconds=30))
    done = post_form(client, "/account/two-factor/disable", {"password": PASSWORD, "code": app_code(account)},
                     follow_redirects=False)
    assert done.status_code == 303
    post_form(client, "/signout")
    assert asks_for_a_code(sign_in_as(client, "pat@example.test", PASSWORD))
    with runtime.sessions() as session:
        code = last_code(session, "pat@example.test")  # now by email
    assert post_form(client, "/signin/code", {"code": code}, follow_redirects=False).status_code == 303


# -- the patient picker ---------------------------------------------------------------

@pytest.fixture
def guardian(client, session, make_account):
    """A signed-in person with their own record and a child's, and another family's patient."""
    account = make_account(email="sam@example.test", name="Sam Example")
    child = Patient(issuer="T", patient_id="CHILD-1", family_name="Example", given_name="Riley",
                    birth_date=date(2018, 5, 6), created_at=clock.now())
    session.add(child)
    session.flush()
    session.add(PatientLink(account_id=account.id, patient_ref=child.id, relationship="guardian",
                            permissions=["view_images", "view_reports"], created_at=clock.now()))
    session.commit()
    stranger = make_account(email="stranger@example.test", name="Lee Stranger")
    sign_in_as(client, "sam@example.test", PASSWORD)
    own = session.scalar(select(PatientLink.patient_ref).where(PatientLink.account_id == account.id,
                                                               PatientLink.relationship == "self"))
    others = session.scalar(select(PatientLink.patient_ref).where(PatientLink.account_id == stranger.id))
    return {"account": account, "own": own, "child": child.id, "stranger": others}


def test_the_picker_lists_only_ones_own_patients(client, guardian):
    page = client.get("/patients").text
    assert "Sam Example" in page and "Riley Example" in page and "Lee Stranger" not in page
    assert "You are their guardian" in page and "see images, read reports" in page
    assert page.count('name="patient"') == 2


def test_choosing_a_patient_is_kept_in_this_session(client, session, guardian):
    answer = post_form(client, "/patients", {"patient": str(guardian["child"])}, follow_redirects=False)
    assert answer.status_code == 303
    assert web_session(session, client).active_patient_ref == guardian["child"]
    page = client.get("/patients").text
    assert "Chosen now" in page and page.count('name="patient"') == 1


@pytest.mark.parametrize("which", ["stranger", "no such id", "not a number"])
def test_another_persons_patient_is_not_found(client, session, guardian, which):
    value = {"stranger": str(guardian["stranger"]), "no such id": "999999", "not a number": "x"}[which]
    answer = post_form(client, "/patients", {"patient": value}, follow_redirects=False)
    assert answer.status_code == 404
    assert web_session(session, client).active_patient_ref is None


def test_an_app_code_is_accepted_once_only(client, session, pat, frozen_clock):
    account, codes = turn_on_app(client, session, pat)
    frozen_clock.advance(timedelta(seconds=30))
    post_form(client, "/signout")
    sign_in_as(client, "pat@example.test", PASSWORD)
    code = app_code(account)
    assert post_form(client, "/signin/code", {"code": code}, follow_redirects=False).status_code == 303
    post_form(client, "/signout")
    sign_in_as(client, "pat@example.test", PASSWORD)
    replayed = post_form(client, "/signin/code", {"code": code})  # seen over a shoulder, same 30 s
    assert "not right" in replayed.text and not signed_in(client)


def test_recovery_codes_may_be_typed_without_the_hyphen(client, session, pat, frozen_clock):
    account, codes = turn_on_app(client, session, pat)
    post_form(client, "/signout")
    sign_in_as(client, "pat@example.test", PASSWORD)
    typed = codes[0].replace("-", " ").upper()
    assert post_form(client, "/signin/code", {"code": typed}, follow_redirects=False).status_code == 303
