"""Self-registration in four steps, requests for an account, and accounts opened
at the scan. Plain functions taking a Session; no HTTP.

Steps, kept in a ``RegistrationDraft`` found by a random cookie token (stored
hashed, valid one hour): (1) personal details, (2) identity verification against
a patient record the site holds, (3) a code that proves the email address,
(4) a password. Until step 4 nothing tells whether the email address or the
patient already has an account: the pages and the work are the same, and only the
email sent at step 3 differs (a code, or "you already have an account").
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core import clock, notify
from core.audit import service as audit
from core.i18n import gettext as _
from core.identity import service
from core.identity.account import normalise_mobile
from core.identity.models import Account, AccountRequest, OneTimeCode, PatientLink, RegistrationDraft
from core.identity.security import (check_code, clear_failures, digest, issue_code, new_token, record_failure,
                                    wait_seconds)
from core.studies.models import Patient, Study

DRAFT_COOKIE = "__Host-filmless_registration"
DRAFT_VALID = timedelta(hours=1)
STEPS = 4
EMAIL_SHAPE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
CODE_EVERY = timedelta(minutes=1)  # a new email-check code at most this often ...
CODES_PER_HOUR = 5                 # ... and at most this many an hour, per address


class RegistrationGone(Exception):
    """The draft expired, or the registration was already finished (a double submit)."""


# -- step 1: personal details ------------------------------------------------------

@dataclass
class Details:
    name: str
    birth_date: date
    email: str
    mobile: str | None
    text: str = ""


def local_today(site) -> date:
    return clock.now().astimezone(ZoneInfo(site.config.site.timezone)).date()


def age_on(birth_date: date, today: date) -> int:
    return today.year - birth_date.year - ((today.month, today.day) < (birth_date.month, birth_date.day))


def too_young(site, birth_date: date) -> bool:
    return age_on(birth_date, local_today(site)) < site.config.identity.minimum_age


def read_birth_date(site, day: str, month: str, year: str) -> tuple[date | None, str]:
    """A date of birth typed as three parts, or why it is not one (translated)."""
    day, month, year = day.strip(), month.strip(), year.strip()
    if not (day and month and year):
        return None, _("Enter your date of birth: day, month and year.")
    if not (day.isdigit() and month.isdigit() and year.isdigit()):
        return None, _("Enter your date of birth with numbers only.")
    if len(year) != 4:
        return None, _("Enter the year with four digits, for example 1984.")
    try:
        born = date(int(year), int(month), int(day))
    except ValueError:
        return None, _("This date does not exist. Check the day and the month.")
    if born > local_today(site):
        return None, _("Your date of birth must be in the past.")
    if born.year < 1900:
        return None, _("Check the year of your date of birth.")
    return born, ""


def read_details(site, *, name: str, day: str, month: str, year: str, email: str, mobile: str,
                 mobile_required: bool = False, text: str = "") -> tuple[Details | None, dict[str, str]]:
    """Checked details, or a translated message per field that is wrong."""
    errors: dict[str, str] = {}
    name = " ".join(name.split())
    if not name:
        errors["name"] = _("Enter your full name.")
    elif len(name) > 200:
        errors["name"] = _("Enter at most %(count)s characters.", count=200)
    born, problem = read_birth_date(site, day, month, year)
    if problem:
        errors["birth_date"] = problem
    email = service.normalise_email(email)
    if not EMAIL_SHAPE.match(email) or len(email) > 254:
        errors["email"] = _("Enter an email address such as name@example.com.")
    try:
        mobile = normalise_mobile(mobile)
        if mobile is None and mobile_required:
            errors["mobile"] = _("Enter a phone number so that the help desk can call you.")
    except service.AccountError as exc:
        errors["mobile"] = str(exc)
    if len(text) > 2000:
        errors["text"] = _("Enter at most %(count)s characters.", count=2000)
    if errors:
        return None, errors
    return Details(name=name, birth_date=born, email=email, mobile=mobile, text=text.strip()), {}


def start_draft(session: Session, *, details: Details, language: str) -> str:
    """A new draft; returns the token for the cookie (only its hash is stored)."""
    now = clock.now()
    session.execute(delete(RegistrationDraft).where(RegistrationDraft.expires_at <= now))
    token = new_token()
    session.add(RegistrationDraft(token_hash=digest(token), name=details.name, birth_date=details.birth_date,
                                  email=details.email, mobile=details.mobile, language=language,
                                  expires_at=now + DRAFT_VALID, created_at=now))
    session.flush()
    return token


def find_draft(session: Session, token: str | None) -> RegistrationDraft | None:
    if not token:
        return None
    draft = session.get(RegistrationDraft, digest(token))
    if draft is not None and draft.expires_at <= clock.now():
        session.delete(draft)
        return None
    return draft


def end_draft(session: Session, token: str | None) -> None:
    if token:
        session.execute(delete(RegistrationDraft).where(RegistrationDraft.token_hash == digest(token)))


def draft_step(draft: RegistrationDraft) -> int:
    """The step this draft is at: 2 (verify), 3 (email code) or 4 (password)."""
    if draft.patient_ref is None:
        return 2
    return 3 if draft.email_checked_at is None else 4


# -- step 2: identity verification ---------------------------------------------------

def name_key(name: str) -> str:
    """A last name as compared: no case, accents, spaces, hyphens or apostrophes."""
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(c for c in decomposed if not unicodedata.combining(c) and c.isalnum()).casefold()


def find_patient(session: Session, *, kind: str, number: str, last_name: str, birth_date: date) -> Patient | None:
    """The one patient with this number, birth date and last name; None if none or ambiguous."""
    number = number.strip()
    if not number or not name_key(last_name):
        return None
    if kind == "patient_id":
        candidates = session.scalars(select(Patient).where(Patient.patient_id == number)).all()
    elif kind == "accession_number":
        candidates = session.scalars(select(Patient).join(Study, Study.patient_ref == Patient.id)
                                     .where(Study.accession_number == number).distinct()).all()
    else:
        return None
    matches = [p for p in candidates
               if p.birth_date == birth_date and name_key(p.family_name) == name_key(last_name)]
    return matches[0] if len(matches) == 1 else None


def proofs(pm, site) -> list:
    """The other ways to prove who you are that plugins offer at step 2 (``identity_proofs`` hook),
    before the site's ``identity.verify_with`` kinds."""
    return [proof for found in pm.hook.identity_proofs(site=site) for proof in (found or [])]


def challenges(pm, site) -> list:
    """The extra questions plugins ask at step 2 (``registration_challenge`` hook)."""
    return [challenge for found in pm.hook.registration_challenge(site=site) for challenge in (found or [])]


@dataclass
class Verification:
    outcome: str  # "verified", "failed", "throttled", "refused", "too_young"
    message: str = ""
    wait: int = 0


def verify(session: Session, *, site, draft: RegistrationDraft, kind: str, number: str, last_name: str,
           answers: dict[str, str], ip: str) -> Verification:
    """Step 2. A failure says nothing about which part was wrong and slows down the
    next try, per draft and per address. A patient who already has an account goes on
    like anyone else: step 3 then emails "you already have an account" instead of a code."""
    pm = session.info["plugins"]
    keys = [f"register:{draft.token_hash}", f"ip:{ip}"]
    subject = f"registration:{draft.token_hash[:16]}"
    if wait := wait_seconds(session, keys):
        audit.record(session, actor=f"ip:{ip}", action="registration.throttled", subject=subject)
        return Verification("throttled", wait=wait)
    patient = None
    proof = next((proof for proof in proofs(pm, site) if proof.name == kind), None)
    if proof is not None:  # a plugin's proof replaces the core's lookup; an unknown kind matches nobody
        if number.strip() and name_key(last_name):
            patient = proof.find(session=session, number=number.strip(), last_name=last_name,
                                 birth_date=draft.birth_date)
    elif kind in site.config.identity.verify_with:
        patient = find_patient(session, kind=kind, number=number, last_name=last_name, birth_date=draft.birth_date)
    passed = patient is not None and all(
        challenge.check(session=session, patient=patient, answer=answers.get(challenge.name, "").strip())
        for challenge in challenges(pm, site))
    if not passed:
        draft.attempts += 1
        record_failure(session, keys)
        audit.record(session, actor=f"ip:{ip}", action="registration.verification_failed", subject=subject,
                     detail={"kind": kind, "attempts": draft.attempts, "matched_record": patient is not None})
        return Verification("failed")
    clear_failures(session, keys[:1])
    refusals = [message for message in pm.hook.registration_check(
        patient=patient, birth_date=draft.birth_date, email=draft.email, site=site) if message]
    if refusals:
        audit.record(session, actor=f"ip:{ip}", action="registration.refused", subject=f"patient:{patient.id}",
                     detail={"why": "registration_check"})
        return Verification("refused", message=str(refusals[0]))
    if patient.birth_date and too_young(site, patient.birth_date):
        audit.record(session, actor=f"ip:{ip}", action="registration.refused", subject=f"patient:{patient.id}",
                     detail={"why": "minimum_age"})
        return Verification("too_young")
    draft.patient_ref = patient.id
    audit.record(session, actor=f"ip:{ip}", action="registration.verified", subject=f"patient:{patient.id}",
                 detail={"kind": kind})
    if not code_wait(session, email=draft.email):  # else the code sent a moment ago still works
        send_email_check(session, site=site, draft=draft)
    return Verification("verified")


# -- step 3: the email address ----------------------------------------------------------

def _self_link(session: Session, patient_ref: int) -> PatientLink | None:
    return session.scalar(select(PatientLink).where(PatientLink.patient_ref == patient_ref,
                                                    PatientLink.relationship == "self").limit(1))


def code_wait(session: Session, *, email: str) -> int:
    """Seconds before another code may be sent to ``email`` (0: now)."""
    now = clock.now()
    recent = session.scalars(select(OneTimeCode.created_at).where(
        OneTimeCode.purpose == "email_check", OneTimeCode.email == email,
        OneTimeCode.created_at > now - timedelta(hours=1)).order_by(OneTimeCode.created_at)).all()
    waits = [0.0]
    if recent:
        waits.append((recent[-1] + CODE_EVERY - now).total_seconds())
    if len(recent) >= CODES_PER_HOUR:
        waits.append((recent[-CODES_PER_HOUR] + timedelta(hours=1) - now).total_seconds())
    return max(0, int(max(waits)) + (1 if max(waits) > 0 else 0))


def send_email_check(session: Session, *, site, draft: RegistrationDraft) -> None:
    """A code to prove the address; or, when the address or the patient already has an
    account, an email saying so. A code is issued either way, so what the page does
    next (wrong code, too many tries) is the same; the second one is never sent."""
    minutes = site.config.identity.code_valid_minutes
    code = issue_code(session, purpose="email_check", email=draft.email, minutes=minutes)
    base = site.config.site.base_url
    if service.account_by_email(session, draft.email) or (draft.patient_ref and _self_link(session, draft.patient_ref)):
        notify.send_email(session, to=draft.email, template="account_exists", language=draft.language,
                          signin_link=f"{base}/signin", reset_link=f"{base}/password/forgot")
        sent = "account_exists"
    else:
        notify.send_email(session, to=draft.email, template="email_code", language=draft.language,
                          code=code, minutes=minutes)
        sent = "email_code"
    audit.record(session, actor=f"registration:{draft.token_hash[:16]}", action="registration.email_sent",
                 subject=f"email:{digest(draft.email)[:16]}", detail={"template": sent})


def send_new_code(session: Session, *, site, draft: RegistrationDraft) -> int:
    """The "send a new code" button: 0 when sent, else the seconds to wait."""
    if wait := code_wait(session, email=draft.email):
        return wait
    send_email_check(session, site=site, draft=draft)
    return 0


def check_email_code(session: Session, *, site, draft: RegistrationDraft, code: str) -> str:
    """"ok", or "wrong", "expired", "too_many", "none" (the last three need a new code)."""
    result = check_code(session, purpose="email_check", given=code, email=draft.email,
                        max_attempts=site.config.identity.code_attempts)
    subject = f"registration:{draft.token_hash[:16]}"
    if not result.ok:
        audit.record(session, actor=subject, action="registration.email_code_failed", subject=subject,
                     detail={"why": result.problem})
        return result.problem
    draft.email_checked_at = clock.now()
    audit.record(session, actor=subject, action="registration.email_checked", subject=subject)
    return "ok"


# -- step 4: the password and the account -------------------------------------------------

def finish(session: Session, *, token: str | None, password: str, confirmation: str, language: str) -> Account:
    """Create the account, link it to the patient as "self" and end the draft. The draft
    row is locked first, so a form submitted twice makes one account; the second
    submit finds no draft and raises ``RegistrationGone``."""
    draft = None
    if token:
        draft = session.scalar(select(RegistrationDraft).where(
            RegistrationDraft.token_hash == digest(token), RegistrationDraft.expires_at > clock.now())
            .with_for_update())
    if draft is None or draft.patient_ref is None or draft.email_checked_at is None:
        raise RegistrationGone()
    if password != confirmation:
        raise service.AccountError(_("The two passwords are not the same. Please type them again."))
    if _self_link(session, draft.patient_ref) or service.account_by_email(session, draft.email):
        # only reachable by guessing a code that was never sent (see send_email_check)
        raise service.AccountError(_("You already have an account. Please sign in."))
    account = service.create_account(session, email=draft.email, name=draft.name, how="registration",
                                     password=password, mobile=draft.mobile, language=language,
                                     email_verified=True)
    session.add(PatientLink(account_id=account.id, patient_ref=draft.patient_ref, relationship="self",
                            created_at=clock.now()))
    session.delete(draft)
    audit.record(session, actor=f"account:{account.id}", action="registration.completed",
                 subject=f"account:{account.id}", detail={"patient": draft.patient_ref})
    session.flush()
    return account


# -- asking the help desk for an account ---------------------------------------------------

def request_account(session: Session, *, site, details: Details, language: str, ip: str, topic: str = "account",
                    reference: str = "") -> int:
    """A help-desk ticket; the same answer for everybody. 0 when stored, else seconds to wait.

    ``topic`` is what the person needs ("account", or another of ``HELP_TOPICS`` such as
    "visit_code"); ``reference`` what it is about, for the plugin that asked (e.g. "icode:12")."""
    keys = [f"account_request:ip:{ip}"]
    if wait := wait_seconds(session, keys):
        return wait
    record_failure(session, keys)  # every request counts: a few freely, then slower and slower
    ticket = AccountRequest(name=details.name, birth_date=details.birth_date, email=details.email,
                            mobile=details.mobile, details=details.text, language=language, status="open",
                            topic=topic[:20], reference=reference[:80], created_at=clock.now())
    session.add(ticket)
    session.flush()
    template = "account_request_received" if topic == "account" else "help_request_received"
    notify.send_email(session, to=details.email, template=template, language=language,
                      days=site.config.identity.request_account_days)
    audit.record(session, actor=f"ip:{ip}", action="account_request.created", subject=f"account_request:{ticket.id}",
                 detail={"topic": ticket.topic})
    return 0


# -- accounts opened at the scan -----------------------------------------------------------

def activate_at_scan(session: Session, *, site, patient: Patient) -> Account | None:
    """With ``identity.accounts_at_scan``: open a password-less account for a patient with an
    email address and no account of their own, and email a link to choose the password.
    Nothing is done for a minor, or when the address already has an account (often a
    parent's, given for a child): linking those is the help desk's decision."""
    identity = site.config.identity
    email = service.normalise_email(patient.email or "")
    if not identity.accounts_at_scan or not EMAIL_SHAPE.match(email) or _self_link(session, patient.id):
        return None
    if (patient.birth_date and too_young(site, patient.birth_date)) or service.account_by_email(session, email):
        return None
    name = " ".join(part for part in (patient.given_name, patient.family_name) if part) or email
    language = site.config.site.default_language
    try:
        mobile = normalise_mobile(patient.mobile or "")
    except service.AccountError:
        mobile = None
    account = service.create_account(session, email=email, name=name, how="at_scan", password=None,
                                     mobile=mobile, language=language)
    session.add(PatientLink(account_id=account.id, patient_ref=patient.id, relationship="self",
                            created_at=clock.now()))
    send_activation(session, site=site, account=account)
    return account


def send_activation(session: Session, *, site, account: Account) -> None:
    """A new activation link (earlier unused ones stop working)."""
    hours = site.config.identity.invitation_valid_hours
    token = issue_code(session, purpose="activation", account_id=account.id, code=new_token(), minutes=hours * 60)
    notify.send_email(session, to=account.email, template="activation", language=account.language,
                      link=f"{site.config.site.base_url}/activate/{token}", hours=hours)
    audit.record(session, actor="system", action="account.activation_sent", subject=f"account:{account.id}")
