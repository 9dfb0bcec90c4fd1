"""Accounts: creating them, signing in (with throttling and a second factor),
and the demo and staff accounts. Plain functions taking a Session; no HTTP."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import clock, db
from core.audit import service as audit
from core.identity.models import ROLES, Account, RecoveryCode
from core.identity.security import (accept_app_code, check_code, clear_failures, digest, hash_password, issue_code,
                                    password_problem, record_failure, recovery_code_digest, verify_password,
                                    wait_seconds)
from core.plugins import call_each

DEMO_ACCOUNTS = {  # demo: true sites only (README lists them)
    "patient@demo.filmless.test": ("Alex Demo", "user", "filmless-demo-patient"),
    "guardian@demo.filmless.test": ("Sam Demo", "user", "filmless-demo-guardian"),
    "staff@demo.filmless.test": ("Jordan Staff", "staff", "filmless-demo-staff"),
    "admin@demo.filmless.test": ("Morgan Admin", "admin", "filmless-demo-admin"),
}


class AccountError(ValueError):
    """A request the person can correct; ``str()`` is a translated message."""


def normalise_email(email: str) -> str:
    return email.strip().lower()


def account_by_email(session: Session, email: str) -> Account | None:
    return session.scalar(select(Account).where(Account.email == normalise_email(email)))


def create_account(session: Session, *, email: str, name: str, how: str, role: str = "user",
                   password: str | None = None, mobile: str | None = None, language: str = "en",
                   email_verified: bool = False, check_password: bool = True) -> Account:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    email = normalise_email(email)
    if account_by_email(session, email):
        raise AccountError("an account with this email exists")
    if password is not None and check_password and (problem := password_problem(password, email=email, name=name)):
        raise AccountError(problem)
    now = clock.now()
    account = Account(email=email, name=name.strip(), role=role, mobile=mobile or None, language=language,
                      password_hash=hash_password(password) if password else None, created_at=now,
                      email_verified_at=now if email_verified else None,
                      password_changed_at=now if password else None)
    session.add(account)
    session.flush()
    audit.record(session, actor="system" if how != "registration" else f"account:{account.id}",
                 action="account.created", subject=f"account:{account.id}", detail={"how": how, "role": role})
    pm = session.info.get("plugins")
    if pm is not None:
        db.after_commit(session, lambda: call_each(pm, "account_created", strict=False, account=account, how=how))
    return account


def set_password(session: Session, account: Account, password: str, *, actor: str) -> None:
    """Set a new password; the owner is told by email when it replaces an earlier one."""
    from core import notify

    if problem := password_problem(password, email=account.email, name=account.name):
        raise AccountError(problem)
    replacing = account.password_hash is not None
    account.password_hash = hash_password(password)
    account.password_changed_at = clock.now()
    audit.record(session, actor=actor, action="account.password_changed", subject=f"account:{account.id}")
    if replacing:
        notify.send_email(session, to=account.email, template="password_changed", language=account.language)


@dataclass
class SignIn:
    outcome: str  # "signed_in", "second_factor", "wrong", "throttled"
    account: Account | None = None
    wait: int = 0


def throttle_keys(email: str, ip: str) -> list[str]:
    return [f"account:{normalise_email(email)}", f"ip:{ip}"]


def sign_in(session: Session, *, site, email: str, password: str, ip: str) -> SignIn:
    """Check a password. The answer and its timing are the same whether or not the email has an account."""
    keys = throttle_keys(email, ip)
    if wait := wait_seconds(session, keys):
        audit.record(session, actor=f"ip:{ip}", action="signin.throttled", subject=_subject(session, email))
        return SignIn("throttled", wait=wait)
    account = account_by_email(session, email)
    usable = account is not None and (site.config.demo or normalise_email(email) not in DEMO_ACCOUNTS)
    if not verify_password(account.password_hash if usable else None, password):
        record_failure(session, keys)
        audit.record(session, actor=f"ip:{ip}", action="signin.failed", subject=_subject(session, email))
        return SignIn("wrong")
    clear_failures(session, keys[:1])
    if account.totp_enabled_at or site.config.identity.second_factor == "required":
        audit.record(session, actor=f"account:{account.id}", action="signin.password_ok",
                     subject=f"account:{account.id}", detail={"ip": ip})
        return SignIn("second_factor", account)
    audit.record(session, actor=f"account:{account.id}", action="signin.succeeded",
                 subject=f"account:{account.id}", detail={"ip": ip})
    return SignIn("signed_in", account)


def _subject(session: Session, email: str) -> str:
    account = account_by_email(session, email)
    return f"account:{account.id}" if account else f"email:{digest(normalise_email(email))[:16]}"


def send_sign_in_code(session: Session, *, site, account: Account) -> None:
    """The second factor for accounts without an authenticator app: by text message when
    the person gave a mobile number and chose text messages, otherwise by email."""
    from core import notify

    minutes = site.config.identity.code_valid_minutes
    code = issue_code(session, purpose="sign_in", account_id=account.id, minutes=minutes)
    send = notify.send_sms if account.mobile and account.notify_sms else notify.send_email
    send(session, to=account.mobile if send is notify.send_sms else account.email, template="sign_in_code",
         language=account.language, code=code, minutes=minutes)


def check_second_factor(session: Session, *, site, account: Account, code: str, ip: str) -> str:
    """"ok", or why not: "wrong", "expired", "too_many", "none", "throttled"."""
    keys = [f"second_factor:{account.id}", f"ip:{ip}"]
    if wait_seconds(session, keys):
        return "throttled"
    code = code.strip().replace(" ", "")
    if account.totp_enabled_at:
        ok = accept_app_code(account, code) or use_recovery_code(session, account, code)
        result = "ok" if ok else "wrong"
    else:
        result = check_code(session, purpose="sign_in", given=code, account_id=account.id,
                            max_attempts=site.config.identity.code_attempts)
        result = "ok" if result.ok else result.problem
    if result == "ok":
        clear_failures(session, keys[:1])
        audit.record(session, actor=f"account:{account.id}", action="signin.succeeded",
                     subject=f"account:{account.id}", detail={"ip": ip, "second_factor": True})
    else:
        record_failure(session, keys)
        audit.record(session, actor=f"account:{account.id}", action="signin.second_factor_failed",
                     subject=f"account:{account.id}", detail={"ip": ip, "why": result})
    return result


def use_recovery_code(session: Session, account: Account, code: str) -> bool:
    found = session.scalar(select(RecoveryCode).where(
        RecoveryCode.account_id == account.id, RecoveryCode.code_hash == recovery_code_digest(code),
        RecoveryCode.used_at.is_(None)))
    if found is None:
        return False
    found.used_at = clock.now()
    audit.record(session, actor=f"account:{account.id}", action="account.recovery_code_used",
                 subject=f"account:{account.id}")
    return True


def seed_demo_accounts(session: Session) -> None:
    for email, (name, role, password) in DEMO_ACCOUNTS.items():
        if account_by_email(session, email) is None:
            create_account(session, email=email, name=name, role=role, password=password, how="staff",
                           email_verified=True, check_password=False)



def seed_demo(session: Session) -> None:
    """Demo patients (one registered, one minor, one still to register) and accounts."""
    from datetime import date

    from core.identity.models import PatientLink
    from core.studies.models import Patient, Study

    now = clock.now()
    people = {}
    for pid, family, given, born, accession in (
            ("DEMO-1001", "Demo", "Alex", date(1980, 4, 12), "ACC-1001"),
            ("DEMO-1002", "Demo", "Riley", date(2015, 6, 1), "ACC-1002"),
            ("DEMO-1003", "Newcomer", "Casey", date(1975, 9, 30), "ACC-1003")):
        patient = Patient(issuer="DEMO", patient_id=pid, family_name=family, given_name=given,
                          birth_date=born, created_at=now)
        session.add(patient)
        session.flush()
        session.add(Study(patient_ref=patient.id, study_uid=f"1.2.826.0.1.3680043.10.1234.{patient.id}",
                          accession_number=accession, study_date=date(2026, 10, 1), created_at=now))
        people[pid] = patient
    seed_demo_accounts(session)
    links = (("patient@demo.filmless.test", "DEMO-1001", "self"),
             ("guardian@demo.filmless.test", "DEMO-1001", "family"),
             ("guardian@demo.filmless.test", "DEMO-1002", "guardian"))
    for email, pid, relationship in links:
        session.add(PatientLink(account_id=account_by_email(session, email).id, patient_ref=people[pid].id,
                                relationship=relationship, created_at=now))
