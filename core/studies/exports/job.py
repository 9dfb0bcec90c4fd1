"""What a format's ``build(job)`` works with: the files to export, where to write, the
shared pieces (DICOMDIR, README, INDEX.HTM, DICOM files with zeroed preambles), and
progress that the export's page shows while it runs."""
from __future__ import annotations

import gc
import re
import threading
import time
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import update

from core import notify
from core.studies.exports import layout
from core.studies.exports.layout import Entry, ExportFailure
from core.studies.exports.models import Export

PROGRESS_EVERY = 0.25  # seconds between progress writes: the page polls, the database is not flooded
_pauses = {"count": 0, "lock": threading.Lock(), "was_enabled": True}


@contextmanager
def collection_paused():
    """The cyclic garbage collector paused while an export is laid out and written.

    The layout keeps a few hundred thousand small objects alive (pydicom's directory
    records), so the collector's full passes over the process's heap came due during the
    job: 0.15 s of a 0.8 s disc image of 500 instances (docs/performance.md). Nothing the
    job makes needs collecting before it ends. Counted, because a worker runs jobs in threads."""
    with _pauses["lock"]:
        if not _pauses["count"]:
            _pauses["was_enabled"] = gc.isenabled()
        _pauses["count"] += 1
        gc.disable()
    try:
        yield
    finally:
        with _pauses["lock"]:
            _pauses["count"] -= 1
            if not _pauses["count"] and _pauses["was_enabled"]:
                gc.enable()


class Job:
    def __init__(self, runtime, export: Export, entries: list[Entry], file_set, *, work: Path, target: Path,
                 deidentifier=None, withheld: int = 0):
        self.runtime, self.entries, self.work, self.target = runtime, entries, work, target
        # a share that hides patient details: files cleaned as they are written, ``withheld`` left out
        self.deidentifier, self.withheld = deidentifier, withheld
        self.export_id, self.public_id = export.id, export.public_id
        self.language, self.options, self.format = export.language, dict(export.options or {}), export.format
        self.created_at = export.created_at
        self._file_set = file_set
        self.done, self.total = 0, len(entries)
        self._saved_at = 0.0

    # -- progress ---------------------------------------------------------------------------

    def advance(self, count: int = 1) -> None:
        """``count`` more files are done."""
        self.progress(self.done + count)

    def progress(self, done: int) -> None:
        self.done = min(done, self.total)
        now = time.monotonic()
        if self.done >= self.total or now - self._saved_at >= PROGRESS_EVERY:
            self._saved_at = now
            with self.runtime.sessions() as session:
                session.execute(update(Export).where(Export.id == self.export_id).values(done=self.done),
                                execution_options={"synchronize_session": False})
                session.commit()

    @staticmethod
    def failure(message: str) -> ExportFailure:
        """An error to raise with a message for the person who asked (translated by the caller)."""
        return ExportFailure(message)

    # -- the pieces -------------------------------------------------------------------------

    def dicomdir(self) -> Path:
        """The DICOMDIR of ``entries``, written once into the job's work folder."""
        path = self.work / "DICOMDIR"
        if not path.exists():
            layout.write_dicomdir(self._file_set, path)
        return path

    def copy_dicom(self, entry: Entry, out: BinaryIO) -> int:
        with self.runtime.blobs.open(entry.instance.blob_key) as source:
            if self.deidentifier is not None:
                data = self.deidentifier.file(source.read())
                out.write(data)
                return len(data)
            return layout.copy_dicom(source, out)

    def dicom_path(self, entry: Entry) -> Path:
        """A local file with ``entry``'s content and a zeroed preamble (the blob itself if it is one)."""
        if self.deidentifier is not None:
            target = self.work.joinpath("clean", *entry.file_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                self.copy_dicom(entry, out)
            return target
        return layout.local_copy(self.runtime.blobs, entry, self.work / "files")

    @staticmethod
    def file_id(entry: Entry) -> str:
        return entry.path

    @cached_property
    def studies(self) -> list:
        """(study, patient, series count, instance count) of each study, in export order."""
        found: dict[int, list] = {}
        for entry in self.entries:
            row = found.setdefault(entry.study.id, [entry.study, entry.patient, set(), 0, entry.path.rsplit("/", 2)[0]])
            row[2].add(entry.series.id)
            row[3] += 1
        return [(study, patient, len(series), count, folder) for study, patient, series, count, folder in found.values()]

    def _text(self, name: str, **context) -> str:
        return notify.render_in(self.runtime, name, self.language,
                                {"studies": self.studies, "format": self.format, "made_at": self.created_at,
                                 "files": len(self.entries), "deidentified": self.deidentifier is not None,
                                 "withheld": self.withheld, **context}, html=name.endswith(".htm"))

    def readme(self, **context) -> str:
        """README.TXT in the language of the person who asked: what is inside, how to open it."""
        return self._text("exports/readme.txt", **context)

    def index_html(self) -> str:
        """INDEX.HTM: the studies on the disc, for a reader who opens it in a browser."""
        return self._text("exports/index.htm")

    def volume_label(self) -> str:
        """The disc's volume label: the site's, else its name in ISO 9660 d-characters."""
        configured = self.runtime.site.config.exports.volume_label
        return configured or re.sub(r"[^A-Z0-9_]+", "_", self.runtime.site.name.upper()).strip("_")[:32] or "FILMLESS"
