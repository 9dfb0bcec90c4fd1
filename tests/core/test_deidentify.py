"""Hide patient details (issue 7): DICOM PS3.15 Annex E, Basic Application Level Confidentiality
Profile, for shares. A canary study plants distinctive values in every identifying attribute
(private tags and burned-in flags too), is shared with "hide patient details", and nothing of
them, nor any original UID, reaches the recipient: pages, viewer, QIDO-RS, WADO-RS metadata and
instances, pictures and a ZIP export. The same share without the option shows them all, so
the canary test can fail."""
from __future__ import annotations

import re
import subprocess
import zipfile
from dataclasses import dataclass
from datetime import date
from email.parser import BytesParser
from io import BytesIO

import pydicom
import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from support import add_linked_patient, ingest_file, post_form

from core.access import SHARE_COOKIE, Principal
from core.identity import service as identity
from core.sharing import deidentify, pseudonyms
from core.sharing import service as sharing
from core.sharing.annex_e import ATTRIBUTES
from core.site import Deidentify, SiteError, load_site
from core.studies import queries, synthetic
from core.studies.exports import service as exports
from core.studies.exports.models import Export
from core.studies.models import Instance, Report, Study

DICOM_JSON = {"Accept": "application/dicom+json"}
BIRTH = date(1901, 1, 1)
DATES = re.compile(r"19010101|(?<![0-9.])1901(?![0-9])")  # the planted dates, written any usual way
CANARY = re.compile(r"[\w-]*canary[\w -]*", re.IGNORECASE)
PRIVATE_BULK = bytes(2000)[:-20] + b"CANARYPRIVATE BULK.."


# -- the canary study ---------------------------------------------------------------------------------

def plant(ds: Dataset) -> Dataset:
    """Distinctive values in the identifying attributes of ``ds`` (beyond what ``synthetic`` sets)."""
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate"):
        setattr(ds, keyword, "19010101")
    ds.AcquisitionDateTime = "19010101120000"
    ds.StudyTime = ds.SeriesTime = "235959"
    ds.AccessionNumber, ds.StudyID = "CANARYACC", "CANARYSTUDY"
    ds.StudyDescription = "CT CHEST of CANARYNAME"
    ds.SeriesDescription = "Axial CANARYNAME CANARYGIVEN"
    ds.ImageComments = "Patient CANARYNAME moved"
    ds.ProtocolName = "CANARYPROTOCOL"
    ds.InstitutionName, ds.InstitutionAddress = "CANARY HOSPITAL", "1 CANARY STREET"
    ds.InstitutionalDepartmentName = "CANARY DEPARTMENT"
    ds.ReferringPhysicianName, ds.PerformingPhysicianName = "CANARYREF^Doctor", "CANARYPERFORMER^Doctor"
    ds.OperatorsName, ds.NameOfPhysiciansReadingStudy = "CANARYOPERATOR", "CANARYREADING^Doctor"
    ds.StationName, ds.DeviceSerialNumber = "CANARYSTATION", "CANARYSERIAL"
    ds.OtherPatientIDs, ds.OtherPatientNames = "CANARY-OTHER-ID", "CANARYOTHERNAME"
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = "CANARY-SEQ-ID", "CANARYSEQISSUER"
    ds.OtherPatientIDsSequence = [other]
    ds.IssuerOfPatientID = "CANARYISSUER"
    ds.PatientAddress, ds.PatientTelephoneNumbers = "CANARYADDRESS", "CANARYPHONE"
    ds.PatientMotherBirthName, ds.PatientBirthName = "CANARYMOTHER", "CANARYBIRTHNAME"
    ds.PatientAge, ds.PatientWeight, ds.PatientSize = "125Y", 71.5, 1.75
    ds.AdditionalPatientHistory, ds.PatientComments = "CANARYHISTORY", "CANARYCOMMENT"
    ds.MedicalRecordLocator, ds.AdmissionID = "CANARYRECORD", "CANARYADMISSION"
    request = Dataset()
    request.RequestedProcedureID, request.ScheduledProcedureStepID = "CANARYREQ", "CANARYSTEP"
    request.RequestedProcedureDescription = "CANARYNAME procedure"
    ds.RequestAttributesSequence = [request]
    ds.private_block(0x0009, "CANARYPRIVATE CREATOR", create=True).add_new(0x01, "LO", "CANARYPRIVATE value")
    ds.private_block(0x0009, "CANARYPRIVATE CREATOR").add_new(0x02, "OB", PRIVATE_BULK)
    return ds


@dataclass
class Canary:
    study: Study
    datasets: list[Dataset]  # as ingested
    originals: set[str]  # every UID the files carry, but those the standard defines
    images: list[Dataset]  # the cleanable CT images
    burned: Dataset
    account: object


def _uids(ds: Dataset) -> set[str]:
    found = {str(element.value) for element in ds.iterall() if element.VR == "UI" and element.value}
    found.add(str(ds.file_meta.MediaStorageSOPInstanceUID))
    return {uid for uid in found if not uid.startswith("1.2.840.10008.")}


@pytest.fixture
def canary(session, runtime, tmp_path, frozen_clock) -> Canary:
    account = identity.create_account(session, email="canary@example.test", name="Canaryaccount Holder", role="user",
                                      password="a long unique passphrase", how="staff", email_verified=True)
    add_linked_patient(session, account.id, issuer="CANARYISSUER", patient_id="CANARY-ID-7", family_name="CANARYNAME",
                       given_name="CANARYGIVEN", birth_date=BIRTH, sex="F", email="canarymail@example.test")
    spec = synthetic.StudySpec(patient_id="CANARY-ID-7", issuer="CANARYISSUER", family_name="CANARYNAME",
                               given_name="CANARYGIVEN", birth_date=BIRTH, sex="F", accession_number="CANARYACC",
                               study_date=BIRTH, description="CT CHEST of CANARYNAME", institution="CANARY HOSPITAL",
                               instances=4, rows=32, columns=32)
    images = [plant(ds) for ds in synthetic.study(spec)]
    frame = generate_uid()
    for ds in images:
        ds.FrameOfReferenceUID = frame
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = images[0].SOPClassUID, images[0].SOPInstanceUID
    images[1].ReferencedImageSequence = [reference]
    burned = plant(synthetic.image(spec, 1, 0, generate_uid()))
    burned.BurnedInAnnotation, burned.ImageComments = "YES", "CANARYBURNED name in the pixels"
    report = plant(synthetic.text_report(spec, "Findings for CANARYNAME CANARYGIVEN (CANARY-ID-7), born "
                                               "01/01/1901: the lungs are clear."))
    report.VerifyingObserverSequence[0].VerifyingObserverName = "CANARYREADER^Riley"
    report.VerifyingObserverSequence[0].VerifyingOrganization = "CANARY HOSPITAL"
    pdf = plant(synthetic.pdf_report(spec, synthetic.minimal_pdf("Report of CANARYNAME")))
    datasets = [*images, burned, report, pdf]
    for path in synthetic.write(datasets, tmp_path / "canary"):
        assert ingest_file(session, runtime, path).outcome == "stored"
    session.commit()
    study = session.scalar(select(Study).where(Study.study_uid == spec.study_uid))
    return Canary(study, datasets, set().union(*(_uids(ds) for ds in datasets)), images, burned, account)


def open_share(session, runtime, client, canary: Canary, *, hide_details: bool) -> str:
    """A share of the canary study (download allowed) made by its patient, opened in ``client``."""
    principal = Principal(kind="account", id=str(canary.account.id), roles=frozenset({"user"}),
                          scope=frozenset({str(canary.study.patient_ref)}))
    made = sharing.create(session, runtime, principal, nickname="For the doctor", study_uids=[canary.study.study_uid],
                          allow_download=True, hide_details=hide_details, acknowledged=True)
    token = sharing.open_share(session, runtime, made.share, client="testclient")
    session.commit()
    client.cookies.set(SHARE_COOKIE, token)
    return str(made.share.id)


class Seen:
    """Everything the recipient received: texts and raw bytes, with where each came from."""

    def __init__(self):
        self.parts: list[tuple[str, bytes]] = []

    def add(self, where: str, answer) -> None:
        headers = "\n".join(f"{name}: {value}" for name, value in answer.headers.items())
        self.parts.append((where, headers.encode() + b"\n\n" + answer.content))

    def add_bytes(self, where: str, data: bytes) -> None:
        self.parts.append((where, data))

    def leaks(self, originals: set[str]) -> list[str]:
        found = []
        for where, data in self.parts:
            text = data.decode("latin-1")
            found += [f"{where}: {match.group(0)!r}" for pattern in (CANARY, DATES) for match in pattern.finditer(text)]
            found += [f"{where}: original UID {uid}" for uid in originals if uid in text]
        return found


def get(client, seen: Seen, url: str, *, status: int = 200, **kwargs):
    answer = client.get(url, **kwargs)
    assert answer.status_code == status, (url, answer.status_code, answer.text[:300])
    seen.add(url, answer)
    return answer


def value(dataset: dict, tag: str):
    return (dataset.get(tag, {}).get("Value") or [None])[0]


def multipart_datasets(answer) -> list[Dataset]:
    """The application/dicom parts of a multipart/related answer, read by pydicom."""
    head = f"Content-Type: {answer.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser().parsebytes(head + answer.content)
    return [pydicom.dcmread(BytesIO(part.get_payload(decode=True))) for part in message.get_payload()]


# -- the canary test ----------------------------------------------------------------------------------

def test_nothing_identifying_reaches_a_recipient_of_a_share_that_hides_patient_details(session, runtime, client,
                                                                                      canary):
    share_id = open_share(session, runtime, client, canary, hide_details=True)
    seen = Seen()

    # QIDO-RS: the study under its replacement UID, the patient's attributes gone, no match on them
    [study] = get(client, seen, "/dicomweb/studies", headers=DICOM_JSON).json()
    study_uid = value(study, "0020000D")
    assert study_uid.startswith("2.25.") and study_uid != canary.study.study_uid
    matched = get(client, seen, "/dicomweb/studies?PatientName=SOMEONE*&StudyDate=20250101", headers=DICOM_JSON)
    assert len(matched.json()) == 1 and "PatientName" in matched.headers["warning"]
    series = get(client, seen, f"/dicomweb/studies/{study_uid}/series", headers=DICOM_JSON).json()
    instances = get(client, seen, f"/dicomweb/studies/{study_uid}/instances?includefield=all", headers=DICOM_JSON).json()
    get(client, seen, "/dicomweb/instances?includefield=all", headers=DICOM_JSON)
    # the burned-in image and the PDF report cannot be cleaned: the CT images and the text report remain
    assert len(instances) == len(canary.images) + 1 and len(series) == 2
    ct_series = next(value(one, "0020000E") for one in series if value(one, "00080060") == "CT")
    images = [one for one in instances if value(one, "0020000E") == ct_series]
    sop_uids = [value(one, "00080018") for one in images]

    # WADO-RS metadata and instances: cleaned, pixels untouched, series and references kept together
    metadata = get(client, seen, f"/dicomweb/studies/{study_uid}/metadata", headers=DICOM_JSON).json()
    assert all(value(one, "00120062") == "YES" for one in metadata)
    assert not any(tag.startswith(("0009", "0010")) for one in metadata for tag in one)
    retrieved = get(client, seen, f"/dicomweb/studies/{study_uid}", headers={"Accept": "multipart/related; "
                                                                                     "type=\"application/dicom\""})
    files = multipart_datasets(retrieved)
    assert len(files) == len(canary.images) + 1
    by_number = {int(ds.InstanceNumber): ds for ds in files if ds.Modality == "CT"}
    for original in canary.images:
        cleaned = by_number[int(original.InstanceNumber)]
        assert cleaned.PixelData == original.PixelData and cleaned.PatientIdentityRemoved == "YES"
        assert cleaned.StudyInstanceUID == study_uid and cleaned.SeriesInstanceUID == ct_series
        assert cleaned.SOPInstanceUID in sop_uids and cleaned.file_meta.MediaStorageSOPInstanceUID == cleaned.SOPInstanceUID
        assert not [element for element in cleaned if element.tag.is_private]
    assert by_number[2].ReferencedImageSequence[0].ReferencedSOPInstanceUID == by_number[1].SOPInstanceUID
    assert len({ds.FrameOfReferenceUID for ds in by_number.values()}) == 1
    for ds in files:
        seen.add_bytes(f"retrieved {ds.SOPInstanceUID}", ds.to_json().encode())
    one = f"/dicomweb/studies/{study_uid}/series/{ct_series}/instances/{sop_uids[0]}"
    single = get(client, seen, one, headers={"Accept": "multipart/related; type=\"application/dicom\""})
    assert multipart_datasets(single)[0].SOPInstanceUID == sop_uids[0]
    get(client, seen, f"{one}/bulk/00091002", status=404)  # a private value, even asked for by its tag

    # pictures carry no text, and their headers nothing of the patient
    for address in (f"{one}/rendered", f"{one}/thumbnail", f"{one}/frames/1/rendered",
                    f"/dicomweb/studies/{study_uid}/thumbnail", f"/dicomweb/studies/{study_uid}/series/{ct_series}/thumbnail"):
        assert get(client, seen, address, headers={"Accept": "image/jpeg"}).headers["content-type"] == "image/jpeg"
    get(client, seen, f"{one}/frames/1", headers={"Accept": "multipart/related; type=\"application/octet-stream\""})
    get(client, seen, f"/exams/{study_uid}/images/{sop_uids[0]}.jpg?download=1")

    # what cannot be cleaned is not there, whatever its address
    replaced = pseudonyms.for_export(session, f"share:{share_id}").uid  # as the recipient would meet them
    assert replaced(canary.study.study_uid) == study_uid
    hidden = (f"/dicomweb/studies/{study_uid}/series/{replaced(canary.burned.SeriesInstanceUID)}"
              f"/instances/{replaced(canary.burned.SOPInstanceUID)}")
    get(client, seen, f"{hidden}/rendered", status=404, headers={"Accept": "image/jpeg"})
    get(client, seen, f"{hidden}/metadata", status=404, headers=DICOM_JSON)

    # pages: the exam's tabs, the report (its text cleaned), the viewer
    shared = get(client, seen, "/shared")
    assert f'href="/exams/{study_uid}"' in shared.text and "Date not recorded" in shared.text
    summary = get(client, seen, f"/exams/{study_uid}")
    assert "Exam" in summary.text and "Not recorded" in summary.text
    report = get(client, seen, f"/exams/{study_uid}/report")
    assert "the lungs are clear" in report.text and "***" in report.text
    assert "It may show the patient" in report.text  # the practice's PDF is not shown
    images_page = get(client, seen, f"/exams/{study_uid}/images")
    assert "2 files of this exam are not shown" in images_page.text
    viewer = get(client, seen, f"/exams/{study_uid}/viewer")
    assert "2 files of this exam are not shown" in viewer.text and study_uid in viewer.text
    text_report = session.scalar(select(Report).where(Report.study_ref == canary.study.id, Report.text.is_not(None)))
    pdf_report = session.scalar(select(Report).where(Report.study_ref == canary.study.id, Report.text.is_(None)))
    get(client, seen, f"/exams/{study_uid}/reports/{text_report.id}/print")
    made_pdf = get(client, seen, f"/exams/{study_uid}/reports/{text_report.id}.pdf?download=1")
    assert made_pdf.content.startswith(b"%PDF") and b"the lungs are clear" in made_pdf.content
    get(client, seen, f"/exams/{study_uid}/reports/{pdf_report.id}.pdf", status=404)

    # a ZIP export, asked for on the pages and made by the worker
    get(client, seen, f"/exports/new?format=zip&study={study_uid}")
    asked = post_form(client, "/exports", {"format": "zip", "study": study_uid, "acknowledge": "yes"},
                      follow_redirects=False)
    assert asked.status_code == 303, asked.text[:300]
    export = session.scalar(select(Export).order_by(Export.id.desc()))
    assert export.options.get("deidentify") is True
    assert exports.run(runtime, export.id) == "ready"
    zipped = get(client, seen, f"/exports/{export.public_id}/download")
    with zipfile.ZipFile(BytesIO(zipped.content)) as archive:
        names = archive.namelist()
        for name in names:
            seen.add_bytes(f"zip {name}", archive.read(name))
        readme = archive.read("README.TXT").decode()
        dicomdir = pydicom.dcmread(BytesIO(archive.read("DICOMDIR")))
        exported = [pydicom.dcmread(BytesIO(archive.read(name))) for name in names if name.startswith("DICOM/")]
    assert "2 files are not included" in readme and "removed from these files" in readme
    assert len(exported) == len(canary.images) + 1 and all(ds.PatientIdentityRemoved == "YES" for ds in exported)
    assert {ds.SOPInstanceUID for ds in exported} >= set(sop_uids)  # the same UIDs as on the pages
    assert {str(record.ReferencedSOPInstanceUIDInFile) for record in dicomdir.DirectoryRecordSequence
            if "ReferencedSOPInstanceUIDInFile" in record} == {ds.SOPInstanceUID for ds in exported}
    for ds in exported:
        seen.add_bytes(f"exported {ds.SOPInstanceUID}", ds.to_json().encode())

    assert seen.leaks(canary.originals) == []
    assert len(seen.parts) > 35


def test_disc_images_and_pictures_for_such_a_share_are_de_identified_too(session, runtime, client, canary, tmp_path):
    open_share(session, runtime, client, canary, hide_details=True)
    principal = sharing.principal_for(session, client.cookies[SHARE_COOKIE])
    seen = Seen()
    for format_name in ("iso", "jpg"):
        export, _new = exports.ask(session, runtime, principal, format_name=format_name, language="es",
                                   study_uids=[canary.study.study_uid], acknowledged=True)
        session.commit()
        assert exports.run(runtime, export.id) == "ready"
        if format_name == "jpg":
            with zipfile.ZipFile(exports.file_of(runtime, export)) as archive:
                pictures = [name for name in archive.namelist() if name.endswith(".JPG")]
                seen.parts += [(f"jpg {name}", name.encode() + archive.read(name)) for name in archive.namelist()]
            assert len(pictures) == len(canary.images)  # not the burned-in image
            continue
        disc = tmp_path / "disc"
        extracted = subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(exports.file_of(runtime, export)),
                                    "-extract", "/", str(disc)], capture_output=True, timeout=60)
        assert extracted.returncode == 0, extracted.stderr
        files = [path for path in disc.rglob("*") if path.is_file()]
        seen.parts += [(f"disc {path.relative_to(disc)}", path.read_bytes()) for path in files]
        dicom = [pydicom.dcmread(path) for path in files if path.parent.name.startswith("SE")]
        assert len(dicom) == len(canary.images) + 1 and all(ds.PatientIdentityRemoved == "YES" for ds in dicom)
        assert "no se incluyen" in (disc / "README.TXT").read_text()
        seen.parts += [(f"disc {ds.SOPInstanceUID}", ds.to_json().encode()) for ds in dicom]
    assert seen.leaks(canary.originals) == []


def test_a_share_without_hide_details_shows_the_planted_values(session, runtime, client, canary):
    """The same checks find the canaries when the share does not hide details: the test above can fail."""
    open_share(session, runtime, client, canary, hide_details=False)
    seen = Seen()
    [study] = get(client, seen, "/dicomweb/studies", headers=DICOM_JSON).json()
    assert value(study, "0020000D") == canary.study.study_uid
    assert value(study, "00100020") == "CANARY-ID-7" and value(study, "00100010")["Alphabetic"] == "CANARYNAME^CANARYGIVEN"
    get(client, seen, f"/exams/{canary.study.study_uid}")
    retrieved = get(client, seen, f"/dicomweb/studies/{canary.study.study_uid}",
                    headers={"Accept": "multipart/related; type=\"application/dicom\""})
    files = multipart_datasets(retrieved)
    assert len(files) == len(canary.datasets)  # the burned-in image and the PDF report too
    assert any(ds.get("BurnedInAnnotation") == "YES" for ds in files)
    leaks = "\n".join(seen.leaks(canary.originals))
    for planted in ("CANARYNAME", "CANARYACC", "CANARY HOSPITAL", "CANARYPRIVATE", "19010101", "original UID"):
        assert planted in leaks


# -- the profile ---------------------------------------------------------------------------------------

def deidentifier(**options) -> deidentify.Deidentifier:
    return deidentify.Deidentifier(deidentify.share_key(None, "1"), Deidentify(**options), {"CANARYNAME"})


def test_the_action_table_is_table_e1_1():
    assert len(ATTRIBUTES) > 400
    assert all(keyword_for_tag(tag) for tag in ATTRIBUTES)  # every row is an attribute pydicom knows
    assert {code for code, _options in ATTRIBUTES.values()} == set(deidentify.RESOLVED)
    basic = deidentifier()
    decided = {keyword: basic.action(pydicom.datadict.tag_for_keyword(keyword), dictionary_VR(keyword))
               for keyword in ("PatientName", "PatientID", "AccessionNumber", "StudyDescription", "SOPInstanceUID",
                               "InstitutionName", "DeviceSerialNumber", "StudyDate", "PatientAge", "ContentSequence",
                               "VerifyingObserverName", "Modality", "PixelData", "SOPClassUID", "Manufacturer",
                               "InstanceCreationDate", "ScheduledPerformingPhysicianName", "PatientBirthDateInAlternativeCalendar")}
    assert decided == {"PatientName": "Z", "PatientID": "Z", "AccessionNumber": "Z", "StudyDescription": "X",
                       "SOPInstanceUID": "U", "InstitutionName": "Z", "DeviceSerialNumber": "Z", "StudyDate": "Z",
                       "PatientAge": "X", "ContentSequence": "D", "VerifyingObserverName": "D", "Modality": "K",
                       "PixelData": "K", "SOPClassUID": "U", "Manufacturer": "K", "InstanceCreationDate": "D",
                       "ScheduledPerformingPhysicianName": "X", "PatientBirthDateInAlternativeCalendar": "X"}
    assert basic.action(0x00091001, "LO") == "X" and basic.action(0x60003000, "OW") == "X"  # private, overlay
    assert basic.uid("1.2.840.10008.5.1.4.1.1.2") == "1.2.840.10008.5.1.4.1.1.2"  # a SOP class stays


def test_site_options_keep_what_they_name():
    dated, device = deidentifier(retain_dates=True), deidentifier(retain_device=True)
    institution, characteristics = deidentifier(retain_institution=True), deidentifier(retain_patient_characteristics=True)
    described = deidentifier(clean_descriptions=True)
    tag = pydicom.datadict.tag_for_keyword
    assert dated.action(tag("StudyDate"), "DA") == "K" and dated.action(tag("InstanceCreationDate"), "DA") == "K"
    assert dated.action(tag("PatientBirthDate"), "DA") == "Z"  # a birth date is never a longitudinal date
    assert device.action(tag("DeviceSerialNumber"), "LO") == "K" and device.action(tag("StationName"), "SH") == "K"
    assert device.action(tag("StudyDate"), "DA") == "Z"
    assert institution.action(tag("InstitutionName"), "LO") == "K"
    assert characteristics.action(tag("PatientAge"), "AS") == "K" and characteristics.action(tag("PatientSex"), "CS") == "K"
    assert described.action(tag("StudyDescription"), "LO") == "C"
    assert described.description("CT CHEST of Canaryname") == "CT CHEST of ***"
    assert deidentifier().description("CT CHEST of Canaryname") == ""


def test_files_are_cleaned_per_option_and_uids_replaced_per_share():
    spec = synthetic.StudySpec(patient_id="CANARY-ID-7", family_name="CANARYNAME", given_name="CANARYGIVEN",
                               birth_date=BIRTH, study_date=BIRTH, instances=1, rows=16, columns=16)
    [original] = [plant(ds) for ds in synthetic.study(spec)]
    buffer = BytesIO()
    original.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()

    basic = pydicom.dcmread(BytesIO(deidentifier().file(data)))
    assert "StudyDate" in basic and not basic.StudyDate and "DeviceSerialNumber" not in basic.DeidentificationMethod
    assert basic.LongitudinalTemporalInformationModified == "REMOVED" and basic.PatientID.startswith("ANON-")
    kept = pydicom.dcmread(BytesIO(deidentifier(retain_dates=True, retain_device=True).file(data)))
    assert (kept.StudyDate, kept.SeriesDate, kept.AcquisitionDate) == ("19010101",) * 3
    assert (kept.StationName, kept.DeviceSerialNumber) == ("CANARYSTATION", "CANARYSERIAL")
    assert not kept.PatientBirthDate and not kept.PatientName and not kept.InstitutionName
    assert kept.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert [item.CodeValue for item in kept.DeidentificationMethodCodeSequence] == ["113100", "113106", "113109"]

    other_share = deidentify.Deidentifier(deidentify.share_key(None, "2"), Deidentify())
    assert basic.SOPInstanceUID == deidentifier().uid(original.SOPInstanceUID)  # the same share: the same UID
    assert other_share.uid(original.SOPInstanceUID) != basic.SOPInstanceUID  # two shares cannot be linked
    secret = deidentify.Deidentifier(deidentify.share_key("a site secret of some length", "1"), Deidentify())
    assert secret.uid(original.SOPInstanceUID) != basic.SOPInstanceUID
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]{0,38})", basic.SOPInstanceUID) and len(basic.SOPInstanceUID) <= 64


def test_cleaned_files_are_as_valid_as_their_originals(tmp_path):
    """dciodvfy (dicom3tools) finds no error in a cleaned image or report that the original lacks:
    what the profile empties is given a neutral value where the IOD requires one."""
    spec = synthetic.StudySpec(patient_id="CANARY-ID-7", instances=1, rows=16, columns=16)
    for name, original in (("image", plant(synthetic.study(spec)[0])), ("report", synthetic.text_report(spec, "x"))):
        buffer = BytesIO()
        original.save_as(buffer, enforce_file_format=True)
        (tmp_path / f"{name}.dcm").write_bytes(buffer.getvalue())
        (tmp_path / f"{name}-clean.dcm").write_bytes(deidentifier().file(buffer.getvalue()))
        before, after = (_errors(tmp_path / f"{name}{suffix}.dcm") for suffix in ("", "-clean"))
        assert before and after - before == set(), name  # (the synthetic files lack some attributes)


def _errors(path) -> set[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return {line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")}


def test_the_site_file_chooses_the_options(tmp_path):
    from support import registry, site_data, write_site

    path = write_site(tmp_path, site_data(tmp_path, sharing={"deidentify": {"retain_dates": True, "retain_device": True}}))
    options = load_site(path, registry=registry()).config.sharing.deidentify
    assert options.retain_dates and options.retain_device and not options.clean_descriptions
    wrong = write_site(tmp_path, site_data(tmp_path, sharing={"deidentify": {"retain_names": True}}), "wrong.yaml")
    with pytest.raises(SiteError, match="sharing.deidentify.retain_names"):
        load_site(wrong, registry=registry())


def test_what_cannot_be_cleaned_is_found_alike_in_sql_and_in_python(session, canary):
    rows = session.scalars(select(Instance)).all()
    cleanable = set(session.scalars(select(Instance.sop_uid).where(deidentify.cleanable())))
    assert cleanable == {row.sop_uid for row in rows if deidentify.can_clean(row)}
    assert canary.burned.SOPInstanceUID not in cleanable and canary.images[0].SOPInstanceUID in cleanable
    assert len([row for row in rows if not deidentify.can_clean(row)]) == 2  # the burned-in image and the PDF
    share = Principal(kind="share", id="1", scope=frozenset({f"study:{canary.study.id}", "hide_details"}))
    assert len(session.execute(queries.instances(session, share, canary.study)).all()) == len(canary.images) + 1
    assert pseudonyms.withheld(session, share, canary.study) == 2
