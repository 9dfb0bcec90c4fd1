"""Reading untrusted DICOM files: the header only, checked before anything is stored.

``read_header`` parses a PS3.10 file up to its pixel data (pydicom's
``stop_before_pixels``), checks that the pixel data it declares is really there
(a truncated file is refused, not stored), and that the identifying UIDs are
well formed. Every refusal is a ``Refused`` with a reason a person can act on.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from core.i18n import gettext as _

UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
BULK_THRESHOLD = 1024  # binary values longer than this stay in the file (WADO bulkdata)
# SOP classes whose content is a report rather than an image
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
SR_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22",
                        "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34"})


class Refused(ValueError):
    """A file that cannot be stored; ``str()`` is the reason, in the current language.

    ``kind`` says why for machines (the DICOM listener picks its status from it):
    ``empty``, ``too_large``, ``not_dicom``, ``damaged``, ``incomplete`` (a required
    attribute is missing or malformed) or ``conflict`` (it contradicts what is held)."""

    def __init__(self, reason: str, kind: str = "damaged"):
        super().__init__(reason)
        self.kind = kind


class _GuardedReader:
    """The file as pydicom reads it, noting any read that asks for more than is left.

    pydicom stops quietly where a file ends early, or reads an absurd declared length
    up to the end of the file; either way the header it returns is not what the sender
    meant. Reads are also capped at what is left, so a length of 0xFFFFFFF0 costs nothing."""

    def __init__(self, handle, size: int):
        self._handle, self._size = handle, size
        self.short = False

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self._handle.read()
        left = max(self._size - self._handle.tell(), 0)
        if size > left:
            # Only a tag read that finds the end of the file exactly is a normal end.
            self.short = self.short or left > 0 or size != 8
            size = left
        return self._handle.read(size)

    def __getattr__(self, name):
        return getattr(self._handle, name)


@dataclass
class Header:
    dataset: Dataset
    transfer_syntax: str
    size: int

    def text(self, keyword: str, limit: int = 200) -> str:
        value = self.dataset.get(keyword)
        return str(value if value is not None else "").strip()[:limit]

    def number(self, keyword: str) -> int | None:
        try:
            value = self.dataset.get(keyword)
            return int(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None


def parse_date(value: str) -> date | None:
    """A DA value's date; None when there is none or it is no real date."""
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8])) if len(value) >= 8 else None
    except ValueError:
        return None


def too_large(max_bytes: int) -> Refused:
    return Refused(_("The file is larger than this site accepts (%(limit)s MB).", limit=max_bytes // 2**20),
                   "too_large")


def damaged() -> Refused:
    return Refused(_("The DICOM file is damaged or truncated and cannot be read."), "damaged")


def read_header(path: Path, *, max_bytes: int) -> Header:
    size = path.stat().st_size
    if size == 0:
        raise Refused(_("The file is empty."), "empty")
    if size > max_bytes:
        raise too_large(max_bytes)
    try:
        with open(path, "rb") as handle:
            reader = _GuardedReader(handle, size)
            dataset = pydicom.dcmread(reader, stop_before_pixels=True)
            if reader.short:
                raise damaged()
            has_pixels = check_pixel_data(handle, handle.tell(), size, dataset.file_meta.get("TransferSyntaxUID"))
    except Refused:
        raise
    except InvalidDicomError:
        raise Refused(_("This is not a DICOM file (no DICM marker after the 128-byte preamble)."),
                      "not_dicom") from None
    except Exception:  # pydicom raises many kinds on hostile input; all mean the same to the sender
        raise damaged() from None
    meta = getattr(dataset, "file_meta", None)
    transfer_syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    try:
        for keyword in REQUIRED_UIDS:
            value = str(dataset.get(keyword, "") or "")
            if not value:
                raise Refused(_("The file has no %(attribute)s.", attribute=keyword), "incomplete")
            if len(value) > 64 or not UID.match(value):
                raise Refused(_("The file's %(attribute)s is not a valid UID.", attribute=keyword), "incomplete")
        if not transfer_syntax or not UID.match(transfer_syntax):
            raise Refused(_("The file does not say how it is encoded (no transfer syntax)."), "incomplete")
        if not str(dataset.get("PatientID", "") or "").strip():
            raise Refused(_("The file has no patient ID."), "incomplete")
        if "Rows" in dataset and "Columns" in dataset and not has_pixels:
            # an image whose pixel data is missing is almost always a file cut short
            raise Refused(_("The file describes an image but holds no pixel data."), "incomplete")
    except Refused:
        raise
    except Exception:  # a value that cannot be decoded (bad character set, wrong VR)
        raise damaged() from None
    return Header(dataset=dataset, transfer_syntax=transfer_syntax, size=size)


def check_pixel_data(handle, position: int, size: int, transfer_syntax: str | None) -> bool:
    """Whether the file has pixel data at ``position`` (where its header ended); refuse one whose
    pixel data ends before its declared length."""
    if position >= size:
        return False
    handle.seek(position)
    head = handle.read(12)
    if len(head) < 8:
        raise damaged()
    little = transfer_syntax != "1.2.840.10008.1.2.2"
    order = "<" if little else ">"
    group, element = struct.unpack(order + "HH", head[:4])
    if (group, element) not in PIXEL_TAGS:
        return False
    implicit = transfer_syntax == "1.2.840.10008.1.2"
    if implicit or not head[4:6].isalpha():  # some writers fall back to implicit VR for pixel data
        length, header_length = struct.unpack(order + "I", head[4:8])[0], 8
    else:
        if len(head) < 12:
            raise damaged()
        length, header_length = struct.unpack(order + "I", head[8:12])[0], 12
    if length == 0xFFFFFFFF:  # encapsulated: must end with a sequence delimiter
        handle.seek(max(size - 8, 0))
        if SEQUENCE_END not in handle.read(8) and not _delimiter_before_padding(handle, position, size):
            raise damaged()
    elif position + header_length + length > size:
        raise damaged()
    return True


def _delimiter_before_padding(handle, position: int, size: int) -> bool:
    # Trailing padding (FFFC,FFFC) may follow the pixel data; look for the delimiter in the tail.
    window = min(size - position, 1 << 20)
    handle.seek(size - window)
    return SEQUENCE_END in handle.read(window)


def header_json(dataset: Dataset) -> dict:
    """The DICOM JSON model of the header; long binary values become ``BulkDataURI: "bulk:<tag>"``
    placeholders that DICOMweb turns into addresses."""

    def bulk(element) -> str:
        return f"bulk:{element.tag:08X}"

    return dataset.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=bulk)


# What the store keeps of a header besides its UIDs and the patient's name: field → (keyword, longest kept)
KEPT_TEXTS = {"patient_id": ("PatientID", 64), "issuer_of_patient_id": ("IssuerOfPatientID", 64),
              "sex": ("PatientSex", 16), "accession_number": ("AccessionNumber", 64), "study_time": ("StudyTime", 16),
              "study_description": ("StudyDescription", 200), "body_part": ("BodyPartExamined", 64),
              "institution": ("InstitutionName", 200), "referring_physician": ("ReferringPhysicianName", 200),
              "modality": ("Modality", 16), "series_description": ("SeriesDescription", 200)}
KEPT_DATES = {"birth_date": "PatientBirthDate", "study_date": "StudyDate"}
KEPT_NUMBERS = {"series_number": "SeriesNumber", "instance_number": "InstanceNumber", "rows": "Rows",
                "columns": "Columns", "frames": "NumberOfFrames"}


def kept_values(text, number, *, uids: list[str], name: tuple[str, str], transfer_syntax: str, size: int,
                header: dict) -> dict:
    """The values the store keeps, through a reader's ``text(keyword, limit)`` and ``number(keyword)``;
    ``uids`` in the order of ``REQUIRED_UIDS``, ``name`` (family, given)."""
    fields = {field: text(keyword, limit) for field, (keyword, limit) in KEPT_TEXTS.items()}
    fields.update({field: parse_date(text(keyword, 200)) for field, keyword in KEPT_DATES.items()})
    fields.update({field: number(keyword) for field, keyword in KEPT_NUMBERS.items()})
    fields["accession_number"] = fields["accession_number"] or None
    fields["frames"] = fields["frames"] or 1
    fields.update(zip(("study_uid", "series_uid", "sop_uid", "sop_class_uid"), uids))
    fields.update(family_name=name[0], given_name=name[1], transfer_syntax=transfer_syntax, size=size, header=header)
    return fields


def stored_values(header: Header) -> dict:
    """Every value the store keeps from a header, read once: a value that cannot be decoded
    refuses the file here, before anything is written."""
    ds = header.dataset
    try:
        return kept_values(header.text, header.number, uids=[str(ds[keyword].value) for keyword in REQUIRED_UIDS],
                           name=person_name(ds), transfer_syntax=header.transfer_syntax, size=header.size,
                           header=header_json(ds))
    except Exception:
        raise damaged() from None


def person_name(dataset: Dataset) -> tuple[str, str]:
    """(family, given) from PatientName, tolerant of odd values."""
    name = dataset.get("PatientName")
    if not name:
        return "", ""
    try:
        return str(name.family_name or "").strip()[:100], str(name.given_name or "").strip()[:100]
    except Exception:
        return str(name).strip()[:100], ""


def _datetime(date_value, time_value=""):
    from datetime import datetime, timezone

    text = f"{str(date_value or '').strip()}{str(time_value or '').strip()}"
    try:
        if len(text) >= 14:
            return datetime.strptime(text[:14], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
        if len(text) >= 8:
            return datetime.strptime(text[:8], "%Y%m%d").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return None


def signed_at(dataset: Dataset):
    """When a report instance was signed: its verification time, else its content time (UTC)."""
    for verifier in dataset.get("VerifyingObserverSequence", []) or []:
        moment = _datetime(verifier.get("VerificationDateTime", ""))
        if moment:
            return moment
    return _datetime(dataset.get("ContentDate", ""), dataset.get("ContentTime", ""))


def author(dataset: Dataset) -> str:
    for verifier in dataset.get("VerifyingObserverSequence", []) or []:
        if verifier.get("VerifyingObserverName"):
            return str(verifier.VerifyingObserverName)[:200]
    return ""


def sr_text(dataset: Dataset) -> str:
    """The readable text of a structured report: headings and their text, in document order."""
    lines: list[str] = []

    def walk(items, depth: int) -> None:
        for item in items or []:
            concept = item.get("ConceptNameCodeSequence")
            name = str(concept[0].get("CodeMeaning", "")) if concept else ""
            if item.get("ValueType") == "TEXT" and item.get("TextValue"):
                lines.append(f"{name}: {item.TextValue}" if name else str(item.TextValue))
            elif item.get("ValueType") == "CONTAINER" and name and depth:
                lines.append(f"\n{name.upper()}")
            walk(item.get("ContentSequence"), depth + 1)

    walk([dataset], 0)
    return "\n".join(lines).strip()
