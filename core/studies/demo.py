"""The demo site's exams, put in through the real ingest path.

Synthetic DICOM files (``synthetic``) are written to the blob store's scratch
folder and stored with ``service.ingest``, exactly as files from a PACS would be:
for Alex Demo a CT, an MR, an X-ray (one image MONOCHROME1) and a multi-frame
colour ultrasound, with released reports (structured reports and a PDF) and one
report still held; an X-ray for Riley, the minor in the guardian's care; and one
for Casey, who has not registered yet. Dates are relative to today, so the demo
always looks recent.
"""
from __future__ import annotations

import shutil
import uuid
from dataclasses import replace
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import clock
from core.studies import report_pdf, service, synthetic
from core.studies.models import Patient, Study

ISSUER = "DEMO"
RADIOLOGIST = "Muñoz^Inés"
# The demo's held report stands in for a state rule: on a real site a plugin votes this
# delay through the ``report_release_at`` hook and the store records its rule and law.
HELD_RULE = "demo: 3 days after signing"
HELD_LAW = "Texas Occupations Code §159.0062"
HELD_FOR = timedelta(days=3)

CT_FINDINGS = ("The lungs are clear. There is no pleural effusion and no pneumothorax. "
               "The heart is of normal size. No enlarged lymph nodes are seen in the chest.")
CT_IMPRESSION = "Normal CT of the chest. No change since the chest X-ray of two years ago."
XR_FINDINGS = "Frontal and lateral views. The lungs are clear and the heart is of normal size."
MR_TEXT = ("MRI OF THE RIGHT KNEE\n\nFINDINGS\nThe menisci and the cruciate ligaments are intact. "
           "There is a small joint effusion. The cartilage is preserved.\n\n"
           "IMPRESSION\nSmall joint effusion, otherwise a normal knee.")
US_FINDINGS = ("The liver, gallbladder, pancreas, spleen and kidneys are of normal size and appearance. "
               "No free fluid.")
WRIST_FINDINGS = "Two views of the left wrist. No fracture. The growth plates are normal for age."


def seed(session: Session, runtime) -> None:
    """Load the demo exams of the identity demo's patients (``core.identity.service.seed_demo``)."""
    today = clock.now().astimezone(ZoneInfo(runtime.site.config.site.timezone)).date()
    scratch = runtime.blobs.scratch / f"demo-{uuid.uuid4().hex}"
    try:
        loader = _Loader(session, runtime, scratch)
        alex = _patient(session, "DEMO-1001")
        if alex is not None:
            _alex(loader, alex, today)
        # Riley (the guardian's child) and Casey (the sign-up persona): one X-ray each
        for patient_id, description, body_part, size, days_ago, images, findings, signed in (
                ("DEMO-1002", "XR WRIST LEFT", "WRIST", 192, 40, 2, WRIST_FINDINGS, (1, 15)),
                ("DEMO-1003", "XR CHEST", "CHEST", 128, 12, 1, XR_FINDINGS, (0, 16))):
            patient = _patient(session, patient_id)
            if patient is not None:
                spec = _spec(patient, description=description, modality="CR", body_part=body_part, rows=size,
                             columns=size, study_date=today - timedelta(days=days_ago), series=1, instances=images)
                spec = loader.study(spec, placeholder=True)
                loader.text_report(spec, [("Findings", findings)], signed=_at(spec.study_date, *signed))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _alex(loader: "_Loader", alex: Patient, today: date) -> None:
    ct = _spec(alex, description="CT CHEST WITHOUT CONTRAST", modality="CT", body_part="CHEST",
               study_date=today - timedelta(days=21), series=2, instances=24, rows=128, columns=128)
    ct = loader.study(ct, placeholder=True)
    loader.text_report(ct, [("Findings", CT_FINDINGS), ("Impression", CT_IMPRESSION)],
                       signed=_at(ct.study_date, 1, 14))

    mr = _spec(alex, description="MRI KNEE RIGHT", modality="MR", body_part="KNEE",
               study_date=today - timedelta(days=150), series=2, instances=16, rows=128, columns=128)
    loader.study(mr)
    signed = _at(mr.study_date, 2, 9)
    pdf = report_pdf.document(title="MRI knee report", text=MR_TEXT, running="Demo, Alex · MRI KNEE RIGHT",
                              footer="Filmless Demo Imaging · page %(page)s of %(pages)s",
                              head=[report_pdf.Line("Filmless Demo Imaging", "F2", 15, 20),
                                    report_pdf.Line("Radiology report", "F2", 12.5, 18),
                                    report_pdf.Line(f"Patient: Alex Demo · Exam date: {mr.study_date.isoformat()}"),
                                    report_pdf.Line("Signed by Dr Inés Muñoz", rule_after=True)])
    loader.write([synthetic.pdf_report(mr, pdf, signed=signed.strftime("%Y%m%d%H%M%S"))])

    xray = _spec(alex, description="XR CHEST 2 VIEWS", modality="CR", body_part="CHEST",
                 study_date=today - timedelta(days=730), series=1, instances=2, rows=256, columns=256)
    series_uid = generate_uid()
    loader.write([synthetic.image(xray, 0, 0, series_uid),
                  synthetic.image(replace(xray, photometric="MONOCHROME1"), 0, 1, series_uid)])
    loader.text_report(xray, [("Findings", XR_FINDINGS)], signed=_at(xray.study_date, 0, 17))

    ultrasound = _spec(alex, description="US ABDOMEN COMPLETE", modality="US", body_part="ABDOMEN",
                       study_date=today, series=1, instances=1, rows=120, columns=160, frames=12,
                       photometric="RGB")
    loader.study(ultrasound)
    study = loader.stored(ultrasound)
    signed_at = clock.now() - timedelta(hours=1)
    report = service.add_report(loader.session, runtime=loader.runtime, study=study, signed_at=signed_at,
                                text=f"FINDINGS\n{US_FINDINGS}\n\nIMPRESSION\nNormal abdominal ultrasound.",
                                title="Ultrasound report", author=RADIOLOGIST, actor="system")
    report.release_at, report.release_rule, report.release_law = signed_at + HELD_FOR, HELD_RULE, HELD_LAW
    loader.session.commit()


def _patient(session: Session, patient_id: str) -> Patient | None:
    return session.scalar(select(Patient).where(Patient.issuer == ISSUER, Patient.patient_id == patient_id))


def _spec(patient: Patient, **fields) -> synthetic.StudySpec:
    return synthetic.StudySpec(patient_id=patient.patient_id, issuer=patient.issuer,
                               family_name=patient.family_name, given_name=patient.given_name,
                               birth_date=patient.birth_date or date(1980, 1, 1), sex=patient.sex or "O",
                               institution="Filmless Demo Imaging, Main Street", **fields)


def _at(day: date, days_after: int, hour: int) -> datetime:
    """When a released report was signed: ``days_after`` the exam at ``hour``, and never later than now."""
    moment = datetime.combine(day + timedelta(days=days_after), time(hour), tzinfo=timezone.utc)
    return min(moment, clock.now() - timedelta(hours=2))


class _Loader:
    """Writes synthetic datasets to scratch and ingests them, failing loudly on a refusal."""

    def __init__(self, session: Session, runtime, scratch):
        self.session, self.runtime, self.scratch = session, runtime, scratch

    def write(self, datasets: list[Dataset]) -> None:
        for path in synthetic.write(datasets, self.scratch):
            result = service.ingest(self.session, path, runtime=self.runtime, actor="system", source="demo")
            path.unlink(missing_ok=True)
            if not result.ok:
                raise RuntimeError(f"the demo study {result.study_uid} was refused: {result.reason}")

    def stored(self, spec: synthetic.StudySpec) -> Study:
        return self.session.scalar(select(Study).where(Study.study_uid == spec.study_uid))

    def study(self, spec: synthetic.StudySpec, *, placeholder: bool = False) -> synthetic.StudySpec:
        """Ingest the images of ``spec``. With ``placeholder``, fill the patient's study that has no
        images yet (the identity demo's record, known by its accession number) instead of a new one."""
        if placeholder:
            waiting = self.session.scalar(select(Study).join(Patient, Patient.id == Study.patient_ref)
                                          .where(Patient.issuer == spec.issuer, Patient.patient_id == spec.patient_id,
                                                 Study.series_count == 0).order_by(Study.id))
            if waiting is not None:
                spec = replace(spec, study_uid=waiting.study_uid, accession_number=waiting.accession_number or "")
        self.write(synthetic.study(spec))
        study = self.stored(spec)
        # ingest never overwrites a study's details; the placeholder's were made up, the files' are kept
        study.study_date = spec.study_date
        study.description = study.description or spec.description
        study.study_time = study.study_time or "101500"
        study.location = study.location or spec.institution
        study.referring_physician = study.referring_physician or "Referrer^Robin"
        self.session.commit()
        return spec

    def text_report(self, spec: synthetic.StudySpec, sections: list[tuple[str, str]], *, signed: datetime) -> None:
        """A verified Basic Text SR with one text item per (heading, text)."""
        ds = synthetic.text_report(spec, "", signed=signed.strftime("%Y%m%d%H%M%S"))
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SeriesDescription = "Radiology report"
        ds.VerifyingObserverSequence[0].VerifyingObserverName = RADIOLOGIST
        items = []
        for heading, text in sections:
            item, concept = Dataset(), Dataset()
            concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = heading.upper()[:16], "99DEMO", heading
            item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", text
            item.ConceptNameCodeSequence = [concept]
            items.append(item)
        ds.ContentSequence = items
        self.write([ds])
