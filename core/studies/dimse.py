"""``filmless dicom-listen``: the store as a DICOM C-STORE SCP, for PACS and modalities
that send with DIMSE rather than DICOMweb.

Each received dataset is written to a scratch file in the DICOM file format and
goes through ``service.ingest`` like every other way in, so the same checks,
release rules, observers and audit events apply. Verification (C-ECHO) answers
too, so a PACS administrator can test the route.
"""
from __future__ import annotations

import logging
import signal
import threading
from collections import Counter

from pydicom.dataset import Dataset
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless,
                         JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, RLELossless)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from core.i18n import gettext as _
from core.studies import blobs, dicom, service

TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                     JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless,
                     JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless]

# C-STORE statuses (PS3.4 Annex B.2.3, Table B.2-1):
SUCCESS = 0x0000  # stored, or already held: the sender may forget the instance either way
# A7xx "Refused: Out of Resources": the instance is larger than this site accepts, or the store
# or database failed; the sender may try again later (or elsewhere).
OUT_OF_RESOURCES = 0xA700
# Cxxx "Error: Cannot understand" (the low bits are ours): resending the same bytes will fail again.
CANNOT_UNDERSTAND = 0xC000  # empty, not DICOM, damaged or truncated
INCOMPLETE = 0xC001  # a required attribute (UIDs, Patient ID, pixel data) is missing or malformed
CONFLICT = 0xC002  # its study or series is already held for another patient or study
STATUS_BY_KIND = {"too_large": OUT_OF_RESOURCES, "unavailable": OUT_OF_RESOURCES, "incomplete": INCOMPLETE,
                  "conflict": CONFLICT}

_log = logging.getLogger("filmless.dicom")


def status(outcome: service.Ingested) -> Dataset:
    """The C-STORE response status for what ``ingest`` made of an instance, with its reason."""
    answer = Dataset()
    answer.Status = SUCCESS if outcome.ok else STATUS_BY_KIND.get(outcome.kind, CANNOT_UNDERSTAND)
    if not outcome.ok:
        answer.ErrorComment = outcome.reason[:64]  # LO: 64 characters at most
    return answer


class Listener:
    """One site's C-STORE SCP; ``start`` returns once it accepts associations."""

    def __init__(self, runtime, *, ae_title: str, host: str, port: int):
        self.runtime, self.host, self.port = runtime, host, port
        self.counts: dict[int, Counter] = {}
        self.ae = AE(ae_title=ae_title)
        self.ae.require_called_aet = True  # an association meant for another AE is a routing mistake
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = None

    def start(self) -> None:
        handlers = [(evt.EVT_C_STORE, self.on_store), (evt.EVT_C_ECHO, lambda event: SUCCESS),
                    (evt.EVT_RELEASED, self.on_end), (evt.EVT_ABORTED, self.on_end)]
        self.server = self.ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def on_store(self, event) -> Dataset:
        runtime = self.runtime
        limit = runtime.site.config.studies.max_file_mb * 2**20
        calling = str(event.assoc.requestor.ae_title).strip()
        try:
            if event.request.DataSet.getbuffer().nbytes > limit:  # refused before it is written anywhere
                refusal = dicom.too_large(limit)
                outcome = service.Ingested("refused", reason=str(refusal), kind=refusal.kind)
            else:
                with blobs.scratch_file(runtime.blobs, ".dcm") as scratch:
                    scratch.write_bytes(event.encoded_dataset())  # preamble, file meta (its transfer syntax), data
                    with runtime.sessions() as session:
                        outcome = service.ingest(session, scratch, runtime=runtime, actor=f"dicom:{calling}",
                                                 source="c-store")
        except Exception:
            _log.exception("storing an instance from %s failed", calling)
            outcome = service.Ingested("refused", kind="unavailable",
                                       reason=_("The store could not keep the file; please send it again later."))
        self.counts.setdefault(id(event.assoc), Counter())[outcome.outcome] += 1
        if not outcome.ok:
            _log.warning("refused an instance from %s: %s", calling, outcome.reason)
        return status(outcome)

    def on_end(self, event) -> None:
        counts = self.counts.pop(id(event.assoc), None)
        if counts:
            _log.info("from %s: stored %d, already held %d, refused %d", str(event.assoc.requestor.ae_title).strip(),
                      counts["stored"], counts["duplicate"], counts["refused"])


def listen(runtime, *, ae_title: str, host: str, port: int, announce=print) -> None:
    """Serve until SIGINT or SIGTERM; leftovers of an earlier, killed run are cleared first."""
    removed = service.clear_leftovers(runtime)
    if removed:
        _log.info("removed %d leftovers of an interrupted run", removed)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # one line per association is ours to log
    listener = Listener(runtime, ae_title=ae_title, host=host, port=port)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_args: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        listener.start()
        announce(f"{runtime.site.name}: DICOM listener {ae_title} on {host}:{port}")
        stop.wait()
    finally:
        listener.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
