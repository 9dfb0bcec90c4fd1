"""The export pages: choose and confirm, follow the progress, fetch the file.

``/exports/new`` shows what will be exported and, for DICOM, the acknowledgement;
``POST /exports`` queues the job (or finds the running one) and goes to its page,
which polls ``/exports/{id}/status`` and offers the file once it is ready. An export
is its asker's alone: anyone else gets 404.
"""
from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from core import access, clock, i18n
from core.audit import service as audit
from core.db import DbSession
from core.i18n import gettext as _
from core.sharing import pseudonyms
from core.studies import queries
from core.studies.exports import service
from core.web import language_of, render

router = APIRouter()
EXPORT = [access.rule("studies.export")]
NO_STORE = {"Cache-Control": "no-store"}
DOWNLOAD_NAMES = {"zip": "exams", "iso": "disc", "jpg": "pictures"}  # the saved file's name, before the date


def _page(request: Request, template: str, status_code: int = 200, **context) -> Response:
    response = render(request, template, status_code=status_code, **context)
    response.headers.update(NO_STORE)
    return response


def acknowledgement(runtime, language: str) -> str:
    """The site's own text in ``language`` if it has one, else the core's, translated."""
    own = runtime.site.config.exports.acknowledgement
    return own.get(language) or own.get(runtime.site.config.site.default_language) or _(
        "These files contain your health information: your name, your date of birth and your medical images. "
        "Once downloaded, they are no longer protected by this portal, and you are responsible for keeping them "
        "safe and for whom you give them to.")


def window_of(text: str) -> list[float] | None:
    """``centre,width`` from the viewer, or None; anything else is ignored (the file's own window)."""
    try:
        centre, width = (float(part) for part in text.split(","))
    except ValueError:
        return None
    return [centre, width] if math.isfinite(centre) and math.isfinite(width) and width > 0 else None


def _options(series: str, window: str) -> dict:
    options = {"series_uid": series} if series else {}
    if window_of(window):
        options["window"] = window_of(window)
    return options


def _chosen(session, principal, study_uids: list[str]) -> list:
    try:
        return [queries.study(session, principal, uid) for uid in dict.fromkeys(study_uids)]
    except queries.NotFound:
        raise HTTPException(status_code=404) from None


def _confirm_page(request: Request, session, *, format_name: str, study_uids: list[str], series: str = "",
                  window: str = "", problem: str = "", status_code: int = 200) -> Response:
    runtime = request.app.state.runtime
    chosen = service.formats(runtime).get(format_name)
    if chosen is None:
        raise HTTPException(status_code=404)
    studies = _chosen(session, access.current_principal(request), study_uids)
    for study in studies:  # the page names each exam: a view of it
        audit.record(session, actor=service.owner_of(access.current_principal(request)), action="study.viewed",
                     subject=f"study:{study.id}", detail={"page": "export", "format": chosen.name})
    session.commit()
    deidentifier = pseudonyms.for_principal(session, access.current_principal(request))
    if deidentifier is not None:  # a share that hides patient details: the studies as it sees them
        studies = [deidentifier.study(study) for study in studies]
    return _page(request, "exports/new.html", status_code=status_code, format=chosen, studies=studies,
                 series=series, window=window, problem=problem,
                 acknowledgement=acknowledgement(runtime, language_of(request)))


@router.get("/exports/new", response_class=HTMLResponse, dependencies=EXPORT)
def new_export(request: Request, session: DbSession, format: str = "zip",
               study: Annotated[list[str], Query()] = [], series: str = "", window: str = ""):  # noqa: B006
    if not study:
        return _page(request, "exports/new.html", status_code=422, format=None, studies=[],
                     problem=_("Choose at least one exam first: tick the box next to each exam you want."))
    return _confirm_page(request, session, format_name=format, study_uids=study, series=series, window=window)


@router.post("/exports", dependencies=EXPORT)
def ask_export(request: Request, session: DbSession, format: Annotated[str, Form()] = "",
               study: Annotated[list[str], Form()] = [], series: Annotated[str, Form()] = "",  # noqa: B006
               window: Annotated[str, Form()] = "", acknowledge: Annotated[str, Form()] = ""):
    runtime, principal = request.app.state.runtime, access.current_principal(request)
    try:
        export, new = service.ask(session, runtime, principal, format_name=format, study_uids=study,
                                  language=language_of(request), acknowledged=acknowledge == "yes",
                                  options=_options(series, window))
    except queries.NotFound:
        raise HTTPException(status_code=404) from None
    except service.Refused as refusal:
        session.rollback()
        if not study or format not in service.formats(runtime):
            raise HTTPException(status_code=404) from None
        return _confirm_page(request, session, format_name=format, study_uids=study, series=series, window=window,
                             problem=refusal.message, status_code=422)
    session.commit()
    if new:
        service.enqueue(runtime, export)
    return RedirectResponse(f"/exports/{export.public_id}", status_code=303)


def _own(session, request: Request, public_id: str):
    try:
        return service.find(session, access.current_principal(request), public_id)
    except queries.NotFound:
        raise HTTPException(status_code=404) from None


def status_of(export) -> dict:
    """What the progress page shows, as JSON for its script."""
    percent = 100 if export.status == "ready" else (100 * export.done // export.total if export.total else 0)
    return {"status": export.status, "done": export.done, "total": export.total, "percent": percent,
            "message": export.error, "size": export.size,
            "download": f"/exports/{export.public_id}/download" if export.status == "ready" else None,
            "text": progress_text(export)}


def progress_text(export) -> str:
    if export.status == "queued":
        return _("Waiting to start…")
    if export.status == "running":
        return ngettext_files(export.done, export.total)
    if export.status == "ready":
        return _("Ready: %(size)s. Available until %(when)s.", size=file_size(export.size),
                 when=i18n.format_datetime(export.expires_at, "short"))
    if export.status == "expired":
        return _("This download has been deleted. You can ask for it again from the exam.")
    return export.error


def ngettext_files(done: int, total: int) -> str:
    percent = 100 * done // total if total else 0
    return i18n.ngettext("%(done)s of %(num)s file done (%(percent)s%%)", "%(done)s of %(num)s files done (%(percent)s%%)",
                         total, done=i18n.format_number(done), percent=percent)


def file_size(size: int) -> str:
    megabytes = size / 2**20
    if megabytes >= 1:
        return _("%(number)s MB", number=i18n.format_number(round(megabytes, 1)))
    return _("%(number)s KB", number=i18n.format_number(max(1, round(size / 1024))))


@router.get("/exports/{public_id}", response_class=HTMLResponse, dependencies=EXPORT)
def export_page(request: Request, session: DbSession, public_id: str):
    export = _own(session, request, public_id)
    chosen = service.formats(request.app.state.runtime).get(export.format)
    return _page(request, "exports/progress.html", export=export, format=chosen, status=status_of(export))


@router.get("/exports/{public_id}/status", dependencies=EXPORT)
def export_status(request: Request, session: DbSession, public_id: str):
    return JSONResponse(status_of(_own(session, request, public_id)), headers=NO_STORE)


@router.get("/exports/{public_id}/download", dependencies=EXPORT)
def download_export(request: Request, session: DbSession, public_id: str):
    runtime = request.app.state.runtime
    export = _own(session, request, public_id)
    path = service.file_of(runtime, export)
    if export.status != "ready" or not path.exists():
        raise HTTPException(status_code=404)
    principal = access.current_principal(request)
    for ref in export.study_refs:
        audit.record(session, actor=service.owner_of(principal), action="export.downloaded", subject=f"study:{ref}",
                     detail={"export": export.public_id, "format": export.format, "bytes": export.size})
    session.commit()
    chosen = service.formats(runtime)[export.format]
    name = f"{DOWNLOAD_NAMES.get(export.format, export.format)}-{clock.now().strftime('%Y-%m-%d')}{chosen.suffix}"
    return FileResponse(path, media_type=chosen.media_type, filename=name, headers=NO_STORE)
