"""Exports (issue 6): ZIP and ISO of DICOM files laid out to PS3.10 and IHE PDI, read back by
pydicom, dcmtk (dcmdump), dicom3tools (dciodvfy), xorriso and isoinfo; JPG pictures; and the
files' helpers that tests/core/test_export_faults.py shares (accounts, exams, a database of
its own for tests that need real commits)."""
from __future__ import annotations

import re
import subprocess
import time
import uuid
import zipfile
from contextlib import contextmanager
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.fileset import FileSet
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from support import (PG_URL, add_linked_patient, audit_events, ingest_file, make_site, messages_to, post_form,
                     sign_in_as)

from core import clock, db, i18n, plugins
from core.access import Principal
from core.app import build_runtime, create_app
from core.identity import service as identity
from core.studies import synthetic
from core.studies.exports import layout, service
from core.studies.exports.models import Export
from core.studies.models import Instance, Report, Study

PASSWORD = "a long unique passphrase"
FILE_ID_PART = re.compile(r"[A-Z0-9_]{1,8}")
LEVEL1_NAME = re.compile(r"[A-Z0-9_]{1,8}(\.[A-Z0-9_]{0,3};1)?")  # a folder, or a file: NAME.EXT;1, NAME.;1
VIEWER = {"start viewer.html": "<html>viewer</html>", "readme-for-the-viewer.txt": "how to use it",
          "lib/dicom-image-reader.js": "// reader", "lib/dicom-image-renderer.js": "// renderer"}


# -- helpers shared with test_export_faults.py ---------------------------------------------------

def account_with_patient(session, email: str, patient_id: str, *, role: str = "user"):
    """A portal account linked to its own patient record (issuer "T"); committed."""
    account = identity.create_account(session, email=email, name="Alex Example", role=role, password=PASSWORD,
                                      how="staff", email_verified=True)
    patient = add_linked_patient(session, account.id, issuer="T", patient_id=patient_id, family_name="Example",
                                 given_name="Alex", birth_date=date(1980, 1, 2))
    session.commit()
    return account, patient


def principal_of(account, patient) -> Principal:
    """The principal a signed-in session of ``account`` has (core/identity/sessions.py)."""
    return Principal(kind="account", id=str(account.id), roles=frozenset({account.role}),
                     scope=frozenset({str(patient.id)}))


def ingest_exam(session, runtime, folder: Path, patient, *, reports: bool = False, preamble: bytes | None = None,
                **fields) -> tuple[Study, dict[str, Path]]:
    """A synthetic study of ``patient`` ingested the way every way in does; returns the study and
    its original files by SOP Instance UID. ``preamble`` replaces the first file's 128 bytes."""
    spec = synthetic.StudySpec(patient_id=patient.patient_id, issuer=patient.issuer, **fields)
    datasets = synthetic.study(spec)
    if reports:
        datasets += [synthetic.text_report(spec, "No acute findings."),
                     synthetic.pdf_report(spec, synthetic.minimal_pdf("No acute findings."))]
    paths = synthetic.write(datasets, folder / spec.study_uid)
    if preamble is not None:
        paths[0].write_bytes(preamble + paths[0].read_bytes()[128:])
    for path in paths:
        assert ingest_file(session, runtime, path).outcome == "stored"
    session.commit()
    study = session.scalar(select(Study).where(Study.study_uid == spec.study_uid))
    return study, {ds.SOPInstanceUID: path for ds, path in zip(datasets, paths)}


def exported(session, runtime, principal, format_name: str, studies, *, language: str = "en",
             options: dict | None = None) -> Export:
    """Ask for an export and run its job here, as the worker would; the export afterwards."""
    export, new = service.ask(session, runtime, principal, format_name=format_name,
                              study_uids=[study.study_uid for study in studies], language=language,
                              acknowledged=True, options=options)
    session.commit()
    assert new
    status = service.run(runtime, export.id)
    session.expire_all()
    export = session.get(Export, export.id)
    assert export.status == status, export.error
    return export


def run_tool(*command, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=60)
    if check:
        assert done.returncode == 0, f"{command[0]}: {done.stderr}"
    return done


@pytest.fixture(scope="module")
def own_database_url(database_url, tmp_path_factory, request):
    """A migrated database for this module alone, for tests whose commits must be real (a worker
    thread or process reads them): a file on SQLite, a database beside the test one on PostgreSQL."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    if database_url.startswith("postgresql"):
        url = make_url(PG_URL)
        url = url.set(database=f"{url.database}_{name}")
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{url.database}"'))
        own = url.render_as_string(hide_password=False)
    else:
        admin, own = None, f"sqlite:///{tmp_path_factory.mktemp(name) / 'portal.db'}"
    import fixture_plugin

    engine = db.make_engine(own)
    db.upgrade(engine, plugins.build_manager({"fixture": fixture_plugin}))
    engine.dispose()
    yield own
    if admin is not None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{make_url(own).database}" WITH (FORCE)'))
        admin.dispose()


# -- the site and the patient ----------------------------------------------------------------------

@pytest.fixture
def site(tmp_path, database_url):
    """The test site with a disc label and a viewer folder of long lower-case names."""
    viewer = tmp_path / "viewer"
    for name, content in VIEWER.items():
        (viewer / name).parent.mkdir(parents=True, exist_ok=True)
        (viewer / name).write_text(content)
    return make_site(tmp_path, database=database_url,
                     exports={"volume_label": "TEST_DISC", "disc_viewer": str(viewer)})


@pytest.fixture
def alex(session):
    return account_with_patient(session, "alex@example.test", "EXP-ALEX")


@pytest.fixture
def exams(session, runtime, tmp_path, alex, frozen_clock):
    """Alex's CT (two series, a signed SR and PDF report, one file with a non-zero preamble) and MR."""
    _, patient = alex
    ct, ct_files = ingest_exam(session, runtime, tmp_path, patient, series=2, instances=2, reports=True,
                               preamble=b"X" * 128, description="CT CHEST")
    mr, mr_files = ingest_exam(session, runtime, tmp_path, patient, modality="MR", description="MR KNEE",
                               body_part="KNEE", instances=1, study_date=date(2025, 6, 1))
    return {"ct": ct, "mr": mr, "files": {**ct_files, **mr_files}, "principal": principal_of(*alex)}


def check_file_set(root: Path, expected: dict[str, str]) -> None:
    """The DICOMDIR under ``root``, read back by pydicom and dcmdump, lists exactly ``expected``
    (SOP Instance UID -> file path), each record naming a file that holds that instance."""
    listed = {}
    for instance in FileSet(root / "DICOMDIR"):
        parts = list(instance.ReferencedFileID)
        assert parts[0] == "DICOM" and len(parts) <= 8 and all(FILE_ID_PART.fullmatch(part) for part in parts)
        on_disk = pydicom.dcmread(instance.path, stop_before_pixels=True)
        assert on_disk.SOPInstanceUID == instance.ReferencedSOPInstanceUIDInFile
        assert on_disk.SOPClassUID == instance.ReferencedSOPClassUIDInFile
        assert on_disk.file_meta.TransferSyntaxUID == instance.ReferencedTransferSyntaxUIDInFile
        listed[instance.ReferencedSOPInstanceUIDInFile] = "/".join(parts)
    assert listed == expected
    dump = run_tool("dcmdump", root / "DICOMDIR")
    assert "E: " not in dump.stderr and dump.stdout.count("ReferencedSOPInstanceUIDInFile") == len(expected)


def check_exported_copy(data: bytes, originals: dict[str, Path]) -> str:
    """An exported DICOM file: a zero preamble, read by pydicom, otherwise the original's bytes."""
    assert data[:132] == bytes(128) + b"DICM"
    uid = pydicom.dcmread(BytesIO(data)).SOPInstanceUID
    assert data[132:] == originals[uid].read_bytes()[132:]
    return uid


# -- ZIP --------------------------------------------------------------------------------------------

def test_zip_holds_every_file_zeroed_with_a_dicomdir_and_a_readme_in_the_askers_language(session, runtime, tmp_path,
                                                                                        exams):
    originals = exams["files"]
    altered = next(path for path in originals.values() if path.read_bytes()[:128] == b"X" * 128)
    stored = session.scalar(select(Instance).where(Instance.sop_uid == pydicom.dcmread(altered).SOPInstanceUID))
    assert runtime.blobs.local_path(stored.blob_key).read_bytes()[:128] == b"X" * 128  # the store keeps it as sent

    export = exported(session, runtime, exams["principal"], "zip", [exams["ct"], exams["mr"]], language="es")
    assert (export.status, export.done, export.total, export.error) == ("ready", 7, 7, "")
    path = service.file_of(runtime, export)
    assert export.size == path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert names[:3] == ["README.TXT", "INDEX.HTM", "DICOMDIR"] and len(names) == 3 + len(originals)
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}  # zip_level 0
        expected = {check_exported_copy(archive.read(name), originals): name for name in names[3:]}
        readme = archive.read("README.TXT").decode("utf-8")
        archive.extractall(tmp_path / "unzipped")
    assert set(expected) == set(originals)
    check_file_set(tmp_path / "unzipped", expected)

    assert readme.startswith("Imágenes médicas de Test Imaging\n") and "Medical images" not in readme
    spanish = i18n.translations("es")
    assert "1 de marzo de 2026" in readme  # made_at, by Babel in Spanish and the site's time zone
    assert readme.index("CT CHEST") < readme.index("MR KNEE")  # newest first, one line each
    for phrase in ("the index of the images, read by every DICOM viewer", "What is inside:"):
        assert spanish.gettext(phrase) in readme


def test_file_ids_follow_ps310_and_a_new_folder_per_patient_study_and_series(session, runtime, exams):
    export = exported(session, runtime, exams["principal"], "zip", [exams["ct"], exams["mr"]])
    with zipfile.ZipFile(service.file_of(runtime, export)) as archive:
        ids = [name.split("/") for name in archive.namelist() if name.startswith("DICOM/")]
    assert all(len(parts) == 5 and all(FILE_ID_PART.fullmatch(part) for part in parts) for parts in ids)
    assert {tuple(parts[1:3]) for parts in ids} == {("PT000000", "ST000000"), ("PT000000", "ST000001")}
    assert len({tuple(parts[1:4]) for parts in ids}) == 5  # CT: 2 image series, SR, PDF; MR: 1


def test_the_layouts_directory_records_are_those_pydicoms_own_file_set_makes(session, runtime, tmp_path, exams,
                                                                               alex):
    """The layout makes a series' upper records once and stands in for them after; the
    DICOMDIR must be the one pydicom's ``FileSet.add`` makes of the same instances."""
    _, patient = alex
    ingest_exam(session, runtime, tmp_path, patient, series=2, instances=3, description="CT HEAD")
    found = service.rows(session, list(session.scalars(select(Study.id))), {})
    entries, file_set = layout.lay_out(found)
    layout.write_dicomdir(file_set, tmp_path / "ours")

    plain = FileSet()
    plain.ID = layout.FILE_SET_ID
    for number, row in enumerate(found, start=1):
        added = plain.add(layout.record_source(*row, number=number))
        added.node._record.ReferencedFileID = ["DICOM", *Path(added.FileID).parts]
    layout.write_dicomdir(plain, tmp_path / "pydicoms")

    ours, pydicoms = (pydicom.dcmread(tmp_path / name) for name in ("ours", "pydicoms"))
    assert len(entries) == len(found) == 13
    assert ours.DirectoryRecordSequence == pydicoms.DirectoryRecordSequence
    assert ours.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity == \
        pydicoms.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity


def test_a_held_report_stays_out_of_a_patients_export_but_not_out_of_staffs(session, runtime, exams):
    ct, files = exams["ct"], exams["files"]
    held = session.scalars(select(Report).where(Report.study_ref == ct.id)).all()
    assert len(held) == 2  # the SR and the PDF became reports
    for report in held:
        report.release_at = clock.now() + timedelta(days=3)  # a release delay the law imposes
    session.commit()
    hidden = {report.source_uid for report in held}

    export = exported(session, runtime, exams["principal"], "zip", [ct])
    with zipfile.ZipFile(service.file_of(runtime, export)) as archive:
        uids = {pydicom.dcmread(BytesIO(archive.read(n))).SOPInstanceUID for n in archive.namelist()[3:]}
        dicomdir = archive.read("DICOMDIR")
    assert export.total == 4 and uids == set(files) - hidden - set(_uids_of(session, exams["mr"]))
    assert not any(uid.encode() in dicomdir for uid in hidden)

    staff, _ = account_with_patient(session, "staff@example.test", "EXP-STAFF", role="staff")
    assert exported(session, runtime, principal_of(staff, _), "zip", [ct]).total == 6


def _uids_of(session, study) -> list[str]:
    return session.scalars(text("SELECT sop_uid FROM instance JOIN series ON series.id = instance.series_ref "
                                "WHERE series.study_ref = :study"), {"study": study.id}).all()


# -- ISO --------------------------------------------------------------------------------------------

def test_iso_is_an_ihe_pdi_disc_the_disc_tools_read_and_dciodvfy_accepts(session, runtime, tmp_path, exams):
    export = exported(session, runtime, exams["principal"], "iso", [exams["ct"], exams["mr"]])
    iso = service.file_of(runtime, export)
    assert (export.status, export.done, export.total) == ("ready", 7, 7)

    found = run_tool("xorriso", "-indev", iso, "-find", "/", "-type", "f").stdout
    files = {line.strip("'") for line in found.splitlines() if line.startswith("'/")}
    dicom = {name for name in files if name.startswith("/DICOM/")}
    viewer = {f"/VIEWER/{name}" for name in VIEWER}
    assert files == {"/DICOMDIR", "/README.TXT", "/INDEX.HTM"} | dicom | viewer and len(dicom) == 7

    listing = run_tool("isoinfo", "-l", "-R", "-i", iso).stdout
    assert {"DICOMDIR", "README.TXT", "INDEX.HTM"} <= set(_listed(listing, "/"))
    assert set(_listed(listing, "/VIEWER/lib/")) == {"dicom-image-reader.js", "dicom-image-renderer.js"}
    joliet = set(run_tool("isoinfo", "-J", "-f", "-i", iso).stdout.split("\n"))
    assert viewer <= joliet and "/DICOM/PT000000" in joliet
    plain = run_tool("isoinfo", "-f", "-i", iso).stdout.split()  # ISO 9660 level 1 names under them
    assert all(LEVEL1_NAME.fullmatch(part) for name in plain for part in name.strip("/").split("/"))
    assert {"/VIEWER/LIB/DICOM_IM.JS;1", "/VIEWER/LIB/DICOM__1.JS;1", "/DICOMDIR.;1"} <= set(plain)
    assert sum(re.fullmatch(r"/DICOM/PT\d{6}/ST\d{6}/SE\d{6}/[A-Z]{2}\d{6}\.;1", name) is not None for name in plain) == 7

    summary = run_tool("isoinfo", "-d", "-i", iso).stdout
    assert "Volume id: TEST_DISC" in summary and "Joliet with UCS level 3 found" in summary
    assert "Rock Ridge signatures" in summary

    run_tool("xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/", tmp_path / "disc")
    validation = run_tool("dciodvfy", tmp_path / "disc" / "DICOMDIR", check=False)
    report = validation.stdout + validation.stderr
    assert "BasicDirectory" in report and not [line for line in report.splitlines() if line.startswith("Error")]
    relative = [name.lstrip("/") for name in dicom]
    expected = {check_exported_copy((tmp_path / "disc" / name).read_bytes(), exams["files"]): name for name in relative}
    assert set(expected) == set(exams["files"])
    check_file_set(tmp_path / "disc", expected)
    assert (tmp_path / "disc" / "VIEWER" / "start viewer.html").read_text() == VIEWER["start viewer.html"]


def _listed(listing: str, folder: str) -> list[str]:
    """Names of the files (not folders) in ``folder`` of an ``isoinfo -l`` listing."""
    names, current = [], None
    for line in listing.splitlines():
        if line.startswith("Directory listing of "):
            current = line.removeprefix("Directory listing of ")
        elif current == folder and line.startswith("-"):
            names.append(line.split("]", 1)[1].strip())
    return names


# -- JPG --------------------------------------------------------------------------------------------

def test_jpg_is_one_full_size_picture_per_frame_without_reports_in_the_chosen_window(session, runtime, tmp_path,
                                                                                   alex, frozen_clock):
    _, patient = alex
    principal = principal_of(*alex)
    ct, _ = ingest_exam(session, runtime, tmp_path, patient, instances=2, reports=True)
    us, _ = ingest_exam(session, runtime, tmp_path, patient, modality="US", description="US ABDOMEN",
                        instances=1, frames=3, rows=48, columns=80, study_date=date(2025, 5, 5))

    def pictures(export) -> dict[str, Image.Image]:
        assert (export.status, export.done, export.total) == ("ready", 5, 5)  # 2 CT + 1 US + SR + PDF
        with zipfile.ZipFile(service.file_of(runtime, export)) as archive:
            assert "README.TXT" in archive.namelist()
            found = {name: Image.open(BytesIO(archive.read(name))) for name in archive.namelist()
                     if name != "README.TXT"}
        assert all(name.endswith(".JPG") and picture.format == "JPEG" for name, picture in found.items())
        return found

    default = pictures(exported(session, runtime, principal, "jpg", [ct, us]))
    assert sorted(picture.size for picture in default.values()) == [(64, 64)] * 2 + [(80, 48)] * 3
    assert len([name for name in default if "_F00" in name]) == 3  # one per frame of the US clip
    narrow = pictures(exported(session, runtime, principal, "jpg", [ct, us], options={"window": [1000, 100]}))
    assert set(narrow) == set(default)
    assert all(default[name].tobytes() != narrow[name].tobytes() for name in default)


def test_jpg_names_stay_apart_for_two_exams_of_the_same_day_and_kind(session, runtime, tmp_path, alex):
    _, patient = alex
    first, _ = ingest_exam(session, runtime, tmp_path, patient, instances=2)
    second, _ = ingest_exam(session, runtime, tmp_path, patient, instances=2)  # same date and description
    export = exported(session, runtime, principal_of(*alex), "jpg", [first, second])
    with zipfile.ZipFile(service.file_of(runtime, export)) as archive:
        names = [name for name in archive.namelist() if name.endswith(".JPG")]
    assert len(names) == 4 and len(set(names)) == 4
    assert len({name.split("/")[0] for name in names}) == 2  # a folder per exam


# -- the real worker: progress, the email, the download ----------------------------------------------

@contextmanager
def consuming(runtime, workers: int = 2):
    """A real huey consumer of the site's queue, in threads of this process."""
    consumer = runtime.huey.create_consumer(workers=workers, worker_type="thread", periodic=False)
    consumer.start()
    try:
        yield consumer
    finally:
        consumer.stop(graceful=True)


def wait_until(check, timeout: float = 60):
    """``check()``'s first true answer; a worker thread or process is doing the work meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = check()
        if answer:
            return answer
        time.sleep(0.05)
    raise AssertionError(f"not done within {timeout}s")


@pytest.fixture
def live(own_database_url, tmp_path):
    """A runtime whose commits are real (on this module's own database), for worker threads."""
    runtime = build_runtime(make_site(tmp_path / "live", database=own_database_url))
    yield runtime
    runtime.close()


def test_a_real_worker_builds_two_exports_at_once_with_progress_an_email_and_the_download(live, tmp_path):
    email = f"alex-{uuid.uuid4().hex[:8]}@example.test"
    with live.sessions() as session:
        account, patient = account_with_patient(session, email, f"LIVE-{uuid.uuid4().hex[:8]}")
        ct, _ = ingest_exam(session, live, tmp_path, patient, series=2, instances=3)
        mr, _ = ingest_exam(session, live, tmp_path, patient, modality="MR", instances=2, study_date=date(2025, 6, 1))
        refs = {ct.id, mr.id}
    with TestClient(create_app(live.site, live), base_url="https://testserver") as client, consuming(live):
        sign_in_as(client, email, PASSWORD)
        pages = [post_form(client, "/exports", {"format": name, "study": uids, "acknowledge": "yes"},
                           follow_redirects=False).headers["location"]
                 for name, uids in (("zip", [ct.study_uid]), ("iso", [ct.study_uid, mr.study_uid]))]
        assert len(set(pages)) == 2
        finished = [wait_until(lambda page=page: _finished(client, page)) for page in pages]
        assert [(s["status"], s["done"], s["total"], s["percent"]) for s in finished] == [
            ("ready", 6, 6, 100), ("ready", 8, 8, 100)]
        assert 'id="export-download"' in client.get(pages[0]).text
        downloads = [client.get(status["download"]) for status in finished]
    with live.sessions() as session:
        exports = [session.scalar(select(Export).where(Export.public_id == page.rsplit("/", 1)[1])) for page in pages]
        for export, download, suffix in zip(exports, downloads, (".zip", ".iso")):
            assert download.status_code == 200 and download.headers["cache-control"] == "no-store"
            assert download.content == service.file_of(live, export).read_bytes()
            assert len(download.content) == export.size
            assert download.headers["content-disposition"].endswith(f'{suffix}"')
        ready = [m for m in messages_to(session, email) if m.subject == "Your download from Test Imaging is ready"]
        assert sorted(m.body_text.count(f"/exports/{e.public_id}") for e in exports for m in ready) == [0, 0, 1, 1]
        downloaded = [event for event in audit_events(session, "export.downloaded")
                      if event.actor == f"account:{account.id}"]
        assert sorted((event.detail["export"], event.subject) for event in downloaded) == sorted(
            [(exports[0].public_id, f"study:{ct.id}")] + [(exports[1].public_id, f"study:{ref}") for ref in refs])


def _finished(client, page: str) -> dict | None:
    status = client.get(f"{page}/status").json()
    return status if status["status"] not in ("queued", "running") else None
