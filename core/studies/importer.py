"""``filmless import``: files, folders, zip files and DICOMDIR trees into the store.

Everything read here is untrusted. No name found in an archive or a DICOMDIR is
ever joined to a disk path: zip members are read as streams, and a DICOMDIR's
file IDs are matched against the entries its folder really has. Reads count the
bytes that actually arrive, so a member that lies about its size, or an archive
that unpacks to far more than it holds (a zip bomb), is stopped at the limit.
"""
from __future__ import annotations

import logging
import os
import sys
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from core.i18n import gettext as _
from core.studies import blobs, dicom, service

CHUNK = 1 << 20
# An archive may unpack to this many times its own size in all (plus one file's limit):
# DICOM compresses a few times over, a zip bomb by thousands.
ARCHIVE_RATIO = 100
DICOMDIR = "DICOMDIR"
_log = logging.getLogger("filmless.import")


class _Skipped(Exception):
    """An entry that is not read at all; ``str()`` is why."""


@dataclass
class Item:
    """One thing to import: ``copy(target, limit)`` writes it to a scratch file (or raises
    ``dicom.Refused``); ``refusal`` is set instead when it was refused while planning."""

    name: str
    copy: Callable[[Path, int], None] | None = None
    refusal: str = ""


@dataclass
class Summary:
    accepted: int = 0
    held: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = [_("accepted %(accepted)s, already held %(held)s, refused %(refused)s",
                   accepted=self.accepted, held=self.held, refused=len(self.refused))]
        lines += [_("refused %(name)s: %(reason)s", name=name, reason=reason) for name, reason in self.refused]
        return lines


def printable(name: str) -> str:
    """A name as it may be shown on a terminal: no control characters from a hostile archive."""
    return "".join(c if c.isprintable() else "?" for c in name)


def _copy_stream(stream, target: Path, limit: int, counted: Callable[[int], None] = lambda n: None) -> None:
    read = 0
    with open(target, "wb") as out:
        while chunk := stream.read(CHUNK):
            read += len(chunk)
            if read > limit:
                raise dicom.too_large(limit)
            counted(len(chunk))
            out.write(chunk)


def _file_item(path: Path, name: str | None = None) -> Item:
    def copy(target: Path, limit: int) -> None:
        if path.stat().st_size > limit:
            raise dicom.too_large(limit)
        with open(path, "rb") as stream:
            _copy_stream(stream, target, limit)

    return Item(printable(name or str(path)), copy)


# -- DICOMDIR ---------------------------------------------------------------------------

def _file_ids(dicomdir: Path, limit: int) -> list[list[str]]:
    """The ReferencedFileID of each record in use, as lists of components."""
    import pydicom

    if dicomdir.stat().st_size > limit:
        raise _Skipped(_("The DICOMDIR is larger than this site accepts."))
    try:
        ds = pydicom.dcmread(dicomdir)
        found = []
        for record in ds.get("DirectoryRecordSequence", []) or []:
            if record.get("RecordInUseFlag", 0xFFFF) == 0 or "ReferencedFileID" not in record:
                continue
            value = record.ReferencedFileID  # one component, or several (a MultiValue)
            found.append([str(value)] if isinstance(value, str) else [str(part) for part in value])
        return found
    except Exception:
        raise _Skipped(_("The DICOMDIR is damaged and cannot be read.")) from None


def _safe_components(components: list[str]) -> bool:
    return bool(components) and all(
        part.strip() and part not in (".", "..") and not any(c in part for c in "/\\:\0") for part in components)


class _Listings:
    """Folders' entries, read once each: a disc lists thousands of files in a few folders."""

    def __init__(self):
        self._seen: dict[Path, tuple[set[str], dict[str, str]]] = {}

    def entry(self, folder: Path, component: str) -> Path | None:
        """The entry of ``folder`` that ``component`` names, ignoring case (discs copied on other
        systems change it); only names the folder really has are ever used."""
        if folder not in self._seen:
            try:
                names = sorted(os.listdir(folder))
            except OSError:
                names = []
            self._seen[folder] = (set(names), {name.upper(): name for name in reversed(names)})
        exact, by_upper = self._seen[folder]
        wanted = component.strip()
        name = wanted if wanted in exact else by_upper.get(wanted.upper())
        return folder / name if name is not None else None


def _dicomdir_items(dicomdir: Path, limit: int) -> Iterator[Item]:
    base = dicomdir.parent.resolve()
    try:
        references = _file_ids(dicomdir, limit)
    except _Skipped as why:
        yield Item(printable(str(dicomdir)), refusal=str(why))
        return
    listings = _Listings()
    seen: set[Path] = set()
    for components in references:
        shown = printable(f"{dicomdir.parent}/{'/'.join(components)}")
        if not _safe_components(components):
            yield Item(shown, refusal=_("The DICOMDIR points outside its folder; the entry was skipped."))
            continue
        found: Path | None = base
        for component in components:
            found = listings.entry(found, component) if found is not None else None
        resolved = found.resolve() if found is not None else None
        if resolved is not None and not resolved.is_relative_to(base):  # a link that leads out of the folder
            yield Item(shown, refusal=_("The DICOMDIR points outside its folder; the entry was skipped."))
        elif resolved is None or not resolved.is_file():
            yield Item(shown, refusal=_("The DICOMDIR lists a file that is not there."))
        elif resolved not in seen:
            seen.add(resolved)
            yield _file_item(resolved, str(found))


# -- zip files --------------------------------------------------------------------------

class _Archive:
    """One open zip file and the bytes unpacked from it so far."""

    def __init__(self, path: Path, handle: zipfile.ZipFile, limit: int):
        self.path, self.zip = path, handle
        self.cap = path.stat().st_size * ARCHIVE_RATIO + limit
        self.unpacked = 0

    def count(self, n: int) -> None:
        self.unpacked += n
        if self.unpacked > self.cap:
            raise dicom.Refused(_("The archive unpacks to far more than its size; the rest of it was skipped."),
                                "too_large")

    def item(self, member: zipfile.ZipInfo) -> Item:
        def copy(target: Path, limit: int) -> None:
            if self.unpacked > self.cap:
                self.count(0)
            if member.file_size > limit:
                raise dicom.too_large(limit)
            try:
                with self.zip.open(member) as stream:
                    _copy_stream(stream, target, limit, self.count)
            except dicom.Refused:
                raise
            except Exception:  # bad CRC, encryption, an unknown method, overlapping entries
                raise dicom.Refused(_("The archive entry is damaged or cannot be unpacked."), "damaged") from None

        return Item(printable(f"{self.path}:{member.filename}"), copy)


def _unsafe_member_name(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts


def _zip_items(path: Path, stack: ExitStack, limit: int, store) -> Iterator[Item]:
    try:
        archive = _Archive(path, stack.enter_context(zipfile.ZipFile(path)), limit)
        members = [m for m in archive.zip.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError):
        yield Item(printable(str(path)), refusal=_("This is not a zip file, or it is damaged."))
        return
    usable = []
    for member in members:
        if _unsafe_member_name(member.filename):
            # never used as a path anyway; such names only come from tampered archives
            yield Item(printable(f"{path}:{member.filename}"),
                       refusal=_("The archive entry has an unsafe name; it was skipped."))
        else:
            usable.append(member)
    dicomdirs = [m for m in usable if PurePosixPath(m.filename).name.upper() == DICOMDIR]
    if not dicomdirs:
        yield from (archive.item(m) for m in usable)
        return
    by_name = {m.filename.replace("\\", "/").upper(): m for m in usable}
    seen: set[str] = set()
    for dicomdir in dicomdirs:
        folder = str(PurePosixPath(dicomdir.filename.replace("\\", "/")).parent)
        prefix = "" if folder == "." else folder.upper() + "/"
        try:
            with blobs.scratch_file(store) as copy:
                archive.item(dicomdir).copy(copy, limit)
                references = _file_ids(copy, limit)
        except (_Skipped, dicom.Refused) as why:
            yield Item(printable(f"{path}:{dicomdir.filename}"), refusal=str(why))
            continue
        for components in references:
            shown = printable(f"{path}:{folder}/{'/'.join(components)}")
            member = by_name.get(prefix + "/".join(c.strip().upper() for c in components)) \
                if _safe_components(components) else None
            if not _safe_components(components):
                yield Item(shown, refusal=_("The DICOMDIR points outside its folder; the entry was skipped."))
            elif member is None:
                yield Item(shown, refusal=_("The DICOMDIR lists a file that is not there."))
            elif member.filename not in seen:
                seen.add(member.filename)
                yield archive.item(member)


# -- planning and running ----------------------------------------------------------------

def _is_zip(path: Path) -> bool:
    # By name, not content: a DICOM preamble may itself look like the start of a zip file.
    return path.suffix.lower() == ".zip"


# Far deeper than any disc (PS3.10 allows 8 levels) and than the recursion that reads a folder can go.
MAX_FOLDER_DEPTH = 64


def _folder_items(folder: Path, stack: ExitStack, limit: int, store, depth: int = 0) -> Iterator[Item]:
    if depth > MAX_FOLDER_DEPTH:
        yield Item(printable(str(folder)), refusal=_("The folders are nested too deeply; this one was skipped."))
        return
    dicomdir = _Listings().entry(folder, DICOMDIR)
    if dicomdir is not None and dicomdir.is_file():
        yield from _dicomdir_items(dicomdir, limit)
        return
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():  # inside a tree, a link may lead anywhere (another patient's files)
            yield Item(printable(str(entry)), refusal=_("The file is a link; it was skipped."))
        elif entry.is_dir():
            yield from _folder_items(entry, stack, limit, store, depth + 1)
        elif entry.is_file():
            yield from _path_items(entry, stack, limit, store)


def _path_items(path: Path, stack: ExitStack, limit: int, store) -> Iterator[Item]:
    if path.is_dir():
        yield from _folder_items(path, stack, limit, store)
    elif not path.is_file():
        yield Item(printable(str(path)), refusal=_("There is no such file or folder."))
    elif path.name.upper() == DICOMDIR:
        yield from _dicomdir_items(path, limit)
    elif _is_zip(path):
        yield from _zip_items(path, stack, limit, store)
    else:
        yield _file_item(path)


def plan(paths: list[Path], stack: ExitStack, *, limit: int, store) -> list[Item]:
    """Everything to import, in order (archives stay open on ``stack`` while it runs)."""
    return [item for path in paths for item in _path_items(Path(path), stack, limit, store)]


class Progress:
    """A bar on stderr when it is a terminal, and one closing line always."""

    def __init__(self, total: int, stream=None):
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()

    def step(self) -> None:
        self.done += 1
        if self.live:
            width = 30
            filled = width * self.done // max(self.total, 1)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}")
            self.stream.flush()

    def finish(self) -> None:
        if self.live:
            self.stream.write("\n")
        self.stream.write(_("%(done)s of %(total)s files read.", done=self.done, total=self.total) + "\n")
        self.stream.flush()


def run(runtime, paths: list[Path], *, actor: str, stream=None) -> Summary:
    """Import ``paths`` into the store of ``runtime``; one transaction per file."""
    limit = runtime.site.config.studies.max_file_mb * 2**20
    store = runtime.blobs
    summary = Summary()
    with ExitStack() as stack:
        items = plan(paths, stack, limit=limit, store=store)
        progress = Progress(len(items), stream)
        for item in items:
            outcome, reason = _import_one(runtime, item, limit=limit, actor=actor)
            if outcome == "stored":
                summary.accepted += 1
            elif outcome == "duplicate":
                summary.held += 1
            else:
                summary.refused.append((item.name, reason))
            progress.step()
        progress.finish()
    return summary


def _import_one(runtime, item: Item, *, limit: int, actor: str) -> tuple[str, str]:
    if item.refusal:
        return "refused", item.refusal
    with blobs.scratch_file(runtime.blobs, ".dcm") as scratch:
        try:
            item.copy(scratch, limit)
        except dicom.Refused as refusal:
            return "refused", str(refusal)
        except OSError as error:
            return "refused", _("The file cannot be read (%(error)s).", error=error.strerror or error)
        try:
            with runtime.sessions() as session:
                result = service.ingest(session, scratch, runtime=runtime, actor=actor, source="import")
        except Exception as error:  # the store or the database failed: say so, and go on with the rest
            _log.exception("storing %s failed", item.name)
            return "refused", _("The file could not be stored (%(error)s).", error=type(error).__name__)
    return result.outcome, result.reason
