"""Putting studies into the store: DICOM ingest and reports.

Every way in (STOW-RS, C-STORE, ``filmless import``, a plugin's upload) ends in
``ingest``: header checked, blob moved in atomically, rows upserted in one
transaction, then the ``study_ingested`` observers and an audit event. Reading
out is in ``queries``, where release times and the principal's scope apply.

A blob is put just before its rows commit, under a claim (``blobs.claim``) that
lasts until the transaction ends: a rollback deletes the blob, and a process
killed in between leaves an abandoned claim that ``remove_orphans`` settles.
"""
from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import event, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import clock
from core.audit import service as audit
from core.i18n import gettext as _
from core.plugins import ReleaseHold, call_each
from core.studies import blobs, dicom
from core.studies.blobs import scratch_file
from core.studies.models import Instance, Patient, Report, Series, Study

_UNSETTLED = "filmless_unsettled_blobs"


@dataclass
class Ingested:
    """What became of one file: ``stored``, ``duplicate`` (already held) or ``refused``;
    ``kind`` says why a file was refused (see ``dicom.Refused``)."""

    outcome: str
    reason: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    sop_class_uid: str = ""
    kind: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome != "refused"


def blob_key(kind: str, name: str) -> str:
    """A store key from a hash of ``name``, so no UID or file name ever becomes a path."""
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return f"{kind}/{digest[:2]}/{digest[2:4]}/{digest}"


# -- blobs that live or die with a transaction ----------------------------------------------

def put_in_transaction(session: Session, store: blobs.BlobStore, key: str, source: Path) -> None:
    """Move ``source`` into the store under ``key``; the blob stays only if the session's
    current transaction commits (a rollback, or closing without commit, deletes it)."""
    session.connection()  # begin the transaction now if none has begun: its end settles the blob
    claim = blobs.claim(store, key)
    try:
        store.put(key, source)
    except BaseException:
        claim.release()
        raise
    session.info.setdefault(_UNSETTLED, []).append((store, claim))


@event.listens_for(Session, "after_commit")
def _keep_committed_blobs(session: Session) -> None:
    if not session.in_nested_transaction():  # a savepoint's commit is not the end yet
        for _store_, claim in session.info.pop(_UNSETTLED, []):
            claim.release()


@event.listens_for(Session, "after_transaction_end")
def _delete_uncommitted_blobs(session: Session, transaction) -> None:
    if transaction.parent is None:
        for store, claim in session.info.pop(_UNSETTLED, []):
            try:
                store.delete(claim.key)
            finally:
                claim.release()


def remove_orphans(session: Session, runtime) -> int:
    """Delete blobs that a killed process moved in without committing their rows; run at
    the start of ``filmless import`` and ``filmless dicom-listen``. Returns how many."""
    removed = 0
    store = runtime.blobs
    for claim in blobs.abandoned_claims(store):
        try:
            held = session.scalar(select(Instance.id).where(Instance.blob_key == claim.key).limit(1)) or \
                session.scalar(select(Report.id).where(Report.pdf_blob_key == claim.key).limit(1))
            if not held and store.exists(claim.key):
                store.delete(claim.key)
                removed += 1
        finally:
            claim.release()
    session.rollback()
    return removed


def clear_leftovers(runtime) -> int:
    """What a killed process left: half-received scratch files and uncommitted blobs. Safe while
    other processes receive (it touches only what no living process holds). Returns how many."""
    removed = blobs.sweep_scratch(runtime.blobs)
    with runtime.sessions() as session:
        removed += remove_orphans(session, runtime)
    return removed


# -- ingest -----------------------------------------------------------------------------------

def ingest(session: Session, path: Path, *, runtime, actor: str = "system", source: str = "import") -> Ingested:
    """Store one DICOM file (a scratch file the caller owns and removes). Never raises for bad input."""
    try:
        header = dicom.read_header(Path(path), max_bytes=runtime.site.config.studies.max_file_mb * 2**20)
        fields = _fields(header)
    except dicom.Refused as refusal:
        return Ingested("refused", reason=str(refusal), kind=refusal.kind)
    result = Ingested("stored", study_uid=fields["study_uid"], series_uid=fields["series_uid"],
                      sop_uid=fields["sop_uid"], sop_class_uid=fields["sop_class_uid"])
    for _attempt in range(3):  # two writers creating the same patient or study: the loser retries
        try:
            return _store(session, path, fields, result, runtime=runtime, actor=actor, source=source)
        except IntegrityError:
            session.rollback()
            if not Path(path).exists():  # it failed at commit, after its file was moved in (and out again)
                break
    return Ingested("refused", reason=_("The file arrived together with another copy of it; please send it again."),
                    kind="conflict", sop_uid=result.sop_uid)


def _fields(header: dicom.Header) -> dict:
    """Every value the store keeps from a header, read once: a value that cannot be decoded
    refuses the file here, before anything is written."""
    ds = header.dataset
    try:
        family, given = dicom.person_name(ds)
        return dict(
            study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID), sop_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID), patient_id=header.text("PatientID", 64),
            issuer_of_patient_id=header.text("IssuerOfPatientID", 64), family_name=family, given_name=given,
            birth_date=header.date("PatientBirthDate"), sex=header.text("PatientSex", 16),
            accession_number=header.text("AccessionNumber", 64) or None, study_date=header.date("StudyDate"),
            study_time=header.text("StudyTime", 16), study_description=header.text("StudyDescription"),
            body_part=header.text("BodyPartExamined", 64), institution=header.text("InstitutionName"),
            referring_physician=header.text("ReferringPhysicianName"), modality=header.text("Modality", 16),
            series_number=header.number("SeriesNumber"), series_description=header.text("SeriesDescription"),
            instance_number=header.number("InstanceNumber"), rows=header.number("Rows"),
            columns=header.number("Columns"), frames=header.number("NumberOfFrames") or 1,
            transfer_syntax=header.transfer_syntax, size=header.size,
            header=dicom.header_json(ds))
    except Exception:
        raise dicom.damaged() from None


def _store(session: Session, path: Path, fields: dict, result: Ingested, *, runtime, actor, source):
    if session.scalar(select(Instance.id).where(Instance.sop_uid == result.sop_uid)):
        session.rollback()  # end the read transaction: nothing changes
        result.outcome = "duplicate"
        return result
    now = clock.now()
    patient = _patient(session, fields, runtime.site.config.studies, now)
    study = session.scalar(select(Study).where(Study.study_uid == result.study_uid))
    new_study = study is None
    if new_study:
        study = Study(patient_ref=patient.id, study_uid=result.study_uid, created_at=now,
                      accession_number=fields["accession_number"], study_date=fields["study_date"],
                      study_time=fields["study_time"], description=fields["study_description"],
                      body_part=fields["body_part"], location=fields["institution"],
                      referring_physician=fields["referring_physician"],
                      modalities=_merge_modalities("", fields["modality"]))  # so release votes can use it
        session.add(study)
        session.flush()
        _decide_images_release(session, runtime, study)
    elif study.patient_ref != patient.id:
        return _refuse(session, result, _("This study is already held for another patient."))
    series = session.scalar(select(Series).where(Series.series_uid == result.series_uid))
    if series is None:
        series = Series(study_ref=study.id, series_uid=result.series_uid, modality=fields["modality"],
                        series_number=fields["series_number"], description=fields["series_description"],
                        body_part=fields["body_part"], created_at=now)
        session.add(series)
        session.flush()
        study.series_count += 1
    elif series.study_ref != study.id:
        return _refuse(session, result, _("This series is already held in another study."))
    key = blob_key("dicom", result.sop_uid)
    instance = Instance(series_ref=series.id, sop_uid=result.sop_uid, sop_class_uid=result.sop_class_uid,
                        transfer_syntax=fields["transfer_syntax"], instance_number=fields["instance_number"],
                        rows=fields["rows"], columns=fields["columns"], frames=fields["frames"], blob_key=key,
                        size=fields["size"], sha256=_sha256(path), header=fields["header"], created_at=now)
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
    if new_study and runtime.site.config.identity.accounts_at_scan:
        from core.identity.registration import activate_at_scan  # identity reads the study models

        activate_at_scan(session, site=runtime.site, patient=patient)
    put_in_transaction(session, runtime.blobs, key, Path(path))
    try:
        session.commit()
    except BaseException:
        session.rollback()  # the rows are gone, and with them the blob (see put_in_transaction)
        raise
    call_each(runtime.pm, "study_ingested", strict=False, study=study, patient=patient, instance=instance,
              new_study=new_study, runtime=runtime)
    return result


def _refuse(session: Session, result: Ingested, reason: str) -> Ingested:
    session.rollback()
    result.outcome, result.reason, result.kind = "refused", reason, "conflict"
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


def issuer_for(issuer_of_patient_id: str, institution: str, config) -> str:
    """The practice that issued the patient ID: the file's Issuer of Patient ID, else the site's
    table by Institution Name, else the site's default."""
    return issuer_of_patient_id or config.issuers.get(institution) or config.default_issuer


def _patient(session: Session, fields: dict, config, now: datetime) -> Patient:
    issuer = issuer_for(fields["issuer_of_patient_id"], fields["institution"], config)
    patient = session.scalar(select(Patient).where(Patient.issuer == issuer,
                                                   Patient.patient_id == fields["patient_id"]))
    if patient is None:
        patient = Patient(issuer=issuer, patient_id=fields["patient_id"], family_name=fields["family_name"],
                          given_name=fields["given_name"], birth_date=fields["birth_date"], sex=fields["sex"],
                          created_at=now)
        session.add(patient)
        session.flush()
    else:  # fill what the practice had not told us; never overwrite what it had
        patient.family_name = patient.family_name or fields["family_name"]
        patient.given_name = patient.given_name or fields["given_name"]
        patient.birth_date = patient.birth_date or fields["birth_date"]
        patient.sex = patient.sex or fields["sex"]
    return patient


def _latest(pm, hook: str, start: datetime, **kwargs) -> tuple[datetime, ReleaseHold | None]:
    deciding = None
    for vote in getattr(pm.hook, hook)(**kwargs):
        if isinstance(vote, ReleaseHold) and vote.at > (deciding.at if deciding else start):
            deciding = vote
    return (deciding.at if deciding else start), deciding


def _decide_images_release(session: Session, runtime, study: Study) -> None:
    study.images_release_at, hold = _latest(runtime.pm, "images_release_at", study.created_at, study=study,
                                                site=runtime.site)
    study.images_release_rule = hold.rule if hold else ""
    if hold:
        audit.record(session, actor="system", action="study.images_held", subject=f"study:{study.id}",
                     detail={"until": study.images_release_at, "rule": hold.rule})


def add_report(session: Session, *, runtime, study: Study, signed_at: datetime, text: str | None = None,
               pdf: Path | None = None, category: str = "radiology", flags: list[str] | None = None,
               title: str = "", author: str = "", source_uid: str | None = None, actor: str = "system") -> Report:
    """Store a signed report and decide when patients may read it. The same ``source_uid``
    twice returns the report already held. The caller commits; a PDF's blob stays only if
    that commit happens."""
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
        # a fresh key each time: two writers of one report never share (or delete) a blob
        report.pdf_blob_key = blob_key("report", f"{source_uid or study.study_uid}/{uuid.uuid4().hex}")
        with scratch_file(runtime.blobs, ".pdf") as scratch:
            shutil.copyfile(pdf, scratch)  # the store moves the copy in; the caller keeps its file
            put_in_transaction(session, runtime.blobs, report.pdf_blob_key, scratch)
    report.release_at, hold = _latest(runtime.pm, "report_release_at", signed_at, report=report, study=study,
                                        site=runtime.site)
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


# -- records of one person at several practices ----------------------------------------------

def find_patient(session: Session, issuer: str, patient_id: str) -> Patient | None:
    return session.scalar(select(Patient).where(Patient.issuer == issuer, Patient.patient_id == patient_id))


def link_patients(session: Session, first: Patient, second: Patient, *, actor: str) -> bool:
    """Record that ``second`` is the same person as ``first`` (at another practice): whoever may
    see one record sees both. The second's whole group joins the first's, so the link stays one
    level deep (``person_ref`` always names a record that has none). False if already linked.
    The caller commits."""
    person = first.person_ref or first.id
    joining = second.person_ref or second.id
    if joining == person:
        return False
    for record in session.scalars(select(Patient).where(or_(Patient.id == joining, Patient.person_ref == joining))):
        record.person_ref = person
    session.flush()
    audit.record(session, actor=actor, action="patient.linked", subject=f"patient:{second.id}",
                 detail={"person": person, "first": f"{first.issuer}:{first.patient_id}",
                         "second": f"{second.issuer}:{second.patient_id}"})
    return True
