"""WADO-RS rendered resources (PS3.18 §10.4.1.1.3, §9.5): a frame or an instance as JPEG or
PNG with ``window``, ``viewport`` and ``quality``, and thumbnails of a study, series or
instance. Pictures come from ``core.studies.render`` (cached); each answer carries an
ETag, so a browser asking again gets 304.
"""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from core import access
from core.db import DbSession
from core.i18n import gettext as _
from core.studies import queries, render
from core.studies.dicomweb import READ, audit_access, audit_due, visible_study
from core.studies.dicomweb_media import parse_accept
from core.studies.dicomweb_retrieve import INSTANCE, visible_instance
from core.studies.models import Instance, Series, Study

router = APIRouter(prefix="/dicomweb")
MAX_VIEWPORT = 4096
RENDER_MAX_AGE = 600  # seconds a browser may reuse a picture without asking again
THUMBNAIL_SIZE = (200, 200)


@dataclass(frozen=True)
class Asked:
    window: tuple[float, float] | None
    function: str
    size: tuple[int, int] | None
    fmt: str
    quality: int


def _format(accept: str | None) -> str | None:
    for choice in parse_accept(accept, "image/jpeg"):
        if choice.part_type in ("image/jpeg", "image/*", "*/*"):
            return "jpeg"
        if choice.part_type == "image/png":
            return "png"
    return None


def _asked(request: Request, default_size: tuple[int, int] | None = None) -> Asked:
    query = request.query_params
    window, function = None, "linear"
    if query.get("window"):
        parts = [part.strip() for part in query["window"].split(",")]
        try:
            center, width = float(parts[0]), float(parts[1])
        except (IndexError, ValueError):
            raise HTTPException(status_code=400, detail=_("window is centre,width[,linear|sigmoid].")) from None
        function = (parts[2].lower() if len(parts) > 2 and parts[2] else "linear")
        if width <= 0 or function not in render.FUNCTIONS:
            raise HTTPException(status_code=400, detail=_("window is centre,width[,linear|sigmoid]."))
        window = (center, width)
    size = default_size
    if query.get("viewport"):
        try:
            width, height = (int(part) for part in query["viewport"].split(",")[:2])
        except ValueError:
            raise HTTPException(status_code=400, detail=_("viewport is width,height in pixels.")) from None
        if not (0 < width <= MAX_VIEWPORT and 0 < height <= MAX_VIEWPORT):
            raise HTTPException(status_code=400, detail=_("viewport is width,height in pixels."))
        size = (width, height)
    try:
        quality = int(query.get("quality") or 90)
    except ValueError:
        quality = 0
    if not 1 <= quality <= 100:
        raise HTTPException(status_code=400, detail=_("quality is a whole number from 1 to 100."))
    fmt = _format(query.get("accept") or request.headers.get("accept"))
    if fmt is None:
        raise HTTPException(status_code=406, detail=_("Pictures are sent as image/jpeg or image/png."))
    return Asked(window, function, size, fmt, quality)


def _validated(request: Request, key: tuple) -> tuple[dict, bool]:
    """The answer's headers for the rendering ``key``, and whether the browser already has it."""
    headers = {"ETag": render.etag(key), "Cache-Control": f"private, max-age={RENDER_MAX_AGE}",
               "Vary": "Accept, Cookie, Authorization"}
    known = {value.strip() for value in request.headers.get("if-none-match", "").split(",")}
    return headers, headers["ETag"] in known or "*" in known


def _picture(request: Request, session: Session, study_id: int, instance, frame: int, asked: Asked,
             action: str) -> Response:
    options = dict(window=asked.window, function=asked.function, size=asked.size, fmt=asked.fmt,
                   quality=asked.quality)
    headers, unchanged = _validated(request, render.cache_key(instance, frame, **options))
    if unchanged:
        return Response(status_code=304, headers=headers)
    try:
        data = render.render_frame(request.app.state.runtime, instance, frame, **options)
    except render.CannotRender as reason:
        return JSONResponse({"detail": reason.message}, status_code=422)
    audit_access(session, request.app.state.runtime, access.current_principal(request), action, [study_id],
                 once_per_window=True)
    return Response(data, media_type=render.FORMATS[asked.fmt], headers=headers)


# The viewer asks for these by the hundred, so a picture already rendered is answered on the
# event loop after one lookup that decides visibility (a worker-thread trip costs more than that
# lookup on SQLite); a worker thread only renders, or writes an audit event that is due.

PICTURE_COLUMNS = (Instance.sha256, Instance.blob_key, Instance.rows, Instance.columns, Instance.frames,
                   Study.id.label("study_id"))


def _source(request: Request, study_uid: str, series_uid: str, sop_uid: str):
    """What rendering needs of one instance visible to the caller (one query, read-only: it never
    waits for a writer), or None."""
    runtime = request.app.state.runtime
    with runtime.sessions() as session:
        session.connection(execution_options={"read_only": True})
        return session.execute(queries.visible_instances(session, access.current_principal(request))
                               .with_only_columns(*PICTURE_COLUMNS)
                               .where(Study.study_uid == study_uid, Series.series_uid == series_uid,
                                      Instance.sop_uid == sop_uid)).first()


def _record(request: Request, study_id: int, action: str) -> None:
    runtime = request.app.state.runtime
    with runtime.sessions() as session:
        audit_access(session, runtime, access.current_principal(request), action, [study_id])


async def _rendered(request: Request, study_uid: str, series_uid: str, sop_uid: str, frame: str = "1") -> Response:
    asked = _asked(request)
    runtime = request.app.state.runtime
    if runtime.engine.dialect.name == "sqlite":
        source = _source(request, study_uid, series_uid, sop_uid)
    else:  # a database server is a network trip away: never hold up the event loop for it
        source = await run_in_threadpool(_source, request, study_uid, series_uid, sop_uid)
    if source is None or not frame.isdigit() or not 1 <= int(frame) <= max(source.frames, 1):
        raise HTTPException(status_code=404)
    number, action = int(frame), "dicomweb.rendered"
    options = dict(window=asked.window, function=asked.function, size=asked.size, fmt=asked.fmt,
                   quality=asked.quality)
    key = render.cache_key(source, number, **options)
    headers, unchanged = _validated(request, key)
    if unchanged:
        return Response(status_code=304, headers=headers)
    cache = render.cache_of(runtime)
    data = cache.get(key)
    if data is None:  # a default picture the worker made ahead, or another process kept
        data = render.kept_picture(runtime, key)
        if data is not None:
            cache.put(key, data)
    if data is None:
        def render_and_record() -> Response:
            try:
                picture = render.render_frame(runtime, source, number, **options)
            except render.CannotRender as reason:
                return JSONResponse({"detail": reason.message}, status_code=422)
            if audit_due(runtime, access.current_principal(request), action, [source.study_id]):
                _record(request, source.study_id, action)
            return Response(picture, media_type=render.FORMATS[asked.fmt], headers=headers)

        return await run_in_threadpool(render_and_record)
    if audit_due(runtime, access.current_principal(request), action, [source.study_id]):
        await run_in_threadpool(_record, request, source.study_id, action)
    return Response(data, media_type=render.FORMATS[asked.fmt], headers=headers)


@router.get(INSTANCE + "/rendered", dependencies=READ)
async def instance_rendered(request: Request, study_uid: str, series_uid: str, sop_uid: str):
    return await _rendered(request, study_uid, series_uid, sop_uid)


@router.get(INSTANCE + "/frames/{frame}/rendered", dependencies=READ)
async def frame_rendered(request: Request, study_uid: str, series_uid: str, sop_uid: str, frame: str):
    return await _rendered(request, study_uid, series_uid, sop_uid, frame)


def _representative(session: Session, principal, study: Study, series_uid: str | None = None) -> Instance:
    """The middle image of the first image series (or of ``series_uid``)."""
    rows = session.execute(queries.instances(session, principal, study, series_uid=series_uid)
                           .with_only_columns(Instance.id, Series.id).where(Instance.rows.is_not(None))).all()
    if not rows:
        raise HTTPException(status_code=404)
    first = [instance_id for instance_id, series_id in rows if series_id == rows[0][1]]
    return session.get(Instance, first[len(first) // 2])


@router.get("/studies/{study_uid}/thumbnail", dependencies=READ)
def study_thumbnail(request: Request, session: DbSession, study_uid: str):
    asked = _asked(request, THUMBNAIL_SIZE)
    principal = access.current_principal(request)
    study = visible_study(session, principal, study_uid)
    instance = _representative(session, principal, study)
    return _picture(request, session, study.id, instance, 1, asked, "dicomweb.thumbnail")


@router.get("/studies/{study_uid}/series/{series_uid}/thumbnail", dependencies=READ)
def series_thumbnail(request: Request, session: DbSession, study_uid: str, series_uid: str):
    asked = _asked(request, THUMBNAIL_SIZE)
    principal = access.current_principal(request)
    study = visible_study(session, principal, study_uid)
    instance = _representative(session, principal, study, series_uid)
    return _picture(request, session, study.id, instance, 1, asked, "dicomweb.thumbnail")


@router.get(INSTANCE + "/thumbnail", dependencies=READ)
def instance_thumbnail(request: Request, session: DbSession, study_uid: str, series_uid: str, sop_uid: str):
    asked = _asked(request, THUMBNAIL_SIZE)
    study, _series, instance = visible_instance(request, session, study_uid, series_uid, sop_uid)
    return _picture(request, session, study.id, instance, 1, asked, "dicomweb.thumbnail")
