"""A share with "hide patient details" at the web's edge: its recipient never meets an
original UID, nor any identifier ``core.sharing.deidentify`` removes.

``for_principal`` gives the share's ``Deidentifier`` (one per database session), which the
routes use to clean the DICOM files, DICOM JSON and rows they serve. ``ShareEdge``, an ASGI
middleware, keeps every route and template working with the store's own UIDs: on the way in
it turns the replacement UIDs of the path, the query and form fields back into the originals,
and on the way out it replaces the originals of what the share shows with their replacements
in pages, JSON and redirects. Both directions use the share's table of visible UIDs (studies,
series, instances), kept a few minutes per process and built again when a UID is missing.
"""
from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from sqlalchemy import func, not_, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request

from core import access
from core.access import Principal
from core.sharing.deidentify import DICOM_ROOT, Deidentifier, cleanable, share_key
from core.sharing.models import Share
from core.sharing.redaction import known_identifiers
from core.studies.dicom_json import hides_patient
from core.studies.models import Instance, Patient, Series, Study

SESSION_CACHE = "share_deidentifiers"
REPLACEMENT = re.compile(r"(?<![0-9.])2\.25\.[0-9]{1,40}(?![0-9]|\.[0-9])")
UID_TOKEN = re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+)+(?![0-9]|\.[0-9])")
TABLE_SECONDS = 300  # a table this old is built again: new studies of a whole-portfolio share
REBUILD_SECONDS = 1.0  # at most this often for a UID that is not there (a stale link, a guess)
TABLES_KEPT = 256
REWRITTEN_TYPES = ("text/html", "application/json")  # DICOM JSON is cleaned by its routes
FORM_TYPE = b"application/x-www-form-urlencoded"
UNTOUCHED = ("/static/", "/site-static/")  # the same files for everyone: no principal to look up
MAX_FORM = 1 << 20


def for_principal(session: Session, principal: Principal) -> Deidentifier | None:
    """The de-identifier of a share that hides patient details; None for anyone else."""
    if not hides_patient(principal):
        return None
    made = session.info.setdefault(SESSION_CACHE, {})
    if principal.id not in made:
        from core.site import Deidentify

        runtime = session.info.get("runtime")
        options = runtime.site.config.sharing.deidentify if runtime is not None else Deidentify()
        share = session.get(Share, int(principal.id)) if str(principal.id).isdigit() else None
        key = share_key(options.uid_secret, str(principal.id), share.created_at if share else None)
        made[principal.id] = Deidentifier(key, options, known_identifiers(_patients(session, principal, share)))
    return made[principal.id]


def for_export(session: Session, owner: str) -> Deidentifier:
    """The de-identifier of the share that asked for an export (owner ``share:<id>``): the same
    replacement UIDs its recipient sees on the pages."""
    kind, _sep, ident = owner.partition(":")
    return for_principal(session, Principal(kind="share", id=ident if kind == "share" else owner,
                                            scope=frozenset({"hide_details"})))


def _patients(session: Session, principal: Principal, share: Share | None) -> list[Patient]:
    """The shared patient's records at every practice: whose identifiers are cut out of text."""
    refs = {share.patient_ref} if share is not None else set()
    refs |= {int(entry[8:]) for entry in principal.scope if entry.startswith("patient:") and entry[8:].isdigit()}
    studies = [int(entry[6:]) for entry in principal.scope if entry.startswith("study:") and entry[6:].isdigit()]
    if studies:
        refs |= set(session.scalars(select(Study.patient_ref).where(Study.id.in_(studies))))
    if not refs:
        return []
    person = func.coalesce(Patient.person_ref, Patient.id)
    return list(session.scalars(select(Patient).where(person.in_(select(person).where(Patient.id.in_(refs))))))


# -- what such a share cannot be given ---------------------------------------------------------------

def withheld(session: Session, principal: Principal, study) -> int:
    """How many files of ``study`` a share that hides patient details does not get because they
    cannot be de-identified (text burned into the pixels, documents); 0 for anyone else."""
    if not hides_patient(principal):
        return 0
    from core.studies import queries

    study = getattr(study, "original", study)
    shown_all = replace(principal, scope=principal.scope - {"hide_details"})
    counting = (queries.instances(session, shown_all, study).with_only_columns(func.count(Instance.id))
                .where(not_(cleanable())).order_by(None))
    return int(session.scalar(counting) or 0)


def withheld_page(request, session: Session, principal: Principal, study_uid: str):
    """The viewer of a study none of whose images such a share may see: a 404 that says why.
    Anything else not found is a plain 404."""
    from fastapi import HTTPException

    from core.studies import queries
    from core.web import render

    if hides_patient(principal):
        try:
            study = queries.study(session, principal, study_uid)
        except queries.NotFound:
            study = None
        if study is not None and withheld(session, principal, study):
            response = render(request, "sharing/withheld.html", status_code=404,
                              study=for_principal(session, principal).study(study))
            response.headers["Cache-Control"] = "no-store"
            return response
    raise HTTPException(status_code=404)


# -- the share's UIDs ------------------------------------------------------------------------------

@dataclass
class UidTable:
    forward: dict[str, str]  # original -> replacement
    reverse: dict[str, str] = field(default_factory=dict)
    made_at: float = 0.0

    def __post_init__(self):
        self.reverse = {replacement: original for original, replacement in self.forward.items()}
        self.made_at = time.monotonic()


class _Tables:
    """The tables of the shares open in this process, least recently used dropped first."""

    def __init__(self):
        self.lock = threading.Lock()
        self.kept: OrderedDict = OrderedDict()

    def get(self, key) -> UidTable | None:
        with self.lock:
            table = self.kept.get(key)
            if table is not None:
                self.kept.move_to_end(key)
            return table

    def put(self, key, table: UidTable) -> None:
        with self.lock:
            self.kept[key] = table
            self.kept.move_to_end(key)
            while len(self.kept) > TABLES_KEPT:
                self.kept.popitem(last=False)


def build_table(runtime, principal: Principal) -> UidTable:
    """Every UID the share shows (its visible studies, series and instances) with its replacement."""
    from core.studies import queries

    with runtime.sessions() as session:
        deidentifier = for_principal(session, principal)
        originals = set(session.scalars(queries.studies(session, principal)
                                        .with_only_columns(Study.study_uid).order_by(None)))
        for series_uid, sop_uid in session.execute(queries.visible_instances(session, principal)
                                                   .with_only_columns(Series.series_uid, Instance.sop_uid)):
            originals.update((series_uid, sop_uid))
        session.commit()
    return UidTable({original: deidentifier.uid(original) for original in originals})


class Edge:
    """One request of a share that hides patient details: its UIDs translated both ways."""

    def __init__(self, runtime, principal: Principal):
        self.runtime, self.principal = runtime, principal
        self.key = (principal.id, principal.scope)
        self.tables = runtime.cache("share_uid_tables", _Tables)
        self.table = self.tables.get(self.key)
        self.rebuilt = False
        if self.table is None or time.monotonic() - self.table.made_at > TABLE_SECONDS:
            self._rebuild()

    def _rebuild(self) -> None:
        self.table = build_table(self.runtime, self.principal)
        self.tables.put(self.key, self.table)
        self.rebuilt = True

    def inward(self, text: str) -> str:
        """Replacement UIDs back to the store's; an unknown one is left as it is (and finds nothing)."""
        found = REPLACEMENT.findall(text)
        if not found:
            return text
        if any(token not in self.table.reverse for token in found) and not self.rebuilt \
                and time.monotonic() - self.table.made_at > REBUILD_SECONDS:
            self._rebuild()
        return REPLACEMENT.sub(lambda match: self.table.reverse.get(match.group(0), match.group(0)), text)

    def outward(self, text: str) -> str:
        """The share's original UIDs in ``text`` replaced; a UID-like value the table lacks (a study
        that arrived since it was built) has the table built again first."""
        tokens = set(UID_TOKEN.findall(text))
        unknown = [token for token in tokens if token not in self.table.forward and token.count(".") >= 3
                   and not token.startswith(DICOM_ROOT) and token not in self.table.reverse]
        if unknown and not self.rebuilt:
            self._rebuild()
        if not tokens & self.table.forward.keys():
            return text
        return UID_TOKEN.sub(lambda match: self.table.forward.get(match.group(0), match.group(0)), text)


# -- the middleware ---------------------------------------------------------------------------------

def install(app) -> None:
    app.add_middleware(ShareEdge)


def _has_share_cookie(scope) -> bool:
    name = access.SHARE_COOKIE.encode()
    return any(key == b"cookie" and name in value for key, value in scope.get("headers", ()))


class ShareEdge:
    """Translates the UIDs of requests and answers of shares that hide patient details."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(UNTOUCHED) or not _has_share_cookie(scope):
            return await self.app(scope, receive, send)
        request = Request(scope)
        principal = await run_in_threadpool(access.current_principal, request)  # kept for the route
        if not hides_patient(principal):
            return await self.app(scope, receive, send)
        edge = await run_in_threadpool(Edge, request.app.state.runtime, principal)
        scope = await run_in_threadpool(_inward_scope, edge, scope)
        scope, receive = await _inward_form(edge, scope, receive)
        await self.app(scope, receive, _Outward(edge, send))


def _inward_scope(edge: Edge, scope) -> dict:
    path = edge.inward(scope["path"])
    raw_path = edge.inward((scope.get("raw_path") or scope["path"].encode()).decode("latin-1")).encode("latin-1")
    query = edge.inward(scope.get("query_string", b"").decode("latin-1")).encode("latin-1")
    return {**scope, "path": path, "raw_path": raw_path, "query_string": query}


async def _inward_form(edge: Edge, scope, receive):
    """A posted form (an export or re-share naming studies) with its UIDs translated."""
    headers = dict(scope.get("headers", ()))
    if scope.get("method") not in ("POST", "PUT", "PATCH") or not headers.get(b"content-type", b"").startswith(FORM_TYPE):
        return scope, receive
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return scope, receive  # the client went away: nothing to translate
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
        if sum(map(len, chunks)) > MAX_FORM:
            break
    body = b"".join(chunks)
    translated = (await run_in_threadpool(edge.inward, body.decode("latin-1"))).encode("latin-1")
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": translated, "more_body": more}
        return await receive()

    fixed = [(key, value) for key, value in scope["headers"] if key != b"content-length"]
    if not more:
        fixed.append((b"content-length", str(len(translated)).encode()))
    return {**scope, "headers": fixed}, replay


class _Outward:
    """The answer's ``send``: pages and JSON held until complete, then their UIDs replaced."""

    def __init__(self, edge: Edge, send):
        self.edge, self.send = edge, send
        self.start, self.chunks = None, []

    async def __call__(self, message):
        if message["type"] == "http.response.start":
            headers = MutableHeaders(raw=list(message.get("headers", [])))
            if "location" in headers:
                headers["location"] = await run_in_threadpool(self.edge.outward, headers["location"])
            message = {**message, "headers": headers.raw}
            if headers.get("content-type", "").split(";")[0].strip() in REWRITTEN_TYPES:
                self.start = message
                return
            return await self.send(message)
        if message["type"] == "http.response.body" and self.start is not None:
            self.chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            text = b"".join(self.chunks).decode("utf-8", "surrogateescape")
            body = (await run_in_threadpool(self.edge.outward, text)).encode("utf-8", "surrogateescape")
            headers = MutableHeaders(raw=self.start["headers"])
            headers["content-length"] = str(len(body))
            await self.send({**self.start, "headers": headers.raw})
            self.start = None
            return await self.send({"type": "http.response.body", "body": body})
        return await self.send(message)
