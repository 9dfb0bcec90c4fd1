"""The image viewer page: ``/exams/{study_uid}/viewer``.

The page is a shell: the series list, a canvas and the controls. The browser
reads each series' DICOM JSON and frames over DICOMweb (``core.studies.dicomweb``)
and draws them itself (``core/static/viewer/*.js``); what may be seen is decided
there and here by ``core.studies.queries`` alone.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import func
from sqlalchemy.orm import Session

from core import access
from core.access import Principal
from core.audit import service as audit
from core.db import DbSession
from core.sharing import pseudonyms
from core.studies import queries
from core.studies.dicom_json import hides_patient
from core.studies.models import Instance, Patient, Series, Study
from core.web import render

router = APIRouter()

# Window presets (centre, width) in Hounsfield units; other modalities use the file's own window.
CT_PRESETS = [("soft_tissue", 40, 400), ("lung", -600, 1500), ("bone", 300, 1500), ("brain", 40, 80)]


@dataclass
class SeriesEntry:
    uid: str
    number: int | None
    modality: str
    description: str
    images: int  # frames of every visible image instance: what the slider steps through


@dataclass
class ViewerContent:
    study: Study
    patient: Patient | None
    series: list[SeriesEntry]
    selected: SeriesEntry


def viewer_content(session: Session, principal: Principal, study_uid: str,
                   series_uid: str | None = None) -> ViewerContent:
    """The study, its visible image series and the one to open first; ``queries.NotFound`` if the
    study, any image of it, or the asked-for series is not visible to ``principal``."""
    study = queries.study(session, principal, study_uid)
    deidentifier = pseudonyms.for_principal(session, principal)  # a share that hides patient details
    # frames per series in one query, over exactly the instances the principal may see;
    # instances without rows (reports, PDFs) are not images and stay out of the viewer
    counting = (queries.instances(session, principal, study)
                .with_only_columns(Series.id, func.sum(Instance.frames))
                .where(Instance.rows.is_not(None)).group_by(Series.id).order_by(None))
    images = dict(session.execute(counting).all())
    series = [SeriesEntry(uid=one.series_uid, number=one.series_number, modality=one.modality,
                          description=deidentifier.series(one).description if deidentifier else one.description,
                          images=int(images[one.id]))
              for one in queries.series(session, principal, study) if images.get(one.id)]
    if not series:  # no images yet (held, or a report only): nothing here to see
        raise queries.NotFound(study_uid)
    selected = series[0]
    if series_uid is not None:
        selected = next((entry for entry in series if entry.uid == series_uid), None)
        if selected is None:
            raise queries.NotFound(series_uid)
    if deidentifier is not None:
        return ViewerContent(study=deidentifier.study(study), patient=None, series=series, selected=selected)
    return ViewerContent(study=study, patient=session.get(Patient, study.patient_ref), series=series,
                         selected=selected)


@router.get("/exams/{study_uid}/viewer", response_class=HTMLResponse, dependencies=[access.rule("studies.read")])
def viewer_page(request: Request, session: DbSession, study_uid: str, series: str | None = None):
    principal = access.current_principal(request)
    try:
        content = viewer_content(session, principal, study_uid, series)
    except queries.NotFound:
        return pseudonyms.withheld_page(request, session, principal, study_uid)  # else a plain 404
    audit.record(session, actor=f"{principal.kind}:{principal.id}", action="study.viewed_images",
                 subject=f"study:{content.study.id}",
                 detail={"series_uid": content.selected.uid})
    session.commit()
    hide = hides_patient(principal)  # the same rule DICOMweb strips the patient module by
    config = {
        "studyUid": content.study.study_uid,
        "dicomweb": "/dicomweb",
        "selected": content.selected.uid,
        "series": [{"uid": entry.uid, "number": entry.number, "modality": entry.modality,
                    "description": entry.description, "images": entry.images} for entry in content.series],
        "presets": {"CT": [{"key": key, "center": center, "width": width} for key, center, width in CT_PRESETS]},
    }
    response = render(request, "studies/viewer.html", study=content.study,
                      patient=None if hide else content.patient, series=content.series,
                      selected=content.selected, hide_patient_details=hide, viewer_config=config,
                      can_save=access.can(request.app.state.runtime.pm, principal, "studies.export"),
                      withheld=pseudonyms.withheld(session, principal, content.study))
    response.headers["Cache-Control"] = "no-store"
    return response
