"""The core's export formats: ZIP and ISO of DICOM files (PS3.10 layout with a DICOMDIR),
and JPG pictures. Plugins add theirs through the ``export_formats`` hook.

Both DICOM formats hold the same tree::

    DICOMDIR  README.TXT  INDEX.HTM  DICOM/PT000000/ST000000/SE000000/IM000000 ...

ZIP entries are streamed one file at a time (constant memory whatever the study);
pixel data compresses little, so by default they are stored, not deflated
(``exports.zip_level``; figures in docs/performance.md). The ISO is ISO 9660
level 1 with Joliet and Rock Ridge names, written by pycdlib straight from the blob
files when their preamble is already zero.
"""
from __future__ import annotations

import re
import zipfile
from io import BytesIO
from pathlib import Path

import pycdlib

from core.i18n import N_
from core.plugins import ExportFormat
from core.studies import render

ZIP64_LIMIT = zipfile.ZIP64_LIMIT
FILE_MODE, FOLDER_MODE = 0o100444, 0o40555  # Rock Ridge: read-only for everyone, as a pressed disc
ISO_BLOCK = 1 << 20  # pycdlib's default 32 KiB blocks: 0.84 s against 0.58 s to write 251 MB, 9× the progress calls


def build_zip(job) -> None:
    level = job.runtime.site.config.exports.zip_level
    compression = zipfile.ZIP_DEFLATED if level else zipfile.ZIP_STORED
    with zipfile.ZipFile(job.target, "w", compression=compression, compresslevel=level or None,
                         allowZip64=True) as archive:
        archive.writestr("README.TXT", job.readme().encode("utf-8"))
        archive.writestr("INDEX.HTM", job.index_html().encode("utf-8"))
        archive.write(job.dicomdir(), "DICOMDIR")
        for entry in job.entries:
            with archive.open(entry.path, "w", force_zip64=entry.instance.size >= ZIP64_LIMIT) as out:
                job.copy_dicom(entry, out)
            job.advance()


def build_iso(job) -> None:
    disc = pycdlib.PyCdlib()
    disc.new(interchange_level=1, joliet=3, rock_ridge="1.09", vol_ident=job.volume_label())
    folders: set[tuple[str, ...]] = set()

    def folder(parts: tuple[str, ...], names: tuple[str, ...] | None = None) -> None:
        for depth in range(1, len(parts) + 1):
            if parts[:depth] not in folders:
                folders.add(parts[:depth])
                shown = (names or parts)[:depth]
                disc.add_directory("/" + "/".join(parts[:depth]), rr_name=shown[-1], joliet_path="/" + "/".join(shown),
                                   file_mode=FOLDER_MODE)

    def add(parts: tuple[str, ...], *, path: Path | None = None, data: bytes | None = None,
            names: tuple[str, ...] | None = None) -> None:
        shown = names or parts
        folder(parts[:-1], shown[:-1])
        # ECMA-119 7.5.1: a file identifier always has its "." (DICOMDIR.;1), even with no extension
        name = parts[-1] if "." in parts[-1] else parts[-1] + "."
        iso_path, joliet_path = "/" + "/".join((*parts[:-1], name)) + ";1", "/" + "/".join(shown)
        if path is not None:
            disc.add_file(str(path), iso_path, rr_name=shown[-1], joliet_path=joliet_path, file_mode=FILE_MODE)
        else:
            disc.add_fp(BytesIO(data), len(data), iso_path, rr_name=shown[-1], joliet_path=joliet_path,
                        file_mode=FILE_MODE)

    add(("README.TXT",), data=job.readme().encode("utf-8"))
    add(("INDEX.HTM",), data=job.index_html().encode("utf-8"))
    add(("DICOMDIR",), path=job.dicomdir())
    for entry in job.entries:
        add(entry.file_id, path=job.dicom_path(entry))
    viewer = job.runtime.site.config.exports.disc_viewer
    if viewer:
        for source, parts, names in viewer_files(Path(viewer)):
            add(parts, path=source, names=names)
    count = len(job.entries)
    disc.write(str(job.target), blocksize=ISO_BLOCK,
               progress_cb=lambda done, total: job.progress(count * done // max(total, 1)))
    disc.close()


def viewer_files(root: Path):
    """(file, ISO 9660 level 1 path, original names) of each file in the site's viewer folder,
    under ``VIEWER/``; level 1 names are 8.3 upper case, made unique per folder."""
    taken: dict[tuple[str, ...], set[str]] = {}
    mapped: dict[tuple[str, ...], tuple[str, ...]] = {(): ("VIEWER",)}
    for source in sorted(root.rglob("*")):
        relative = source.relative_to(root).parts
        parent = mapped[relative[:-1]]
        siblings = taken.setdefault(parent, set())
        name = level1_name(relative[-1], siblings, folder=source.is_dir())
        mapped[relative] = (*parent, name)
        if source.is_file():
            yield source, mapped[relative], ("VIEWER", *relative)


def level1_name(name: str, taken: set[str], *, folder: bool = False) -> str:
    stem, dot, extension = name.rpartition(".") if "." in name and not folder else (name, "", "")
    clean = lambda text, size: re.sub(r"[^A-Z0-9_]", "_", text.upper())[:size]  # noqa: E731
    stem, extension = clean(stem, 8) or "_", clean(extension, 3)
    number = 0
    candidate = stem + (f".{extension}" if extension else "")
    while candidate in taken:
        number += 1
        suffix = f"_{number}"  # "~" is not a d-character: level 1 names are A-Z 0-9 _ only
        candidate = stem[:8 - len(suffix)] + suffix + (f".{extension}" if extension else "")
    taken.add(candidate)
    return candidate


def build_jpg(job) -> None:
    """A ZIP of JPEG pictures, one per frame, at full resolution and in the window the
    viewer showed (``options["window"]``); instances without pixels are skipped."""
    window = tuple(job.options["window"]) if job.options.get("window") else None
    skipped, names = 0, _Names()
    with zipfile.ZipFile(job.target, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for entry in job.entries:
            instance = entry.instance
            if instance.rows and instance.columns:
                for frame in range(1, max(instance.frames or 1, 1) + 1):
                    try:
                        picture = render.full_picture(job.runtime, instance, frame, window=window)
                    except render.CannotRender:
                        skipped += 1
                        continue
                    archive.writestr(jpg_name(entry, frame, names), picture)
            job.advance()
        archive.writestr("README.TXT", job.readme(skipped=skipped).encode("utf-8"))


def jpg_name(entry, frame: int, names: _Names | None = None) -> str:
    """``<date exam>/<series>/IMG<number>.JPG``; two exams of the same day and description (or
    series, or instance numbers) that would share a name each get their own (``names``)."""
    def part(text: str, fallback: str) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or fallback

    names = names or _Names()
    study = names.of(("study", entry.study.id),
                     part(f"{entry.study.study_date or ''} {entry.study.description}", "EXAM"))
    series = names.of(("series", entry.series.id),
                      f"{study}/" + part(f"S{entry.series.series_number or 0} {entry.series.description}", "SERIES"))
    number = entry.instance.instance_number or entry.instance.id
    suffix = f"_F{frame:03d}" if (entry.instance.frames or 1) > 1 else ""
    return names.of(("frame", entry.instance.id, frame), f"{series}/IMG{number:05d}{suffix}", ".JPG")


class _Names:
    """The names given in one archive: a study, series or frame keeps its own; another that
    would take the same gets ``_2``, ``_3``..."""

    def __init__(self):
        self.given: dict[tuple, str] = {}
        self.used: set[str] = set()

    def of(self, key: tuple, name: str, extension: str = "") -> str:
        if key not in self.given:
            candidate, number = name, 1
            while candidate + extension in self.used:
                number += 1
                candidate = f"{name}_{number}"
            self.used.add(candidate + extension)
            self.given[key] = candidate + extension
        return self.given[key]


CORE_FORMATS = [
    ExportFormat(name="zip", label=N_("Download (ZIP)"), suffix=".zip", media_type="application/zip",
                 build=build_zip),
    ExportFormat(name="iso", label=N_("Disc image (ISO)"), suffix=".iso",
                 media_type="application/x-iso9660-image", build=build_iso),
    ExportFormat(name="jpg", label=N_("Pictures (JPG)"), suffix=".zip", media_type="application/zip",
                 build=build_jpg, dicom=False),
]
