"""STOW-RS (PS3.18 §10.5): ``POST /dicomweb/studies[/{study}]`` with
``multipart/related; type="application/dicom"``.

The body is read as a stream: each part goes to a scratch file as it arrives (a
part above ``studies.max_file_mb`` stops being written and is refused), hashed on
the way, so a study of any size never sits in memory. Complete parts are stored
in batches, each in one transaction with one disk sync for all its parts: a
batch is stored when the body has ended, when ``BATCH`` parts are waiting, or
when no part has been completed for ``PAUSE`` (so a sender that pauses still has
its complete parts stored). Each part is examined, and its file made durable
where it is to be stored, from the moment it is complete, while the rest
arrives: the transaction has only the rows and the renames left. The answer
is the PS3.18 Store Instances Response: 200 all stored, 202 some refused, 409
none stored, with a FailureReason (PS3.4 Annex B) per refused part.
"""
from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from python_multipart.multipart import MultipartParser

from core import access
from core.i18n import gettext as _
from core.studies import dicom_json, service
from core.studies.blobs import scratch_file
from core.studies.dicomweb import actor_of, base_of, json_response, require_json
from core.studies.dicomweb_media import split_quoted

log = logging.getLogger(__name__)
router = APIRouter(prefix="/dicomweb")
STORE = [access.rule("studies.store")]
# Failure reasons (PS3.18 Table 10.5.3-2, PS3.4 Table B.2-1)
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
PREAMBLE_END = 132  # 128 bytes of preamble, then "DICM"
BATCH = 50  # parts at most in one transaction: the write lock is held for its rows only
PAUSE = 0.05  # seconds without a new complete part after which the waiting parts are stored
# complete parts are examined and prepared here while the rest of the body arrives
_EXAMINING = ThreadPoolExecutor(max_workers=4, thread_name_prefix="stow-examine")


@dataclass
class Part:
    """One body part on its way to a scratch file.

    Some senders (pydicom's ``dcmwrite`` of a dataset built in memory, as dicomweb-client
    does) leave out the 128-byte preamble and "DICM": a part that starts with the file meta
    group gets them added, so it is stored as a PS3.10 file like any other."""

    stack: ExitStack
    path: Path
    handle: object
    limit: int
    headers: dict = field(default_factory=dict)
    size: int = 0
    too_big: bool = False
    head: bytes | None = b""  # the first bytes, until it is known whether the preamble is there
    digest: object = field(default_factory=hashlib.sha256)  # of the bytes written, preamble included
    examined: Future | None = None  # ``_examine_and_prepare``, begun when the part is complete

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.too_big:
            return
        if self.size > self.limit:
            self.too_big = True  # keep reading the body, stop keeping it
            self.handle.truncate(0)
            return
        if self.head is not None:
            self.head += data
            if len(self.head) < PREAMBLE_END:
                return
            data = self._with_preamble()
        self.handle.write(data)
        self.digest.update(data)

    def _with_preamble(self) -> bytes:
        data, self.head = self.head, None
        if data[128:PREAMBLE_END] != b"DICM" and data[:2] == b"\x02\x00":
            return b"\0" * 128 + b"DICM" + data
        return data

    def finish(self) -> None:
        if self.head is not None and not self.too_big:
            data = self._with_preamble()
            self.handle.write(data)
            self.digest.update(data)
        self.handle.close()


class PartReader:
    """Feeds the request body to python-multipart and hands back each finished part."""

    def __init__(self, boundary: str, store, limit: int):
        self.store, self.limit = store, limit
        self.current: Part | None = None
        self.finished: list[Part] = []
        self.count = 0
        self._field, self._value = b"", b""
        self.parser = MultipartParser(boundary.encode("latin-1"), callbacks={
            "on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end,
            "on_header_field": self._header_field, "on_header_value": self._header_value,
            "on_header_end": self._header_end,
        })

    def _begin(self) -> None:
        stack = ExitStack()
        path = stack.enter_context(scratch_file(self.store, ".dcm"))
        handle = stack.enter_context(open(path, "wb"))
        self.current = Part(stack=stack, path=path, handle=handle, limit=self.limit)
        self.count += 1

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self.current.headers[self._field.decode("latin-1").strip().lower()] = self._value.decode("latin-1").strip()
        self._field, self._value = b"", b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.current.write(data[start:end])

    def _end(self) -> None:
        self.current.finish()
        self.finished.append(self.current)
        self.current = None

    def feed(self, chunk: bytes) -> list[Part]:
        self.parser.write(chunk)
        done, self.finished = self.finished, []
        return done

    def close(self) -> None:
        if self.current is not None:  # a body that ended mid-part
            self.current.stack.close()
            self.current = None


@dataclass
class Outcome:
    sop_class_uid: str
    sop_uid: str
    study_uid: str = ""
    series_uid: str = ""
    failure: int | None = None
    reason: str = ""


def _uids(path: Path) -> tuple[str, str, str]:
    """(SOP class, SOP instance, study) of a part, as far as it can be read."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True,
                                  specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"])
        return (str(dataset.get("SOPClassUID", "") or ""), str(dataset.get("SOPInstanceUID", "") or ""),
                str(dataset.get("StudyInstanceUID", "") or ""))
    except Exception:
        return "", "", ""


def failure_reason(kind: str) -> int:
    """The PS3.4 code for why ``service.ingest`` refused a file (``Ingested.kind``)."""
    return {"too_large": OUT_OF_RESOURCES, "unavailable": OUT_OF_RESOURCES, "incomplete": DOES_NOT_MATCH,
            "conflict": PROCESSING_FAILURE}.get(kind, CANNOT_UNDERSTAND)


def _examine(runtime, part: Part, study_uid: str | None) -> Outcome | service.Arrival:
    """The part ready for the store, or why it is refused."""
    if part.too_big:
        sop_class, sop_uid, part_study = _uids(part.path)
        return Outcome(sop_class, sop_uid, part_study, failure=OUT_OF_RESOURCES, reason=_(
            "The file is larger than this site accepts (%(limit)s MB).", limit=runtime.site.config.studies.max_file_mb))
    part_type = part.headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
    if part_type != "application/dicom":
        return Outcome("", "", failure=CANNOT_UNDERSTAND, reason=_("A part is not application/dicom."))
    arrival = service.examine(part.path, runtime=runtime, sha256=part.digest.hexdigest())
    if study_uid and arrival.fields is not None and arrival.result.study_uid != study_uid:
        result = arrival.result
        return Outcome(result.sop_class_uid, result.sop_uid, result.study_uid, failure=DOES_NOT_MATCH,
                       reason=_("The instance belongs to another study than the one in the address."))
    return arrival


def _examine_and_prepare(runtime, part: Part, study_uid: str | None) -> Outcome | service.Arrival:
    found = _examine(runtime, part, study_uid)
    return service.prepare(found, runtime=runtime) if isinstance(found, service.Arrival) else found


def _outcome(part: Part, result: service.Ingested) -> Outcome:
    if result.ok:
        return Outcome(result.sop_class_uid, result.sop_uid, result.study_uid, result.series_uid)
    sop_class, sop_uid, part_study = ("", "", "") if result.sop_uid else _uids(part.path)
    return Outcome(result.sop_class_uid or sop_class, result.sop_uid or sop_uid, result.study_uid or part_study,
                   failure=failure_reason(result.kind), reason=result.reason)


def _ingest(runtime, parts: list[Part], actor: str) -> list[Outcome]:
    """Store complete, examined parts in one transaction (in a worker thread); their scratch
    files are removed afterwards, whatever became of them."""
    with ExitStack() as stack:
        for part in parts:
            stack.enter_context(part.stack)
        wait([part.examined for part in parts])  # none is still reading a file about to be removed
        examined = [part.examined.result() for part in parts]
        arrivals = [found for found in examined if isinstance(found, service.Arrival)]
        if arrivals:
            with runtime.sessions() as session:
                service.ingest_many(session, arrivals, runtime=runtime, actor=actor, source="stow-rs")
        return [_outcome(part, found.result) if isinstance(found, service.Arrival) else found
                for part, found in zip(parts, examined)]


class Batches:
    """Complete parts on their way to the store: ``add`` them as they arrive, ``close`` when the
    body has ended; ``run`` stores them in batches (see the module's docstring for when)."""

    def __init__(self, runtime, study_uid: str | None, actor: str):
        self.runtime, self.study_uid, self.actor = runtime, study_uid, actor
        self.waiting: list[Part] = []
        self.outcomes: list[Outcome] = []
        self._more = asyncio.Event()
        self._closed = False

    def add(self, parts: list[Part]) -> None:
        for part in parts:  # in the request's context: its language words the refusals
            part.examined = _EXAMINING.submit(contextvars.copy_context().run, _examine_and_prepare,
                                              self.runtime, part, self.study_uid)
        if parts:
            self.waiting += parts
            self._more.set()

    def close(self) -> None:
        self._closed = True
        self._more.set()

    async def run(self) -> None:
        while not (self._closed and not self.waiting):
            if not self._closed and len(self.waiting) < BATCH:
                try:
                    await asyncio.wait_for(self._more.wait(), PAUSE if self.waiting else None)
                except asyncio.TimeoutError:
                    pass  # the sender has paused: what it has sent is stored meanwhile
                else:
                    self._more.clear()
                    continue
            batch, self.waiting = self.waiting[:BATCH], self.waiting[BATCH:]
            self.outcomes += await run_in_threadpool(_ingest, self.runtime, batch, self.actor)

    async def discard(self) -> None:
        """Remove the scratch files of parts that were never stored (the store failed), once
        their examinations have let go of them."""
        await asyncio.gather(*(asyncio.wrap_future(part.examined) for part in self.waiting), return_exceptions=True)
        for part in self.waiting:
            part.stack.close()
        self.waiting = []


def _boundary(request: Request) -> str:
    """The boundary of an acceptable body; 415 for anything but multipart/related application/dicom."""
    media, *pieces = [piece.strip() for piece in split_quoted(request.headers.get("content-type", ""), ";")]
    parameters = {}
    for piece in pieces:
        name, _sep, value = piece.partition("=")
        parameters[name.strip().lower()] = value.strip().strip('"')
    part_type = parameters.get("type", "application/dicom").lower()
    if media.lower() != "multipart/related" or part_type != "application/dicom":
        raise HTTPException(status_code=415, detail=_(
            'Send instances as multipart/related; type="application/dicom".'))
    if not parameters.get("boundary"):
        raise HTTPException(status_code=400, detail=_("The multipart body has no boundary."))
    return parameters["boundary"]


async def _store(request: Request, study_uid: str | None):
    boundary = _boundary(request)
    require_json(request)
    runtime = request.app.state.runtime
    actor = actor_of(access.current_principal(request))
    reader = PartReader(boundary, runtime.blobs, runtime.site.config.studies.max_file_mb * 2**20)
    batches = Batches(runtime, study_uid, actor)
    storing = asyncio.ensure_future(batches.run())
    try:
        async for chunk in request.stream():
            try:
                batches.add(reader.feed(chunk))
            except Exception as error:  # python-multipart on a malformed body
                log.info("STOW-RS body could not be read: %s", error)
                raise HTTPException(status_code=400, detail=_("The multipart body could not be read.")) from None
            if storing.done():
                break  # the store failed: its error is the answer
    finally:
        reader.close()
        batches.close()  # the parts complete so far are stored whatever happened to the body
        try:
            await storing
        finally:
            await batches.discard()
    if not batches.outcomes:
        raise HTTPException(status_code=400, detail=_("The multipart body has no instances."))
    return _answer(request, batches.outcomes)


def _answer(request: Request, outcomes: list[Outcome]):
    base = base_of(request)
    stored = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
    payload = {}
    studies = {o.study_uid for o in stored}
    if len(studies) == 1:
        payload["00081190"] = dicom_json.element("UR", dicom_json.url(base, studies.pop()))
    if failed:
        payload["00081198"] = {"vr": "SQ", "Value": [{
            "00081150": dicom_json.element("UI", o.sop_class_uid), "00081155": dicom_json.element("UI", o.sop_uid),
            "00081197": dicom_json.element("US", o.failure)} for o in failed]}
    if stored:
        payload["00081199"] = {"vr": "SQ", "Value": [{
            "00081150": dicom_json.element("UI", o.sop_class_uid), "00081155": dicom_json.element("UI", o.sop_uid),
            "00081190": dicom_json.element("UR", dicom_json.url(base, o.study_uid, o.series_uid, o.sop_uid)),
        } for o in stored]}
    status = 200 if not failed else (202 if stored else 409)
    reasons = sorted({o.reason for o in failed if o.reason})[:5]
    host = request.url.hostname or "filmless"
    # why, in words, for whoever reads the PACS log (header values are Latin-1)
    warning = ", ".join(f'299 {host} "{r.replace(chr(34), chr(39))}"' for r in reasons)
    headers = {"Warning": warning.encode("latin-1", "replace").decode("latin-1")} if reasons else None
    return json_response(payload, status_code=status, headers=headers)


@router.post("/studies", dependencies=STORE)
async def store_instances(request: Request):
    return await _store(request, None)


@router.post("/studies/{study_uid}", dependencies=STORE)
async def store_study_instances(request: Request, study_uid: str):
    return await _store(request, study_uid)
