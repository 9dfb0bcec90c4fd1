"""The demo site's visits (``filmless seed-demo`` on a site with the three demo centres):
through the real ingest path, so the visits and their codes are made by ``study_ingested``
exactly as for studies from a PACS.

- Alex Demo (DEMO-1001): a CT today at North Austin Imaging, its report signed an hour ago
  (Texas holds it 4 days), and an X-ray a month ago at Brooklyn Heights Radiology (released);
- Riley (DEMO-1002, a minor): an X-ray ten days ago at Westside Imaging Center.

The Austin visit then gets the I-Code ``PASS-2345-WXYZ`` and Riley's ``TEEN-2345-WXYZ`` (the
README prints them), valid ``icode_valid_days`` from seeding.
"""
from __future__ import annotations

import shutil
import uuid
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import clock
from core.studies import service as studies, synthetic
from core.studies.models import Patient, Study
from plugins.radnet_icode import service, visits

ISSUER = "DEMO"
ALEX_CODE, RILEY_CODE = "PASS-2345-WXYZ", "TEEN-2345-WXYZ"
AUSTIN, BROOKLYN, WESTSIDE = "North Austin Imaging", "Brooklyn Heights Radiology", "Westside Imaging Center"
RADIOLOGIST = "Okafor^Dana"


def seed(session: Session, runtime) -> None:
    settings = service.settings_of(runtime.site)
    named = {name for location in settings.locations for name in location.institution_names}
    if not {AUSTIN, BROOKLYN, WESTSIDE} <= named:
        return  # another site: its centres are not the demo's
    alex, riley = _patient(session, "DEMO-1001"), _patient(session, "DEMO-1002")
    today = clock.now().astimezone(ZoneInfo(runtime.site.config.site.timezone)).date()
    scratch = runtime.blobs.scratch / f"radnet-demo-{uuid.uuid4().hex}"
    try:
        if alex is not None:
            ct = _ingest(session, runtime, scratch, alex, institution=AUSTIN, description="CT ABDOMEN WITH CONTRAST",
                         modality="CT", body_part="ABDOMEN", day=today, instances=12)
            studies.add_report(session, runtime=runtime, study=ct, signed_at=clock.now() - timedelta(hours=1),
                               title="CT report", author=RADIOLOGIST, actor="system",
                               text="FINDINGS\nThe liver, spleen, pancreas and kidneys are normal. No free fluid.\n\n"
                                    "IMPRESSION\nNormal CT of the abdomen.")
            xray = _ingest(session, runtime, scratch, alex, institution=BROOKLYN, description="XR KNEE LEFT 3 VIEWS",
                           modality="CR", body_part="KNEE", day=today - timedelta(days=30), instances=3)
            studies.add_report(session, runtime=runtime, study=xray, signed_at=_signed(today - timedelta(days=29)),
                               title="X-ray report", author=RADIOLOGIST, actor="system",
                               text="FINDINGS\nThree views of the left knee. No fracture. The joint spaces are preserved.")
            session.commit()
            _known_code(session, runtime, ct, ALEX_CODE)
        if riley is not None:
            ankle = _ingest(session, runtime, scratch, riley, institution=WESTSIDE, description="XR ANKLE RIGHT",
                            modality="CR", body_part="ANKLE", day=today - timedelta(days=10), instances=2)
            studies.add_report(session, runtime=runtime, study=ankle, signed_at=_signed(today - timedelta(days=9)),
                               title="X-ray report", author=RADIOLOGIST, actor="system",
                               text="FINDINGS\nTwo views of the right ankle. No fracture. The growth plates are normal.")
            session.commit()
            _known_code(session, runtime, ankle, RILEY_CODE)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _patient(session: Session, patient_id: str) -> Patient | None:
    return session.scalar(select(Patient).where(Patient.issuer == ISSUER, Patient.patient_id == patient_id))


def _signed(day: date) -> datetime:
    return min(datetime.combine(day, time(16), tzinfo=timezone.utc), clock.now() - timedelta(hours=2))


def _ingest(session: Session, runtime, scratch, patient: Patient, *, institution: str, description: str,
            modality: str, body_part: str, day: date, instances: int) -> Study:
    spec = synthetic.StudySpec(patient_id=patient.patient_id, issuer=patient.issuer, family_name=patient.family_name,
                               given_name=patient.given_name, birth_date=patient.birth_date or date(1980, 1, 1),
                               sex=patient.sex or "O", institution=institution, description=description,
                               modality=modality, body_part=body_part, study_date=day, series=1,
                               instances=instances, rows=96, columns=96)
    for path in synthetic.write(synthetic.study(spec), scratch):
        result = studies.ingest(session, path, runtime=runtime, actor="system", source="demo")
        path.unlink(missing_ok=True)
        if not result.ok:
            raise RuntimeError(f"the demo study {result.study_uid} was refused: {result.reason}")
    return session.scalar(select(Study).where(Study.study_uid == spec.study_uid))


def _known_code(session: Session, runtime, study: Study, code: str) -> None:
    """Give the study's visit the README's code (its visit and first code came with the study)."""
    visit, _created = visits.visit_for_study(session, site=runtime.site, settings=service.settings_of(runtime.site),
                                             study=study)
    service.reissue(session, site=runtime.site, visit=visit, by="system", code=code)
    session.commit()
