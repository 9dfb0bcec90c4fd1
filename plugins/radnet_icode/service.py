"""What the plugin does for the hooks and the pages: codes for new visits, opening a visit
with its code and the patient's date of birth, adding a visit to a signed-in account,
accounts made from a code, minors, and help requests about a code.

Plain functions taking a Session first; no HTTP. Codes are in ``codes``, visits and
their sessions in ``visits``, the staff's and help desk's work in ``desk``.

Guessing is slowed three ways (every wrong code or wrong date of birth counts):
- per code (the key is the typed code's hash) and per address, the core's throttle
  (``core.identity.security``): 3 free failures, then 2, 4, 8 … seconds, at most
  15 minutes between tries, forgotten after a day without failures;
- site-wide, ``GLOBAL_LIMIT`` failures in a ``GLOBAL_WINDOW`` stop every attempt
  until that window ends (someone is sweeping codes: everyone waits a few minutes).
A right code with a wrong date of birth and an unknown code answer the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import clock, notify
from core.audit import service as audit
from core.i18n import N_
from core.i18n import gettext as _
from core.identity import registration
from core.identity.models import PatientLink
from core.identity.security import clear_failures, record_failure, wait_seconds
from core.studies.models import Patient, Study
from plugins.radnet_icode import codes, visits
from plugins.radnet_icode.models import FailureWindow, ICode, Visit

GLOBAL_WINDOW = timedelta(minutes=10)
GLOBAL_LIMIT = 100  # wrong codes per window on the whole site
PROOF = "icode"


def settings_of(site):
    return site.plugin_settings["radnet_icode"]


# -- new studies, new visits, new codes --------------------------------------------------------

def on_new_study(runtime, study_id: int) -> None:
    """``study_ingested`` for a new study: put it in its visit; a new visit gets a code, emailed
    to the patient when their record has an address. Runs after the core's commit, in its own
    transaction (two studies of one visit arriving at once: the second joins the first's visit)."""
    site = runtime.site
    settings = settings_of(site)
    for _attempt in range(2):
        with runtime.sessions() as session:
            try:
                study = session.get(Study, study_id)
                if study is None:
                    return
                visit, created = visits.visit_for_study(session, site=site, settings=settings, study=study)
                if created:
                    issued = codes.issue(session, visit=visit, valid_days=settings.icode_valid_days, by="system")
                    email_code(session, site=site, visit=visit, issued=issued)
                session.commit()
                return
            except IntegrityError:
                session.rollback()


def email_code(session: Session, *, site, visit: Visit, issued: codes.Issued) -> bool:
    """Send a new code to the address on the patient's record, if there is one (site's language)."""
    patient = visits.patient_of(session, visit)
    address = (patient.email or "").strip()
    if not registration.EMAIL_SHAPE.match(address):
        return False
    notify.send_email(session, to=address, template="radnet_icode_issued",
                      language=site.config.site.default_language, code=issued.code,
                      expires_at=issued.icode.expires_at, link=f"{site.config.site.base_url}/visit")
    audit.record(session, actor="system", action="icode.emailed", subject=f"patient:{patient.id}",
                 detail={"visit": visit.id, "icode": issued.icode.id})
    return True


def reissue(session: Session, *, site, visit: Visit, by: str, code: str | None = None) -> codes.Issued:
    """A new code for a visit (staff's "Print Portal Pass", the PACS, the demo); earlier ones stop."""
    return codes.issue(session, visit=visit, valid_days=settings_of(site).icode_valid_days, by=by, code=code)


def visit_for_study_uid(session: Session, *, site, study_uid: str) -> Visit | None:
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        return None
    visit, _created = visits.visit_for_study(session, site=site, settings=settings_of(site), study=study)
    return visit


# -- slowing down guessing ----------------------------------------------------------------------

def throttle_keys(typed: str, ip: str) -> list[str]:
    return [f"icode:{codes.digest(typed)}", f"icode_ip:{ip}"]


def _window_start(now: datetime) -> datetime:
    seconds = int(GLOBAL_WINDOW.total_seconds())
    return datetime.fromtimestamp(int(now.timestamp()) // seconds * seconds, tz=now.tzinfo)


def global_wait(session: Session) -> int:
    now = clock.now()
    start = _window_start(now)
    failures = session.scalar(select(FailureWindow.failures).where(FailureWindow.window_start == start))
    if failures is None or failures < GLOBAL_LIMIT:
        return 0
    return max(1, math.ceil((start + GLOBAL_WINDOW - now).total_seconds()))


def record_global_failure(session: Session) -> None:
    now = clock.now()
    start = _window_start(now)
    counted = session.execute(update(FailureWindow).where(FailureWindow.window_start == start)
                              .values(failures=FailureWindow.failures + 1),
                              execution_options={"synchronize_session": False}).rowcount
    if not counted:
        try:
            with session.begin_nested():
                session.add(FailureWindow(window_start=start, failures=1))
        except IntegrityError:  # another request opened the window first
            session.execute(update(FailureWindow).where(FailureWindow.window_start == start)
                            .values(failures=FailureWindow.failures + 1),
                            execution_options={"synchronize_session": False})
        session.execute(delete(FailureWindow).where(FailureWindow.window_start < start - timedelta(days=1)))


def _wait(session: Session, keys: list[str]) -> int:
    return max(wait_seconds(session, keys), global_wait(session))


def _failed(session: Session, keys: list[str]) -> None:
    record_failure(session, keys)
    record_global_failure(session)


# -- opening a visit with its code ----------------------------------------------------------------

@dataclass
class Check:
    outcome: str  # "ok", "wrong", "throttled", "expired" (right code and date, too late), "replaced"
    icode: ICode | None = None
    wait: int = 0


def check_code(session: Session, *, typed: str, birth_date: date, ip: str, purpose: str = "open") -> Check:
    """Is ``typed`` a code whose patient was born on ``birth_date``? Throttled and audited;
    the answer for a wrong code and a wrong date of birth is the same ("wrong")."""
    keys = throttle_keys(typed, ip)
    if wait := _wait(session, keys):
        audit.record(session, actor=f"ip:{ip}", action="icode.throttled", subject="icode",
                     detail={"purpose": purpose})
        return Check("throttled", wait=wait)
    icode = codes.find(session, typed)
    patient = None
    if icode is not None:
        patient = visits.patient_of(session, session.get(Visit, icode.visit_ref))
    if patient is None or patient.birth_date is None or patient.birth_date != birth_date:
        _failed(session, keys)
        audit.record(session, actor=f"ip:{ip}", action="icode.open_failed",
                     subject=f"patient:{patient.id}" if patient else "icode",
                     detail={"purpose": purpose, "known_code": icode is not None})
        return Check("wrong")
    clear_failures(session, keys[:1])
    state = codes.status_of(icode).state
    outcome = {"active": "ok", "expired": "expired", "revoked": "replaced"}[state]
    audit.record(session, actor=f"ip:{ip}", action="icode.checked", subject=f"patient:{patient.id}",
                 detail={"purpose": purpose, "icode": icode.id, "visit": icode.visit_ref, "outcome": outcome})
    return Check(outcome, icode)


def open_visit(session: Session, *, site, icode: ICode, ip: str) -> str:
    """A visit session for a checked, working code; returns the cookie's value."""
    token, _row = visits.start_session(session, icode=icode, hours=settings_of(site).icode_session_hours)
    visit = session.get(Visit, icode.visit_ref)
    audit.record(session, actor=f"visit:{icode.id}", action="icode.visit_opened", subject=f"patient:{visit.patient_ref}",
                 detail={"visit": visit.id, "icode": icode.id, "ip": ip})
    return token


def principal_for_request(request, session: Session):
    token = request.cookies.get(visits.COOKIE)
    return visits.principal_for(session, token) if token else None


# -- minors ----------------------------------------------------------------------------------------

def is_minor(settings, site, patient: Patient) -> bool:
    """Under the site's age of majority today, in the site's time zone (no birth date: not known to be)."""
    if patient.birth_date is None:
        return False
    return registration.age_on(patient.birth_date, registration.local_today(site)) < settings.age_of_majority


def minor_message(settings) -> str:
    return _("This patient is under %(age)s, so they cannot have their own account on the portal, and "
             "their exams are not added to anyone else's account. A parent or guardian can see each "
             "visit with the I-Code printed on that visit's Portal Pass, together with the patient's "
             "date of birth.", age=settings.age_of_majority)


def registration_refusal(settings, site, patient: Patient) -> str | None:
    """``registration_check``: no account for a patient under the age of majority."""
    if is_minor(settings, site, patient):
        return minor_message(settings)
    return None


# -- a code typed while signed in ---------------------------------------------------------------------

@dataclass
class Linking:
    outcome: str  # "linked", "already" (this account has it), "minor", "taken" (another account's), "other"
    patient: Patient


def link_to_account(session: Session, *, site, account_id: int, icode: ICode, ip: str) -> Linking:
    """Add the visit's patient to the account as "self", unless the patient is a minor or is
    already another account's own record. Audited either way."""
    visit = session.get(Visit, icode.visit_ref)
    patient = visits.patient_of(session, visit)
    own = session.scalar(select(PatientLink).where(PatientLink.account_id == account_id,
                                                   PatientLink.patient_ref == patient.id))
    someone_else = session.scalar(select(PatientLink).where(PatientLink.patient_ref == patient.id,
                                                            PatientLink.relationship == "self",
                                                            PatientLink.account_id != account_id).limit(1))
    if own is not None:  # e.g. a guardian the help desk invited: nothing changes
        outcome = "already" if own.relationship == "self" else "other"
    elif is_minor(settings_of(site), site, patient):
        outcome = "minor"
    elif someone_else is not None:
        outcome = "taken"
    else:
        session.add(PatientLink(account_id=account_id, patient_ref=patient.id, relationship="self",
                                created_at=clock.now()))
        session.flush()
        outcome = "linked"
    audit.record(session, actor=f"account:{account_id}", action="icode.account_linked" if outcome == "linked"
                 else "icode.account_not_linked", subject=f"patient:{patient.id}",
                 detail={"icode": icode.id, "visit": visit.id, "outcome": outcome, "ip": ip})
    return Linking(outcome, patient)


# -- an account made from a code (step 2 of sign-up) ---------------------------------------------------

def patient_of_code(session: Session, *, number: str, last_name: str, birth_date: date) -> Patient | None:
    """The patient a working code proves, if the draft's birth date and last name are theirs.
    Wrong guesses count against the code like on the visit page (the core throttles per draft
    and per address)."""
    key = throttle_keys(number, "")[:1]
    if wait_seconds(session, key) or global_wait(session):
        return None
    icode = codes.find(session, number)
    patient = visits.patient_of(session, session.get(Visit, icode.visit_ref)) if icode is not None else None
    if (patient is None or not codes.works(icode) or patient.birth_date != birth_date
            or registration.name_key(patient.family_name) != registration.name_key(last_name)):
        _failed(session, key)
        return None
    clear_failures(session, key)
    return patient


def identity_proofs(settings) -> list:
    from core import IdentityProof

    return [IdentityProof(name=PROOF, label=N_("I-Code from your Portal Pass"),
                          hint=N_("The 12 characters printed on your Portal Pass, for example PASS-2345-WXYZ."),
                          find=patient_of_code)]


# -- help with a code or with signing in -------------------------------------------------------------------

HELP_TOPICS = ("visit_code", "sign_in")


def help_topics() -> list[tuple[str, str]]:
    return [("visit_code", _("My I-Code does not work or has expired")),
            ("sign_in", _("I cannot sign in to my account"))]


def ask_for_help(session: Session, *, site, details: registration.Details, topic: str, typed_code: str,
                 language: str, ip: str) -> int:
    """A help-desk ticket. A code typed with the right date of birth is named on the ticket
    (``icode:<id>``), so the help desk can reactivate it. 0 when stored, else seconds to wait."""
    reference = ""
    if typed_code.strip():
        checked = check_code(session, typed=typed_code, birth_date=details.birth_date, ip=ip, purpose="help")
        if checked.outcome == "throttled":
            return checked.wait
        if checked.icode is not None:
            reference = f"icode:{checked.icode.id}"
    return registration.request_account(session, site=site, details=details, language=language, ip=ip,
                                        topic=topic if topic in HELP_TOPICS else "visit_code", reference=reference)


def icode_of_reference(session: Session, reference: str) -> ICode | None:
    kind, _sep, value = (reference or "").partition(":")
    return session.get(ICode, int(value)) if kind == "icode" and value.isdigit() else None


def register_tasks(runtime) -> list:
    from huey import crontab

    @runtime.huey.periodic_task(crontab(minute="17", hour="3"), name="radnet_icode.purge_visit_sessions")
    def purge_visit_sessions() -> int:
        """Every night: forget the visit sessions that ended."""
        from plugins.radnet_icode.models import VisitSession

        with runtime.sessions() as session:
            removed = session.execute(delete(VisitSession).where(VisitSession.expires_at <= clock.now())).rowcount
            session.commit()
        return removed

    return [purge_visit_sessions]
