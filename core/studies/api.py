"""The reports API: ``POST /api/reports`` for a RIS or PACS (bearer token) or staff.

A report arrives as JSON (``text`` or ``pdf_base64``) or as multipart/form-data with a
``pdf`` file part and the same fields. ``service.add_report`` stores it and decides
when patients may read it: 201 with ``{id, release_at, release_rule, release_law}``.
The caller's ``id`` makes posting twice harmless: the repeat answers 200 with the
report already held.
"""
from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timezone

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError, field_validator
from sqlalchemy import select

from core import access
from core.i18n import gettext as _
from core.studies import queries, service
from core.studies.blobs import scratch_file
from core.studies.models import Report

router = APIRouter()


class ReportIn(BaseModel):
    model_config = {"extra": "forbid"}

    study_uid: str = Field(min_length=1, max_length=64)
    id: str = Field(min_length=1, max_length=64)
    text: str | None = None
    pdf_base64: str | None = None
    signed_at: datetime
    category: str = Field("radiology", min_length=1, max_length=32)
    flags: list[str] = Field(default_factory=list, max_length=20)
    title: str = Field("", max_length=200)
    author: str = Field("", max_length=200)

    @field_validator("signed_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _problem(message: str, status_code: int = 422) -> HTTPException:
    return HTTPException(status_code=status_code, detail=message)


def _explain(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "body"
    return _("%(field)s: %(problem)s", field=where, problem=first.get("msg", ""))


async def _read(request: Request) -> tuple[dict, bytes | None]:
    """The posted fields and the PDF's bytes, from JSON or multipart/form-data."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            fields = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise _problem(_("The body is not valid JSON.")) from None
        if not isinstance(fields, dict):
            raise _problem(_("The body must be a JSON object."))
        encoded = fields.get("pdf_base64")
        if encoded is None:
            return fields, None
        try:
            return fields, base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise _problem(_("pdf_base64 is not valid base64.")) from None
    if content_type == "multipart/form-data":
        form = await request.form()
        fields = {key: value for key, value in form.items() if isinstance(value, str) and key != "csrf_token"}
        if "flags" in fields:
            fields["flags"] = [flag.strip() for flag in fields["flags"].split(",") if flag.strip()]
        upload = form.get("pdf")
        return fields, (await upload.read() if upload is not None and not isinstance(upload, str) else None)
    raise _problem(_("Send the report as application/json or multipart/form-data."), 415)


@router.post("/api/reports", dependencies=[access.rule("studies.store")])
async def post_report(request: Request):
    fields, pdf = await _read(request)
    try:
        report_in = ReportIn.model_validate(fields)
    except ValidationError as error:
        raise _problem(_explain(error)) from None
    if pdf is not None:
        report_in.pdf_base64 = None
        if not pdf.startswith(b"%PDF"):
            raise _problem(_("The PDF file is not a PDF."))
        if len(pdf) > request.app.state.runtime.site.config.studies.max_file_mb * 2**20:
            raise _problem(_("The PDF file is too large."), 413)
    if bool(report_in.text and report_in.text.strip()) == (pdf is not None):
        raise _problem(_("Send either text or a PDF, not both and not neither."))
    principal = access.current_principal(request)
    return await run_in_threadpool(_store, request.app.state.runtime, principal, report_in, pdf)


def _store(runtime, principal, report_in: ReportIn, pdf: bytes | None) -> JSONResponse:
    with runtime.sessions() as session:
        try:
            study = queries.study(session, principal, report_in.study_uid)
        except queries.NotFound:
            raise _problem(_("No study with this Study Instance UID is held."), 404) from None
        existed = session.scalar(select(Report.id).where(Report.source_uid == report_in.id)) is not None
        options = dict(runtime=runtime, study=study, signed_at=report_in.signed_at, category=report_in.category,
                       flags=report_in.flags, title=report_in.title, author=report_in.author,
                       source_uid=report_in.id, actor=f"{principal.kind}:{principal.id}")
        if pdf is not None:
            with scratch_file(runtime.blobs, ".pdf") as path:
                path.write_bytes(pdf)
                report = service.add_report(session, pdf=path, **options)
        else:
            report = service.add_report(session, text=report_in.text, **options)
        session.commit()
        answer = {"id": report.source_uid, "release_at": report.release_at.isoformat(),
                  "release_rule": report.release_rule or "signed", "release_law": report.release_law}
    return JSONResponse(answer, status_code=200 if existed else 201)
