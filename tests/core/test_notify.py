"""Notifications: messages stored in the caller's transaction, rendered in the
recipient's language, delivered after commit by the outbox, a real SMTP server
(aiosmtpd on a loopback port) or a plugin's SMS transport, retried with growing
delays, given up after ten tries, and queued again when their worker died."""
from __future__ import annotations

import email
import re
import time
from datetime import datetime, timedelta, timezone
from email import policy
from types import SimpleNamespace

import fixture_plugin
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from huey.utils import utcnow
from starlette.requests import Request
from support import demo_site_file, filmless, free_port, make_site

from core import access, db, i18n, notify, outbox
from core.access import ANONYMOUS, Principal
from core.app import build_runtime
from core.notify import Message
from core.plugins import PluginError

SENDER = "portal@imaging.test"
ADMIN = Principal(kind="account", id="1", roles=frozenset({"admin"}))


# -- a real SMTP server ----------------------------------------------------------

class Inbox:
    """An aiosmtpd handler that keeps every message it is given, parsed."""

    def __init__(self):
        self.received: list[SimpleNamespace] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append(SimpleNamespace(
            mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos),
            email=email.message_from_bytes(envelope.content, policy=policy.default)))
        return "250 Message accepted for delivery"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=True)


def start_smtp(port: int) -> SimpleNamespace:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, authenticator=inbox.authenticate,
                            auth_require_tls=False)
    controller.start()
    return SimpleNamespace(port=port, inbox=inbox, stop=controller.stop)


@pytest.fixture(scope="module")
def smtp_server():
    server = start_smtp(free_port())
    yield server
    server.stop()


@pytest.fixture
def smtp(smtp_server):
    smtp_server.inbox.received.clear()
    smtp_server.inbox.logins.clear()
    return smtp_server


def smtp_mail(port: int, **extra) -> dict:
    return {"transport": "smtp", "sender": SENDER, "host": "127.0.0.1", "port": port, "starttls": False, **extra}


# -- sites: the shared database, with per-class overrides of the site file -------

@pytest.fixture
def site_overrides():
    return {}


@pytest.fixture
def site(tmp_path, database_url, site_overrides):
    return make_site(tmp_path, database=database_url, **site_overrides)


def task(runtime, name: str = notify.DELIVER):
    return next(t for t in runtime.tasks if t.name == name)


def queued_deliveries(runtime) -> list[tuple]:
    """(message id, try) of the deliveries waiting in the queue to run now."""
    return [tuple(t.args) for t in runtime.huey.pending() if t.name == notify.DELIVER and t.eta is None]


def scheduled_deliveries(runtime) -> list:
    """Deliveries to run later (huey queues them with an eta; a worker holds them until then)."""
    later = [*runtime.huey.pending(), *runtime.huey.scheduled()]
    return sorted((t for t in later if t.name == notify.DELIVER and t.eta is not None), key=lambda t: t.args)


def code_email(session, to: str = "ana@example.test", language: str = "en", code: str = "123456") -> Message:
    return notify.send_email(session, to=to, template="email_code", language=language, code=code, minutes=10)


def in_language(language: str, message: str, **variables) -> str:
    previous = i18n.current_language()
    i18n.activate(language)
    try:
        return i18n.gettext(message, **variables)
    finally:
        i18n.activate(previous)


# -- storing and rendering ----------------------------------------------------------

def test_a_message_is_queued_when_the_callers_transaction_commits(runtime, session, frozen_clock):
    message = code_email(session)
    assert (message.channel, message.recipient, message.status, message.attempts) == (
        "email", "ana@example.test", "queued", 0)
    assert message.created_at == frozen_clock.now() and message.sent_at is None
    assert queued_deliveries(runtime) == []  # nothing leaves before the commit
    session.commit()
    assert queued_deliveries(runtime) == [(message.id, 0)]


def test_a_rolled_back_message_is_neither_stored_nor_queued(runtime, session):
    message_id = code_email(session).id
    session.rollback()
    assert session.get(Message, message_id) is None
    session.commit()
    assert queued_deliveries(runtime) == []


def test_messages_are_written_in_the_recipients_language(session):
    i18n.activate("es")  # the reader of the current page
    english = notify.send_email(session, to="ana@example.test", template="sign_in_code", language="en",
                                code="111111", minutes=10)
    assert i18n.current_language() == "es"  # given back after rendering
    i18n.activate("en")
    spanish = notify.send_email(session, to="leo@example.test", template="sign_in_code", language="es",
                                code="222222", minutes=10)
    assert (english.language, spanish.language) == ("en", "es")
    assert english.subject == "Your sign-in code for Test Imaging"
    assert spanish.subject == in_language("es", "Your sign-in code for %(site)s", site="Test Imaging")
    assert '<html lang="en">' in english.body_html and '<html lang="es">' in spanish.body_html
    assert "222222" in spanish.body_text and "222222" in spanish.body_html
    unknown = notify.send_email(session, to="ana@example.test", template="sign_in_code", language="fr",
                                code="333333", minutes=10)
    assert unknown.language == "en"  # a language the site does not offer: the site's default


def test_dates_in_a_message_are_in_the_sites_time_zone(session):
    i18n.activate("en", "UTC")  # e.g. a worker, where no page set the site's zone
    late_evening = datetime(2026, 3, 1, 23, 30, tzinfo=timezone.utc)
    message = notify.send_email(session, to="ana@example.test", template="email_changed", language="en",
                                new_email="l***@example.test", changed_at=late_evening)
    assert "On March 2, 2026, 12:30:00" in message.body_text and "+0100" in message.body_text  # Europe/Madrid
    assert "l***@example.test" in message.body_text
    assert i18n.current_language() == "en"  # the caller's language and zone are left as they were
    assert i18n.format_datetime(late_evening).startswith("Mar 1, 2026, 11:30:00")


TEMPLATES = {
    "email_code": ({"code": "481516", "minutes": 10}, ["481516"]),
    "sign_in_code": ({"code": "234234", "minutes": 1}, ["234234", "1 minute "]),
    "password_reset": ({"link": "https://portal.test/reset/t0k3n", "minutes": 30}, ["https://portal.test/reset/t0k3n"]),
    "invitation": ({"link": "https://portal.test/invite/abc", "inviter_name": "Ana Ruiz", "patient_name": "Leo Ruiz",
                    "hours": 72}, ["https://portal.test/invite/abc", "Ana Ruiz", "Leo Ruiz", "3 days"]),
    "account_exists": ({"signin_link": "https://portal.test/signin", "reset_link": "https://portal.test/forgot"},
                       ["https://portal.test/signin", "https://portal.test/forgot"]),
    "activation": ({"link": "https://portal.test/activate/xyz", "hours": 36},
                   ["https://portal.test/activate/xyz", "36 hours"]),
    "account_request_received": ({"days": 3}, ["3 days"]),
    "help_request_received": ({"days": 2}, ["2 days"]),
}


@pytest.mark.parametrize("language", ["en", "es"])
@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_every_identity_email_renders(session, template, language):
    context, expected = TEMPLATES[template]
    message = notify.send_email(session, to="ana@example.test", template=template, language=language, **context)
    assert message.subject and "\n" not in message.subject and "Test Imaging" in message.body_text
    assert message.body_html.startswith("<!doctype html>") and f'<html lang="{language}">' in message.body_html
    assert f"<title>{message.subject}</title>" in message.body_html
    for text in expected if language == "en" else [e for e in expected if not e[0].isdigit()]:
        assert text in message.body_text and text in message.body_html
    assert not re.search(r"\n\n\n", message.body_text)  # no holes left by template tags
    assert message.body_text.endswith("http://127.0.0.1:8000/\n")  # the footer


def test_the_sign_in_code_sms_is_one_short_line(session):
    message = notify.send_sms(session, to="+34600111222", template="sign_in_code", language="en",
                              code="908172", minutes=10)
    assert (message.channel, message.subject, message.body_html) == ("sms", "", None)
    assert message.body_text == "Test Imaging: your sign-in code is 908172. Valid for 10 minutes. Never share it."
    assert len(message.body_text) <= 160


def test_only_html_is_escaped(session):
    message = notify.send_email(session, to="ana@example.test", template="invitation", language="en",
                                link="https://portal.test/invite?a=1&b=2", inviter_name="Ana <b>", patient_name="",
                                hours=24)
    assert "https://portal.test/invite?a=1&b=2" in message.body_text and "Ana <b> invites you" in message.body_text
    assert 'href="https://portal.test/invite?a=1&amp;b=2"' in message.body_html
    assert "Ana &lt;b&gt; invites you" in message.body_html and "<b>" not in message.body_html


def test_a_recipient_that_could_inject_headers_is_refused(session):
    with pytest.raises(ValueError):
        code_email(session, to="ana@example.test\nBcc: everyone@example.test")
    with pytest.raises(ValueError):
        code_email(session, to="  ")


# -- delivery -----------------------------------------------------------------------

def test_the_outbox_transport_marks_the_message_sent(runtime, session, frozen_clock):
    message = code_email(session)
    session.commit()
    task(runtime).call_local(message.id, 0)
    session.refresh(message)
    assert (message.status, message.attempts, message.sent_at) == ("sent", 1, frozen_clock.now())
    task(runtime).call_local(message.id, 0)  # the queued try that already ran, again: nothing happens
    task(runtime).call_local(message.id)
    session.refresh(message)
    assert message.attempts == 1


def test_in_immediate_mode_the_commit_delivers(runtime, session):
    runtime.huey.immediate = True
    message = code_email(session)
    session.commit()
    session.refresh(message)
    assert (message.status, message.attempts) == ("sent", 1)


def test_retry_delays_grow_to_an_hour():
    assert [notify.retry_delay(n) for n in range(1, 10)] == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]


class TestSmtp:
    @pytest.fixture
    def site_overrides(self, smtp_server):
        return {"mail": smtp_mail(smtp_server.port, user="portal", password="s3cret")}

    def test_an_email_reaches_the_smtp_server(self, runtime, session, smtp, frozen_clock):
        message = notify.send_email(session, to="ana@example.test", template="password_reset", language="es",
                                    link="https://portal.test/reset?token=abc&x=1", minutes=30)
        session.commit()
        task(runtime).call_local(message.id, 0)
        session.refresh(message)
        assert (message.status, message.attempts, message.last_error) == ("sent", 1, "")

        [received] = smtp.inbox.received
        assert smtp.inbox.logins == [("portal", "s3cret")]
        assert (received.mail_from, received.rcpt_tos) == (SENDER, ["ana@example.test"])
        mail = received.email
        assert (mail["From"], mail["To"], mail["Subject"]) == (SENDER, "ana@example.test", message.subject)
        assert mail["Date"] == "Sun, 01 Mar 2026 09:30:00 +0000"
        assert re.fullmatch(rf"<filmless\.{message.id}\.[0-9a-f]{{16}}@imaging\.test>", mail["Message-ID"])
        assert (mail["Content-Language"], mail["Auto-Submitted"]) == ("es", "auto-generated")
        assert mail.get_content_type() == "multipart/alternative"
        text = mail.get_body(("plain",)).get_content()
        html = mail.get_body(("html",)).get_content()
        assert text.replace("\r\n", "\n") == message.body_text and "https://portal.test/reset?token=abc&x=1" in text
        assert html.replace("\r\n", "\n").strip() == message.body_html.strip() and '<html lang="es">' in html
        assert 'href="https://portal.test/reset?token=abc&amp;x=1"' in html


class TestSmtpDown:
    @pytest.fixture
    def port(self):
        return free_port()  # nothing listens there: connection refused

    @pytest.fixture
    def site_overrides(self, port):
        return {"mail": smtp_mail(port)}

    def test_a_failed_try_is_retried_and_delivered_once_the_server_is_up(self, runtime, session, port):
        message = code_email(session)
        session.commit()
        before = utcnow()
        task(runtime).call_local(message.id, 0)
        session.refresh(message)
        assert (message.status, message.attempts) == ("queued", 1)
        assert message.last_error.startswith("ConnectionRefusedError")
        [retry] = scheduled_deliveries(runtime)
        assert tuple(retry.args) == (message.id, 1)
        assert timedelta(seconds=59) <= retry.eta - before <= timedelta(seconds=61)

        server = start_smtp(port)
        try:
            runtime.huey.execute(retry, timestamp=retry.eta)  # the worker, when the retry is due
        finally:
            server.stop()
        session.refresh(message)
        assert (message.status, message.attempts) == ("sent", 2)
        [received] = server.inbox.received
        assert received.rcpt_tos == ["ana@example.test"]
        assert "123456" in received.email.get_body(("plain",)).get_content()

    def test_ten_failed_tries_mark_the_message_failed(self, runtime, session):
        message = code_email(session)
        session.commit()
        for tries in range(1, notify.MAX_ATTEMPTS + 1):
            task(runtime).call_local(message.id)
            session.refresh(message)
            assert message.attempts == tries
        assert message.status == "failed" and message.last_error.startswith("ConnectionRefusedError")
        assert [tuple(t.args) for t in scheduled_deliveries(runtime)] == [(message.id, n) for n in range(1, 10)]
        task(runtime).call_local(message.id)  # a failed message is not tried again
        session.refresh(message)
        assert (message.status, message.attempts) == ("failed", notify.MAX_ATTEMPTS)


def test_messages_whose_worker_died_are_queued_again(runtime, session, frozen_clock):
    start = frozen_clock.now()
    lost, retrying, sent, failed = (code_email(session, code=str(n) * 6) for n in range(1, 5))
    session.commit()
    retrying.attempts, sent.status, failed.status = 3, "sent", "failed"  # 3 tries earn 60+120+240 s
    session.commit()
    frozen_clock.advance(timedelta(minutes=9))
    recent = code_email(session, code="555555")
    session.commit()
    runtime.huey.flush()  # the worker died with its queue
    requeue = task(runtime, notify.REQUEUE)

    frozen_clock.freeze(start + timedelta(minutes=11))
    assert requeue.call_local() == [lost.id]
    assert queued_deliveries(runtime) == [(lost.id, 0)]
    frozen_clock.freeze(start + timedelta(minutes=17, seconds=1))
    assert requeue.call_local() == [lost.id, retrying.id]
    frozen_clock.freeze(start + timedelta(minutes=19, seconds=1))
    assert requeue.call_local() == [lost.id, retrying.id, recent.id]

    for queued in runtime.huey.pending():  # the duplicates of one try deliver it once
        runtime.huey.execute(queued)
    for message in (lost, retrying, recent, sent, failed):
        session.refresh(message)
    assert [(m.status, m.attempts) for m in (lost, retrying, recent, sent, failed)] == [
        ("sent", 1), ("sent", 4), ("sent", 1), ("sent", 0), ("failed", 0)]


def test_the_requeue_runs_every_five_minutes(runtime):
    def due(minute: int) -> bool:
        return notify.REQUEUE in {t.name for t in runtime.huey.read_periodic(datetime(2026, 3, 1, 9, minute))}

    assert due(35) and due(0) and not due(36)


# -- SMS ----------------------------------------------------------------------------

class TestSms:
    @pytest.fixture
    def site_overrides(self):
        return {"sms": {"transport": "fixture_sms"}}

    def test_an_sms_goes_through_the_plugins_transport(self, runtime, session):
        fixture_plugin.SENT_SMS.clear()
        message = notify.send_sms(session, to="+34600111222", template="sign_in_code", language="es",
                                  code="765432", minutes=10)
        session.commit()
        assert queued_deliveries(runtime) == [(message.id, 0)]
        task(runtime).call_local(message.id, 0)
        session.refresh(message)
        assert (message.status, message.attempts) == ("sent", 1)
        assert fixture_plugin.SENT_SMS == [{"to": "+34600111222", "text": message.body_text}]
        assert "765432" in message.body_text

    def test_a_refused_sms_stays_queued_with_its_error(self, runtime, session):
        message = notify.send_sms(session, to="+34600000000", template="sign_in_code", language="en",
                                  code="765432", minutes=10)
        session.commit()
        task(runtime).call_local(message.id, 0)
        session.refresh(message)
        assert (message.status, message.attempts) == ("queued", 1)
        assert message.last_error == "ConnectionError: the fixture gateway refused +34600000000"


def test_the_core_sms_outbox_keeps_the_message(runtime, session):
    message = notify.send_sms(session, to="+34600111222", template="sign_in_code", language="en",
                              code="111333", minutes=10)
    session.commit()
    task(runtime).call_local(message.id, 0)
    session.refresh(message)
    assert message.status == "sent"


def test_an_sms_transport_nobody_offers_stops_start_up(tmp_path):
    with pytest.raises(PluginError) as refused:
        build_runtime(make_site(tmp_path, sms={"transport": "carrier_pigeon"}))
    assert str(refused.value) == ("sms.transport 'carrier_pigeon' is not offered by any enabled plugin "
                                  "(offered: outbox, fixture_sms)")


@pytest.mark.slow
def test_the_filmless_command_reports_an_unknown_sms_transport_in_one_line(tmp_path):
    site_file = demo_site_file(tmp_path, sms={"transport": "carrier_pigeon"})
    result = filmless("--site", str(site_file), "seed-demo")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == ("filmless: sms.transport 'carrier_pigeon' is not offered by any enabled plugin "
                             "(offered: outbox)\n")


# -- a real worker ------------------------------------------------------------------

@pytest.mark.slow
def test_a_real_consumer_delivers_after_commit(tmp_path, smtp):
    runtime = build_runtime(make_site(tmp_path, mail=smtp_mail(smtp.port)))
    db.upgrade(runtime.engine, runtime.pm)
    consumer = runtime.huey.create_consumer(workers=2, worker_type="thread", periodic=False)
    consumer.start()
    try:
        with runtime.sessions() as session:
            message = notify.send_email(session, to="leo@example.test", template="invitation", language="en",
                                        link="https://portal.test/invite/abc", inviter_name="Ana Ruiz",
                                        patient_name="Leo Ruiz", hours=24)
            session.commit()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with runtime.sessions() as session:
                stored = session.get(Message, message.id)
            if stored.status != "queued":
                break
            time.sleep(0.1)
    finally:
        consumer.stop(graceful=True)
        runtime.close()
    assert (stored.status, stored.attempts) == ("sent", 1)
    [received] = smtp.inbox.received
    assert received.rcpt_tos == ["leo@example.test"]
    assert received.email["Subject"] == "Your invitation to Test Imaging"
    assert "Ana Ruiz invites you" in received.email.get_body(("plain",)).get_content()


# -- the outbox page ----------------------------------------------------------------

def test_the_outbox_is_for_admins(runtime):
    assert access.can(runtime.pm, ADMIN, "outbox.view")
    assert not access.can(runtime.pm, ANONYMOUS, "outbox.view")
    staff = Principal(kind="account", id="2", roles=frozenset({"staff", "helpdesk"}))
    assert not access.can(runtime.pm, staff, "outbox.view")


def test_the_outbox_does_not_exist_outside_a_demo_site(client):
    assert client.get("/outbox").status_code == 404


class TestDemoOutbox:
    @pytest.fixture
    def site_overrides(self):
        return {"demo": True}

    def test_the_route_declares_its_rule(self, app):
        [route] = [r for r in access.flatten(app.routes) if getattr(r, "path", None) == "/outbox"]
        assert access.declared_rule(route) == "outbox.view"

    def test_anonymous_readers_are_refused(self, client):
        assert client.get("/outbox").status_code == 403

    def test_admins_see_the_messages_newest_first(self, runtime, app, session, frozen_clock):
        older = code_email(session, code="101010")
        session.commit()
        task(runtime).call_local(older.id, 0)
        frozen_clock.advance(timedelta(minutes=1))
        newer = notify.send_sms(session, to="+34600111222", template="sign_in_code", language="es",
                                code="202020", minutes=10)
        session.commit()

        request = Request({"type": "http", "method": "GET", "path": "/outbox", "raw_path": b"/outbox",
                           "root_path": "", "scheme": "http", "query_string": b"",
                           "headers": [(b"host", b"testserver")], "server": ("testserver", 80),
                           "client": ("127.0.0.1", 50000), "app": app})
        request.state.principal = ADMIN
        session.expire_all()  # a request's session reads the rows afresh
        page = outbox.outbox_page(request, session).body.decode()
        assert page.index("202020") < page.index("101010")  # newest first
        assert '<pre lang="es">' in page and '<pre lang="en">' in page
        assert "+34600111222" in page and "ana@example.test" in page
        assert "Your code to confirm your email address" in page and "Text message" in page
        assert "Sent" in page and "Waiting to be sent" in page
        assert "Mar 1, 2026, 10:30:00" in page  # created_at in the site's time zone (Europe/Madrid)
