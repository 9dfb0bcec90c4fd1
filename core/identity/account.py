"""A signed-in person's own account: details, email (proved by a code sent to the
new address), password, language, notification preferences, the authenticator
app (TOTP) with recovery codes, and which linked patient is active.
Plain functions taking a Session; no HTTP."""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

import pyotp
import segno
from markupsafe import Markup
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core import clock
from core.audit import service as audit
from core.i18n import gettext as _
from core.identity import sessions
from core.identity.models import Account, OneTimeCode, PatientLink, RecoveryCode, WebSession
from core.identity.security import (accept_app_code, check_code, clear_failures, digest, issue_code,
                                    record_failure, recovery_code_digest, too_many_attempts, verify_password,
                                    wait_seconds)
from core.identity.service import AccountError, account_by_email, normalise_email, set_password, use_recovery_code
from core.studies.models import Patient

EMAIL_CHANGE = "email_change"  # OneTimeCode purpose; payload {"new_email": ...}
RECOVERY_CODES = 10
EMAIL_SHAPE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MOBILE_SHAPE = re.compile(r"^\+?[0-9]{6,20}$")


class Throttled(AccountError):
    """Too many wrong answers: ``seconds`` to wait before the next try."""

    def __init__(self, seconds: int):
        self.seconds = seconds
        minutes = max(1, -(-seconds // 60))
        super().__init__(too_many_attempts(minutes))


def _actor(account: Account) -> str:
    return f"account:{account.id}"


# -- re-authentication: a stolen session alone must not take the account over ----

def _reauth_keys(account: Account) -> list[str]:
    return [f"reauth:{account.id}"]


def _second_factor_keys(account: Account) -> list[str]:
    # the sign-in step's key: guesses here and there count together
    return [f"second_factor:{account.id}"]


def check_current_password(session: Session, account: Account, password: str) -> None:
    """Raise unless ``password`` is the account's; wrong guesses slow down like sign-in does."""
    keys = _reauth_keys(account)
    if wait := wait_seconds(session, keys):
        raise Throttled(wait)
    if not verify_password(account.password_hash, password):
        record_failure(session, keys)
        audit.record(session, actor=_actor(account), action="account.reauth_failed", subject=_actor(account))
        raise AccountError(_("Your current password is not right."))
    clear_failures(session, keys)


def _check_app_code(session: Session, account: Account, code: str, *, recovery_ok: bool) -> None:
    """Raise unless ``code`` is the authenticator app's current code (or, if allowed, an unused recovery code)."""
    keys = _second_factor_keys(account)
    if wait := wait_seconds(session, keys):
        raise Throttled(wait)
    code = code.strip().replace(" ", "")
    secret = account.totp_secret
    if secret and accept_app_code(account, code):
        clear_failures(session, keys)
        return
    if recovery_ok and account.totp_enabled_at and use_recovery_code(session, account, code):
        clear_failures(session, keys)
        return
    record_failure(session, keys)
    audit.record(session, actor=_actor(account), action="account.second_factor_code_failed", subject=_actor(account))
    raise AccountError(_("This code is not right. Please check it and try again."))


# -- details ----------------------------------------------------------------------

def change_name(session: Session, *, account: Account, name: str) -> None:
    name = " ".join(name.split())
    if not name:
        raise AccountError(_("Please enter your name."))
    if len(name) > 200:
        raise AccountError(_("Use at most %(count)s characters.", count=200))
    if name != account.name:
        account.name = name
        audit.record(session, actor=_actor(account), action="account.name_changed", subject=_actor(account))


def normalise_mobile(mobile: str) -> str | None:
    """Digits with an optional leading +; spaces, dots, dashes and brackets people type are dropped."""
    cleaned = re.sub(r"[\s().-]", "", mobile)
    if not cleaned:
        return None
    if not MOBILE_SHAPE.match(cleaned):
        raise AccountError(_("Enter a mobile number, such as +34 600 123 456."))
    return cleaned


def change_mobile(session: Session, *, account: Account, mobile: str) -> None:
    """An empty number removes it (and text messages with it)."""
    mobile = normalise_mobile(mobile)
    if mobile != account.mobile:
        account.mobile = mobile
        if mobile is None:
            account.notify_sms = False
        audit.record(session, actor=_actor(account), action="account.mobile_changed", subject=_actor(account),
                     detail={"removed": mobile is None})


def change_language(session: Session, *, account: Account, language: str, offered: list[str]) -> None:
    if language not in offered:
        raise AccountError(_("Please choose one of the languages offered."))
    account.language = language


def change_notifications(session: Session, *, account: Account, by_email: bool, by_sms: bool) -> None:
    if by_sms and not account.mobile:
        raise AccountError(_("Add a mobile number first to get text messages."))
    account.notify_email, account.notify_sms = by_email, by_sms


# -- email -----------------------------------------------------------------------

def request_email_change(session: Session, *, site, account: Account, new_email: str, password: str) -> str:
    """Send a code to the new address; nothing changes until it is typed back. Whether
    another account uses the address is not said here: only its owner may learn that."""
    new_email = normalise_email(new_email)
    if not EMAIL_SHAPE.match(new_email) or len(new_email) > 254:
        raise AccountError(_("Enter an email address such as name@example.com."))
    if new_email == account.email:
        raise AccountError(_("This is already your email address."))
    check_current_password(session, account, password)
    minutes = site.config.identity.code_valid_minutes
    code = issue_code(session, purpose=EMAIL_CHANGE, minutes=minutes, account_id=account.id,
                      payload={"new_email": new_email})
    from core import notify

    notify.send_email(session, to=new_email, template="email_code", language=account.language,
                      code=code, minutes=minutes)
    audit.record(session, actor=_actor(account), action="account.email_change_requested", subject=_actor(account))
    return new_email


def pending_email_change(session: Session, *, account: Account) -> str | None:
    """The address waiting for its code, if the code is still usable."""
    latest = session.scalar(select(OneTimeCode).where(
        OneTimeCode.purpose == EMAIL_CHANGE, OneTimeCode.account_id == account.id, OneTimeCode.used_at.is_(None),
        OneTimeCode.expires_at > clock.now()).order_by(OneTimeCode.created_at.desc()).limit(1))
    return latest.payload.get("new_email") if latest else None


def confirm_email_change(session: Session, *, site, account: Account, code: str) -> str:
    """Change the address once its code is right; tell the old address. Returns the new address."""
    keys = [f"{EMAIL_CHANGE}:{account.id}"]
    if wait := wait_seconds(session, keys):
        raise Throttled(wait)
    result = check_code(session, purpose=EMAIL_CHANGE, given=code, account_id=account.id,
                        max_attempts=site.config.identity.code_attempts)
    if not result.ok:
        if result.problem in ("wrong", "too_many"):
            record_failure(session, keys)
        problems = {"expired": _("This code has expired. Please ask for a new one."),
                    "too_many": _("Too many wrong codes. Please ask for a new one."),
                    "none": _("There is no email change waiting. It may be done already, or its code has expired.")}
        raise AccountError(problems.get(result.problem, _("This code is not right. Please check it and try again.")))
    clear_failures(session, keys)
    new_email = result.code.payload["new_email"]
    other = account_by_email(session, new_email)
    if other is not None and other.id != account.id:
        audit.record(session, actor=_actor(account), action="account.email_change_refused", subject=_actor(account),
                     detail={"why": "taken"})
        raise AccountError(_("Another account already uses %(email)s. Sign in with that account, or choose "
                             "another address.", email=new_email))
    old_email = account.email
    account.email, account.email_verified_at = new_email, clock.now()
    session.flush()
    audit.record(session, actor=_actor(account), action="account.email_changed", subject=_actor(account),
                 detail={"from": old_email, "to": new_email})
    from core import notify

    notify.send_email(session, to=old_email, template="email_changed", language=account.language,
                      new_email=masked_email(new_email), changed_at=clock.now())
    return new_email


def masked_email(email: str) -> str:
    """Enough for the owner of the old address to recognise (or not) the new one."""
    local, _at, domain = email.partition("@")
    return f"{local[:1]}•••@{domain}"


# -- password and sessions -----------------------------------------------------

def change_password(session: Session, *, account: Account, current: str, new: str) -> None:
    check_current_password(session, account, current)
    set_password(session, account, new, actor=_actor(account))


def rotate_session(session: Session, *, site, account: Account, token: str | None, end_others: bool = False) -> str:
    """A new id for the current browser (after a privilege change), keeping its chosen patient;
    with ``end_others`` every other browser of the account is signed out too."""
    current = sessions.find(session, token=token, site=site)
    active_patient = current.active_patient_ref if current else None
    if end_others:
        sessions.end_all(session, account_id=account.id)
    new_token = sessions.start(session, account=account, site=site, replacing=token)
    session.get(WebSession, digest(new_token)).active_patient_ref = active_patient
    return new_token


# -- authenticator app (TOTP) --------------------------------------------------------

def start_totp(session: Session, *, account: Account) -> None:
    """A pending secret, kept until confirmed with a code; starting again keeps the same
    one so that a reloaded page still matches what the app has scanned."""
    if account.totp_enabled_at:
        raise AccountError(_("Two-step sign-in with an app is already on."))
    if not account.totp_secret:
        account.totp_secret = pyotp.random_base32()


def totp_qr_svg(account: Account, issuer: str) -> Markup:
    uri = pyotp.TOTP(account.totp_secret).provisioning_uri(name=account.email, issuer_name=issuer)
    return Markup(segno.make(uri).svg_inline(scale=4, omitsize=True))  # a viewBox: CSS sizes it


def grouped_secret(secret: str) -> str:
    return " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))


def confirm_totp(session: Session, *, account: Account, code: str) -> list[str]:
    """Turn the app on once it shows the right code; returns the new recovery codes (shown once)."""
    if account.totp_enabled_at:
        raise AccountError(_("Two-step sign-in with an app is already on."))
    if not account.totp_secret:
        raise AccountError(_("Please start the set-up again."))
    _check_app_code(session, account, code, recovery_ok=False)
    account.totp_enabled_at = clock.now()
    codes = _replace_recovery_codes(session, account)
    audit.record(session, actor=_actor(account), action="account.second_factor_enabled", subject=_actor(account),
                 detail={"method": "totp"})
    return codes


def disable_totp(session: Session, *, account: Account, password: str, code: str) -> None:
    if not account.totp_enabled_at:
        raise AccountError(_("Two-step sign-in with an app is already off."))
    check_current_password(session, account, password)
    _check_app_code(session, account, code, recovery_ok=True)
    account.totp_secret, account.totp_enabled_at = None, None
    session.execute(delete(RecoveryCode).where(RecoveryCode.account_id == account.id))
    audit.record(session, actor=_actor(account), action="account.second_factor_disabled", subject=_actor(account),
                 detail={"method": "totp"})


def regenerate_recovery_codes(session: Session, *, account: Account, code: str) -> list[str]:
    if not account.totp_enabled_at:
        raise AccountError(_("Turn on two-step sign-in with an app first."))
    _check_app_code(session, account, code, recovery_ok=False)
    codes = _replace_recovery_codes(session, account)
    audit.record(session, actor=_actor(account), action="account.recovery_codes_replaced", subject=_actor(account))
    return codes


def unused_recovery_codes(session: Session, *, account: Account) -> int:
    return len(session.scalars(select(RecoveryCode.id).where(
        RecoveryCode.account_id == account.id, RecoveryCode.used_at.is_(None))).all())


def _replace_recovery_codes(session: Session, account: Account) -> list[str]:
    """Ten new codes (xxxxx-xxxxx, 40 random bits each); earlier ones stop working.
    Stored as ``security.recovery_code_digest``, as ``service.use_recovery_code`` looks them up."""
    session.execute(delete(RecoveryCode).where(RecoveryCode.account_id == account.id))
    codes = []
    for _n in range(RECOVERY_CODES):
        raw = secrets.token_hex(5)
        code = f"{raw[:5]}-{raw[5:]}"
        session.add(RecoveryCode(account_id=account.id, code_hash=recovery_code_digest(code)))
        codes.append(code)
    session.flush()
    return codes


# -- the patients a portal user acts for -----------------------------------------------

@dataclass
class LinkedPatient:
    link: PatientLink
    patient: Patient


def linked_patients(session: Session, *, account: Account) -> list[LinkedPatient]:
    rows = session.execute(select(PatientLink, Patient).join(Patient, Patient.id == PatientLink.patient_ref)
                           .where(PatientLink.account_id == account.id)
                           .order_by(PatientLink.relationship != "self", Patient.family_name, Patient.given_name,
                                     Patient.id)).all()
    return [LinkedPatient(link, patient) for link, patient in rows]


def choose_patient(session: Session, *, account: Account, web_session: WebSession, patient_ref: int) -> Patient:
    """Make a linked patient the active one of this browser; LookupError for any other patient."""
    link = session.scalar(select(PatientLink).where(PatientLink.account_id == account.id,
                                                    PatientLink.patient_ref == patient_ref))
    if link is None:
        raise LookupError(patient_ref)
    web_session.active_patient_ref = patient_ref
    return session.get(Patient, patient_ref)
