"""Reading the study store as a principal: the one place that decides what is visible.

Every page, DICOMweb answer, download, disc and share reads through here, so the
rules hold everywhere:

- staff (and the PACS) see everything;
- a patient-side principal sees the studies of its scope: an account its linked
  patients (and their records at other practices), a share or visit-code session
  its ``study:<id>`` entries;
- patient-side, images appear from ``images_release_at`` and a report from its
  ``release_at``; the DICOM instances that carry a held report are hidden too.

Anything not visible is reported as missing (``NotFound``), never as forbidden.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, false, func, not_, or_, select
from sqlalchemy.orm import Session

from core import clock
from core.access import Principal
from core.studies.models import Instance, Patient, Report, Series, Study

STAFF_ROLES = frozenset({"staff", "helpdesk", "admin", "pacs"})


class NotFound(LookupError):
    """Not in the store, or not visible to this principal: the caller answers 404 either way."""


def sees_everything(principal: Principal) -> bool:
    return bool(principal.roles & STAFF_ROLES)


def _ids(principal: Principal, prefix: str = "") -> set[int]:
    found = set()
    for entry in principal.scope:
        value = entry[len(prefix):] if prefix and entry.startswith(prefix) else (entry if not prefix else "")
        if value.isdigit():
            found.add(int(value))
    return found


def patient_refs(session: Session, principal: Principal) -> set[int]:
    """The patient records an account may see (its linked ones), or a whole-portfolio share's
    patient, with their other practices' records."""
    if principal.kind == "account":
        linked = _ids(principal)
    else:
        linked = _ids(principal, "patient:") if principal.kind == "share" else set()
    if not linked:
        return set()
    person = func.coalesce(Patient.person_ref, Patient.id)
    people = select(person).where(Patient.id.in_(linked))
    return set(session.scalars(select(Patient.id).where(person.in_(people))))


def study_filter(session: Session, principal: Principal, patient_ref: int | None = None):
    """A WHERE clause on ``Study`` for what ``principal`` may see (optionally one patient)."""
    if sees_everything(principal):
        clause = Study.patient_ref == patient_ref if patient_ref is not None else None
        return clause if clause is not None else Study.id.is_not(None)
    conditions = []
    patients = patient_refs(session, principal)
    if patient_ref is not None:
        patients &= {patient_ref} | _same_person(session, patient_ref)
    if patients:
        conditions.append(Study.patient_ref.in_(patients))
    studies = _ids(principal, "study:")
    if studies and patient_ref is None:
        conditions.append(Study.id.in_(studies))
    return or_(*conditions) if conditions else false()


def _same_person(session: Session, patient_ref: int) -> set[int]:
    person = func.coalesce(Patient.person_ref, Patient.id)
    people = select(person).where(Patient.id == patient_ref)
    return set(session.scalars(select(Patient.id).where(person.in_(people))))


def studies(session: Session, principal: Principal, *, patient_ref: int | None = None) -> Select:
    """Visible studies, newest first; callers add their own filters, limits and offsets."""
    return (select(Study).where(study_filter(session, principal, patient_ref))
            .order_by(Study.study_date.desc().nulls_last(), Study.id.desc()))


def study(session: Session, principal: Principal, study_uid: str) -> Study:
    found = session.scalar(select(Study).where(Study.study_uid == study_uid,
                                               study_filter(session, principal)))
    if found is None:
        raise NotFound(study_uid)
    return found


def study_by_id(session: Session, principal: Principal, study_id: int) -> Study:
    found = session.scalar(select(Study).where(Study.id == study_id, study_filter(session, principal)))
    if found is None:
        raise NotFound(study_id)
    return found


def images_visible(principal: Principal, study: Study, now: datetime | None = None) -> bool:
    if sees_everything(principal):
        return True
    return study.images_release_at is None or study.images_release_at <= (now or clock.now())


def instances(session: Session, principal: Principal, study: Study, *, series_uid: str | None = None,
              sop_uid: str | None = None) -> Select:
    """Select (Instance, Series) of a visible study, in series then instance order; empty while
    its images are held, and without the instances that carry a held report."""
    query = (select(Instance, Series).join(Series, Instance.series_ref == Series.id)
             .where(Series.study_ref == study.id)
             .order_by(Series.series_number.nulls_last(), Series.id, Instance.instance_number.nulls_last(),
                       Instance.id))
    if series_uid is not None:
        query = query.where(Series.series_uid == series_uid)
    if sop_uid is not None:
        query = query.where(Instance.sop_uid == sop_uid)
    if not sees_everything(principal):
        now = clock.now()
        if not images_visible(principal, study, now):
            return query.where(false())
        query = query.where(not_held_report_file([study.id], now))
    return _without_uncleanable(principal, query)


def not_held_report_file(study_refs: list[int] | None = None, now=None):
    """A clause on ``Instance``: not the DICOM file (SR, PDF) of a report still held from patients."""
    held = select(Report.source_uid).where(Report.release_at > (now or clock.now()), Report.source_uid.is_not(None))
    if study_refs is not None:
        held = held.where(Report.study_ref.in_(study_refs))
    return not_(Instance.sop_uid.in_(held))


def _without_uncleanable(principal: Principal, query: Select) -> Select:
    """A share that hides patient details never sees what cannot be de-identified (text burned
    into pixels, documents): see core.sharing.deidentify."""
    from core.sharing import deidentify
    from core.studies.dicom_json import hides_patient

    return query.where(deidentify.cleanable()) if hides_patient(principal) else query


def series(session: Session, principal: Principal, study: Study) -> list[Series]:
    """The study's series that have at least one visible instance, in order (no instance rows loaded)."""
    visible = instances(session, principal, study).with_only_columns(Instance.series_ref).order_by(None)
    return list(session.scalars(select(Series).where(Series.study_ref == study.id, Series.id.in_(visible))
                                .order_by(Series.series_number.nulls_last(), Series.id)))


@dataclass
class ReportView:
    """The reports a principal may read now, and the earliest held one (for "available on")."""

    readable: list[Report]
    held_until: datetime | None = None
    held_law: str = ""


def reports(session: Session, principal: Principal, study: Study) -> ReportView:
    rows = session.scalars(select(Report).where(Report.study_ref == study.id)
                           .order_by(Report.signed_at, Report.id)).all()
    if sees_everything(principal):
        return ReportView(readable=list(rows))
    now = clock.now()
    readable = [row for row in rows if row.release_at <= now]
    held = sorted((row for row in rows if row.release_at > now), key=lambda row: row.release_at)
    return ReportView(readable=readable, held_until=held[0].release_at if held else None,
                      held_law=held[0].release_law if held else "")


def report(session: Session, principal: Principal, study: Study, report_id: int) -> Report:
    for readable in reports(session, principal, study).readable:
        if readable.id == report_id:
            return readable
    raise NotFound(report_id)


def released_report_filter(principal: Principal):
    """A clause on ``Report`` for reports this principal may read (for listings that join)."""
    if sees_everything(principal):
        return Report.id.is_not(None)
    return Report.release_at <= clock.now()


def visible_instances(session: Session, principal: Principal) -> Select:
    """Select (Instance, Series, Study) across every study visible to ``principal``, with the
    release rules of ``instances`` (searches that span studies: QIDO-RS, visible counts)."""
    query = (select(Instance, Series, Study).join(Series, Instance.series_ref == Series.id)
             .join(Study, Series.study_ref == Study.id).where(study_filter(session, principal)))
    if not sees_everything(principal):
        now = clock.now()
        query = query.where(or_(Study.images_release_at.is_(None), Study.images_release_at <= now),
                            not_held_report_file(now=now))
    return _without_uncleanable(principal, query)
