"""DICOMweb (PS3.18) under ``/dicomweb``: QIDO-RS searches here; WADO-RS retrieval,
metadata, frames and rendering in ``dicomweb_retrieve``; STOW-RS in ``dicomweb_store``.

Who may see what is decided by ``core.studies.queries`` alone; anything not visible
answers 404. JSON answers are ``application/dicom+json``. An empty search answers
200 with ``[]`` (dicomweb-client and OHIF both read it; a 204 has no body to parse).
Every answer that carries patient data writes an audit event per study.
"""
from __future__ import annotations

import json
import threading
from datetime import timedelta

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from core import access, clock
from core.access import Principal
from core.audit import service as audit
from core.db import DbSession
from core.i18n import gettext as _
from core.studies import qido, queries
from core.studies.dicomweb_media import acceptable_json
from core.studies.models import Study

DICOM_JSON = "application/dicom+json"
READ = [access.rule("studies.read")]
# Frames, renderings and thumbnails come by the hundred when a viewer scrolls: one event per
# (principal, study, action) per window is enough to tell who looked at what, and when.
AUDIT_WINDOW = timedelta(minutes=10)
AUDIT_MEMO_KEPT = 50_000

router = APIRouter(prefix="/dicomweb")


def base_of(request: Request) -> str:
    """The public address of this DICOMweb service, for RetrieveURL and BulkDataURI: from the
    site's ``base_url``, since behind a proxy the request's own address is an internal one."""
    return request.app.state.runtime.site.config.site.base_url.rstrip("/") + "/dicomweb"


def actor_of(principal: Principal) -> str:
    return f"{principal.kind}:{principal.id}"


class _AuditMemo:
    """When each (actor, study, action) was last written. In memory, per process: a site with
    several web processes writes at most one event per process and window."""

    def __init__(self):
        self.seen: dict[tuple, object] = {}
        self.lock = threading.Lock()

    def first_in_window(self, key: tuple) -> bool:
        now = clock.now()
        with self.lock:
            last = self.seen.get(key)
            if last is not None and now - last < AUDIT_WINDOW:
                return False
            if len(self.seen) >= AUDIT_MEMO_KEPT:
                self.seen = {k: at for k, at in self.seen.items() if now - at < AUDIT_WINDOW}
            self.seen[key] = now
            return True


def _memo(runtime) -> _AuditMemo:
    return runtime.cache("dicomweb_audit_memo", _AuditMemo)


def audit_due(runtime, principal: Principal, action: str, study_ids) -> list:
    """The studies whose ``once_per_window`` event is due now (from now on counted as written):
    in memory only, so a cached picture learns without the database that it owes none."""
    actor = actor_of(principal)
    return [study_id for study_id in study_ids if _memo(runtime).first_in_window((actor, study_id, action))]


def audit_access(session: Session, runtime, principal: Principal, action: str, study_ids, *,
                 once_per_window: bool = False, detail: dict | None = None) -> None:
    """One audit event per study served, committed; ``once_per_window`` for the viewer's floods."""
    if once_per_window:
        study_ids = audit_due(runtime, principal, action, study_ids)
    written = False
    for study_id in study_ids:
        audit.record(session, actor=actor_of(principal), action=action, subject=f"study:{study_id}", detail=detail)
        written = True
    if written:
        session.commit()


def json_response(payload, status_code: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(payload, separators=(",", ":"), ensure_ascii=False), status_code=status_code,
                    media_type=DICOM_JSON, headers=headers)


def require_json(request: Request) -> None:
    if not acceptable_json(request.query_params.get("accept") or request.headers.get("accept")):
        raise HTTPException(status_code=406, detail=_("This resource is available as application/dicom+json only."))


def visible_study(session: Session, principal: Principal, study_uid: str) -> Study:
    try:
        return queries.study(session, principal, study_uid)
    except queries.NotFound:
        raise HTTPException(status_code=404) from None


def _search(request: Request, session: Session, level: str, run) -> Response:
    require_json(request)
    principal = access.current_principal(request)
    try:
        search = qido.parse(list(request.query_params.multi_items()), level)
        found = run(principal, search, base_of(request))
    except qido.BadQuery as bad:
        raise HTTPException(status_code=400, detail=str(bad)) from None
    audit_access(session, request.app.state.runtime, principal, "dicomweb.search", found.study_ids,
                 detail={"level": level, "results": len(found.results)})
    warnings = []
    host = request.url.hostname or "filmless"
    if found.more:
        warnings.append(f'299 {host} "There are additional results that can be requested"')
    if found.unsupported:
        names = ", ".join(sorted(set(found.unsupported)))[:500]
        warnings.append(f'299 {host} "The following attributes were not supported for matching: {names}"')
    return json_response(found.results, headers={"Warning": ", ".join(warnings)} if warnings else None)


@router.get("/studies", dependencies=READ)
def search_studies(request: Request, session: DbSession):
    return _search(request, session, "study",
                   lambda principal, search, base: qido.studies(session, principal, search, base))


@router.get("/series", dependencies=READ)
def search_all_series(request: Request, session: DbSession):
    return _search(request, session, "series",
                   lambda principal, search, base: qido.series(session, principal, search, base))


@router.get("/studies/{study_uid}/series", dependencies=READ)
def search_series(request: Request, session: DbSession, study_uid: str):
    study = visible_study(session, access.current_principal(request), study_uid)
    return _search(request, session, "series",
                   lambda principal, search, base: qido.series(session, principal, search, base, study))


@router.get("/instances", dependencies=READ)
def search_all_instances(request: Request, session: DbSession):
    return _search(request, session, "instance",
                   lambda principal, search, base: qido.instances(session, principal, search, base))


@router.get("/studies/{study_uid}/instances", dependencies=READ)
def search_study_instances(request: Request, session: DbSession, study_uid: str):
    study = visible_study(session, access.current_principal(request), study_uid)
    return _search(request, session, "instance",
                   lambda principal, search, base: qido.instances(session, principal, search, base, study))


@router.get("/studies/{study_uid}/series/{series_uid}/instances", dependencies=READ)
def search_series_instances(request: Request, session: DbSession, study_uid: str, series_uid: str):
    study = visible_study(session, access.current_principal(request), study_uid)
    return _search(request, session, "instance",
                   lambda principal, search, base: qido.instances(session, principal, search, base, study,
                                                                  series_uid))
