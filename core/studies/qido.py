"""QIDO-RS searches (PS3.18 §10.6): match keys to SQL on the visible rows, rows to DICOM JSON.

Each search is one query over ``core.studies.queries`` (which decides what the
principal may see) plus, for patient-side principals at study level, one grouped
query for the counts of the instances they may see. No query per result row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import and_, distinct, func, literal, or_
from sqlalchemy.orm import Session

from core.access import Principal
from core.i18n import gettext as _
from core.sharing import pseudonyms
from core.studies import dicom_json, queries
from core.studies.models import Instance, Patient, Series, Study

MAX_LIMIT = 1000  # a larger answer is paged: the client asks again with ``offset``
CONTROL = {"limit", "offset", "includefield", "fuzzymatching", "accept", "charset"}
STUDY_KEYS = {"StudyInstanceUID", "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate",
              "PatientSex", "StudyDate", "AccessionNumber", "ModalitiesInStudy", "StudyDescription",
              "ReferringPhysicianName"}
SERIES_KEYS = {"SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined"}
INSTANCE_KEYS = {"SOPInstanceUID", "SOPClassUID", "InstanceNumber"}


class BadQuery(ValueError):
    """A query the server cannot understand (answered 400 with this message)."""


@dataclass
class Search:
    match: dict[str, list[str]] = field(default_factory=dict)
    limit: int = MAX_LIMIT
    offset: int = 0
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    unsupported: list[str] = field(default_factory=list)


@dataclass
class Found:
    """One page of results, whether more follow, and the studies it shows (for the audit trail)."""

    results: list[dict]
    more: bool
    study_ids: list[int]
    unsupported: list[str]


def parse(items: list[tuple[str, str]], level: str) -> Search:
    """Query parameters (repeated or comma-separated) into a ``Search`` for ``level``
    (``study``, ``series`` or ``instance``)."""
    search = Search()
    supported = STUDY_KEYS | (SERIES_KEYS if level in ("series", "instance") else set()) | (
        INSTANCE_KEYS if level == "instance" else set())
    for name, value in items:
        lowered = name.lower()
        if lowered in ("limit", "offset"):
            try:
                number = int(value)
            except ValueError:
                raise BadQuery(_("%(name)s must be a whole number.", name=name)) from None
            if number < 0:
                raise BadQuery(_("%(name)s must be a whole number.", name=name))
            if lowered == "limit":
                search.limit = min(number, MAX_LIMIT) if number else MAX_LIMIT
            else:
                search.offset = number
        elif lowered == "includefield":
            for field_name in filter(None, (part.strip() for part in value.split(","))):
                if field_name.lower() == "all":
                    search.include_all = True
                elif tag := dicom_json.tag_of(field_name):
                    search.include.add(tag)
        elif lowered in CONTROL:
            continue  # fuzzymatching is answered with exact (and wildcard) matching
        else:
            keyword = dicom_json.keyword_of(name)
            if keyword in supported:
                search.match.setdefault(keyword, []).extend(
                    part.strip() for part in value.replace("\\", ",").split(",") if part.strip())
            else:
                search.unsupported.append(name)
    return search


def _like(value: str) -> str:
    escaped = value.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return escaped.replace("*", "%").replace("?", "_")


def _text(column, values: list[str], *, fold: bool = False):
    """DICOM single-value and wildcard matching (``*``, ``?``) of any of ``values``."""
    options = []
    for value in values:
        if value == "*":
            return None  # universal match
        target = func.lower(column) if fold else column
        wanted = value.lower() if fold else value
        options.append(target.like(_like(wanted), escape="!") if ("*" in value or "?" in value)
                       else target == wanted)
    return or_(*options) if options else None


def _day(text: str) -> date:
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8])) if len(text) == 8 and text.isdigit() \
            else date.fromisoformat(text)
    except ValueError:
        raise BadQuery(_("%(value)s is not a date (YYYYMMDD).", value=text)) from None


def _dates(column, values: list[str]):
    """Single dates and ranges: ``20250101``, ``20250101-20251231``, ``20250101-``, ``-20251231``."""
    options = []
    for value in values:
        if "-" in value and not (len(value) == 10 and value[4] == "-" and value[7] == "-"):
            start, _sep, end = value.partition("-")
            bounds = [column >= _day(start)] if start else []
            bounds += [column <= _day(end)] if end else []
            options.append(and_(*bounds) if bounds else column.is_not(None))
        else:
            options.append(column == _day(value))
    return or_(*options) if options else None


def _person(values: list[str]):
    """Patient Name against ``Family^Given`` (case-insensitive; a value without wildcards also
    matches the family name alone)."""
    full = func.lower(Patient.family_name + literal("^") + Patient.given_name)
    options = []
    for value in values:
        wanted = value.lower()
        if "*" in value or "?" in value:
            options.append(full.like(_like(wanted), escape="!"))
        else:
            options.append(or_(full == wanted, func.lower(Patient.family_name) == wanted))
    return or_(*options) if options else None


def _modalities(values: list[str]):
    # stored as "CT\SR": compare with a backslash on each side, "!" as the LIKE escape
    padded = literal("\\") + Study.modalities + literal("\\")
    return or_(*(padded.like(f"%\\{_like(value)}\\%", escape="!") for value in values))


def _number(column, values: list[str]):
    try:
        return column.in_([int(value) for value in values])
    except ValueError:
        raise BadQuery(_("%(value)s is not a whole number.", value=",".join(values))) from None


def _clauses(match: dict[str, list[str]]) -> list:
    builders = {
        "StudyInstanceUID": lambda v: Study.study_uid.in_(v),
        "PatientID": lambda v: _text(Patient.patient_id, v),
        "IssuerOfPatientID": lambda v: _text(Patient.issuer, v),
        "PatientName": _person,
        "PatientBirthDate": lambda v: _dates(Patient.birth_date, v),
        "PatientSex": lambda v: _text(Patient.sex, v, fold=True),
        "StudyDate": lambda v: _dates(Study.study_date, v),
        "AccessionNumber": lambda v: _text(Study.accession_number, v),
        "ModalitiesInStudy": _modalities,
        "StudyDescription": lambda v: _text(Study.description, v, fold=True),
        "ReferringPhysicianName": lambda v: _text(Study.referring_physician, v, fold=True),
        "SeriesInstanceUID": lambda v: Series.series_uid.in_(v),
        "Modality": lambda v: _text(Series.modality, v, fold=True),
        "SeriesNumber": lambda v: _number(Series.series_number, v),
        "SeriesDescription": lambda v: _text(Series.description, v, fold=True),
        "BodyPartExamined": lambda v: _text(Series.body_part, v, fold=True),
        "SOPInstanceUID": lambda v: Instance.sop_uid.in_(v),
        "SOPClassUID": lambda v: Instance.sop_class_uid.in_(v),
        "InstanceNumber": lambda v: _number(Instance.instance_number, v),
    }
    clauses = []
    for keyword, values in match.items():
        clause = builders[keyword](values) if values else None
        if clause is not None:
            clauses.append(clause)
    return clauses


def _page(session: Session, query, search: Search) -> tuple[list, bool]:
    rows = session.execute(query.limit(search.limit + 1).offset(search.offset)).all()
    return rows[:search.limit], len(rows) > search.limit


def _hide(session: Session, principal: Principal, results: list[dict]) -> list[dict]:
    """Results as a share that hides patient details gets them: de-identified (core.sharing.deidentify)."""
    deidentifier = pseudonyms.for_principal(session, principal)
    return [deidentifier.json(result) for result in results] if deidentifier is not None else results


def _matching(session: Session, principal: Principal, search: Search) -> dict[str, list[str]]:
    """The match keys a principal may use: a share that hides patient details may not match on
    what it cannot see (a match would tell the value); those are answered as unsupported."""
    deidentifier = pseudonyms.for_principal(session, principal)
    if deidentifier is None:
        return search.match
    refused = [keyword for keyword in search.match if not deidentifier.matchable(keyword)]
    search.unsupported.extend(refused)
    return {keyword: values for keyword, values in search.match.items() if keyword not in refused}


def studies(session: Session, principal: Principal, search: Search, base: str) -> Found:
    query = (queries.studies(session, principal).add_columns(Patient)
             .join(Patient, Patient.id == Study.patient_ref).where(*_clauses(_matching(session, principal, search))))
    rows, more = _page(session, query, search)
    if queries.sees_everything(principal):  # the stored counts are theirs
        results = [dicom_json.study_attributes(study, patient, base) for study, patient in rows]
    else:
        counts = _visible_counts(session, principal, [study.id for study, _patient in rows])
        results = []
        for study, patient in rows:
            seen = counts.get(study.id, (0, 0, ""))
            results.append(dicom_json.study_attributes(study, patient, base, series_count=seen[0],
                                                       instance_count=seen[1], modalities=seen[2]))
    return Found(_hide(session, principal, results), more, [study.id for study, _patient in rows], search.unsupported)


def _visible_counts(session: Session, principal: Principal, study_ids: list[int]) -> dict[int, tuple]:
    """(series, instances, modalities) per study over the instances the principal may see."""
    if not study_ids:
        return {}
    grouped = (queries.visible_instances(session, principal)
               .with_only_columns(Series.study_ref, Series.modality, func.count(distinct(Series.id)),
                                  func.count(Instance.id))
               .where(Series.study_ref.in_(study_ids)).group_by(Series.study_ref, Series.modality))
    counts: dict[int, list] = {}
    for study_id, modality, series_count, instance_count in session.execute(grouped):
        entry = counts.setdefault(study_id, [0, 0, set()])
        entry[0] += series_count
        entry[1] += instance_count
        if modality:
            entry[2].add(modality)
    return {key: (s, i, "\\".join(sorted(m))) for key, (s, i, m) in counts.items()}


def series(session: Session, principal: Principal, search: Search, base: str, study: Study | None = None) -> Found:
    """The series of ``study`` (or of every visible study) with at least one visible instance."""
    if study is not None:
        query = (queries.instances(session, principal, study)
                 .with_only_columns(Series, Study, Patient, func.count(Instance.id))
                 .join(Study, Study.id == Series.study_ref))
    else:
        query = (queries.visible_instances(session, principal)
                 .with_only_columns(Series, Study, Patient, func.count(Instance.id)))
    query = (query.join(Patient, Patient.id == Study.patient_ref).where(*_clauses(_matching(session, principal, search)))
             .group_by(Series.id, Study.id, Patient.id).order_by(None)
             .order_by(Study.study_date.desc().nulls_last(), Study.id.desc(), Series.series_number.nulls_last(),
                       Series.id))
    rows, more = _page(session, query, search)
    results = []
    for one, owner, patient, count in rows:
        attributes = dicom_json.series_attributes(one, owner, base, instance_count=count)
        if study is None:  # searched across studies: say which study each series belongs to
            attributes = {**dicom_json.study_attributes(owner, patient, base), **attributes}
        results.append(dict(sorted(attributes.items())))
    return Found(_hide(session, principal, results), more, sorted({owner.id for _s, owner, _p, _c in rows}),
                 search.unsupported)


def instances(session: Session, principal: Principal, search: Search, base: str, study: Study | None = None,
              series_uid: str | None = None) -> Found:
    if study is not None:
        query = (queries.instances(session, principal, study, series_uid=series_uid)
                 .add_columns(Study, Patient).join(Study, Study.id == Series.study_ref)
                 .join(Patient, Patient.id == Study.patient_ref))
    else:
        query = (queries.visible_instances(session, principal).add_columns(Patient)
                 .join(Patient, Patient.id == Study.patient_ref)
                 .order_by(Study.study_date.desc().nulls_last(), Study.id.desc(),
                           Series.series_number.nulls_last(), Series.id, Instance.instance_number.nulls_last(),
                           Instance.id))
    rows, more = _page(session, query.where(*_clauses(_matching(session, principal, search))), search)
    results = []
    for instance, one, owner, patient in rows:
        attributes = dicom_json.instance_attributes(instance, one, owner, base, search.include, search.include_all)
        if series_uid is None:  # the series is not in the path: say which one
            attributes = {**dicom_json.series_attributes(one, owner, base), **attributes}
            attributes.pop("00201209", None)
        if study is None:
            attributes = {**dicom_json.study_attributes(owner, patient, base), **attributes}
            for count in ("00201206", "00201208"):
                attributes.pop(count, None)
        results.append(dict(sorted(attributes.items())))
    return Found(_hide(session, principal, results), more, sorted({owner.id for _i, _s, owner, _p in rows}),
                 search.unsupported)

