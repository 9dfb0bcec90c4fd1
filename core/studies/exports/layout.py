"""What every DICOM export shares: where each file goes, the DICOMDIR, the README and
INDEX.HTM, and the files themselves with a zeroed preamble.

File IDs follow PS3.10 and IHE PDI: ``DICOM/PTnnnnnn/STnnnnnn/SEnnnnnn/IMnnnnnn``
(upper-case letters and digits, at most 8 characters per component, 5 levels),
assigned by pydicom's ``FileSet`` from header-only datasets rebuilt from the stored
headers, so laying out a study reads no blob. The DICOMDIR is written by the same
``FileSet`` with each record's file ID under ``DICOM/``.
"""
from __future__ import annotations

import ast
import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom.fileset
from pydicom import Dataset
from pydicom.datadict import keyword_dict
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.fileset import FileInstance, FileSet, RecordNode

from core.i18n import gettext as _
from core.studies.models import Instance, Patient, Series, Study

DICOM_FOLDER = "DICOM"
FILE_SET_ID = "FILMLESS"
PREAMBLE = bytes(128)
MAGIC = b"DICM"
CHUNK = 1 << 20


class ExportFailure(Exception):
    """The export cannot be made; ``message`` is for the person who asked, translated."""

    def __init__(self, message: str, *, alert_staff: bool = False):
        super().__init__(message)
        self.message, self.alert_staff = message, alert_staff


@dataclass
class Entry:
    """One DICOM file of an export and where it goes."""

    file_id: tuple[str, ...]  # ("DICOM", "PT000000", "ST000000", "SE000000", "IM000000")
    instance: Instance
    series: Series
    study: Study
    patient: Patient

    @property
    def path(self) -> str:
        return "/".join(self.file_id)


def lay_out(rows, clean=None) -> tuple[list[Entry], FileSet]:
    """File IDs for ``rows`` of (instance, series, study, patient), and the file set that
    writes their DICOMDIR; ``clean`` de-identifies each record's source (a share's export)."""
    file_set = _ExportFileSet()
    file_set.ID = FILE_SET_ID
    added: list[tuple[FileInstance, tuple]] = []
    for number, row in enumerate(rows, start=1):
        source = record_source(*row, number=number)
        source = clean(source) if clean is not None else source
        try:
            leaf = file_set.leaf(source)
        except ValueError:  # a record type whose required attributes this file lacks: a plain IMAGE record
            leaf = _image_leaf(source)
        added.append((file_set.add_custom(source, leaf), row))
    entries = []
    for file_instance, row in added:
        file_id = (DICOM_FOLDER, *Path(file_instance.FileID).parts)
        file_instance.node._record.ReferencedFileID = list(file_id)
        entries.append(Entry(file_id, *row))
    return entries, file_set


class _ExportFileSet(FileSet):
    """pydicom's ``FileSet``, adding many instances of few series at a time.

    ``add`` (here ``add_custom``) would look for the new SOP Instance UID among every
    instance added before, through each one's directory records: 125,250 lookups for 500
    instances, growing with the square of the study. That only matters to a file set read
    from disc; the rows come from the database, where SOP Instance UIDs are unique.

    ``leaf`` makes an instance's directory records as ``add`` does, except that a series'
    PATIENT, STUDY and SERIES records are made once, for its first instance: the tree keeps
    only those anyway. Together with keys read once per node (``_Node``) this made the
    layout of 500 instances more than twice as fast (docs/performance.md)."""

    _adding = False

    def __init__(self):
        super().__init__()
        self._series_nodes: dict[tuple, list[_Node]] = {}

    def __iter__(self):
        return iter(()) if self._adding else super().__iter__()

    def add_custom(self, ds_or_path, leaf):
        self._adding = True
        try:
            return super().add_custom(ds_or_path, leaf)
        finally:
            self._adding = False

    def leaf(self, ds: Dataset) -> RecordNode:
        """The lowest of ``ds``'s directory records, as a node linked to those above it;
        ValueError when the instance lacks an attribute its records require."""
        series = (ds.get("PatientID"), ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"))
        known = self._series_nodes.get(series)
        if known is None or pydicom.fileset._single_level_record_type(ds) != "PATIENT":
            nodes = [_Node(record) for record in self._recordify(ds)]
            if len(nodes) == 4:
                self._series_nodes[series] = nodes[:3]
        else:
            nodes = [_Node.standing_in(node) for node in known] + [_Node(_leaf_record(ds))]
        for parent, child in zip(nodes, nodes[1:]):
            child.parent = parent
        return nodes[-1]


class _Node(RecordNode):
    """A directory record node whose key is read from its record once: pydicom reads the
    key of every sibling each time a node is added under the same parent."""

    @property
    def key(self) -> str:
        if "_key" not in self.__dict__:
            self._key = RecordNode.key.fget(self)
        return self._key

    @classmethod
    def standing_in(cls, node: _Node) -> _Node:
        """A node with ``node``'s key, unlinked, that leads a new leaf down to ``node``'s
        place in the tree, where the leaf is linked and the stand-in dropped."""
        stand_in = cls()
        stand_in._record, stand_in._key = node._record, node.key
        return stand_in


def _leaf_record(ds: Dataset) -> Dataset:
    """The fourth-level record of a four-level instance, made as ``FileSet._recordify`` makes it."""
    record_type = pydicom.fileset._four_level_record_type(ds)
    record = pydicom.fileset.DIRECTORY_RECORDERS[record_type](ds)
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = record_type
    if "SpecificCharacterSet" in ds:
        record.SpecificCharacterSet = ds.SpecificCharacterSet
    record.ReferencedFileID = None
    record.ReferencedSOPClassUIDInFile = ds.SOPClassUID
    record.ReferencedSOPInstanceUIDInFile = ds.SOPInstanceUID
    record.ReferencedTransferSyntaxUIDInFile = ds.file_meta.TransferSyntaxUID
    return record


class _RecordSource(Dataset):
    """A header-only dataset that ``FileSet.add`` need not save into its staging folder
    (~3 ms an instance): only ``FileSet.write`` reads that copy, and it is never called."""

    def save_as(self, *args, **kwargs) -> None:
        pass


def write_dicomdir(file_set: FileSet, target: Path) -> None:
    """The DICOMDIR of ``file_set`` (records already pointing under ``DICOM/``) to ``target``.

    ``FileSet.write`` would also copy every instance to its own layout; only its
    DICOMDIR encoder (offsets included) is wanted here."""
    with open(target, "wb") as handle:
        file_set._write_dicomdir(DicomFileLike(handle))


def record_source(instance: Instance, series: Series, study: Study, patient: Patient, *, number: int = 1) -> Dataset:
    """A header-only dataset with what a directory record needs, from the stored header;
    Type 1 record attributes the file lacks get the values the database holds."""
    wanted = record_tags()
    dataset = _RecordSource.from_json(_without_bulk({tag: value for tag, value in instance.header.items()
                                                     if tag in wanted}))
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = instance.sop_class_uid
    dataset.file_meta.MediaStorageSOPInstanceUID = instance.sop_uid
    dataset.file_meta.TransferSyntaxUID = instance.transfer_syntax
    defaults = {
        "PatientID": patient.patient_id,
        "StudyDate": (study.study_date or study.created_at.date()).strftime("%Y%m%d"),
        "StudyTime": study.study_time or "000000",
        "StudyID": (study.accession_number or "1")[:16],
        "Modality": series.modality or "OT",
        "SeriesNumber": series.series_number if series.series_number is not None else 1,
        "InstanceNumber": instance.instance_number if instance.instance_number is not None else number,
    }
    for keyword, value in defaults.items():
        if dataset.get(keyword) in (None, ""):
            setattr(dataset, keyword, value)
    # an SR record takes only concept modifiers from the content (PS3.3 F.5.25), and a
    # verified one the time of verification, which SR files keep in their observer sequence
    if "ContentSequence" in dataset:
        del dataset.ContentSequence
    observers = dataset.get("VerifyingObserverSequence") or []
    if dataset.get("VerificationFlag") == "VERIFIED" and "VerificationDateTime" not in dataset and observers:
        dataset.VerificationDateTime = observers[-1].get("VerificationDateTime", "")
    return dataset


# what record_source itself reads, beside what pydicom's recorders read
OWN_KEYWORDS = ("ContentSequence", "VerifyingObserverSequence", "VerificationFlag", "VerificationDateTime")


@functools.cache
def record_tags() -> frozenset[str]:
    """The DICOM JSON tags of every keyword that pydicom's ``fileset`` module names (its
    directory recorders and the rules choosing a record type), and of ours: only these of a
    stored header are rebuilt as a dataset. Rebuilding the whole header was the layout's
    whole cost (~1.2 ms an instance, docs/performance.md)."""
    tree = ast.parse(inspect.getsource(pydicom.fileset))
    names = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    return frozenset(f"{keyword_dict[name]:08X}" for name in names | set(OWN_KEYWORDS) if name in keyword_dict)


def _without_bulk(header: dict) -> dict:
    """The stored DICOM JSON without its bulk data placeholders (at any depth)."""
    kept = {}
    for tag, value in header.items():
        if "BulkDataURI" in value or "InlineBinary" in value:
            continue
        if value.get("vr") == "SQ" and value.get("Value"):
            value = {**value, "Value": [_without_bulk(item) for item in value["Value"]]}
        kept[tag] = value
    return kept


def _image_leaf(source: Dataset) -> RecordNode:
    levels = [("PATIENT", ["PatientID", "PatientName"]),
              ("STUDY", ["StudyDate", "StudyTime", "StudyDescription", "StudyInstanceUID", "StudyID",
                         "AccessionNumber"]),
              ("SERIES", ["Modality", "SeriesInstanceUID", "SeriesNumber"]),
              ("IMAGE", ["InstanceNumber"])]
    parent = None
    for record_type, keywords in levels:
        record = Dataset()
        record.DirectoryRecordType = record_type
        for keyword in keywords:
            setattr(record, keyword, source.get(keyword, ""))
        node = RecordNode(record)
        if parent is not None:
            node.parent = parent
        parent = node
    return parent


# -- the files ----------------------------------------------------------------------------------

def copy_dicom(source: BinaryIO, target: BinaryIO) -> int:
    """Copy a stored Part 10 file with its 128-byte preamble zeroed, so that no exported
    file can double as another format; returns the bytes written."""
    head = source.read(len(PREAMBLE) + len(MAGIC))
    if head[len(PREAMBLE):] != MAGIC:
        raise ExportFailure(_("One of the images is damaged in our archive, so it cannot be exported. "
                              "We have told our staff."), alert_staff=True)
    target.write(PREAMBLE + MAGIC)
    written = len(head)
    while chunk := source.read(CHUNK):
        target.write(chunk)
        written += len(chunk)
    return written


def has_zero_preamble(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(PREAMBLE) + len(MAGIC)) == PREAMBLE + MAGIC


def local_copy(blobs, entry: Entry, work: Path) -> Path:
    """A file on this machine with the instance's content and a zeroed preamble: the blob
    itself when it already is one, else a copy in ``work``."""
    own = blobs.local_path(entry.instance.blob_key)
    if own is not None and has_zero_preamble(own):
        return own
    target = work.joinpath(*entry.file_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    with blobs.open(entry.instance.blob_key) as source, open(target, "wb") as out:
        copy_dicom(source, out)
    return target

