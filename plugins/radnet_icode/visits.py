"""Visits and the browsers that open them.

A visit groups the studies of one patient at one centre on one day (the seed: an MRI
of the thoracic and of the lumbar spine on the same day share one code). A browser
that typed the visit's code and the patient's date of birth gets a visit session:
a ``__Host-`` cookie whose value is stored only hashed, lasting
``icode_session_hours`` and never beyond the code's expiry. Its principal is kind
``"visit"`` with one ``study:<id>`` per study of the visit, which
``core.studies.queries`` scopes (and holds back unreleased reports) like a share's.
"""
from __future__ import annotations

from datetime import date, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core import clock
from core.access import Principal
from core.identity.security import digest, new_token
from core.studies.models import Patient, Study
from plugins.radnet_icode import codes
from plugins.radnet_icode.models import ICode, Visit, VisitSession, VisitStudy

COOKIE = "__Host-filmless_visit"


# -- which visit a study belongs to ----------------------------------------------------------

def location_key(settings, study: Study) -> str:
    """The key of the centre that did ``study`` ("" when no centre matches)."""
    try:
        from plugins.radnet_icode import locations
    except ImportError:  # the centres module is optional for this part: visits then group by day only
        return ""
    found = locations.location_of_study(settings, study)
    return found.key if found is not None else ""


def visit_day(site, study: Study) -> date:
    """The study's date as the centre recorded it, else the day it arrived (site time)."""
    if study.study_date:
        return study.study_date
    return study.created_at.astimezone(ZoneInfo(site.config.site.timezone)).date()


def visit_of_study(session: Session, study_ref: int) -> Visit | None:
    return session.scalar(select(Visit).join(VisitStudy, VisitStudy.visit_ref == Visit.id)
                          .where(VisitStudy.study_ref == study_ref))


def visit_for_study(session: Session, *, site, settings, study: Study) -> tuple[Visit, bool]:
    """The study's visit, made if needed: (visit, True when the visit is new)."""
    known = visit_of_study(session, study.id)
    if known is not None:
        return known, False
    day, key = visit_day(site, study), location_key(settings, study)
    visit = session.scalar(select(Visit).where(Visit.patient_ref == study.patient_ref, Visit.visit_date == day,
                                               Visit.location_key == key))
    created = visit is None
    if created:
        visit = Visit(patient_ref=study.patient_ref, visit_date=day, location_key=key, created_at=clock.now())
        session.add(visit)
        session.flush()
    session.add(VisitStudy(visit_ref=visit.id, study_ref=study.id))
    session.flush()
    return visit, created


def study_refs(session: Session, visit_ref: int) -> list[int]:
    return list(session.scalars(select(VisitStudy.study_ref).where(VisitStudy.visit_ref == visit_ref)
                                .order_by(VisitStudy.study_ref)))


def studies(session: Session, visit_ref: int) -> list[Study]:
    return list(session.scalars(select(Study).join(VisitStudy, VisitStudy.study_ref == Study.id)
                                .where(VisitStudy.visit_ref == visit_ref).order_by(Study.id)))


def patient_of(session: Session, visit: Visit) -> Patient:
    return session.get(Patient, visit.patient_ref)


def visits_of_patient(session: Session, patient_ref: int) -> list[Visit]:
    return list(session.scalars(select(Visit).where(Visit.patient_ref == patient_ref)
                                .order_by(Visit.visit_date.desc(), Visit.id.desc())))


# -- visit sessions ---------------------------------------------------------------------------

def start_session(session: Session, *, icode: ICode, hours: int) -> tuple[str, VisitSession]:
    """A new visit session; returns the cookie's value (only its hash is stored) and the row."""
    now = clock.now()
    session.execute(delete(VisitSession).where(VisitSession.expires_at <= now))
    token = new_token()
    row = VisitSession(id_hash=digest(token), icode_ref=icode.id, created_at=now,
                       expires_at=min(now + timedelta(hours=hours), icode.expires_at))
    session.add(row)
    session.flush()
    return token, row


def find_session(session: Session, token: str | None) -> tuple[VisitSession, ICode] | None:
    """The live session of a cookie and its code, or None (ended, timed out, code no longer working)."""
    if not token:
        return None
    found = session.get(VisitSession, digest(token))
    if found is None or found.expires_at <= clock.now():
        return None
    icode = session.get(ICode, found.icode_ref)
    if icode is None or not codes.works(icode):
        return None
    return found, icode


def end_session(session: Session, token: str | None) -> None:
    if token:
        session.execute(delete(VisitSession).where(VisitSession.id_hash == digest(token)))


def principal_for(session: Session, token: str | None) -> Principal | None:
    found = find_session(session, token)
    if found is None:
        return None
    _row, icode = found
    scope = frozenset(f"study:{ref}" for ref in study_refs(session, icode.visit_ref))
    return Principal(kind="visit", id=str(icode.id), scope=scope)
