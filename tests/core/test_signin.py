"""Sign-in, sessions and CSRF (DESIGN §5): each rule has a test that fails without it."""
import hashlib
import re
import statistics
import time
from datetime import timedelta

import pytest
from sqlalchemy import select
from support import last_code, messages_to, post_form, sign_in_as

from core.audit.models import AuditEvent
from core.identity import service
from core.identity.models import WebSession
from core.identity.sessions import COOKIE

PASSWORD = "a long unique passphrase"


def signed_in(client) -> bool:
    return 'id="signed-in"' in client.get("/").text


def attempt(client, email, password=PASSWORD):
    return post_form(client, "/signin", {"email": email, "password": password}, follow_redirects=False)


def test_sign_in_sets_a_host_cookie_and_stores_only_its_hash(client, session, make_account):
    make_account(email="pat@example.test")
    answer = sign_in_as(client, "PAT@example.test ", PASSWORD)
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "Secure" in cookie and "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower() and "Path=/" in cookie and "Domain" not in cookie
    token = client.cookies[COOKIE]
    assert len(token) >= 43  # 256 random bits, URL-safe
    stored = session.scalars(select(WebSession.id_hash)).all()
    assert stored == [hashlib.sha256(token.encode()).hexdigest()]
    assert signed_in(client)


def test_sign_out_ends_the_server_side_session(client, session, make_account):
    make_account()
    sign_in_as(client, "pat@example.test", PASSWORD)
    token = client.cookies[COOKIE]
    post_form(client, "/signout")
    assert session.scalars(select(WebSession)).all() == []
    client.cookies.set(COOKIE, token, domain="testserver")  # a copied cookie is worth nothing now
    assert not signed_in(client)


def test_a_new_session_id_at_every_sign_in(client, session, make_account):
    make_account()
    sign_in_as(client, "pat@example.test", PASSWORD)
    first = client.cookies[COOKIE]
    sign_in_as(client, "pat@example.test", PASSWORD)
    assert client.cookies[COOKIE] != first
    assert session.get(WebSession, hashlib.sha256(first.encode()).hexdigest()) is None


def test_wrong_password_and_unknown_email_answer_alike(client, make_account):
    make_account(email="pat@example.test")
    known = attempt(client, "pat@example.test", "not the password")
    unknown = attempt(client, "nobody@example.test", "not the password")
    assert known.status_code == unknown.status_code == 200

    def masked(page):
        return re.sub(r'value="[^"]*"', "", page.text)

    assert masked(known) == masked(unknown)
    assert "not right" in known.text


def test_unknown_email_costs_the_same_password_hashing(client, make_account):
    make_account(email="pat@example.test")
    timings = {"known": [], "unknown": []}
    for _ in range(3):
        for kind, email in (("known", "pat@example.test"), ("unknown", "nobody@example.test")):
            start = time.perf_counter()
            attempt(client, email, "not the password")
            timings[kind].append(time.perf_counter() - start)
    ratio = statistics.median(timings["unknown"]) / statistics.median(timings["known"])
    assert 0.5 < ratio < 2.0, timings


def test_failures_slow_down_then_recover_and_never_lock_for_good(client, frozen_clock, make_account):
    make_account(email="pat@example.test")
    for _ in range(3):  # a few mistakes cost nothing
        assert "not right" in attempt(client, "pat@example.test", "wrong").text
    assert "not right" in attempt(client, "pat@example.test", "wrong").text  # the 4th starts a delay
    blocked = attempt(client, "pat@example.test")  # even the right password waits
    assert blocked.status_code == 200 and "Too many attempts" in blocked.text
    frozen_clock.advance(timedelta(seconds=3))
    assert attempt(client, "pat@example.test").status_code == 303
    post_form(client, "/signout")
    for _ in range(25):  # a determined attacker: the wait is capped, never permanent
        attempt(client, "pat@example.test", "wrong")
        frozen_clock.advance(timedelta(minutes=16))
    assert attempt(client, "pat@example.test").status_code == 303


def test_failures_from_one_address_slow_that_address(client, frozen_clock, make_account):
    make_account(email="pat@example.test")
    for n in range(6):
        attempt(client, f"guess{n}@example.test", "wrong")
    assert "Too many attempts" in attempt(client, "pat@example.test").text


def test_idle_time_out(client, frozen_clock, make_account):
    make_account()
    sign_in_as(client, "pat@example.test", PASSWORD)
    frozen_clock.advance(timedelta(minutes=29))
    assert signed_in(client)
    frozen_clock.advance(timedelta(minutes=31))
    assert not signed_in(client)


def test_absolute_time_out(client, frozen_clock, make_account):
    make_account()
    sign_in_as(client, "pat@example.test", PASSWORD)
    for _ in range(12 * 3):  # active every 20 minutes for 12 hours
        assert signed_in(client)
        frozen_clock.advance(timedelta(minutes=20))
    assert not signed_in(client)


def test_sign_out_everywhere(client, app, make_account):
    from fastapi.testclient import TestClient

    make_account()
    other = TestClient(app, base_url="https://testserver")
    sign_in_as(client, "pat@example.test", PASSWORD)
    sign_in_as(other, "pat@example.test", PASSWORD)
    post_form(client, "/signout/everywhere")
    assert not signed_in(client) and not signed_in(other)


@pytest.mark.parametrize("token", [None, "forged"])
def test_forms_without_the_csrf_token_are_refused(client, make_account, token):
    make_account()
    data = {"email": "pat@example.test", "password": PASSWORD}
    if token:
        data["csrf_token"] = token
    client.get("/signin")
    answer = client.post("/signin", data=data, follow_redirects=False)
    assert answer.status_code == 403 and "This form has expired" in answer.text
    assert COOKIE not in client.cookies


def test_sign_ins_and_failures_are_audited(client, session, make_account):
    account = make_account()
    attempt(client, "pat@example.test", "wrong")
    sign_in_as(client, "pat@example.test", PASSWORD)
    actions = session.scalars(select(AuditEvent.action).where(AuditEvent.subject == f"account:{account.id}")).all()
    assert "signin.failed" in actions and "signin.succeeded" in actions


def test_demo_passwords_work_only_on_a_demo_site(custom_client):
    for demo in (False, True):
        client, runtime = custom_client(demo=demo)
        with runtime.sessions() as session:
            service.seed_demo_accounts(session)
            session.commit()
        answer = attempt(client, "patient@demo.filmless.test", "filmless-demo-patient")
        assert (answer.status_code == 303) is demo


def test_a_site_can_require_an_emailed_second_factor(custom_client, frozen_clock):
    client, runtime = custom_client(identity={"second_factor": "required"})
    with runtime.sessions() as session:
        service.create_account(session, email="pat@example.test", name="Pat", password=PASSWORD, how="staff")
        session.commit()
    answer = attempt(client, "pat@example.test")
    assert answer.headers["location"] == "/signin/code?next=/"
    assert not signed_in(client)
    assert client.get("/account", follow_redirects=False).status_code in (403, 404)  # half-signed-in grants nothing
    with runtime.sessions() as session:
        code = last_code(session, "pat@example.test")
        assert len(messages_to(session, "pat@example.test")) == 1
    wrong = post_form(client, "/signin/code", {"code": "000000" if code != "000000" else "111111"})
    assert "not right" in wrong.text
    done = post_form(client, "/signin/code", {"code": code}, follow_redirects=False)
    assert done.status_code == 303 and signed_in(client)
    again = post_form(client, "/signin/code", {"code": code}, follow_redirects=False)
    assert again.headers["location"].startswith("/signin")  # single use: the code is spent


def test_an_emailed_second_factor_expires_and_allows_few_tries(custom_client, frozen_clock):
    client, runtime = custom_client(identity={"second_factor": "required"})
    with runtime.sessions() as session:
        service.create_account(session, email="pat@example.test", name="Pat", password=PASSWORD, how="staff")
        session.commit()
    attempt(client, "pat@example.test")
    with runtime.sessions() as session:
        code = last_code(session, "pat@example.test")
    frozen_clock.advance(timedelta(minutes=11))
    assert "expired" in post_form(client, "/signin/code", {"code": code}).text
    attempt(client, "pat@example.test")
    with runtime.sessions() as session:
        code = last_code(session, "pat@example.test")
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        post_form(client, "/signin/code", {"code": wrong})
    assert "Too many" in post_form(client, "/signin/code", {"code": code}).text
    assert not signed_in(client)


def test_sign_in_returns_to_the_page_asked_for_but_only_on_this_site(client, make_account):
    make_account()
    assert 'name="next" value="/account/people"' in client.get("/signin", params={"next": "/account/people"}).text
    answer = post_form(client, "/signin", {"email": "pat@example.test", "password": PASSWORD,
                                           "next": "/account/people"}, follow_redirects=False)
    assert answer.headers["location"] == "/account/people"
    post_form(client, "/signout")
    answer = post_form(client, "/signin", {"email": "pat@example.test", "password": PASSWORD,
                                           "next": "https://evil.test/phish"}, follow_redirects=False)
    assert answer.headers["location"] == "/"


def test_the_second_factor_goes_by_text_message_when_chosen(custom_client, frozen_clock):
    client, runtime = custom_client(identity={"second_factor": "required"})
    with runtime.sessions() as session:
        account = service.create_account(session, email="pat@example.test", name="Pat", password=PASSWORD,
                                         how="staff", mobile="+34600123456")
        account.notify_sms = True
        session.commit()
    attempt(client, "pat@example.test")
    with runtime.sessions() as session:
        [text] = messages_to(session, "+34600123456")
        assert text.channel == "sms" and messages_to(session, "pat@example.test") == []
        code = last_code(session, "+34600123456")
    assert "by text message" in client.get("/signin/code").text
    assert post_form(client, "/signin/code", {"code": code}, follow_redirects=False).status_code == 303
