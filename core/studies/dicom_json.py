"""The DICOM JSON model (PS3.18 F.2) of what the store holds: the attributes QIDO-RS
returns at study, series and instance level, and the stored headers served as
WADO-RS metadata with their bulk data placeholders turned into addresses.

Everything here is built from rows already fetched; nothing reads files or queries.
"""
from __future__ import annotations

import copy
from urllib.parse import quote

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from core.access import Principal
from core.studies.models import Instance, Patient, Series, Study

CHARSET_UTF8 = "ISO_IR 192"
PIXEL_DATA = "7FE00010"
# Instance-level attributes QIDO-RS returns by default (PS3.18 Table 10.6.3-5), read from the stored header
INSTANCE_TAGS = ("00080016", "00080018", "00200013", "00280010", "00280011", "00280100", "00280008")
SERIES_HEADER_TAGS = ("00080021", "00080031")  # Series Date and Time, when the file has them


def element(vr: str, *values) -> dict:
    """One DICOM JSON attribute; empty values leave it present without ``Value``."""
    kept = [value for value in values if value not in (None, "")]
    return {"vr": vr, "Value": kept} if kept else {"vr": vr}


def person(name: str) -> dict:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]} if name else {"vr": "PN"}


def tag_of(name: str) -> str | None:
    """An attribute as 8 upper-case hex digits, from a keyword (``PatientID``) or a tag
    (``00100020``, ``0010,0020``); None if it is neither."""
    cleaned = name.strip().replace(",", "").replace("(", "").replace(")", "")
    if len(cleaned) == 8:
        try:
            int(cleaned, 16)
            return cleaned.upper()
        except ValueError:
            pass
    number = tag_for_keyword(name.strip())
    return f"{number:08X}" if number is not None else None


def keyword_of(name: str) -> str | None:
    """A keyword from a keyword or a tag; None for private or unknown attributes."""
    tag = tag_of(name)
    return keyword_for_tag(int(tag, 16)) or None if tag else None


def da(value) -> str:
    return value.strftime("%Y%m%d") if value else ""


def url(base: str, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> str:
    address = f"{base}/studies/{quote(study_uid, safe='')}"
    if series_uid:
        address += f"/series/{quote(series_uid, safe='')}"
    if sop_uid:
        address += f"/instances/{quote(sop_uid, safe='')}"
    return address


def patient_name(patient: Patient) -> str:
    return "^".join(part for part in (patient.family_name, patient.given_name) if part) if patient else ""


def study_attributes(study: Study, patient: Patient, base: str, *, series_count: int | None = None,
                     instance_count: int | None = None, modalities: str | None = None) -> dict:
    """The study-level attributes (PS3.18 Table 10.6.3-3). Counts and modalities default to the
    stored ones; a patient-side caller passes those of the instances it may see."""
    modalities = study.modalities if modalities is None else modalities
    attributes = {
        "00080005": element("CS", CHARSET_UTF8),
        "00080020": element("DA", da(study.study_date)),
        "00080030": element("TM", study.study_time),
        "00080050": element("SH", study.accession_number or ""),
        "00080056": element("CS", "ONLINE"),
        "00080061": element("CS", *[m for m in modalities.split("\\") if m]),
        "00080080": element("LO", study.location),
        "00080090": person(study.referring_physician),
        "00081030": element("LO", study.description),
        "00081190": element("UR", url(base, study.study_uid)),
        "00100010": person(patient_name(patient)),
        "00100020": element("LO", patient.patient_id if patient else ""),
        "00100030": element("DA", da(patient.birth_date) if patient else ""),
        "00100040": element("CS", patient.sex if patient else ""),
        "0020000D": element("UI", study.study_uid),
        "00201206": element("IS", study.series_count if series_count is None else series_count),
        "00201208": element("IS", study.instance_count if instance_count is None else instance_count),
    }
    if patient is not None and patient.issuer:
        attributes["00100021"] = element("LO", patient.issuer)
    return attributes


def series_attributes(series: Series, study: Study, base: str, *, instance_count: int | None = None) -> dict:
    """The series-level attributes (PS3.18 Table 10.6.3-4)."""
    return {
        "00080005": element("CS", CHARSET_UTF8),
        "00080056": element("CS", "ONLINE"),
        "00080060": element("CS", series.modality),
        "0008103E": element("LO", series.description),
        "00081190": element("UR", url(base, study.study_uid, series.series_uid)),
        "00180015": element("CS", series.body_part),
        "0020000D": element("UI", study.study_uid),
        "0020000E": element("UI", series.series_uid),
        "00200011": element("IS", series.series_number),
        "00201209": element("IS", series.instance_count if instance_count is None else instance_count),
    }


def instance_attributes(instance: Instance, series: Series, study: Study, base: str,
                        include: set[str] | None = None, everything: bool = False) -> dict:
    """The instance-level attributes (PS3.18 Table 10.6.3-5) from the stored header, plus the
    ``include`` tags (``includefield``) or the whole header (``includefield=all``)."""
    instance_url = url(base, study.study_uid, series.series_uid, instance.sop_uid)
    header = instance.header or {}
    if everything:
        attributes = with_addresses(header, instance_url)
    else:
        wanted = set(INSTANCE_TAGS) | set(include or ())
        attributes = with_addresses({tag: header[tag] for tag in wanted if tag in header}, instance_url)
    attributes.update({
        "00080005": element("CS", CHARSET_UTF8),
        "00080016": element("UI", instance.sop_class_uid),
        "00080018": element("UI", instance.sop_uid),
        "00080056": element("CS", "ONLINE"),
        "00081190": element("UR", instance_url),
        "00083002": element("UI", instance.transfer_syntax),
        "0020000D": element("UI", study.study_uid),
        "0020000E": element("UI", series.series_uid),
    })
    if instance.instance_number is not None:
        attributes["00200013"] = element("IS", instance.instance_number)
    return attributes


def with_addresses(header: dict, instance_url: str) -> dict:
    """A copy of a stored header whose ``bulk:<tag>`` placeholders (at any depth) are the
    instance's ``/bulk/<tag>`` addresses."""

    def walk(dataset: dict) -> dict:
        for value in dataset.values():
            uri = value.get("BulkDataURI")
            if isinstance(uri, str) and uri.startswith("bulk:"):
                value["BulkDataURI"] = f"{instance_url}/bulk/{uri[5:]}"
            for item in value.get("Value", ()) if value.get("vr") == "SQ" else ():
                if isinstance(item, dict):
                    walk(item)
        return dataset

    return walk(copy.deepcopy(header))


def metadata(instance: Instance, series: Series, study: Study, base: str) -> dict:
    """WADO-RS metadata of one instance: its stored header with addresses, the transfer syntax it
    is held in, and a Pixel Data address for images."""
    instance_url = url(base, study.study_uid, series.series_uid, instance.sop_uid)
    dataset = with_addresses(instance.header or {}, instance_url)
    dataset["00083002"] = element("UI", instance.transfer_syntax)
    dataset["00081190"] = element("UR", instance_url)
    if instance.rows:
        bits = (instance.header or {}).get("00280100", {}).get("Value", [16])[0]
        dataset[PIXEL_DATA] = {"vr": "OW" if bits and bits > 8 else "OB",
                               "BulkDataURI": f"{instance_url}/bulk/{PIXEL_DATA}"}
    return dict(sorted(dataset.items()))


def hides_patient(principal: Principal) -> bool:
    """A share opened with "hide patient details" shows images without who they belong to."""
    return principal.kind == "share" and "hide_details" in principal.scope
