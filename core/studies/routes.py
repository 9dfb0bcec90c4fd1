"""The patient's exam pages: "My exams", and one exam's visit summary, report and images,
with the report as PDF or a printable page and each image as a JPG.

Thin: parse, ask ``pages`` (which reads through ``queries``), record the audit
event in the request's transaction, render. Anything not visible is a 404.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from core import access
from core.audit import service as audit
from core.db import DbSession
from core.identity import account as accounts
from core.identity import sessions
from core.identity.models import Account
from core.sharing import pseudonyms
from core.studies import pages, queries, report_pdf
from core.studies.exports import routes as export_routes
from core.studies.exports import service as exports
from core.web import render

router = APIRouter()
READ = [access.rule("studies.read")]
NO_STORE = {"Cache-Control": "no-store"}  # health information is not kept by browsers or proxies


def _principal(request: Request):
    return access.current_principal(request)


def _actor(principal) -> str:
    return f"{principal.kind}:{principal.id}"


def _web_session(request: Request, session):
    return sessions.find(session, token=request.cookies.get(sessions.COOKIE), site=request.app.state.runtime.site)


def _asked(flag: str) -> bool:
    """``?download=1`` (any value but empty or 0) asks for a file to save rather than to show."""
    return flag not in ("", "0")


def _private(response: Response) -> Response:
    response.headers.update(NO_STORE)
    return response


def _page(request: Request, template: str, status_code: int = 200, **context) -> Response:
    return _private(render(request, template, status_code=status_code, **context))


def _study(session, principal, study_uid: str) -> pages.StudyHeader:
    try:
        return pages.study_header(session, principal, study_uid)
    except queries.NotFound:
        raise HTTPException(status_code=404) from None


def _common(request: Request) -> dict:
    """Helpers and facts every exam template uses."""
    principal = _principal(request)
    export_formats = exports.formats(request.app.state.runtime)
    return {"export_formats": list(export_formats.values()),
            "export_label": lambda export: getattr(export_formats.get(export.format), "label", export.format),
            "export_status": export_routes.status_of,
            "can_export": access.can(request.app.state.runtime.pm, principal, "studies.export"),
            "kind_labels": pages.kind_labels(), "kind_of": pages.KIND_OF, "study_day": pages.study_day,
            "person_name": pages.person_name, "patient_name": pages.patient_name,
            "staff": queries.sees_everything(principal),
            "has_patients": principal.kind == "account" and bool(principal.scope)}


# -- My exams ------------------------------------------------------------------------------------

@router.get("/exams", response_class=HTMLResponse, dependencies=READ)
def my_exams(request: Request, session: DbSession, date_from: str = "", date_to: str = "", kind: str = "",
             group: str = ""):
    principal = _principal(request)
    choice = pages.patient_choice(session, principal, _web_session(request, session))
    filters = pages.ExamFilters.parse(date_from, date_to, kind, group)
    exams = None
    if choice.active is not None:
        exams = pages.exam_list(session, principal, choice.active.id, filters)
        audit.record(session, actor=_actor(principal), action="studies.listed", subject=f"patient:{choice.active.id}",
                     detail={"count": exams.count, "filtered": filters.active})
        session.commit()
    return _page(request, "studies/exams.html", choice=choice, filters=filters, exams=exams,
                 exports=exports.recent(session, principal), **_common(request))


@router.post("/exams/patient", dependencies=[access.rule("account.self")])
def choose_patient(request: Request, session: DbSession, patient: Annotated[str, Form()] = ""):
    """The identity picker's choice, made from the exam list: back to the list afterwards."""
    principal = _principal(request)
    try:
        accounts.choose_patient(session, account=session.get(Account, int(principal.id)),
                                web_session=_web_session(request, session), patient_ref=int(patient))
    except (LookupError, ValueError):
        raise HTTPException(status_code=404) from None
    session.commit()
    return RedirectResponse("/exams", status_code=303)


# -- one exam: three tabs -------------------------------------------------------------------------

@router.get("/exams/{study_uid}", response_class=HTMLResponse, dependencies=READ)
def visit_summary(request: Request, session: DbSession, study_uid: str):
    principal = _principal(request)
    header = _study(session, principal, study_uid)
    counts = pages.image_counts(session, principal, header.study)
    earlier = pages.earlier_same_body_part(session, principal, header.study)
    audit.record(session, actor=_actor(principal), action="study.viewed", subject=f"study:{header.study.id}",
                 detail={"tab": "summary"})
    session.commit()
    return _page(request, "studies/study_summary.html", tab="summary", header=header, study=header.study,
                 counts=counts, earlier=earlier, clock_time=pages.study_clock_time(header.study.study_time),
                 **_common(request))


@router.get("/exams/{study_uid}/report", response_class=HTMLResponse, dependencies=READ)
def report_tab(request: Request, session: DbSession, study_uid: str):
    principal = _principal(request)
    header = _study(session, principal, study_uid)
    view = queries.reports(session, principal, header.study)
    view.readable = [_shown_report(session, principal, report) for report in view.readable]
    if view.readable:
        audit.record(session, actor=_actor(principal), action="report.viewed", subject=f"study:{header.study.id}",
                     detail={"reports": [report.id for report in view.readable]})
    else:
        audit.record(session, actor=_actor(principal), action="study.viewed", subject=f"study:{header.study.id}",
                     detail={"tab": "report"})
    session.commit()
    return _page(request, "studies/study_report.html", tab="report", header=header, study=header.study, view=view,
                 **_common(request))


@router.get("/exams/{study_uid}/images", response_class=HTMLResponse, dependencies=READ)
def images_tab(request: Request, session: DbSession, study_uid: str):
    principal = _principal(request)
    header = _study(session, principal, study_uid)
    series = pages.series_images(session, principal, header.study)
    audit.record(session, actor=_actor(principal), action="study.viewed", subject=f"study:{header.study.id}",
                 detail={"tab": "images"})
    session.commit()
    return _page(request, "studies/study_images.html", tab="images", header=header, study=header.study,
                 series=series, withheld=pseudonyms.withheld(session, principal, header.study), **_common(request))


# -- a report as PDF or as a printable page ----------------------------------------------------------

def _report(session, principal, study_uid: str, report_id: int):
    header = _study(session, principal, study_uid)
    try:
        return header, _shown_report(session, principal, queries.report(session, principal, header.study, report_id))
    except queries.NotFound:
        raise HTTPException(status_code=404) from None


def _shown_report(session, principal, report):
    """A report as a share that hides patient details reads it: no author, its text cleaned, and
    no PDF from the practice (which cannot be cleaned); anyone else reads it as it is."""
    deidentifier = pseudonyms.for_principal(session, principal)
    return deidentifier.report(report) if deidentifier is not None else report


@router.get("/exams/{study_uid}/reports/{report_id:int}.pdf", dependencies=READ)
def report_pdf_file(request: Request, session: DbSession, study_uid: str, report_id: int, download: str = ""):
    """A PDF report as the practice sent it; a text report as a PDF made here."""
    principal = _principal(request)
    if _asked(download) and not access.can(request.app.state.runtime.pm, principal, "studies.export"):
        raise HTTPException(status_code=403)  # e.g. a share without download: to view, not to keep
    header, report = _report(session, principal, study_uid, report_id)
    runtime = request.app.state.runtime
    if report.pdf_blob_key:
        if not runtime.blobs.exists(report.pdf_blob_key):
            raise HTTPException(status_code=404)
        with runtime.blobs.open(report.pdf_blob_key) as handle:
            content = handle.read()
    elif report.text:
        content = report_pdf.report_document(site_name=runtime.site.config.site.name, report=report,
                                             study=header.study, patient=header.patient)
    else:
        raise HTTPException(status_code=404)
    audit.record(session, actor=_actor(principal), action="report.downloaded", subject=f"study:{header.study.id}",
                 detail={"report": report.id, "format": "pdf", "attachment": _asked(download)})
    session.commit()
    day = header.study.study_date.isoformat() if header.study.study_date else "undated"
    disposition = "attachment" if _asked(download) else "inline"
    return Response(content, media_type="application/pdf", headers={
        **NO_STORE, "Content-Disposition": f'{disposition}; filename="report-{day}-{report.id}.pdf"'})


@router.get("/exams/{study_uid}/reports/{report_id:int}/print", response_class=HTMLResponse, dependencies=READ)
def report_print(request: Request, session: DbSession, study_uid: str, report_id: int):
    principal = _principal(request)
    header, report = _report(session, principal, study_uid, report_id)
    audit.record(session, actor=_actor(principal), action="report.viewed", subject=f"study:{header.study.id}",
                 detail={"reports": [report.id], "view": "print"})
    session.commit()
    return _page(request, "studies/report_print.html", header=header, study=header.study, report=report,
                 **_common(request))


# -- one image as a JPG ---------------------------------------------------------------------------------

@router.get("/exams/{study_uid}/images/{sop_uid}.jpg", dependencies=READ)
def image_jpg(request: Request, session: DbSession, study_uid: str, sop_uid: str, frame: int = 1,
              download: str = "", window: str = ""):
    from core.studies import render as rendering

    principal = _principal(request)
    if _asked(download) and not access.can(request.app.state.runtime.pm, principal, "studies.export"):
        raise HTTPException(status_code=403)  # e.g. a share without download: to view, not to keep
    header = _study(session, principal, study_uid)
    try:
        instance = pages.image(session, principal, header.study, sop_uid)
    except queries.NotFound:
        raise HTTPException(status_code=404) from None
    if not 1 <= frame <= max(instance.frames or 1, 1):
        raise HTTPException(status_code=404)
    try:
        # full resolution, in the window the viewer showed (``centre,width``) if it sent one
        chosen = export_routes.window_of(window)
        content = rendering.rendered(request.app.state.runtime, instance, frame, fmt="jpeg", quality=92,
                                     window=tuple(chosen) if chosen else None)
    except rendering.CannotRender as refusal:
        return _page(request, "studies/image_error.html", status_code=422, header=header, study=header.study,
                     reason=refusal.message, **_common(request))
    audit.record(session, actor=_actor(principal), action="image.downloaded" if _asked(download) else "image.viewed",
                 subject=f"study:{header.study.id}", detail={"sop_uid": instance.sop_uid, "frame": frame})
    session.commit()
    name = f"image-{instance.instance_number or instance.id}" + (f"-frame-{frame}" if instance.frames > 1 else "")
    headers = dict(NO_STORE)
    if _asked(download):
        headers["Content-Disposition"] = f'attachment; filename="{name}.jpg"'
    return Response(content, media_type="image/jpeg", headers=headers)
