"""DICOMweb (PS3.18) over real stored files: QIDO-RS matching and paging, WADO-RS
instances, metadata, frames and bulk data, STOW-RS outcomes, who sees what (patients,
staff, the PACS; held reports and images), CORS for listed origins, and the audit trail."""
from __future__ import annotations

import io
import re
import uuid
from datetime import date, timedelta
from urllib.parse import urlsplit

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.encaps import encapsulate
from sqlalchemy import select
from support import audit_events, csrf_token, ingest_file, make_site, multipart_body, sign_in_as

from core import clock
from core.audit import service as audit
from core.identity.models import PatientLink
from core.studies import synthetic
from core.studies.models import Patient, Study

TOKEN = "pacs-token-for-tests-0123"
ORIGIN = "https://viewer.example.test"
PASSWORD = "a long unique passphrase"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
BASE = "http://127.0.0.1:8000/dicomweb"  # the test site's base_url: addresses are public ones


@pytest.fixture
def site(tmp_path, database_url):
    return make_site(tmp_path, database=database_url, studies={"pacs_token": TOKEN, "cors_origins": [ORIGIN]})


@pytest.fixture
def pacs(app):
    return TestClient(app, base_url="https://testserver", headers={"Authorization": f"Bearer {TOKEN}"})


def browser(app, email: str) -> TestClient:
    signed_in = TestClient(app, base_url="https://testserver")
    sign_in_as(signed_in, email, PASSWORD)
    return signed_in


def store(session, runtime, tmp_path, datasets) -> list:
    folder = tmp_path / uuid.uuid4().hex
    results = [ingest_file(session, runtime, path) for path in synthetic.write(datasets, folder)]
    assert all(result.ok for result in results), results
    return results


def spec_for(session, account, **fields) -> synthetic.StudySpec:
    """A study spec of the patient record linked to ``account``."""
    link = session.scalar(select(PatientLink).where(PatientLink.account_id == account.id))
    patient = session.get(Patient, link.patient_ref)
    return synthetic.StudySpec(patient_id=patient.patient_id, issuer=patient.issuer, **fields)


def parts(response) -> list[tuple[dict, bytes]]:
    """The parts of a multipart/related answer: (headers, bytes)."""
    boundary = re.search(r'boundary="?([^";]+)"?', response.headers["content-type"]).group(1).encode()
    found = []
    for chunk in response.content.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _sep, body = chunk.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().strip().splitlines())
        found.append(({k.lower(): v for k, v in headers.items()}, body[:-2] if body.endswith(b"\r\n") else body))
    return found


def value(dataset: dict, tag: str):
    return dataset.get(tag, {}).get("Value", [None])[0]


def path_of(url: str) -> str:
    return urlsplit(url).path


@pytest.fixture
def library(session, runtime, tmp_path):
    """Three studies of two patients on different dates and modalities."""
    specs = {
        "ct": synthetic.StudySpec(patient_id="QP-1", family_name="Quinn", given_name="Alex", instances=3,
                                  accession_number="ACC-CT", study_date=date(2025, 3, 10), frames=2),
        "mr": synthetic.StudySpec(patient_id="QP-1", family_name="Quinn", given_name="Alex", modality="MR",
                                  description="MR KNEE", accession_number="ACC-MR", study_date=date(2025, 11, 2)),
        "cr": synthetic.StudySpec(patient_id="QP-2", family_name="Rivera", given_name="Bo", modality="CR",
                                  description="CR HAND", accession_number="ACC-CR", study_date=date(2026, 1, 5),
                                  instances=1),
    }
    for spec in specs.values():
        store(session, runtime, tmp_path, synthetic.study(spec))
    return specs


def uids(answer) -> set[str]:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/dicom+json")
    return {value(dataset, "0020000D") for dataset in answer.json()}


def test_qido_studies_match_keys_dates_and_paging(pacs, library):
    ct, mr, cr = library["ct"].study_uid, library["mr"].study_uid, library["cr"].study_uid
    assert uids(pacs.get("/dicomweb/studies", params={"PatientID": "QP-1"})) == {ct, mr}
    assert uids(pacs.get("/dicomweb/studies", params={"00100020": "QP-2"})) == {cr}
    assert uids(pacs.get("/dicomweb/studies", params={"PatientName": "quinn*"})) == {ct, mr}
    assert uids(pacs.get("/dicomweb/studies", params={"PatientName": "Rivera^Bo"})) == {cr}
    assert uids(pacs.get("/dicomweb/studies", params={"StudyDate": "20251102"})) == {mr}
    assert uids(pacs.get("/dicomweb/studies", params={"StudyDate": "20250101-20251231"})) == {ct, mr}
    assert uids(pacs.get("/dicomweb/studies", params={"StudyDate": "20251101-", "PatientID": "QP*"})) == {mr, cr}
    assert uids(pacs.get("/dicomweb/studies", params={"StudyDate": "-20250401"})) == {ct}
    assert uids(pacs.get("/dicomweb/studies", params={"ModalitiesInStudy": "MR"})) == {mr}
    assert uids(pacs.get("/dicomweb/studies", params={"ModalitiesInStudy": "CR,MR"})) == {mr, cr}
    assert uids(pacs.get("/dicomweb/studies", params={"AccessionNumber": "ACC-CR"})) == {cr}
    assert uids(pacs.get("/dicomweb/studies", params=[("StudyInstanceUID", ct), ("StudyInstanceUID", cr)])) == {ct, cr}
    assert uids(pacs.get("/dicomweb/studies", params={"StudyInstanceUID": f"{ct},{mr}", "fuzzymatching": "true"})) \
        == {ct, mr}
    assert pacs.get("/dicomweb/studies", params={"PatientID": "NOBODY"}).json() == []

    newest_first = [value(d, "0020000D") for d in pacs.get("/dicomweb/studies", params={"PatientID": "QP*"}).json()]
    assert newest_first == [cr, mr, ct]
    page = pacs.get("/dicomweb/studies", params={"PatientID": "QP*", "limit": 1, "offset": 1})
    assert [value(d, "0020000D") for d in page.json()] == [mr]
    assert "additional results" in page.headers["warning"]
    assert "warning" not in pacs.get("/dicomweb/studies", params={"PatientID": "QP*", "offset": 2}).headers

    study = next(d for d in pacs.get("/dicomweb/studies", params={"PatientID": "QP-1"}).json()
                 if value(d, "0020000D") == ct)
    assert study["00100010"]["Value"] == [{"Alphabetic": "Quinn^Alex"}]
    assert value(study, "00201206") == 1 and value(study, "00201208") == 3
    assert study["00080061"]["Value"] == ["CT"] and value(study, "00080020") == "20250310"
    assert value(study, "00081190") == f"{BASE}/studies/{ct}"


def test_qido_refuses_bad_queries_and_names_ignored_keys(pacs, library):
    assert pacs.get("/dicomweb/studies", params={"StudyDate": "2025-13-45"}).status_code == 400
    assert pacs.get("/dicomweb/studies", params={"limit": "many"}).status_code == 400
    ignored = pacs.get("/dicomweb/studies", params={"PatientID": "QP-2", "OperatorsName": "X"})
    assert uids(ignored) == {library["cr"].study_uid}
    assert "OperatorsName" in ignored.headers["warning"]
    assert pacs.get("/dicomweb/studies", headers={"Accept": "application/dicom+xml"}).status_code == 406


def test_qido_series_and_instances_with_includefield(pacs, library):
    ct = library["ct"]
    series = pacs.get(f"/dicomweb/studies/{ct.study_uid}/series")
    assert series.status_code == 200 and len(series.json()) == 1
    assert value(series.json()[0], "00080060") == "CT" and value(series.json()[0], "00201209") == 3
    series_uid = value(series.json()[0], "0020000E")
    assert pacs.get(f"/dicomweb/studies/{ct.study_uid}/series", params={"Modality": "MR"}).json() == []
    across = pacs.get("/dicomweb/series", params={"Modality": "MR"}).json()
    assert [value(d, "0020000D") for d in across] == [library["mr"].study_uid]
    assert value(across[0], "00100020") == "QP-1"  # study attributes come along when the study is not in the path

    listed = pacs.get(f"/dicomweb/studies/{ct.study_uid}/series/{series_uid}/instances",
                      params={"includefield": "PatientName,00180050"}).json()
    assert [value(d, "00200013") for d in listed] == [1, 2, 3]
    assert listed[0]["00100010"]["Value"][0]["Alphabetic"] == "Quinn^Alex"
    assert value(listed[0], "00180050") is not None  # SliceThickness, by tag
    assert value(listed[0], "00280008") == 2 and value(listed[0], "00083002") == EXPLICIT_LE
    assert "00280030" not in listed[0]
    everything = pacs.get(f"/dicomweb/studies/{ct.study_uid}/instances", params={"includefield": "all"}).json()
    assert "00280030" in everything[0] and value(everything[0], "0020000E") == series_uid
    one = value(listed[1], "00080018")
    assert [value(d, "00080018") for d in pacs.get("/dicomweb/instances", params={"SOPInstanceUID": one}).json()] \
        == [one]
    assert pacs.get("/dicomweb/studies/1.2.3.4.5/series").status_code == 404


def test_wado_retrieves_study_series_and_instance_as_dicom(pacs, library):
    ct = library["ct"]
    answer = pacs.get(f"/dicomweb/studies/{ct.study_uid}", headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    received = [pydicom.dcmread(io.BytesIO(body)) for _headers, body in parts(answer)]
    assert len(received) == 3 and {str(ds.StudyInstanceUID) for ds in received} == {ct.study_uid}
    assert all(ds.preamble == b"\0" * 128 for ds in received)
    assert received[0].pixel_array.shape == (2, 64, 64)
    series_uid = str(received[0].SeriesInstanceUID)
    sop_uid = str(received[1].SOPInstanceUID)
    single = pacs.get(f"/dicomweb/studies/{ct.study_uid}/series/{series_uid}/instances/{sop_uid}")
    [(headers, body)] = parts(single)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    assert pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID == sop_uid
    assert len(parts(pacs.get(f"/dicomweb/studies/{ct.study_uid}/series/{series_uid}"))) == 3
    assert pacs.get(f"/dicomweb/studies/{ct.study_uid}/series/{series_uid}/instances/1.2.3").status_code == 404


def test_wado_sends_the_stored_syntax_or_explicit_little_endian(pacs, session, runtime, tmp_path):
    spec = synthetic.StudySpec(patient_id="TS-1", instances=1)
    dataset = synthetic.study(spec)[0]
    dataset.file_meta.TransferSyntaxUID = IMPLICIT_LE
    store(session, runtime, tmp_path, [dataset])
    default = parts(pacs.get(f"/dicomweb/studies/{spec.study_uid}",
                             headers={"Accept": 'multipart/related; type="application/dicom"'}))
    assert default[0][0]["content-type"].endswith(EXPLICIT_LE)
    transcoded = pydicom.dcmread(io.BytesIO(default[0][1]))
    assert transcoded.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(transcoded.pixel_array, dataset.pixel_array)
    anything = parts(pacs.get(f"/dicomweb/studies/{spec.study_uid}",
                              headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}))
    assert anything[0][0]["content-type"].endswith(IMPLICIT_LE)
    refused = pacs.get(f"/dicomweb/studies/{spec.study_uid}",
                       headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}'})
    assert refused.status_code == 406
    assert pacs.get(f"/dicomweb/studies/{spec.study_uid}", headers={"Accept": "text/html"}).status_code == 406


def test_metadata_has_addresses_for_bulk_data_and_pixels(pacs, session, runtime, tmp_path, library):
    ct = library["ct"]
    study_level = pacs.get(f"/dicomweb/studies/{ct.study_uid}/metadata")
    assert study_level.status_code == 200 and len(study_level.json()) == 3
    first = study_level.json()[0]
    series_uid, sop_uid = value(first, "0020000E"), value(first, "00080018")
    instance_url = f"{BASE}/studies/{ct.study_uid}/series/{series_uid}/instances/{sop_uid}"
    assert first["7FE00010"]["BulkDataURI"] == f"{instance_url}/bulk/7FE00010"
    assert value(first, "00083002") == EXPLICIT_LE and value(first, "00280010") == 64
    assert len(pacs.get(f"/dicomweb/studies/{ct.study_uid}/series/{series_uid}/metadata").json()) == 3
    assert len(pacs.get(path_of(instance_url) + "/metadata").json()) == 1
    pixels = parts(pacs.get(path_of(first["7FE00010"]["BulkDataURI"])))
    assert b"".join(body for _h, body in pixels) == synthetic_pixels(pacs, instance_url)

    pdf = synthetic.minimal_pdf("Report bulk data " * 100)  # above the inline threshold
    report = synthetic.pdf_report(synthetic.StudySpec(patient_id="QP-9"), pdf)
    store(session, runtime, tmp_path, [report])
    [document] = pacs.get(f"/dicomweb/studies/{report.StudyInstanceUID}/metadata").json()
    address = document["00420011"]["BulkDataURI"]
    assert address.endswith("/bulk/00420011") and "7FE00010" not in document
    [(headers, body)] = parts(pacs.get(path_of(address)))
    assert headers["content-type"] == "application/octet-stream" and body.rstrip(b"\0") == pdf


def synthetic_pixels(pacs, instance_url: str) -> bytes:
    [(_headers, body)] = parts(pacs.get(path_of(instance_url)))
    return pydicom.dcmread(io.BytesIO(body)).PixelData


def test_native_frames_are_the_pixel_bytes(pacs, library):
    ct = library["ct"]
    first = pacs.get(f"/dicomweb/studies/{ct.study_uid}/instances").json()[0]
    url = path_of(value(first, "00081190"))
    dataset = pydicom.dcmread(io.BytesIO(parts(pacs.get(url))[0][1]))
    frame_size = 64 * 64 * 2
    one = pacs.get(url + "/frames/1", headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    [(headers, body)] = parts(one)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert body == dataset.PixelData[:frame_size]
    both = parts(pacs.get(url + "/frames/2,1"))
    assert [body for _h, body in both] == [dataset.PixelData[frame_size:], dataset.PixelData[:frame_size]]
    assert both[0][1] != both[1][1]
    assert pacs.get(url + "/frames/3").status_code == 404
    assert pacs.get(url + "/frames/0").status_code == 400
    assert pacs.get(url + "/frames/one").status_code == 400
    assert pacs.get(url + "/frames/1", headers={"Accept": 'multipart/related; type="image/jp2"'}).status_code == 406


def jpeg_study(session, runtime, tmp_path, **fields) -> tuple[synthetic.StudySpec, list]:
    spec = synthetic.StudySpec(patient_id="JP-1", jpeg=True, instances=1, **fields)
    datasets = synthetic.study(spec)
    store(session, runtime, tmp_path, datasets)
    return spec, datasets


def test_jpeg_frames_as_stored_or_decoded(pacs, session, runtime, tmp_path):
    spec, [dataset] = jpeg_study(session, runtime, tmp_path, frames=2)
    url = (f"/dicomweb/studies/{spec.study_uid}/series/{dataset.SeriesInstanceUID}"
           f"/instances/{dataset.SOPInstanceUID}")
    stored = pacs.get(url + "/frames/2",
                      headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
    [(headers, body)] = parts(stored)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={JPEG_BASELINE}"
    assert body.startswith(b"\xff\xd8") and body.rstrip(b"\0").endswith(b"\xff\xd9")
    as_jpeg = parts(pacs.get(url + "/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'}))
    assert as_jpeg[0][0]["content-type"] == f"image/jpeg; transfer-syntax={JPEG_BASELINE}"
    [(headers, native)] = parts(pacs.get(url + "/frames/2",
                                         headers={"Accept": 'multipart/related; type="application/octet-stream"'}))
    assert headers["content-type"].endswith(EXPLICIT_LE)
    assert np.array_equal(np.frombuffer(native, np.uint8).reshape(64, 64), dataset.pixel_array[1])
    refused = pacs.get(url + "/frames/1", headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert refused.status_code == 406


def test_an_undecodable_frame_is_a_clear_422(pacs, session, runtime, tmp_path):
    spec = synthetic.StudySpec(patient_id="JP-2", jpeg=True, instances=1)
    [dataset] = synthetic.study(spec)
    dataset.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + b"\x13" * 200 + b"\xff\xd9"])
    store(session, runtime, tmp_path, [dataset])
    url = (f"/dicomweb/studies/{spec.study_uid}/series/{dataset.SeriesInstanceUID}"
           f"/instances/{dataset.SOPInstanceUID}")
    decoded = pacs.get(url + "/frames/1", headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert decoded.status_code == 422 and "cannot be decoded" in decoded.json()["detail"]
    rendered = pacs.get(url + "/rendered")
    assert rendered.status_code == 422 and "cannot be decoded" in rendered.json()["detail"]
    raw = pacs.get(url + "/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert raw.status_code == 200  # as stored it is only bytes: the client may try its own decoder


def stow(client, datasets, path="/dicomweb/studies", **headers):
    body, content_type = multipart_body(datasets)
    return client.post(path, content=body, headers={"Content-Type": content_type,
                                                    "Accept": "application/dicom+json", **headers})


def test_stow_stores_all_some_or_none(pacs, session):
    spec = synthetic.StudySpec(patient_id="ST-1", instances=2)
    good = synthetic.study(spec)
    stored = stow(pacs, good)
    assert stored.status_code == 200, stored.text
    answer = stored.json()
    assert value(answer, "00081190") == f"{BASE}/studies/{spec.study_uid}"
    referenced = answer["00081199"]["Value"]
    assert {value(item, "00081155") for item in referenced} == {str(ds.SOPInstanceUID) for ds in good}
    assert pacs.get(path_of(value(referenced[0], "00081190"))).status_code == 200
    assert "00081198" not in answer

    broken = synthetic.study(synthetic.StudySpec(patient_id="ST-1", study_uid=spec.study_uid, instances=1))[0]
    del broken.PatientID
    fresh = synthetic.study(synthetic.StudySpec(patient_id="ST-1", study_uid=spec.study_uid, instances=1))[0]
    some = stow(pacs, [fresh, broken])
    assert some.status_code == 202
    failed = some.json()["00081198"]["Value"]
    assert [(value(f, "00081155"), value(f, "00081197")) for f in failed] == [(broken.SOPInstanceUID, 0xA900)]
    assert [value(r, "00081155") for r in some.json()["00081199"]["Value"]] == [fresh.SOPInstanceUID]
    assert "patient ID" in some.headers["warning"]
    again = synthetic.study(synthetic.StudySpec(patient_id="ST-1", study_uid=spec.study_uid, instances=1))[0]
    # parts are examined in threads of their own: the reason is still in the sender's language
    spanish = stow(pacs, [again, broken], **{"Accept-Language": "es"})
    assert spanish.status_code == 202 and "El archivo no tiene identificador de paciente" in spanish.headers["warning"]

    other_study = synthetic.study(synthetic.StudySpec(patient_id="ST-1", instances=1))
    none = stow(pacs, other_study, path=f"/dicomweb/studies/{spec.study_uid}")
    assert none.status_code == 409
    assert value(none.json()["00081198"]["Value"][0], "00081197") == 0xA900
    garbage = pacs.post("/dicomweb/studies", content=b"--b\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--b--\r\n",
                        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert garbage.status_code == 409 and value(garbage.json()["00081198"]["Value"][0], "00081197") == 0xC000
    assert stow(pacs, good).status_code == 200  # the same instances again change nothing


def test_a_stow_body_is_stored_together_and_a_conflict_refuses_only_its_own_part(pacs, session):
    held = synthetic.study(synthetic.StudySpec(patient_id="ST-3", instances=1))
    assert stow(pacs, held).status_code == 200
    spec = synthetic.StudySpec(patient_id="ST-4", series=2, instances=2)
    new = synthetic.study(spec)
    stranger = synthetic.study(synthetic.StudySpec(patient_id="ST-OTHER", study_uid=held[0].StudyInstanceUID,
                                                   instances=1))[0]  # a study already held for ST-3
    answer = stow(pacs, [new[0], new[1], stranger, new[2], new[3], new[1]])
    assert answer.status_code == 202, answer.text
    failed = answer.json()["00081198"]["Value"]
    assert [(value(f, "00081155"), value(f, "00081197")) for f in failed] == [(stranger.SOPInstanceUID, 0x0110)]
    stored = [value(r, "00081155") for r in answer.json()["00081199"]["Value"]]
    assert stored == [ds.SOPInstanceUID for ds in (new[0], new[1], new[2], new[3], new[1])]  # a copy is no failure

    events = audit_events(session, "study.instance_stored")
    assert [event.detail["sop_uid"] for event in events[-4:]] == [ds.SOPInstanceUID for ds in new]
    assert [event.seq for event in events[-4:]] == list(range(events[-4].seq, events[-4].seq + 4))
    assert audit.verify(session)[0]
    assert session.scalar(select(Patient).where(Patient.patient_id == "ST-OTHER")) is None
    metadata = pacs.get(f"/dicomweb/studies/{spec.study_uid}/metadata")
    assert len(metadata.json()) == 4


def test_a_body_longer_than_one_batch_is_stored_whole_in_order(pacs, session):
    from core.studies.dicomweb_store import BATCH

    spec = synthetic.StudySpec(patient_id="ST-LONG", instances=BATCH + 3, rows=8, columns=8)
    datasets = synthetic.study(spec)
    answer = stow(pacs, datasets)
    assert answer.status_code == 200, answer.text
    assert [value(r, "00081155") for r in answer.json()["00081199"]["Value"]] == [ds.SOPInstanceUID for ds in datasets]
    study = session.scalar(select(Study).where(Study.study_uid == spec.study_uid))
    assert (study.instance_count, study.series_count) == (BATCH + 3, 1)
    assert len(pacs.get(f"/dicomweb/studies/{spec.study_uid}/metadata").json()) == BATCH + 3


def test_parts_the_store_cannot_keep_are_refused_and_leave_nothing(pacs, runtime, session):
    blocked = runtime.blobs.root / "dicom"
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("not a folder")  # the instances' folders cannot be made, as on a full disk
    datasets = synthetic.study(synthetic.StudySpec(patient_id="ST-FULL", instances=2, rows=8, columns=8))
    answer = stow(pacs, datasets)
    assert answer.status_code == 409, answer.text
    failed = answer.json()["00081198"]["Value"]
    assert [(value(f, "00081155"), value(f, "00081197")) for f in failed] == [
        (ds.SOPInstanceUID, 0xA700) for ds in datasets]
    assert "please send it again later" in answer.headers["warning"]
    assert list(runtime.blobs.scratch.glob("*.part")) == [] and list(runtime.blobs.scratch.glob("*.claim")) == []
    assert session.scalar(select(Patient).where(Patient.patient_id == "ST-FULL")) is None
    blocked.unlink()
    assert stow(pacs, datasets).status_code == 200  # sent again once the store can keep them


def test_stow_refuses_wrong_types_strangers_and_oversized_parts(pacs, app, make_account, custom_client):
    instance = synthetic.study(synthetic.StudySpec(patient_id="ST-2", instances=1))
    body, _content_type = multipart_body(instance)
    assert pacs.post("/dicomweb/studies", content=body,
                     headers={"Content-Type": "application/dicom"}).status_code == 415
    assert pacs.post("/dicomweb/studies", content=body, headers={
        "Content-Type": 'multipart/related; type="application/dicom+json"; boundary=stow-boundary-1'}).status_code == 415
    stranger = TestClient(app, base_url="https://testserver", headers={"Authorization": "Bearer wrong-token-123"})
    assert stow(stranger, instance).status_code == 401
    make_account(email="pat@example.test")
    patient = browser(app, "pat@example.test")
    assert stow(patient, instance, **{"X-CSRF-Token": csrf_token(patient)}).status_code == 403
    make_account(email="staff@example.test", role="staff", patient=False)
    staff = browser(app, "staff@example.test")
    assert stow(staff, instance, **{"X-CSRF-Token": csrf_token(staff)}).status_code == 200

    small, _runtime = custom_client(studies={"pacs_token": TOKEN, "max_file_mb": 1})
    big = synthetic.study(synthetic.StudySpec(patient_id="ST-3", instances=1, rows=1024, columns=1024))
    too_big = stow(small, big, Authorization=f"Bearer {TOKEN}")
    assert too_big.status_code == 409
    assert value(too_big.json()["00081198"]["Value"][0], "00081197") == 0xA700


@pytest.fixture
def two_patients(app, session, runtime, tmp_path, make_account):
    ana, ben = make_account(email="ana@example.test", name="Ana Ruiz"), make_account(email="ben@example.test",
                                                                                      name="Ben Okafor")
    studies = {}
    for name, account in (("ana", ana), ("ben", ben)):
        spec = spec_for(session, account, instances=2)
        datasets = synthetic.study(spec)
        store(session, runtime, tmp_path, datasets)
        studies[name] = (spec, datasets)
    return {"ana": browser(app, "ana@example.test"), "ben": browser(app, "ben@example.test"), "studies": studies}


def test_a_patient_gets_404_for_another_patients_study_everywhere(two_patients):
    ana = two_patients["ana"]
    own_spec, _own = two_patients["studies"]["ana"]
    spec, datasets = two_patients["studies"]["ben"]
    assert uids(ana.get("/dicomweb/studies")) == {own_spec.study_uid}
    assert ana.get("/dicomweb/series").json() and all(
        value(d, "0020000D") == own_spec.study_uid for d in ana.get("/dicomweb/series").json())
    assert {value(d, "0020000D") for d in ana.get("/dicomweb/instances").json()} == {own_spec.study_uid}
    study = f"/dicomweb/studies/{spec.study_uid}"
    series = f"{study}/series/{datasets[0].SeriesInstanceUID}"
    instance = f"{series}/instances/{datasets[0].SOPInstanceUID}"
    for path in (study, f"{study}/metadata", f"{study}/series", f"{study}/instances", f"{study}/thumbnail",
                 series, f"{series}/metadata", f"{series}/instances", f"{series}/thumbnail", instance,
                 f"{instance}/metadata", f"{instance}/frames/1", f"{instance}/rendered", f"{instance}/frames/1/rendered",
                 f"{instance}/thumbnail", f"{instance}/bulk/7FE00010"):
        assert ana.get(path).status_code == 404, path
    own = f"/dicomweb/studies/{own_spec.study_uid}"
    assert ana.get(own + "/metadata").status_code == 200 and ana.get(own + "/thumbnail").status_code == 200
    assert two_patients["ben"].get(study + "/metadata").status_code == 200


def test_an_unreleased_report_instance_is_hidden_from_the_patient_on_every_path(
        app, session, runtime, tmp_path, make_account, frozen_clock):
    make_account(email="staff@example.test", role="staff", patient=False)
    account = make_account(email="cleo@example.test", name="Cleo Park")
    spec = spec_for(session, account, instances=1)
    images = synthetic.study(spec)
    report = synthetic.text_report(spec, "No acute findings.", signed="20260305120000")  # after the frozen now
    store(session, runtime, tmp_path, [*images, report])
    patient, staff = browser(app, "cleo@example.test"), browser(app, "staff@example.test")
    study = f"/dicomweb/studies/{spec.study_uid}"
    report_path = f"{study}/series/{report.SeriesInstanceUID}/instances/{report.SOPInstanceUID}"

    def seen_by(client) -> set[str]:
        found = {value(d, "00080018") for d in client.get(f"{study}/instances").json()}
        found |= {value(d, "00080018") for d in client.get(f"{study}/metadata").json()}
        found |= {str(pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID) for _h, body in parts(client.get(study))}
        found |= {value(d, "00080018") for d in client.get("/dicomweb/instances",
                                                            params={"SOPClassUID": report.SOPClassUID}).json()}
        return found

    assert report.SOPInstanceUID not in seen_by(patient)
    assert patient.get(report_path).status_code == 404 and patient.get(report_path + "/metadata").status_code == 404
    assert [value(d, "00080060") for d in patient.get(f"{study}/series").json()] == ["CT"]
    [listed] = patient.get("/dicomweb/studies").json()
    assert listed["00080061"]["Value"] == ["CT"] and value(listed, "00201208") == 1
    assert report.SOPInstanceUID in seen_by(staff)
    assert staff.get(report_path).status_code == 200
    clock.advance(timedelta(days=5))
    assert report.SOPInstanceUID in seen_by(browser(app, "cleo@example.test"))  # signed in again after days


def test_held_images_leave_the_study_listed_but_empty(app, session, runtime, tmp_path, make_account):
    account = make_account(email="dee@example.test", name="Dee Held")
    spec = spec_for(session, account, description="HOLD IMAGES", instances=1)
    store(session, runtime, tmp_path, synthetic.study(spec))
    patient = browser(app, "dee@example.test")
    [listed] = patient.get("/dicomweb/studies").json()
    assert value(listed, "00201208") == 0
    assert patient.get(f"/dicomweb/studies/{spec.study_uid}/metadata").status_code == 404
    assert patient.get(f"/dicomweb/studies/{spec.study_uid}/thumbnail").status_code == 404


def test_cors_only_for_listed_origins_and_only_under_dicomweb(client):
    preflight = client.options("/dicomweb/studies", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    search = client.get("/dicomweb/studies", headers={"Origin": ORIGIN, "Authorization": f"Bearer {TOKEN}"})
    assert search.headers["access-control-allow-origin"] == ORIGIN and "Origin" in search.headers["vary"]
    elsewhere = client.get("/dicomweb/studies", headers={"Origin": "https://evil.example.test",
                                                         "Authorization": f"Bearer {TOKEN}"})
    assert elsewhere.status_code == 200 and "access-control-allow-origin" not in elsewhere.headers
    assert "access-control-allow-origin" not in client.get("/", headers={"Origin": ORIGIN}).headers
    assert client.options("/dicomweb/studies", headers={"Origin": "https://evil.example.test",
                                                        "Access-Control-Request-Method": "GET"}).status_code != 204


def test_audit_one_event_per_study_served_and_one_per_window_for_frames(pacs, session, library, frozen_clock):
    ct = library["ct"]
    before = len(audit_events(session, "dicomweb.search"))
    pacs.get("/dicomweb/studies", params={"PatientID": "QP-1"})
    searched = audit_events(session, "dicomweb.search")[before:]
    assert len(searched) == 2 and {e.actor for e in searched} == {"pacs:pacs"}
    pacs.get(f"/dicomweb/studies/{ct.study_uid}/metadata")
    [event] = audit_events(session, "dicomweb.metadata")
    assert event.subject.startswith("study:")
    url = path_of(value(pacs.get(f"/dicomweb/studies/{ct.study_uid}/instances").json()[0], "00081190"))
    for number in (1, 2, 1, 2):
        assert pacs.get(f"{url}/frames/{number}").status_code == 200
        assert pacs.get(f"{url}/frames/{number}/rendered").status_code == 200
    assert len(audit_events(session, "dicomweb.frames")) == 1
    assert len(audit_events(session, "dicomweb.rendered")) == 1
    clock.advance(timedelta(minutes=11))
    pacs.get(f"{url}/frames/1")
    assert len(audit_events(session, "dicomweb.frames")) == 2


def test_a_share_that_hides_patient_details_gets_no_patient_attributes(session, library):
    from core.access import Principal
    from core.studies import dicom_json, qido, queries

    study = queries.study(session, Principal(kind="pacs", roles=frozenset({"pacs"})), library["cr"].study_uid)
    share = Principal(kind="share", id="7", scope=frozenset({f"study:{study.id}", "hide_details"}))
    [found] = qido.studies(session, share, qido.parse([], "study"), BASE).results
    assert value(found, "0020000D").startswith("2.25.")  # its UIDs replaced (tests/core/test_deidentify.py)
    assert not [tag for tag in found if tag.startswith("0010")]
    plain = Principal(kind="share", id="8", scope=frozenset({f"study:{study.id}"}))
    assert value(qido.studies(session, plain, qido.parse([], "study"), BASE).results[0], "00100020") == "QP-2"
    assert dicom_json.hides_patient(share) and not dicom_json.hides_patient(plain)
