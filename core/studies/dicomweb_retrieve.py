"""WADO-RS (PS3.18 §10.4): instances as multipart/related application/dicom (streamed from
the blob store), metadata as DICOM JSON, frames, bulk data, and rendered pictures and
thumbnails (``core.studies.render``).

Instances go out in their stored transfer syntax when the client takes it, else
re-encoded as Explicit VR Little Endian (the default of PS3.18) when a decoder is
installed; frames likewise; nothing acceptable answers 406. What is visible is
decided by ``core.studies.queries``.
"""
from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from core import access
from core.db import DbSession
from core.i18n import gettext as _
from core.sharing import pseudonyms
from core.studies import dicom_json, frames, queries, render
from core.studies.dicomweb import READ, audit_access, base_of, json_response, require_json, visible_study
from core.studies.dicomweb_media import EXPLICIT_LE, Multipart, accepts, parse_accept
from core.studies.models import Instance, Series, Study

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicomweb")
CHUNK = 1 << 20
PREAMBLE = 128
INSTANCE = "/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def _cannot(reason: render.CannotRender) -> JSONResponse:
    return JSONResponse({"detail": reason.message}, status_code=422)


def _rows(session: Session, principal, study: Study, series_uid=None, sop_uid=None) -> list:
    rows = session.execute(queries.instances(session, principal, study, series_uid=series_uid,
                                             sop_uid=sop_uid)).all()
    if not rows:
        raise HTTPException(status_code=404)
    return rows


def visible_instance(request: Request, session: Session, study_uid, series_uid,
                     sop_uid) -> tuple[Study, Series, Instance]:
    """One visible instance by its three UIDs, in one query (the viewer's frames ask often); 404 if none."""
    row = session.execute(queries.visible_instances(session, access.current_principal(request))
                          .where(Study.study_uid == study_uid, Series.series_uid == series_uid,
                                 Instance.sop_uid == sop_uid)).first()
    if row is None:
        raise HTTPException(status_code=404)
    instance, series, study = row
    return study, series, instance


# -- instances ---------------------------------------------------------------

def _retrieve(request: Request, session: Session, study_uid: str, series_uid=None, sop_uid=None):
    principal = access.current_principal(request)
    study = visible_study(session, principal, study_uid)
    rows = _rows(session, principal, study, series_uid, sop_uid)
    if principal.kind == "share" and not access.can(request.app.state.runtime.pm, principal, "studies.export"):
        raise HTTPException(status_code=403)  # whole DICOM files are a download; the viewer needs only frames
    choices = parse_accept(request.headers.get("accept"), "application/dicom")
    plan = []  # (instance, transfer syntax sent, re-encode?)
    for instance, _series in rows:
        if accepts(choices, "application/dicom", instance.transfer_syntax, multipart=True):
            plan.append((instance, instance.transfer_syntax, False))
        elif accepts(choices, "application/dicom", EXPLICIT_LE, multipart=True) \
                and frames.can_decode(instance.transfer_syntax):
            plan.append((instance, EXPLICIT_LE, True))
    single = None
    if not plan and sop_uid is not None:  # one instance, asked for as a bare application/dicom
        instance = rows[0][0]
        if accepts(choices, "application/dicom", instance.transfer_syntax, multipart=False):
            single = instance
    if not plan and single is None:
        raise HTTPException(status_code=406, detail=_(
            "The instances cannot be sent in the media type or transfer syntax asked for."))
    runtime = request.app.state.runtime
    audit_access(session, runtime, principal, "dicomweb.retrieve", [study.id],
                 detail={"series_uid": series_uid, "sop_uid": sop_uid, "instances": len(plan) or 1})
    deidentifier = pseudonyms.for_principal(session, principal)  # a share that hides patient details
    if single is not None:
        return StreamingResponse(_file_bytes(runtime, single, deidentifier),
                                 media_type=f"application/dicom; transfer-syntax={single.transfer_syntax}")
    writer = Multipart("application/dicom")
    return StreamingResponse(_parts(runtime, plan, writer, deidentifier), media_type=writer.content_type)


def _file_bytes(runtime, instance: Instance, deidentifier=None):
    """The stored file in chunks, its preamble zeroed (a preamble can hide another file format);
    de-identified whole for a share that hides patient details."""
    if deidentifier is not None:
        with runtime.blobs.open(instance.blob_key) as handle:
            yield deidentifier.file(handle.read())
        return
    with runtime.blobs.open(instance.blob_key) as handle:
        first = handle.read(CHUNK)
        yield b"\0" * PREAMBLE + first[PREAMBLE:] if len(first) > PREAMBLE else first
        while chunk := handle.read(CHUNK):
            yield chunk


def _parts(runtime, plan, writer: Multipart, deidentifier=None):
    for instance, syntax, reencode in plan:
        try:
            data = [frames.explicit_little_endian(runtime, instance)] if reencode else None
        except render.CannotRender:
            log.warning("instance %s could not be re-encoded; left out of the answer", instance.sop_uid)
            continue
        if data and deidentifier is not None:
            data = [deidentifier.file(data[0])]
        yield writer.head(f"application/dicom; transfer-syntax={syntax}")
        yield from data or _file_bytes(runtime, instance, deidentifier)
    yield writer.end()


@router.get("/studies/{study_uid}", dependencies=READ)
def retrieve_study(request: Request, session: DbSession, study_uid: str):
    return _retrieve(request, session, study_uid)


@router.get("/studies/{study_uid}/series/{series_uid}", dependencies=READ)
def retrieve_series(request: Request, session: DbSession, study_uid: str, series_uid: str):
    return _retrieve(request, session, study_uid, series_uid)


@router.get(INSTANCE, dependencies=READ)
def retrieve_instance(request: Request, session: DbSession, study_uid: str, series_uid: str, sop_uid: str):
    return _retrieve(request, session, study_uid, series_uid, sop_uid)


# -- metadata ----------------------------------------------------------------

def _metadata(request: Request, session: Session, study_uid: str, series_uid=None, sop_uid=None):
    require_json(request)
    principal = access.current_principal(request)
    study = visible_study(session, principal, study_uid)
    base = base_of(request)
    payload = [dicom_json.metadata(instance, series, study, base)
               for instance, series in _rows(session, principal, study, series_uid, sop_uid)]
    deidentifier = pseudonyms.for_principal(session, principal)
    if deidentifier is not None:  # a share that hides patient details: the full profile (core.sharing.deidentify)
        payload = [deidentifier.json(dataset) for dataset in payload]
    audit_access(session, request.app.state.runtime, principal, "dicomweb.metadata", [study.id],
                 detail={"series_uid": series_uid, "sop_uid": sop_uid})
    return json_response(payload)


@router.get("/studies/{study_uid}/metadata", dependencies=READ)
def study_metadata(request: Request, session: DbSession, study_uid: str):
    return _metadata(request, session, study_uid)


@router.get("/studies/{study_uid}/series/{series_uid}/metadata", dependencies=READ)
def series_metadata(request: Request, session: DbSession, study_uid: str, series_uid: str):
    return _metadata(request, session, study_uid, series_uid)


@router.get(INSTANCE + "/metadata", dependencies=READ)
def instance_metadata(request: Request, session: DbSession, study_uid: str, series_uid: str, sop_uid: str):
    return _metadata(request, session, study_uid, series_uid, sop_uid)


# -- frames and bulk data ----------------------------------------------------

def _frame_numbers(text: str, instance: Instance) -> list[int]:
    try:
        numbers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise HTTPException(status_code=400, detail=_("Frame numbers are whole numbers from 1.")) from None
    if not numbers or min(numbers) < 1:
        raise HTTPException(status_code=400, detail=_("Frame numbers are whole numbers from 1."))
    if not instance.rows or max(numbers) > max(instance.frames, 1):
        raise HTTPException(status_code=404)
    return numbers


def _frames_answer(request: Request, instance: Instance, numbers: list[int]) -> Response:
    """The frames as multipart/related: as stored if the client takes that, else native."""
    runtime = request.app.state.runtime
    choices = parse_accept(request.headers.get("accept"), "application/octet-stream")
    stored = instance.transfer_syntax
    if frames.is_native(instance):
        read, part_type, syntax = frames.stored_frame, "application/octet-stream", EXPLICIT_LE
        if not accepts(choices, part_type, EXPLICIT_LE):
            raise HTTPException(status_code=406, detail=_("Native frames are sent as application/octet-stream."))
    else:
        media_type = frames.FRAME_MEDIA_TYPES.get(stored, "application/octet-stream")
        choice = accepts(choices, media_type, stored) or accepts(choices, "application/octet-stream", stored)
        if choice is not None:  # as stored, named the way the client asked (OHIF asks octet-stream, *)
            read, syntax = frames.stored_frame, stored
            part_type = "application/octet-stream" if choice.part_type == "application/octet-stream" else media_type
        elif accepts(choices, "application/octet-stream", EXPLICIT_LE) and frames.can_decode(stored):
            read, part_type, syntax = frames.decoded_frame, "application/octet-stream", EXPLICIT_LE
        else:
            raise HTTPException(status_code=406, detail=_(
                "The frames cannot be sent in the media type or transfer syntax asked for."))
    try:
        first = read(runtime, instance, numbers[0])  # before the status is sent: a failure is a clear 422
    except render.CannotRender as reason:
        return _cannot(reason)
    writer = Multipart(part_type, syntax)
    content_type = f"{part_type}; transfer-syntax={syntax}"

    def body():
        yield writer.head(content_type)
        yield first
        for number in numbers[1:]:
            try:
                data = read(runtime, instance, number)
            except render.CannotRender:
                log.warning("frame %s of %s could not be read; the answer ends early", number, instance.sop_uid)
                break
            yield writer.head(content_type)
            yield data
        yield writer.end()

    if len(numbers) == 1:
        return Response(b"".join(body()), media_type=writer.content_type)
    return StreamingResponse(body(), media_type=writer.content_type)


@router.get(INSTANCE + "/frames/{frame_list}", dependencies=READ)
async def retrieve_frames(request: Request, study_uid: str, series_uid: str, sop_uid: str, frame_list: str):
    # asked for by the hundred: one trip to a worker thread does the lookups, the read and the audit

    def work() -> Response:
        with request.app.state.runtime.sessions() as session:
            study, _series, instance = visible_instance(request, session, study_uid, series_uid, sop_uid)
            answer = _frames_answer(request, instance, _frame_numbers(frame_list, instance))
            if answer.status_code == 200:
                audit_access(session, request.app.state.runtime, access.current_principal(request),
                             "dicomweb.frames", [study.id], once_per_window=True)
            return answer

    return await run_in_threadpool(work)


@router.get(INSTANCE + "/bulk/{tag}", dependencies=READ)
def retrieve_bulk(request: Request, session: DbSession, study_uid: str, series_uid: str, sop_uid: str, tag: str):
    study, _series, instance = visible_instance(request, session, study_uid, series_uid, sop_uid)
    tag = tag.upper()
    if tag == dicom_json.PIXEL_DATA:
        if not instance.rows:
            raise HTTPException(status_code=404)
        answer = _frames_answer(request, instance, list(range(1, max(instance.frames, 1) + 1)))
    else:
        if len(tag) != 8 or any(c not in "0123456789ABCDEF" for c in tag):
            raise HTTPException(status_code=404)
        deidentifier = pseudonyms.for_principal(session, access.current_principal(request))
        if deidentifier is not None and not deidentifier.keeps_bulk(instance.header, tag):
            raise HTTPException(status_code=404)  # a value the share's de-identification removes
        if not accepts(parse_accept(request.headers.get("accept"), "application/octet-stream"),
                       "application/octet-stream"):
            raise HTTPException(status_code=406, detail=_("Bulk data is sent as application/octet-stream."))
        value = frames.bulk_value(request.app.state.runtime, instance, tag)
        if value is None:
            raise HTTPException(status_code=404)
        writer = Multipart("application/octet-stream")
        answer = Response(writer.head("application/octet-stream") + value + writer.end(),
                          media_type=writer.content_type)
    if answer.status_code == 200:
        audit_access(session, request.app.state.runtime, access.current_principal(request), "dicomweb.bulk",
                     [study.id], once_per_window=True)
    return answer
