"""Putting studies into the store: DICOM ingest and reports.

Every way in (STOW-RS, C-STORE, ``filmless import``, a plugin's upload) ends in
``ingest`` (one file) or ``ingest_many`` (several, in one transaction): header
read once and checked (``examine``), rows and audit events written, blobs moved in
atomically, one commit, then the ``study_ingested`` observers. Reading out is in
``queries``, where release times and the principal's scope apply.

Blobs move in with their rows (``blobs_in_transaction``). The files are synced
before the transaction begins, so the database's write lock is not held while the
disk writes them.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from core import clock
from core.audit import service as audit
from core.i18n import gettext as _
from core.plugins import ReleaseHold, call_each
from core.studies import dicom, header_scan, render
from core.studies.blobs import scratch_file
from core.studies.blobs_in_transaction import (blob_key, clear_leftovers, put_in_transaction,  # noqa: F401
                                               put_many_in_transaction, remove_orphans)
from core.studies.models import Instance, Patient, Report, Series, Study

_log = logging.getLogger("filmless.ingest")


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


@dataclass
class Arrival:
    """A received file as ``examine`` found it: the values the store keeps (``fields``, None
    when refused) and what became of it so far (``result``)."""

    path: Path
    result: Ingested
    fields: dict | None = None
    prepared: bool = False  # its file made durable where it will be stored (``prepare``)


# -- ingest -----------------------------------------------------------------------------------

def examine(path: Path, *, runtime, sha256: str | None = None) -> Arrival:
    """Read and check a received file's header, once; ``sha256`` if the receiver hashed the file
    as it arrived (otherwise it is read again for it). Never raises for bad input."""
    try:
        fields = header_scan.read(Path(path), max_bytes=runtime.site.config.studies.max_file_mb * 2**20)
    except dicom.Refused as refusal:
        return Arrival(Path(path), Ingested("refused", reason=str(refusal), kind=refusal.kind))
    fields["sha256"] = sha256 or _sha256(path)
    return Arrival(Path(path), Ingested("stored", study_uid=fields["study_uid"], series_uid=fields["series_uid"],
                                        sop_uid=fields["sop_uid"], sop_class_uid=fields["sop_class_uid"]), fields)


def ingest(session: Session, path: Path, *, runtime, actor: str = "system", source: str = "import",
           sha256: str | None = None) -> Ingested:
    """Store one DICOM file (a scratch file the caller owns and removes). Never raises for bad input."""
    arrival = prepare(examine(path, runtime=runtime, sha256=sha256), runtime=runtime)
    if arrival.fields is not None:
        _settle(session, [arrival], runtime=runtime, actor=actor, source=source)
    return arrival.result


def prepare(arrival: Arrival, *, runtime) -> Arrival:
    """Make an examined file durable where it is to be stored (its folders made and synced),
    so that ``ingest_many`` has only its rows and a rename left: a receiver calls this for each
    file as it arrives, while the rest is still on its way."""
    if arrival.fields is not None and not arrival.prepared:
        try:
            runtime.blobs.prepare([(_blob_key_of(arrival), arrival.path)])
        except OSError:  # a full disk, a folder that cannot be made: this file is refused, no other
            _unavailable(arrival)
            arrival.fields = None
            return arrival
        arrival.prepared = True
    return arrival


def ingest_many(session: Session, arrivals: list[Arrival], *, runtime, actor: str = "system",
                source: str = "import") -> list[Ingested]:
    """Store examined files in one transaction, with one commit and one disk sync for all; the
    result of each, in order. A refused file refuses only itself, and a failure of the store is
    retried file by file, so that only the files it concerns are refused (kind ``unavailable``)."""
    waiting = [arrival for arrival in arrivals if arrival.fields is not None]
    if unprepared := [(_blob_key_of(arrival), arrival.path) for arrival in waiting if not arrival.prepared]:
        runtime.blobs.prepare(unprepared)
    try:
        _settle(session, waiting, runtime=runtime, actor=actor, source=source)
    except Exception:
        session.rollback()
        if len(waiting) == 1:
            _unavailable(waiting[0])
        else:
            for arrival in waiting:
                try:
                    _settle(session, [arrival], runtime=runtime, actor=actor, source=source)
                except Exception:
                    session.rollback()
                    _unavailable(arrival)
    return [arrival.result for arrival in arrivals]


def _blob_key_of(arrival: Arrival) -> str:
    return blob_key("dicom", arrival.result.sop_uid)


def _unavailable(arrival: Arrival) -> None:
    _log.exception("storing %s failed", arrival.result.sop_uid)
    arrival.result = replace(arrival.result, outcome="refused", kind="unavailable",
                             reason=_("The store could not keep the file; please send it again later."))


def _settle(session: Session, arrivals: list[Arrival], *, runtime, actor: str, source: str) -> None:
    """Store ``arrivals`` (examined, not refused) in one transaction, and tell the observers."""
    if not arrivals:
        return
    for _attempt in range(3):  # two writers creating the same patient or study: the loser retries
        try:
            results, stored = _store(session, arrivals, runtime=runtime, actor=actor, source=source)
        except IntegrityError:
            session.rollback()
            if not all(arrival.path.exists() for arrival in arrivals):
                break  # it failed at commit, after the files were moved in (and out again)
            continue
        for arrival, result in zip(arrivals, results):
            arrival.result = result
        for study, patient, instance, new_study in stored:
            call_each(runtime.pm, "study_ingested", strict=False, study=study, patient=patient, instance=instance,
                      new_study=new_study, runtime=runtime)
        render.queue_render_ahead(runtime, [instance.id for _study, _patient, instance, _new in stored
                                            if instance.rows and instance.columns])
        return
    for arrival in arrivals:
        arrival.result = replace(arrival.result, outcome="refused", kind="conflict", reason=_(
            "The file arrived together with another copy of it; please send it again."))


# built once: a batch runs each of these, and building a statement costs more than running it
_INSTANCE = Instance.__table__
_HELD_IDS = select(_INSTANCE.c.sop_uid, _INSTANCE.c.id).where(
    _INSTANCE.c.sop_uid.in_(bindparam("uids", expanding=True)))
_PATIENT = select(Patient).where(Patient.issuer == bindparam("issuer"), Patient.patient_id == bindparam("patient_id"))
_STUDY = select(Study).where(Study.study_uid == bindparam("uid"))
_SERIES = select(Series).where(Series.series_uid == bindparam("uid"))


class _Held:
    """The patients, studies and series one transaction has looked up or made, so that the
    instances of one study look each up once."""

    def __init__(self, session: Session):
        self.session, self.patients, self.studies, self.series = session, {}, {}, {}

    def patient(self, issuer: str, patient_id: str) -> Patient | None:
        return self._once(self.patients, (issuer, patient_id), lambda: find_patient(self.session, issuer, patient_id))

    def study(self, uid: str) -> Study | None:
        return self._once(self.studies, uid, lambda: self.session.scalar(_STUDY, {"uid": uid}))

    def one_series(self, uid: str) -> Series | None:
        return self._once(self.series, uid, lambda: self.session.scalar(_SERIES, {"uid": uid}))

    def _once(self, held: dict, key, find):
        if key not in held:
            # what this transaction made is in ``held`` already: the query need not flush it first
            with self.session.no_autoflush:
                held[key] = find()
        return held[key]


_SERIES_TABLE, _STUDY_TABLE = Series.__table__, Study.__table__
_ADD_TO_SERIES = update(_SERIES_TABLE).where(_SERIES_TABLE.c.id == bindparam("series_id")).values(
    instance_count=_SERIES_TABLE.c.instance_count + bindparam("added"))
_ADD_TO_STUDY = update(_STUDY_TABLE).where(_STUDY_TABLE.c.id == bindparam("study_id")).values(
    instance_count=_STUDY_TABLE.c.instance_count + bindparam("added"),
    series_count=_STUDY_TABLE.c.series_count + bindparam("added_series"),
    modalities=bindparam("now_modalities"), body_part=bindparam("now_body_part"), updated_at=bindparam("now"))


class _Counts:
    """What one transaction adds to its series and studies, written in one statement each way.

    The counts are added in SQL (``count = count + n``), so two writers never lose one
    another's; the rows in the session are given the sums without becoming dirty."""

    def __init__(self):
        self.series: dict[Series, int] = {}
        self.studies: dict[Study, list] = {}  # study: [instances added, series added, modalities]

    def new_series(self, study: Study) -> None:
        self._of(study)[1] += 1

    def new_instance(self, study: Study, series: Series) -> None:
        self.series[series] = self.series.get(series, 0) + 1
        tally = self._of(study)
        tally[0] += 1
        tally[2] = _merge_modalities(tally[2], series.modality)
        if not study.body_part and series.body_part:
            set_committed_value(study, "body_part", series.body_part)

    def _of(self, study: Study) -> list:
        return self.studies.setdefault(study, [0, 0, study.modalities])

    def write(self, session: Session, now: datetime) -> None:
        if self.series:
            session.execute(_ADD_TO_SERIES, [{"series_id": series.id, "added": added}
                                             for series, added in self.series.items()])
        session.execute(_ADD_TO_STUDY, [
            {"study_id": study.id, "added": added, "added_series": added_series, "now_modalities": modalities,
             "now_body_part": study.body_part, "now": now}
            for study, (added, added_series, modalities) in self.studies.items()])
        for series, added in self.series.items():
            set_committed_value(series, "instance_count", series.instance_count + added)
        for study, (added, added_series, modalities) in self.studies.items():
            for name, value in (("instance_count", study.instance_count + added), ("modalities", modalities),
                                ("series_count", study.series_count + added_series), ("updated_at", now)):
                set_committed_value(study, name, value)


def _store(session: Session, arrivals: list[Arrival], *, runtime, actor: str, source: str):
    """The rows, audit events and blobs of ``arrivals``, committed; (each one's result, and
    (study, patient, instance, new_study) of each stored one)."""
    config, now = runtime.site.config.studies, clock.now()
    results = [replace(arrival.result) for arrival in arrivals]
    held = set(dict(session.execute(_HELD_IDS, {"uids": list({result.sop_uid for result in results})}).all()))
    rows, counts, stored, instances, events, blobs_in = _Held(session), _Counts(), [], [], [], []
    for arrival, result in zip(arrivals, results):
        fields = arrival.fields
        if result.sop_uid in held:  # held already, or an earlier copy in this batch
            result.outcome = "duplicate"
            continue
        issuer = issuer_for(fields["issuer_of_patient_id"], fields["institution"], config)
        patient, study = rows.patient(issuer, fields["patient_id"]), rows.study(result.study_uid)
        series = rows.one_series(result.series_uid)
        if study is not None and (patient is None or study.patient_ref != patient.id):
            _refused(result, _("This study is already held for another patient."))
            continue
        if series is not None and (study is None or series.study_ref != study.id):
            _refused(result, _("This series is already held in another study."))
            continue
        held.add(result.sop_uid)
        patient = rows.patients[issuer, fields["patient_id"]] = _patient(session, patient, issuer, fields, now)
        new_study = study is None
        if new_study:
            study = rows.studies[result.study_uid] = _new_study(session, runtime, patient, result, fields, now)
        if series is None:
            series = rows.series[result.series_uid] = Series(
                study_ref=study.id, series_uid=result.series_uid, modality=fields["modality"],
                series_number=fields["series_number"], description=fields["series_description"],
                body_part=fields["body_part"], created_at=now)
            session.add(series)
            session.flush()
            counts.new_series(study)
        key = _blob_key_of(arrival)
        # rows for one INSERT of them all; the unit of work would send one statement each
        instances.append(dict(series_ref=series.id, sop_uid=result.sop_uid, sop_class_uid=result.sop_class_uid,
                              transfer_syntax=fields["transfer_syntax"], instance_number=fields["instance_number"],
                              rows=fields["rows"], columns=fields["columns"], frames=fields["frames"], blob_key=key,
                              size=fields["size"], sha256=fields["sha256"], header=fields["header"],
                              created_at=now))
        counts.new_instance(study, series)
        events.append(dict(actor=actor, action="study.instance_stored", subject=f"study:{study.id}",
                           detail={"sop_uid": result.sop_uid, "series_uid": result.series_uid, "source": source}))
        blobs_in.append((key, arrival.path))
        stored.append((study, patient, new_study))
        if result.sop_class_uid == dicom.ENCAPSULATED_PDF or result.sop_class_uid in dicom.SR_CLASSES:
            _report_from_instance(session, runtime, study, arrival.path, result)
    if not stored:
        session.rollback()  # end the transaction: nothing changes
        return results, stored
    session.flush()
    counts.write(session, now)
    session.execute(insert(_INSTANCE), instances)
    ids = dict(session.execute(_HELD_IDS, {"uids": [row["sop_uid"] for row in instances]}).all())
    stored = [(study, patient, Instance(id=ids[row["sop_uid"]], **row), new)
              for (study, patient, new), row in zip(stored, instances)]
    audit.record_many(session, events)
    if runtime.site.config.identity.accounts_at_scan:
        from core.identity.registration import activate_at_scan  # identity reads the study models

        for patient in {id(patient): patient for _study, patient, _instance, new in stored if new}.values():
            activate_at_scan(session, site=runtime.site, patient=patient)
    put_many_in_transaction(session, runtime.blobs, blobs_in, prepared=True)
    try:
        session.commit()
    except BaseException:
        session.rollback()  # the rows are gone, and with them the blobs (see put_in_transaction)
        raise
    return results, stored


def _refused(result: Ingested, reason: str) -> None:
    result.outcome, result.reason, result.kind = "refused", reason, "conflict"


def _new_study(session: Session, runtime, patient: Patient, result: Ingested, fields: dict, now: datetime) -> Study:
    study = Study(patient_ref=patient.id, study_uid=result.study_uid, created_at=now,
                  accession_number=fields["accession_number"], study_date=fields["study_date"],
                  study_time=fields["study_time"], description=fields["study_description"],
                  body_part=fields["body_part"], location=fields["institution"],
                  referring_physician=fields["referring_physician"],
                  modalities=_merge_modalities("", fields["modality"]))  # so release votes can use it
    session.add(study)
    session.flush()
    _decide_images_release(session, runtime, study)
    return study


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


def _patient(session: Session, patient: Patient | None, issuer: str, fields: dict, now: datetime) -> Patient:
    if patient is None:
        patient = Patient(issuer=issuer, patient_id=fields["patient_id"], family_name=fields["family_name"],
                          given_name=fields["given_name"], birth_date=fields["birth_date"], sex=fields["sex"],
                          created_at=now)
        session.add(patient)
        session.flush()
    else:  # fill what the practice had not told us; never overwrite what it had
        for name in ("family_name", "given_name", "birth_date", "sex"):
            if not getattr(patient, name) and fields[name]:
                setattr(patient, name, fields[name])
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
    return session.scalar(_PATIENT, {"issuer": issuer, "patient_id": patient_id})


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
