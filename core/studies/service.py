"""Putting studies into the store: DICOM ingest and reports.

Every way in (STOW-RS, C-STORE, ``filmless import``, a plugin's upload) ends in
``ingest``: header checked, blob moved in atomically, rows upserted in one
transaction, then the ``study_ingested`` observers and an audit event. Reading
out is in ``queries``, where release times and the principal's scope apply.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import clock
from core.audit import service as audit
from core.i18n import gettext as _
from core.plugins import ReleaseHold, call_each
from core.studies import dicom
from core.studies.blobs import scratch_file
from core.studies.models import Instance, Patient, Report, Series, Study


@dataclass
class Ingested:
    """What became of one file: ``stored``, ``duplicate`` (already held) or ``refused``."""

    outcome: str
    reason: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    sop_class_uid: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome != "refused"


def blob_key(kind: str, name: str) -> str:
    """A store key from a hash of ``name``, so no UID or file name ever becomes a path."""
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return f"{kind}/{digest[:2]}/{digest[2:4]}/{digest}"


def ingest(session: Session, path: Path, *, runtime, actor: str = "system", source: str = "import") -> Ingested:
    """Store one DICOM file (a scratch file the caller owns and removes). Never raises for bad input."""
    try:
        header = dicom.read_header(Path(path), max_bytes=runtime.site.config.studies.max_file_mb * 2**20)
    except dicom.Refused as refusal:
        return Ingested("refused", reason=str(refusal))
    ds = header.dataset
    result = Ingested("stored", study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID),
                      sop_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID))
    for attempt in range(3):  # two writers creating the same patient or study: the loser retries
        try:
            return _store(session, path, header, result, runtime=runtime, actor=actor, source=source)
        except IntegrityError:
            session.rollback()
    return Ingested("refused", reason="conflict", sop_uid=result.sop_uid)


def _store(session: Session, path: Path, header: dicom.Header, result: Ingested, *, runtime, actor, source):
    ds = header.dataset
    if session.scalar(select(Instance.id).where(Instance.sop_uid == result.sop_uid)):
        session.rollback()  # end the read transaction: nothing changes
        result.outcome = "duplicate"
        return result
    now = clock.now()
    patient = _patient(session, header, runtime.site.config.studies, now)
    study = session.scalar(select(Study).where(Study.study_uid == result.study_uid))
    new_study = study is None
    if new_study:
        study = Study(patient_ref=patient.id, study_uid=result.study_uid, created_at=now,
                      accession_number=header.text("AccessionNumber", 64) or None,
                      study_date=header.date("StudyDate"), study_time=header.text("StudyTime", 16),
                      description=header.text("StudyDescription"), body_part=header.text("BodyPartExamined", 64),
                      location=header.text("InstitutionName"),
                      referring_physician=header.text("ReferringPhysicianName"))
        session.add(study)
        session.flush()
        _decide_images_release(session, runtime, study)
    elif study.patient_ref != patient.id:
        session.rollback()
        result.outcome, result.reason = "refused", _("This study is already held for another patient.")
        return result
    series = session.scalar(select(Series).where(Series.series_uid == result.series_uid))
    if series is None:
        series = Series(study_ref=study.id, series_uid=result.series_uid, modality=header.text("Modality", 16),
                        series_number=header.number("SeriesNumber"), description=header.text("SeriesDescription"),
                        body_part=header.text("BodyPartExamined", 64), created_at=now)
        session.add(series)
        session.flush()
        study.series_count += 1
    elif series.study_ref != study.id:
        session.rollback()
        result.outcome, result.reason = "refused", _("This series is already held in another study.")
        return result
    key = blob_key("dicom", result.sop_uid)
    instance = Instance(series_ref=series.id, sop_uid=result.sop_uid, sop_class_uid=result.sop_class_uid,
                        transfer_syntax=header.transfer_syntax, instance_number=header.number("InstanceNumber"),
                        rows=header.number("Rows"), columns=header.number("Columns"),
                        frames=header.number("NumberOfFrames") or 1, blob_key=key, size=header.size,
                        sha256=_sha256(path), header=dicom.header_json(ds), created_at=now)
    session.add(instance)
    series.instance_count += 1
    study.instance_count += 1
    study.modalities = _merge_modalities(study.modalities, series.modality)
    study.body_part = study.body_part or series.body_part
    study.updated_at = now
    session.flush()
    audit.record(session, actor=actor, action="study.instance_stored", subject=f"study:{study.id}",
                 detail={"sop_uid": result.sop_uid, "series_uid": result.series_uid, "source": source})
    if result.sop_class_uid == dicom.ENCAPSULATED_PDF or result.sop_class_uid in dicom.SR_CLASSES:
        _report_from_instance(session, runtime, study, path, result)
    store = runtime.blobs
    store.put(key, Path(path))
    try:
        session.commit()
    except Exception:
        store.delete(key)  # the row is gone, so must the blob be
        raise
    call_each(runtime.pm, "study_ingested", strict=False, study=study, patient=patient, instance=instance,
              new_study=new_study)
    return result


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _merge_modalities(current: str, modality: str) -> str:
    values = [value for value in current.split("\\") if value]
    if modality and modality not in values:
        values.append(modality)
    return "\\".join(sorted(values))[:64]


def issuer_for(header: dicom.Header, config) -> str:
    """The practice that issued the patient ID: the file's Issuer of Patient ID, else the site's
    table by Institution Name, else the site's default."""
    return (header.text("IssuerOfPatientID", 64) or config.issuers.get(header.text("InstitutionName"))
            or config.default_issuer)


def _patient(session: Session, header: dicom.Header, config, now: datetime) -> Patient:
    issuer, patient_id = issuer_for(header, config), header.text("PatientID", 64)
    patient = session.scalar(select(Patient).where(Patient.issuer == issuer, Patient.patient_id == patient_id))
    family, given = dicom.person_name(header.dataset)
    if patient is None:
        patient = Patient(issuer=issuer, patient_id=patient_id, family_name=family, given_name=given,
                          birth_date=header.date("PatientBirthDate"), sex=header.text("PatientSex", 16),
                          created_at=now)
        session.add(patient)
        session.flush()
    else:  # fill what the practice had not told us; never overwrite what it had
        patient.family_name = patient.family_name or family
        patient.given_name = patient.given_name or given
        patient.birth_date = patient.birth_date or header.date("PatientBirthDate")
        patient.sex = patient.sex or header.text("PatientSex", 16)
    return patient


def _latest(pm, hook: str, start: datetime, **kwargs) -> tuple[datetime, ReleaseHold | None]:
    deciding = None
    for vote in getattr(pm.hook, hook)(**kwargs):
        if isinstance(vote, ReleaseHold) and vote.at > (deciding.at if deciding else start):
            deciding = vote
    return (deciding.at if deciding else start), deciding


def _decide_images_release(session: Session, runtime, study: Study) -> None:
    study.images_release_at, hold = _latest(runtime.pm, "images_release_at", study.created_at, study=study)
    study.images_release_rule = hold.rule if hold else ""
    if hold:
        audit.record(session, actor="system", action="study.images_held", subject=f"study:{study.id}",
                     detail={"until": study.images_release_at, "rule": hold.rule})


def add_report(session: Session, *, runtime, study: Study, signed_at: datetime, text: str | None = None,
               pdf: Path | None = None, category: str = "radiology", flags: list[str] | None = None,
               title: str = "", author: str = "", source_uid: str | None = None, actor: str = "system") -> Report:
    """Store a signed report and decide when patients may read it. The same ``source_uid``
    twice returns the report already held. The caller commits."""
    if source_uid:
        existing = session.scalar(select(Report).where(Report.source_uid == source_uid))
        if existing:
            return existing
    if signed_at.tzinfo is None:
        signed_at = signed_at.replace(tzinfo=timezone.utc)
    report = Report(study_ref=study.id, source_uid=source_uid, category=category, flags=list(flags or []),
                    title=title[:200], author=author[:200], text=text, signed_at=signed_at,
                    release_at=signed_at, created_at=clock.now())
    if pdf is not None:
        report.pdf_blob_key = blob_key("report", source_uid or f"{study.study_uid}/{clock.now().isoformat()}")
        with scratch_file(runtime.blobs, ".pdf") as scratch:
            scratch.write_bytes(Path(pdf).read_bytes())
            runtime.blobs.put(report.pdf_blob_key, scratch)
    report.release_at, hold = _latest(runtime.pm, "report_release_at", signed_at, report=report, study=study)
    report.release_rule, report.release_law = (hold.rule, hold.law) if hold else ("", "")
    session.add(report)
    session.flush()
    audit.record(session, actor=actor, action="report.stored", subject=f"study:{study.id}",
                 detail={"report": report.id, "category": category, "flags": report.flags,
                         "signed_at": signed_at, "release_at": report.release_at,
                         "rule": report.release_rule or "signed"})
    return report


def _report_from_instance(session: Session, runtime, study: Study, path: Path, result: Ingested) -> None:
    """An encapsulated PDF or a verified structured report arriving as DICOM becomes a report."""
    import pydicom

    ds = pydicom.dcmread(path)
    signed = dicom.signed_at(ds) or clock.now()
    title = str(ds.get("DocumentTitle", "") or ds.get("SeriesDescription", "") or "")
    author = dicom.author(ds)
    if result.sop_class_uid == dicom.ENCAPSULATED_PDF:
        data = bytes(ds.get("EncapsulatedDocument", b"") or b"")
        if not data.startswith(b"%PDF"):
            return
        with scratch_file(runtime.blobs, ".pdf") as pdf:
            pdf.write_bytes(data.rstrip(b"\0"))
            add_report(session, runtime=runtime, study=study, signed_at=signed, pdf=pdf, title=title,
                       author=author, source_uid=result.sop_uid)
    elif str(ds.get("VerificationFlag", "")).upper() == "VERIFIED":
        add_report(session, runtime=runtime, study=study, signed_at=signed, text=dicom.sr_text(ds),
                   title=title, author=author, source_uid=result.sop_uid)
