"""De-identifying what a share with "hide patient details" gives its recipient, following
DICOM PS3.15 Annex E: the Basic Application Level Confidentiality Profile (Table E.1-1, in
``annex_e``) with the options the site chooses (``sharing.deidentify`` in the site file).

A ``Deidentifier`` per share cleans DICOM files (pixel data kept as it is), DICOM JSON
(QIDO-RS results, WADO-RS metadata), free text, and the rows the pages show. A UID becomes
``2.25.<n>``, n being 128 bits of HMAC-SHA256(the share's key, the UID): within a share the
same UID always gives the same replacement, so series, references and links hold together,
while two shares cannot be linked. Attributes the table does not name follow a few rules
that keep the profile's intent: private attributes, overlays, curves and the rest of the
Patient group go; any other person's name is emptied; other dates become a neutral
19000101 unless dates are kept.

Free text the profile lets a site keep "cleaned" (descriptions with ``clean_descriptions``,
report text, the text of structured reports) keeps its words except the identifiers known
for the patient (names, IDs, accession numbers, birth date as it is usually written), which
become ``***``. Pixels that show who they belong to (Burned In Annotation or Recognizable
Visual Features "YES") and encapsulated documents cannot be cleaned: ``cleanable`` keeps
them from such shares altogether.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from io import BytesIO
from typing import BinaryIO, Iterable

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import func, not_

from core.sharing.annex_e import ATTRIBUTES
from core.sharing.redaction import Redactor, date_forms, day_of, name_parts
from core.studies.models import Instance

REMOVE, EMPTY, DUMMY, UID, CLEAN, KEEP = "X", "Z", "D", "U", "C", "K"
# Where the table leaves a choice to the IOD, the one that leaves least: removed or empty rather
# than a made-up value (but dates and times of Z/D, Type 1 in some IODs, get a neutral one), and
# the sequences of references (X/Z/U*) kept with their UIDs replaced.
RESOLVED = {"X": REMOVE, "Z": EMPTY, "D": DUMMY, "U": UID, "X/Z": EMPTY, "X/D": REMOVE, "Z/D": EMPTY,
            "X/Z/D": EMPTY, "X/Z/U*": KEEP}
OPTION_LETTERS = {"t": "retain_dates", "v": "retain_device", "i": "retain_institution",
                  "p": "retain_patient_characteristics"}
DICOM_ROOT = "1.2.840.10008."  # UIDs the standard itself defines (SOP classes, syntaxes…): kept
TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN"})
TIME_VRS = frozenset({"DA", "TM", "DT"})
DUMMIES = {"PN": "ANONYMOUS", "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y",
           "IS": "0", "DS": "0", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "CS": "ANONYMIZED",
           "ST": "ANONYMIZED", "LT": "ANONYMIZED", "UT": "ANONYMIZED", "UC": "ANONYMIZED", "AE": "ANONYMIZED"}
PATIENT_GROUP = 0x0010
# Attributes whose values name or number a person, a visit or a place: cut out of cleaned text
IDENTIFIER_TAGS = frozenset({0x00100020, 0x00101000, 0x00100021, 0x00080050, 0x00200010, 0x00101090, 0x00101040,
                             0x00102154, 0x00380010, 0x00380060, 0x00080080, 0x00080081, 0x00081010, 0x00181000,
                             0x00402016, 0x00402017, 0x00401001, 0x00400253, 0x00400009, 0x00120040})
# File meta attributes that name the sending systems, or carry private information
META_REMOVED = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)
BURNED_IN, VISUAL_FEATURES = "00280301", "00280302"
DOCUMENT_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.104.2",
                              "1.2.840.10008.5.1.4.1.1.104.3", "1.2.840.10008.5.1.4.1.1.104.4",
                              "1.2.840.10008.5.1.4.1.1.104.5"})  # PDF, CDA, STL, OBJ, MTL
# CID 7050 codes of the profile and of each option kept
METHOD_CODES = [("113100", "Basic Application Confidentiality Profile", None),
                ("113106", "Retain Longitudinal Temporal Information Full Dates Option", "retain_dates"),
                ("113109", "Retain Device Identity Option", "retain_device"),
                ("113112", "Retain Institution Identity Option", "retain_institution"),
                ("113108", "Retain Patient Characteristics Option", "retain_patient_characteristics"),
                ("113105", "Clean Descriptors Option", "clean_descriptions")]
STUDY_PATH = re.compile(r"(/(?:studies|series|instances)/)([0-9.]+)")


def share_key(secret: str | None, share_id: str, created_at=None) -> bytes:
    """The key of one share's replacement UIDs: from the site's ``uid_secret`` when it has one;
    otherwise from the share's id and the moment it was made, which its recipient never sees."""
    moment = created_at.isoformat() if created_at is not None else ""
    return hmac.new((secret or "filmless-share").encode(), f"share:{share_id}:{moment}".encode(),
                    hashlib.sha256).digest()


class Shown:
    """An object as a page shows it: the given attributes replaced, every other one read through
    (so queries that take the object, e.g. by its id, still work)."""

    def __init__(self, original, **shown):
        self.__dict__.update(shown, original=original)

    def __getattr__(self, name):
        return getattr(self.__dict__["original"], name)


class Deidentifier:
    def __init__(self, key: bytes, options, known: Iterable[str] = ()):
        self.key, self.options = key, options
        self.known = {term for term in known if term}
        self._actions: dict[tuple[int, str], str] = {}
        self._known_only: Redactor | None = None

    def keeps(self, option: str) -> bool:
        return bool(getattr(self.options, option, False))

    # -- what becomes of each attribute -------------------------------------------------------

    def action(self, tag: int, vr: str) -> str:
        found = self._actions.get((tag, vr))
        if found is None:
            found = self._actions[(tag, vr)] = self._decide(tag, vr)
        return found

    def _decide(self, tag: int, vr: str) -> str:
        group = tag >> 16
        entry = ATTRIBUTES.get(tag)
        if entry is not None:
            code, letters = entry
            if any(self.keeps(OPTION_LETTERS[letter]) for letter in letters if letter in OPTION_LETTERS):
                return KEEP
            if ("P" in letters and self.keeps("retain_patient_characteristics")) or (
                    "d" in letters and self.keeps("clean_descriptions")):
                return CLEAN
            if code == "Z/D" and vr in TIME_VRS:  # Type 1 where it matters (a report's content date)
                return DUMMY
            return RESOLVED[code]
        if group % 2 or group & 0xFF00 in (0x5000, 0x6000) or (tag & 0xFFFF) == 0 or group == PATIENT_GROUP:
            return REMOVE  # private, curves, overlays, group lengths, the rest of the Patient module
        if vr == "PN":
            return EMPTY
        if vr in ("DA", "DT"):  # e.g. a report's verification time: a neutral value keeps it valid
            return KEEP if self.keeps("retain_dates") else DUMMY
        return UID if vr == "UI" else KEEP

    def matchable(self, keyword: str) -> bool:
        """Whether a search may match on this attribute (a match on a removed one would tell its value)."""
        tag = tag_for_keyword(keyword)
        return tag is not None and self.action(tag, dictionary_VR(tag)) in (KEEP, UID)

    def keeps_bulk(self, header: dict, tag: str) -> bool:
        """Whether a top-level bulk data value of a stored header is served as it is."""
        element = (header or {}).get(tag)
        return element is not None and self.action(int(tag, 16), element.get("vr", "UN")) == KEEP

    # -- UIDs ---------------------------------------------------------------------------------

    def uid(self, original):
        if not isinstance(original, str) or not original or original.startswith(DICOM_ROOT):
            return original
        digest = hmac.new(self.key, original.strip().encode(), hashlib.sha256).digest()
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"

    def url(self, text):
        """An address with the UIDs of its study, series and instance replaced."""
        return STUDY_PATH.sub(lambda match: match.group(1) + self.uid(match.group(2)), text) \
            if isinstance(text, str) else text

    def patient_id(self, original: str) -> str:
        digest = hmac.new(self.key, f"patient:{original}".encode(), hashlib.sha256).hexdigest()
        return f"ANON-{digest[:12].upper()}"

    # -- free text ----------------------------------------------------------------------------

    def redactor(self, extra: Iterable[str] = ()) -> Redactor:
        extra = {term for term in extra if term} - self.known
        if extra:
            return Redactor(self.known | extra)
        if self._known_only is None:  # pages clean many short texts with the same terms
            self._known_only = Redactor(self.known)
        return self._known_only

    def text(self, value: str | None, extra: Iterable[str] = ()) -> str:
        return self.redactor(extra)(value or "")

    def description(self, value: str | None, extra: Iterable[str] = ()) -> str:
        """A description is removed by the profile; with Clean Descriptors it is kept, cleaned."""
        return self.text(value, extra) if self.keeps("clean_descriptions") else ""

    # -- DICOM files and datasets -------------------------------------------------------------

    def file(self, source: bytes | BinaryIO) -> bytes:
        """A whole Part 10 file, cleaned, with a zeroed preamble."""
        dataset = pydicom.dcmread(BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        self.dataset(dataset)
        dataset.preamble = bytes(128)
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    def dataset(self, dataset: Dataset) -> Dataset:
        """``dataset`` cleaned in place (file meta too), marked as de-identified."""
        redact = self.redactor(self._identifiers(dataset.iterall()))
        original_id = str(dataset.get("PatientID", "") or "")
        self._walk(dataset, redact, False)
        meta = getattr(dataset, "file_meta", None)
        if meta is not None:
            for tag in META_REMOVED:
                if tag in meta:
                    del meta[tag]
            if "MediaStorageSOPInstanceUID" in meta:
                meta.MediaStorageSOPInstanceUID = self.uid(str(meta.MediaStorageSOPInstanceUID))
        if original_id:
            dataset.PatientID = self.patient_id(original_id)
        dataset.PatientIdentityRemoved = "YES"
        dataset.LongitudinalTemporalInformationModified = "UNMODIFIED" if self.keeps("retain_dates") else "REMOVED"
        methods = [(code, meaning) for code, meaning, option in METHOD_CODES if option is None or self.keeps(option)]
        dataset.DeidentificationMethod = [meaning[:64] for _code, meaning in methods]
        dataset.DeidentificationMethodCodeSequence = Sequence([_code_item(code, meaning) for code, meaning in methods])
        return dataset

    def _walk(self, dataset: Dataset, redact: Redactor, in_content: bool) -> None:
        for element in list(dataset):
            action = self.action(element.tag, element.VR)
            if action == REMOVE:
                del dataset[element.tag]
            elif element.VR == "SQ":
                if action == EMPTY:
                    element.value = Sequence([])
                else:  # a dummy sequence keeps its structure with cleaned content (e.g. a report's)
                    for item in element.value or []:
                        self._walk(item, redact, in_content or action in (DUMMY, CLEAN))
            elif action in (EMPTY, DUMMY):
                element.value = DUMMIES.get(element.VR) if action == DUMMY else None
            elif action != KEEP or element.VR in ("UI", "UR") or (in_content and element.VR in TEXT_VRS):
                element.value = _each(element.value, lambda value: self._value(element.VR, value, action, redact,
                                                                                in_content))

    def _value(self, vr: str, value, action: str, redact: Redactor, in_content: bool):
        if action == UID or vr == "UI":
            return self.uid(str(value))
        if vr == "UR":
            return self.url(str(value))
        if (action == CLEAN or in_content) and vr in TEXT_VRS:
            return redact(str(value))
        return value

    def _identifiers(self, elements) -> set[str]:
        """What identifies the patient in a dataset's elements: the terms cut out of its text."""
        terms: set[str] = set()
        for element in elements:
            if element.VR == "SQ" or self.action(element.tag, element.VR) == KEEP:
                continue
            for value in _values(element.value):
                terms |= self._terms_of(element.tag, element.VR, str(value))
        return terms

    @staticmethod
    def _terms_of(tag: int, vr: str, text: str) -> set[str]:
        if vr == "PN":
            return name_parts(text)
        if tag in IDENTIFIER_TAGS and len(text.strip()) >= 3:
            return {text.strip()}
        if vr == "DA" and tag >> 16 == PATIENT_GROUP and (day := day_of(text)):
            return date_forms(day)
        return set()

    def record(self, dataset: Dataset) -> Dataset:
        """The source of a DICOMDIR record, de-identified; the keys a study record must have get
        neutral values where the profile emptied them."""
        self.dataset(dataset)
        neutral = {"StudyDate": "19000101", "StudyTime": "000000", "StudyID": "1", "ContentDate": "19000101",
                   "ContentTime": "000000"}
        if dataset.get("VerificationFlag") == "VERIFIED":
            neutral["VerificationDateTime"] = "19000101000000"
        for keyword, value in neutral.items():
            if not dataset.get(keyword):
                setattr(dataset, keyword, value)
        return dataset

    def export_rows(self, rows: list[tuple]) -> tuple[list[tuple], int]:
        """The (instance, series, study, patient) rows of an export as such a share gets them: the
        rows shown de-identified, without the instances that cannot be cleaned (and their count)."""
        kept = [(instance, self.series(series), self.study(study), self.patient(patient))
                for instance, series, study, patient in rows if can_clean(instance)]
        return kept, len(rows) - len(kept)

    # -- DICOM JSON ---------------------------------------------------------------------------

    def json(self, attributes: dict) -> dict:
        """A DICOM JSON dataset (PS3.18 F.2) cleaned, without the Patient group, marked."""
        redact = self.redactor(self._json_identifiers(attributes))
        cleaned = {tag: value for tag, value in self._walk_json(attributes, redact, False).items()
                   if not tag.startswith("0010")}
        cleaned["00120062"] = {"vr": "CS", "Value": ["YES"]}
        cleaned["00280303"] = {"vr": "CS", "Value": ["UNMODIFIED" if self.keeps("retain_dates") else "REMOVED"]}
        return dict(sorted(cleaned.items()))

    def _walk_json(self, attributes: dict, redact: Redactor, in_content: bool) -> dict:
        cleaned = {}
        for tag, element in attributes.items():
            vr = element.get("vr", "UN")
            action = self.action(int(tag, 16), vr)
            if action == REMOVE:
                continue
            if action == EMPTY:
                cleaned[tag] = {"vr": vr}
            elif vr == "SQ":
                items = [self._walk_json(item, redact, in_content or action in (DUMMY, CLEAN))
                         for item in element.get("Value") or [] if isinstance(item, dict)]
                cleaned[tag] = {"vr": vr, "Value": items} if items else {"vr": vr}
            elif action == DUMMY:
                dummy = DUMMIES.get(vr)
                cleaned[tag] = {"vr": vr, "Value": [{"Alphabetic": dummy} if vr == "PN" else dummy]} if dummy \
                    else {"vr": vr}
            else:
                kept = dict(element)
                if "Value" in kept:
                    kept["Value"] = [self._json_value(vr, value, action, redact, in_content) for value in kept["Value"]]
                if "BulkDataURI" in kept:
                    kept["BulkDataURI"] = self.url(kept["BulkDataURI"])
                cleaned[tag] = kept
        return cleaned

    def _json_value(self, vr: str, value, action: str, redact: Redactor, in_content: bool):
        if vr == "PN" and isinstance(value, dict):
            return {group: self._value(vr, text, action, redact, in_content) for group, text in value.items()}
        return self._value(vr, value, action, redact, in_content) if value is not None else None

    def _json_identifiers(self, attributes: dict) -> set[str]:
        terms: set[str] = set()
        for tag, element in attributes.items():
            vr, number = element.get("vr", "UN"), int(tag, 16)
            if vr == "SQ":
                for item in element.get("Value") or []:
                    terms |= self._json_identifiers(item) if isinstance(item, dict) else set()
            elif self.action(number, vr) != KEEP:
                for value in element.get("Value") or []:
                    text = " ".join(value.values()) if isinstance(value, dict) else str(value)
                    terms |= self._terms_of(number, vr, text)
        return terms

    # -- what pages show ----------------------------------------------------------------------

    def study(self, study) -> Shown:
        extra = [study.accession_number or "", *name_parts(study.referring_physician)]
        return Shown(study, description=self.description(study.description, extra),
                     study_date=study.study_date if self.keeps("retain_dates") else None,
                     study_time=study.study_time if self.keeps("retain_dates") else "",
                     location=study.location if self.keeps("retain_institution") else "",
                     accession_number="", referring_physician="")

    def listed(self, row):
        """A row of the exam list (``pages.ListedStudy``), as the study would be shown."""
        return row._replace(description=self.description(row.description),
                            study_date=row.study_date if self.keeps("retain_dates") else None,
                            location=row.location if self.keeps("retain_institution") else "")

    def series(self, series) -> Shown:
        return Shown(series, description=self.description(series.description))

    def report(self, report) -> Shown:
        return Shown(report, author="", title=self.text(report.title), text=self.text(report.text) or None,
                     signed_at=report.signed_at if self.keeps("retain_dates") else None,
                     pdf_blob_key=None, withheld_pdf=bool(report.pdf_blob_key))

    def patient(self, patient) -> Shown:
        keep = self.keeps("retain_patient_characteristics")
        return Shown(patient, patient_id=self.patient_id(patient.patient_id), issuer="", family_name="",
                     given_name="", birth_date=None, email=None, mobile=None, sex=patient.sex if keep else "")


def _code_item(code: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", meaning
    return item


def _values(value) -> list:
    if value is None or isinstance(value, (bytes, bytearray)):
        return []
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]


def _each(value, change):
    if value is None or value == "":
        return value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [change(item) for item in value]
    return change(value)


# -- what cannot be cleaned -----------------------------------------------------------------------

def _flag(header: dict, tag: str) -> bool:
    values = (header or {}).get(tag, {}).get("Value") or [""]
    return str(values[0]).strip().upper() == "YES"


def can_clean(instance: Instance) -> bool:
    """Whether an instance can go to such a share: no text in its pixels, no face, no document."""
    return instance.sop_class_uid not in DOCUMENT_CLASSES and not _flag(instance.header, BURNED_IN) \
        and not _flag(instance.header, VISUAL_FEATURES)


def cleanable():
    """``can_clean`` as a clause on ``Instance``, for the queries that list what a share sees."""
    flags = [func.upper(func.coalesce(Instance.header[(tag, "Value", 0)].as_string(), "")) for tag in
             (BURNED_IN, VISUAL_FEATURES)]
    return not_(Instance.sop_class_uid.in_(DOCUMENT_CLASSES)) & (flags[0] != "YES") & (flags[1] != "YES")
