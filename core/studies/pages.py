"""What the patient's exam pages show: the exam list with its filters and statuses,
and one exam's summary, reports and images.

Plain functions taking a Session and a principal; no HTTP here. Visibility is
never decided here: every study, series, instance and report comes through
``core.studies.queries``, which applies the principal's scope and the release times.
"""
from __future__ import annotations

import functools
from collections import defaultdict, namedtuple
from dataclasses import dataclass, field
from datetime import date, datetime, time
from urllib.parse import urlencode

from babel import dates as babel_dates
from sqlalchemy import case, func, literal, or_, select
from sqlalchemy.orm import Session

from core import clock, i18n
from core.access import Principal
from core.i18n import gettext as _
from core.identity import account as accounts
from core.identity.models import Account, WebSession
from core.sharing import pseudonyms
from core.studies import queries
from core.studies.models import Instance, Patient, Report, Series, Study

# Modalities that carry documents, not pictures: never shown as the kind of an exam.
DOCUMENT_MODALITIES = frozenset({"SR", "DOC", "KO", "PR", "REG", "SEG", "RWV"})
# The filter's choices: one entry per kind of exam a patient recognises, several codes each.
MODALITY_KINDS = {"CT": ("CT",), "MR": ("MR",), "XR": ("CR", "DX", "DR", "RG", "PX", "IO"), "US": ("US",),
                  "MG": ("MG",), "NM": ("NM",), "PT": ("PT",), "XA": ("XA",), "RF": ("RF",), "BMD": ("BMD",),
                  "OT": ("OT",)}
KIND_OF = {code: kind for kind, codes in MODALITY_KINDS.items() for code in codes}


def kind_labels() -> dict[str, str]:
    """Names of the kinds of exam in the reader's language (built per call: the language is per request)."""
    return {"CT": _("CT scan"), "MR": _("MRI"), "XR": _("X-ray"), "US": _("Ultrasound"), "MG": _("Mammogram"),
            "NM": _("Nuclear medicine"), "PT": _("PET scan"), "XA": _("Angiography"), "RF": _("Fluoroscopy"),
            "BMD": _("Bone density scan"), "OT": _("Other images")}


def body_part_labels() -> dict[str, str]:
    """DICOM Body Part Examined terms a patient would not read as words."""
    return {"ABDOMEN": _("Abdomen"), "ANKLE": _("Ankle"), "ARM": _("Arm"), "BRAIN": _("Brain"),
            "BREAST": _("Breast"), "CHEST": _("Chest"), "CSPINE": _("Neck (cervical spine)"),
            "ELBOW": _("Elbow"), "FOOT": _("Foot"), "HAND": _("Hand"), "HEAD": _("Head"), "HEART": _("Heart"),
            "HIP": _("Hip"), "KNEE": _("Knee"), "LEG": _("Leg"), "LSPINE": _("Lower back (lumbar spine)"),
            "NECK": _("Neck"), "PELVIS": _("Pelvis"), "SHOULDER": _("Shoulder"), "SKULL": _("Skull"),
            "SPINE": _("Spine"), "TSPINE": _("Upper back (thoracic spine)"), "WRIST": _("Wrist"),
            "ABDOMENPELVIS": _("Abdomen and pelvis"), "CHESTABDOMEN": _("Chest and abdomen")}


def body_part_label(value: str, labels: dict[str, str] | None = None) -> str:
    value = (value or "").strip()
    if not value:
        return _("Body part not recorded")
    return (labels or body_part_labels()).get(value.upper(), value.replace("_", " ").title())


def exam_kinds(modalities: str, labels: dict[str, str] | None = None) -> list[str]:
    """'CT\\SR' -> ['CT scan']: the kinds of images, in the reader's language."""
    labels = labels or kind_labels()
    found: list[str] = []
    for code in (modalities or "").split("\\"):
        if code and code not in DOCUMENT_MODALITIES:
            label = labels.get(KIND_OF.get(code, ""), code)
            if label not in found:
                found.append(label)
    return found


def study_day(value: date | None, format: str = "medium") -> str:
    """A DICOM study date is already the practice's local day: formatted, never shifted."""
    return _formatted_day(value, format, i18n.current_language()) if value else ""


@functools.lru_cache(maxsize=4096)  # a long exam list formats hundreds of days on every visit
def _formatted_day(value: date, format: str, language: str) -> str:
    return babel_dates.format_date(value, format=format, locale=language)


def study_clock_time(value: str) -> str:
    """'101500' -> '10:15 AM' in the reader's locale; '' when the file gave no usable time."""
    digits = (value or "").split(".")[0]
    try:
        moment = time(int(digits[0:2]), int(digits[2:4] or 0))
    except (ValueError, IndexError):
        return ""
    return babel_dates.format_time(moment, format="short", locale=i18n.current_language())


def person_name(value: str) -> str:
    """A DICOM person name ('Family^Given^Middle^Prefix^Suffix') as it is spoken."""
    parts = (value or "").split("=")[0].split("^") + [""] * 5
    family, given, middle, prefix, suffix = (part.strip() for part in parts[:5])
    return " ".join(part for part in (prefix, given, middle, family, suffix) if part)


def patient_name(patient: Patient | None) -> str:
    if patient is None:
        return ""
    return " ".join(part for part in (patient.given_name, patient.family_name) if part)


# -- whose exams: the active patient of this browser -----------------------------------------

@dataclass
class PatientChoice:
    active: Patient | None
    linked: list  # core.identity.account.LinkedPatient, in the picker's order
    relationship: str = ""  # the account's link to the active patient: "self", "guardian"…


def patient_choice(session: Session, principal: Principal, web_session: WebSession | None) -> PatientChoice:
    """The patient chosen in this browser (the identity picker's choice), else the first linked one."""
    if principal.kind != "account":
        return PatientChoice(None, [])
    linked = accounts.linked_patients(session, account=session.get(Account, int(principal.id)))
    chosen = web_session.active_patient_ref if web_session else None
    active = next((item for item in linked if item.patient.id == chosen), linked[0] if linked else None)
    if active is None:
        return PatientChoice(None, linked)
    return PatientChoice(active.patient, linked, active.link.relationship)


# -- the exam list ------------------------------------------------------------------------------

def date_range(date_from: str, date_to: str, problems: list[str]) -> tuple[date | None, date | None]:
    """A "from" and "to" day of a GET form, each None when empty or not a date (then named in
    ``problems``); given backwards, they are still meant as a range."""
    days = []
    for raw in (date_from, date_to):
        day = None
        if raw.strip():
            try:
                day = date.fromisoformat(raw.strip())
            except ValueError:
                problems.append(_("“%(value)s” is not a date; use the form YYYY-MM-DD.", value=raw[:20]))
        days.append(day)
    first, last = days
    return (last, first) if first and last and first > last else (first, last)


@dataclass
class ExamFilters:
    date_from: date | None = None
    date_to: date | None = None
    kind: str = ""
    group_by_body_part: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return bool(self.date_from or self.date_to or self.kind)

    def address(self, *, grouped: bool) -> str:
        """This list's address, grouped by body part or not, keeping the filters."""
        params = {"date_from": self.date_from.isoformat() if self.date_from else "",
                  "date_to": self.date_to.isoformat() if self.date_to else "", "kind": self.kind,
                  "group": "body_part" if grouped else ""}
        query = urlencode({name: value for name, value in params.items() if value})
        return f"/exams?{query}" if query else "/exams"

    @classmethod
    def parse(cls, date_from: str = "", date_to: str = "", kind: str = "", group: str = "") -> "ExamFilters":
        """From the GET form; a value that cannot be used is dropped and named in ``problems``."""
        filters = cls(group_by_body_part=group == "body_part")
        filters.date_from, filters.date_to = date_range(date_from, date_to, filters.problems)
        if kind in MODALITY_KINDS:
            filters.kind = kind
        return filters


TONES = {"available": "ready", "ready": "ready", "held": "waiting"}


@dataclass
class ImagesStatus:
    state: str  # "available", "held" (until ``at``) or "none" (nothing received yet)
    at: datetime | None = None

    @property
    def tone(self) -> str:
        return TONES.get(self.state, "none")

    @property
    def label(self) -> str:
        if self.state == "held":
            return _("Images on %(date)s", date=i18n.format_date(self.at))
        return _("Images available") if self.state == "available" else _("No images yet")


@dataclass
class ReportStatus:
    state: str  # "ready", "held" (until ``at``, maybe by ``law``) or "none"
    at: datetime | None = None
    law: str = ""

    @property
    def tone(self) -> str:
        return TONES.get(self.state, "none")

    @property
    def label(self) -> str:
        if self.state == "held" and self.law:
            return _("Report available on %(date)s as required by %(law)s", date=i18n.format_date(self.at),
                     law=self.law)
        if self.state == "held":
            return _("Report available on %(date)s", date=i18n.format_date(self.at))
        return _("Report ready") if self.state == "ready" else _("No report yet")


# What a row of the list shows, read as plain tuples, not ORM objects, so a long list stays fast.
LIST_COLUMNS = (Study.id, Study.study_uid, Study.study_date, Study.description, Study.modalities, Study.body_part,
                Study.location, Study.instance_count, Study.images_release_at)
ListedStudy = namedtuple("ListedStudy", [column.key for column in LIST_COLUMNS])


@dataclass
class ExamRow:
    """One exam of the list, with its words ready: a long list renders in a few milliseconds."""

    uid: str
    title: str  # the study description, "" when the practice gave none
    day: date | None
    day_text: str
    details: str  # "CT scan · Chest · Main Street Imaging"
    body_part: str
    images: ImagesStatus
    report: ReportStatus


@dataclass
class ExamGroup:
    heading: str  # the body part; "" when the list is not grouped
    rows: list[ExamRow]


@dataclass
class ExamList:
    groups: list[ExamGroup]
    count: int
    kinds_offered: list[tuple[str, str]]  # (filter value, label) of the kinds this patient has


def _has_code(codes: tuple[str, ...]):
    """Study.modalities ('CT\\SR') holds one of ``codes``: matched between backslashes."""
    padded = literal("\\") + Study.modalities + literal("\\")
    return or_(*(padded.like(f"%\\{code}\\%", escape="!") for code in codes))


def images_status(principal: Principal, study: Study | ListedStudy, now: datetime) -> ImagesStatus:
    if not queries.images_visible(principal, study, now):
        return ImagesStatus("held", study.images_release_at)
    return ImagesStatus("available" if study.instance_count else "none")


def _report_statuses(session: Session, principal: Principal, listed) -> dict[int, ReportStatus]:
    """The report status of every study ``listed`` selects, in one query (readable per ``queries``' own clause)."""
    readable = case((queries.released_report_filter(principal), 1), else_=0)
    rows = session.execute(select(Report.study_ref, Report.release_at, Report.release_law, readable)
                           .where(Report.study_ref.in_(listed.with_only_columns(Study.id).order_by(None))))
    statuses: dict[int, ReportStatus] = {}
    for study_ref, release_at, law, is_readable in rows:
        current = statuses.get(study_ref)
        if is_readable:
            statuses[study_ref] = ReportStatus("ready")
        elif current is None or (current.state == "held" and release_at < current.at):
            statuses[study_ref] = ReportStatus("held", release_at, law or "")
    return statuses


def exam_list(session: Session, principal: Principal, patient_ref: int, filters: ExamFilters) -> ExamList:
    """The patient's visible exams, newest first, filtered; two or three queries whatever their number."""
    visible = queries.studies(session, principal, patient_ref=patient_ref)
    query = visible
    deidentifier = pseudonyms.for_principal(session, principal)  # a share that hides patient details
    dated = deidentifier is None or deidentifier.keeps("retain_dates")  # else a filter would tell the dates
    if filters.date_from and dated:
        query = query.where(Study.study_date >= filters.date_from)
    if filters.date_to and dated:
        query = query.where(Study.study_date <= filters.date_to)
    if filters.kind:
        query = query.where(_has_code(MODALITY_KINDS[filters.kind]))
    studies = [ListedStudy._make(row) for row in session.execute(query.with_only_columns(*LIST_COLUMNS))]
    if deidentifier is not None:
        studies = [deidentifier.listed(study) for study in studies]
    # the filter offers the kinds of all the patient's exams: the list itself holds them when unfiltered
    present = {study.modalities for study in studies} if not filters.active else set(session.scalars(
        visible.with_only_columns(Study.modalities).order_by(None).distinct()))
    labels = kind_labels()
    codes = {code for value in present for code in (value or "").split("\\")}
    kinds_offered = [(kind, labels[kind]) for kind, members in MODALITY_KINDS.items() if codes & set(members)]
    reports = _report_statuses(session, principal, query) if studies else {}
    now, parts = clock.now(), body_part_labels()
    rows = []
    for study in studies:
        body_part = body_part_label(study.body_part, parts)
        shown_part = [body_part] if study.body_part and not filters.group_by_body_part else []
        rows.append(ExamRow(uid=study.study_uid, title=study.description, day=study.study_date,
                            day_text=study_day(study.study_date), body_part=body_part,
                            details=" · ".join([*exam_kinds(study.modalities, labels), *shown_part,
                                                *([study.location] if study.location else [])]),
                            images=images_status(principal, study, now),
                            report=reports.get(study.id, ReportStatus("none"))))
    if not filters.group_by_body_part:
        return ExamList([ExamGroup("", rows)], len(rows), kinds_offered)
    grouped: dict[str, list[ExamRow]] = defaultdict(list)
    for row in rows:  # rows are newest first, so groups come in the order of their latest exam
        grouped[row.body_part].append(row)
    return ExamList([ExamGroup(heading, items) for heading, items in grouped.items()], len(rows), kinds_offered)


# -- one exam -------------------------------------------------------------------------------------

@dataclass
class StudyHeader:
    study: Study
    patient: Patient | None
    kinds: list[str]
    body_part: str
    images: ImagesStatus
    report: ReportStatus


def study_header(session: Session, principal: Principal, study_uid: str) -> StudyHeader:
    """What every tab of an exam shows at the top; ``queries.NotFound`` when it is not visible."""
    study = queries.study(session, principal, study_uid)
    view = queries.reports(session, principal, study)
    if view.readable:
        report = ReportStatus("ready")
    elif view.held_until:
        report = ReportStatus("held", view.held_until, view.held_law)
    else:
        report = ReportStatus("none")
    from core.studies.dicom_json import hides_patient  # a share may hide whose exam it is

    hidden = hides_patient(principal)
    if hidden:  # what the exam pages show of it, de-identified (core.sharing.deidentify)
        study = pseudonyms.for_principal(session, principal).study(study)
    return StudyHeader(study=study, patient=None if hidden else session.get(Patient, study.patient_ref),
                       kinds=exam_kinds(study.modalities), body_part=body_part_label(study.body_part),
                       images=images_status(principal, study, clock.now()), report=report)


@dataclass
class Counts:
    series: int
    images: int


def image_counts(session: Session, principal: Principal, study: Study) -> Counts:
    """Series and images the principal can see now (reports carried as DICOM are not images)."""
    counting = (queries.instances(session, principal, study)
                .with_only_columns(func.count(func.distinct(Series.id)), func.count(Instance.id))
                .where(Instance.rows.is_not(None)).order_by(None))
    series, images = session.execute(counting).one()
    return Counts(series=int(series or 0), images=int(images or 0))


def earlier_same_body_part(session: Session, principal: Principal, study: Study, limit: int = 10) -> list[Study]:
    """The patient's earlier exams of this body part, newest first (the priors a doctor compares with)."""
    study = getattr(study, "original", study)  # the study itself, not a share's de-identified view of it
    if not study.body_part:
        return []
    query = (queries.studies(session, principal, patient_ref=study.patient_ref)
             .where(Study.id != study.id, func.upper(Study.body_part) == study.body_part.upper()))
    if study.study_date:
        query = query.where(Study.study_date < study.study_date)
    earlier = list(session.scalars(query.limit(limit)))
    deidentifier = pseudonyms.for_principal(session, principal)
    return [deidentifier.study(prior) for prior in earlier] if deidentifier is not None else earlier


@dataclass
class ImageEntry:
    instance: Instance
    number: int


@dataclass
class SeriesImages:
    series: Series
    images: list[ImageEntry]


def series_images(session: Session, principal: Principal, study: Study) -> list[SeriesImages]:
    """The study's visible image series with their images, in order, from one query."""
    found: dict[int, SeriesImages] = {}
    for instance, series in session.execute(queries.instances(session, principal, study)
                                            .where(Instance.rows.is_not(None))):
        entry = found.setdefault(series.id, SeriesImages(_shown_series(session, principal, series), []))
        entry.images.append(ImageEntry(instance, len(entry.images) + 1))
    return list(found.values())


def _shown_series(session: Session, principal: Principal, series: Series):
    deidentifier = pseudonyms.for_principal(session, principal)
    return deidentifier.series(series) if deidentifier is not None else series


def image(session: Session, principal: Principal, study: Study, sop_uid: str) -> Instance:
    row = session.execute(queries.instances(session, principal, study, sop_uid=sop_uid)).first()
    if row is None:
        raise queries.NotFound(sop_uid)
    return row[0]
