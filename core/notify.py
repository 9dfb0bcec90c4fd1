"""Messages to people: email and SMS, always stored first, then delivered by the worker.

``send_email`` and ``send_sms`` render a message in the recipient's language and
store it in the caller's transaction. Once that transaction commits, the
``core.deliver_message`` task hands it to the site's transport (``mail`` and
``sms.transport`` in the site file). A failed delivery stays queued with its
error and is tried again later, up to ``MAX_ATTEMPTS`` times; the periodic
``core.requeue_messages`` task queues again any message whose worker died, so a
stored message is never lost.

Templates are ``notify/<name>.subject.txt``, ``notify/<name>.txt`` and, optionally,
``notify/<name>.html`` (``notify/<name>.sms.txt`` for SMS), looked up like every
other template: the site's folder, the plugins', then the core's. Messages
never contain health information: a link or a code, and the site's name.
"""
from __future__ import annotations

import contextvars
import logging
import secrets
import smtplib
import ssl
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

import jinja2
from huey import crontab
from sqlalchemy import Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from core import clock, db, i18n
from core.db import Base, UTCDateTime
from core.plugins import PluginError

DELIVER = "core.deliver_message"
REQUEUE = "core.requeue_messages"
MAX_ATTEMPTS = 10
STALE_AFTER = timedelta(minutes=10)  # a queued message untouched this long lost its worker
SMTP_TIMEOUT = 30  # seconds
log = logging.getLogger("filmless.notify")


class Message(Base):
    """One email or SMS. Stored in the caller's transaction so it is never lost;
    ``status`` goes queued -> sent (or stays queued, with the last error, while retried)."""

    __tablename__ = "message"

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(10))  # email, sms
    recipient: Mapped[str] = mapped_column(String(254), index=True)
    subject: Mapped[str] = mapped_column(String(300), default="")
    body_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    language: Mapped[str] = mapped_column(String(5), default="en")
    status: Mapped[str] = mapped_column(String(10), default="queued", index=True)  # queued, sent, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# -- sending -----------------------------------------------------------------

def send_email(session: Session, *, to: str, template: str, language: str, **context) -> Message:
    """Store an email rendered from ``notify/<template>.*`` in ``language``.

    It is delivered once the caller's transaction commits, and never if it rolls
    back. ``context`` goes to the templates, with ``site`` (the site file's
    ``site`` section), ``language`` and ``subject`` added. A language the site
    does not offer falls back to the site's default language."""
    runtime = _runtime(session)
    language = _offered(runtime, language)
    subject = " ".join(render_in(runtime, f"notify/{template}.subject.txt", language, context).split())
    context = {**context, "subject": subject}
    text = render_in(runtime, f"notify/{template}.txt", language, context).strip() + "\n"
    html = render_in(runtime, f"notify/{template}.html", language, context, html=True, optional=True)
    return _store(session, channel="email", to=to, subject=subject[:300], text=text, html=html, language=language)


def send_sms(session: Session, *, to: str, template: str, language: str, **context) -> Message:
    """Store an SMS rendered from ``notify/<template>.sms.txt`` in ``language``;
    delivered, like an email, once the caller's transaction commits."""
    runtime = _runtime(session)
    language = _offered(runtime, language)
    text = render_in(runtime, f"notify/{template}.sms.txt", language, context).strip()
    return _store(session, channel="sms", to=to, subject="", text=text, html=None, language=language)


def _runtime(session: Session):
    runtime = session.info.get("runtime")
    if runtime is None:
        raise RuntimeError("this session has no runtime: open it with runtime.sessions()")
    return runtime


def _offered(runtime, language: str) -> str:
    info = runtime.site.config.site
    return language if language in info.languages else info.default_language


def _environments(runtime) -> tuple[jinja2.Environment, jinja2.Environment]:
    """(HTML, plain text) template environments of the site, built once per runtime.
    Plain text is not HTML-escaped, so a link's ``&`` stays ``&`` in a text body."""
    environments = getattr(runtime, "notify_templates", None)
    if environments is None:
        from core import web  # not at import time: the models here are loaded without the web layer

        markup = web.template_environment(runtime.site, runtime.pm)
        environments = runtime.notify_templates = (markup, markup.overlay(autoescape=False))
    return environments


def render_in(runtime, name: str, language: str, context: dict, *, html: bool = False,
              optional: bool = False) -> str | None:
    """Template ``name`` rendered in ``language`` outside any page (messages, files written by
    the worker), with ``site`` and ``language`` added to ``context``."""
    markup, plain = _environments(runtime)
    try:
        template = (markup if html else plain).get_template(name)
    except jinja2.TemplateNotFound as exc:
        if optional and exc.name == name:
            return None
        raise
    info = runtime.site.config.site
    variables = {**context, "site": info, "language": language}
    # in a copy of the context: the caller's language (the page being served) is left as it was
    return contextvars.copy_context().run(_render_as, template, variables, language, info.timezone)


def _render_as(template: jinja2.Template, variables: dict, language: str, timezone: str) -> str:
    i18n.activate(language, timezone)  # dates in a message are in the site's time zone
    return template.render(variables)


def _store(session: Session, *, channel: str, to: str, subject: str, text: str, html: str | None,
           language: str) -> Message:
    to = to.strip()
    if not to or len(to) > 254 or any(c in to for c in "\r\n"):
        raise ValueError(f"not a recipient address for {channel}: {to!r}")
    message = Message(channel=channel, recipient=to, subject=subject, body_text=text, body_html=html,
                      language=language, status="queued", attempts=0, last_error="", created_at=clock.now())
    session.add(message)
    session.flush()
    runtime = _runtime(session)
    db.after_commit(session, lambda: _enqueue(runtime, message.id))
    return message


def _enqueue(runtime, message_id: int) -> None:
    try:
        _task(runtime, DELIVER)(message_id, 0)
    except Exception:  # the commit stands: requeue_messages queues it later
        log.exception("message %s is stored but could not be queued; it will be within %s",
                      message_id, STALE_AFTER)


def _task(runtime, name: str):
    return next(task for task in runtime.tasks if task.name == name)


# -- transports ----------------------------------------------------------------

class OutboxSms:
    """The core's SMS transport: the message is only stored, and listed on the outbox page."""

    def send(self, to: str, text: str) -> None:
        return None


def sms_transport(runtime):
    """The SMS transport that ``sms.transport`` names: ``outbox`` or one an enabled
    plugin contributes through the ``sms_transports`` hook."""
    offered = {"outbox": OutboxSms()}
    for contributed in runtime.pm.hook.sms_transports():
        for name, transport in (contributed or {}).items():
            if name in offered:
                raise PluginError(f"sms transport '{name}' is offered twice (by the core or two enabled plugins)")
            offered[name] = transport
    name = runtime.site.config.sms.transport
    if name not in offered:
        raise PluginError(f"sms.transport '{name}' is not offered by any enabled plugin "
                          f"(offered: {', '.join(offered)})")
    return offered[name]


def deliver_email(mail, message: Message) -> None:
    """Hand one email to the site's ``mail`` transport; raises on failure."""
    if mail.transport == "outbox":
        return  # kept in the database, listed on the outbox page
    email = EmailMessage()
    email["From"] = mail.sender
    email["To"] = message.recipient
    email["Subject"] = message.subject
    email["Date"] = format_datetime(clock.now())
    email["Message-ID"] = f"<filmless.{message.id}.{secrets.token_hex(8)}@{mail.sender.rpartition('@')[2]}>"
    email["Auto-Submitted"] = "auto-generated"
    email.set_content(message.body_text)
    if message.body_html:
        email.add_alternative(message.body_html, subtype="html")
    email["Content-Language"] = message.language  # after the body: set_content drops Content-* headers
    with smtplib.SMTP(mail.host, mail.port, timeout=SMTP_TIMEOUT) as smtp:
        if mail.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if mail.user:
            smtp.login(mail.user, mail.password or "")
        smtp.send_message(email)


# -- the worker's side -----------------------------------------------------------

def retry_delay(attempts: int) -> int:
    """Seconds to wait after ``attempts`` failed tries: 60, 120, 240, ... at most an hour."""
    return min(30 * 2 ** attempts, 3600)


def _deliver(runtime, sms, task, message_id: int, attempt: int | None) -> str:
    """One try. The try is claimed first (``attempts`` goes up only if it is still
    ``attempt``), so a retry and a requeue of the same message never both send it;
    no transaction is open while the transport works."""
    with runtime.sessions() as session:
        message = session.get(Message, message_id)
        if message is None or message.status != "queued":
            return message.status if message else "missing"
        tried = message.attempts
        if attempt is not None and tried != attempt:
            return "skipped"  # this try already ran
        if tried >= MAX_ATTEMPTS:
            _set(session, message_id, status="failed")
            return "failed"
        claim = (update(Message).where(Message.id == message_id, Message.status == "queued",
                                       Message.attempts == tried).values(attempts=tried + 1))
        claimed = session.execute(claim, execution_options={"synchronize_session": False}).rowcount
        session.commit()
        if not claimed:
            return "skipped"
        try:
            if message.channel == "sms":
                sms.send(message.recipient, message.body_text)
            else:
                deliver_email(runtime.site.config.mail, message)
        except Exception as exc:
            status = "failed" if tried + 1 >= MAX_ATTEMPTS else "queued"
            _set(session, message_id, status=status, last_error=f"{type(exc).__name__}: {exc}"[:2000])
            log.warning("message %s: try %s of %s failed (%s)", message_id, tried + 1, MAX_ATTEMPTS, type(exc).__name__)
            if status == "queued":
                try:
                    task.schedule(args=(message_id, tried + 1), delay=retry_delay(tried + 1))
                except Exception:  # requeue_messages will find it
                    log.exception("message %s: the next try could not be scheduled", message_id)
            return status
        _set(session, message_id, status="sent", sent_at=clock.now())
        return "sent"


def _set(session: Session, message_id: int, **values) -> None:
    statement = update(Message).where(Message.id == message_id).values(**values)
    session.execute(statement, execution_options={"synchronize_session": False})
    session.commit()


def _requeue(runtime, task) -> list[int]:
    """Queue again each queued message that nothing is working on: untouched for
    ``STALE_AFTER`` beyond the retry delays its failed tries have earned."""
    now = clock.now()
    with runtime.sessions() as session:
        rows = session.execute(select(Message.id, Message.attempts, Message.created_at)
                               .where(Message.status == "queued", Message.created_at <= now - STALE_AFTER)
                               .order_by(Message.id)).all()
    queued = []
    for message_id, attempts, created_at in rows:
        earned = timedelta(seconds=sum(retry_delay(n) for n in range(1, attempts + 1)))
        if created_at + earned + STALE_AFTER <= now:
            task(message_id, attempts)
            queued.append(message_id)
    return queued


def register_tasks(runtime) -> list:
    """The notification tasks. Checks ``sms.transport`` first: start-up stops when
    no enabled plugin offers the transport the site file names."""
    sms = sms_transport(runtime)

    @runtime.huey.task(name=DELIVER)
    def deliver_message(message_id: int, attempt: int | None = None) -> None:
        """Try once to deliver a stored message; after a failure, schedule the next try."""
        _deliver(runtime, sms, deliver_message, message_id, attempt)

    @runtime.huey.periodic_task(crontab(minute="*/5"), name=REQUEUE)
    def requeue_messages() -> list[int]:
        """Every 5 minutes: queue again the messages whose worker died."""
        return _requeue(runtime, deliver_message)

    return [deliver_message, requeue_messages]
