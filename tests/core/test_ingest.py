"""Ingest: one way in for every source. Stored once, refused with a reason and leaving
nothing behind, reports from SR and PDF instances, observers after commit, accounts
at the scan, and a killed import that leaves neither orphans nor partial files."""
from __future__ import annotations

import hashlib
import logging
import re
import signal
import struct
import subprocess
import sys
import time
from contextlib import ExitStack
from datetime import date, datetime, timezone
from pathlib import Path

import fixture_plugin
import pydicom
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import sessionmaker
from support import ROOT, audit_events, ingest_file, make_site, messages_to, site_data, write_site

from core import clock, db, plugins
from core.app import build_runtime
from core.identity.models import Account, PatientLink
from core.studies import synthetic
from core.studies.models import Instance, Patient, Report, Series, Study


@pytest.fixture
def runtime_with(tmp_path, database_url):
    """A runtime of a site with other settings, on the test database, rolled back afterwards:
    ``runtime, session = runtime_with(studies={...})``. Not to be mixed with ``session``."""
    made = []

    def build(**overrides):
        runtime = build_runtime(make_site(tmp_path / f"site{len(made)}", database=database_url, **overrides))
        connection = runtime.engine.connect()
        outer = connection.begin()
        runtime.sessions = sessionmaker(bind=connection, join_transaction_mode="create_savepoint",
                                        expire_on_commit=False, info={"plugins": runtime.pm, "runtime": runtime})
        session = runtime.sessions()
        made.append((runtime, connection, outer, session))
        return runtime, session

    yield build
    for runtime, connection, outer, session in made:
        session.close()
        outer.rollback()
        connection.close()
        runtime.close()


def blob_files(runtime) -> set[str]:
    return set(runtime.blobs.keys())


def ct_files(tmp_path: Path, **spec) -> list[Path]:
    return synthetic.write(synthetic.study(synthetic.StudySpec(**{"instances": 2, **spec})), tmp_path / "in")


def instance_count(session) -> int:
    return session.scalar(select(func.count(Instance.id)))


# -- stored once --------------------------------------------------------------------------

def test_an_instance_is_stored_once_and_a_second_copy_changes_nothing(runtime, session, tmp_path):
    first, second = ct_files(tmp_path, patient_id="ONCE-1", accession_number="ACC-1")
    result = ingest_file(session, runtime, first, actor="tester", source="test")
    assert (result.outcome, result.reason) == ("stored", "")
    instance = session.scalar(select(Instance).where(Instance.sop_uid == result.sop_uid))
    study = session.get(Study, session.get(Series, instance.series_ref).study_ref)
    patient = session.get(Patient, study.patient_ref)
    assert (patient.patient_id, patient.family_name, patient.birth_date) == ("ONCE-1", "Synthetic", date(1980, 1, 2))
    assert (study.accession_number, study.modalities, study.instance_count, study.series_count) == ("ACC-1", "CT", 1, 1)
    stored = runtime.blobs.local_path(instance.blob_key)
    assert stored.read_bytes() == first.read_bytes()
    assert instance.sha256 == hashlib.sha256(first.read_bytes()).hexdigest()
    assert result.sop_uid not in instance.blob_key  # keys are hashes, never UIDs
    assert instance.header["00100020"]["Value"] == ["ONCE-1"]
    events = audit_events(session, "study.instance_stored")
    assert [(e.actor, e.detail["sop_uid"], e.detail["source"]) for e in events] == [("tester", result.sop_uid, "test")]

    before = (instance_count(session), stored.stat().st_mtime_ns, stored.stat().st_ino, blob_files(runtime))
    again = ingest_file(session, runtime, first)
    assert again.outcome == "duplicate" and again.ok
    assert (instance_count(session), stored.stat().st_mtime_ns, stored.stat().st_ino, blob_files(runtime)) == before
    assert len(audit_events(session, "study.instance_stored")) == 1
    assert ingest_file(session, runtime, second).outcome == "stored"
    session.refresh(study)
    assert (study.instance_count, study.series_count) == (2, 1)


# -- refused, leaving nothing ----------------------------------------------------------------

def _patched(data: bytes, at: int, packed: bytes) -> bytes:
    return data[:at] + packed + data[at + len(packed):]


def _malformed(tmp_path: Path, case: str) -> bytes:
    [path] = synthetic.write(synthetic.study(synthetic.StudySpec(instances=1, patient_id="BAD-1")), tmp_path / case)
    data = path.read_bytes()
    ds = pydicom.dcmread(path)
    pixel_tag = data.rindex(b"\xe0\x7f\x10\x00")
    if case == "zero-length":
        return b""
    if case == "not DICOM":
        return b"%PDF-1.4 this is not an image\n" * 20
    if case == "truncated pixel data":
        return data[:-1000]
    if case == "truncated header":
        return data[:pixel_tag // 2]
    if case == "huge pixel data length":
        return _patched(data, pixel_tag + 8, struct.pack("<I", 0xFFFFFFF0))
    if case == "huge header element length":  # Patient's Name is PN: a two-byte length in explicit VR
        name = data.index(b"Synthetic^Pat")
        return _patched(data, name - 2, struct.pack("<H", 0xFFF0))
    if case == "missing pixel data":
        del ds.PixelData
    elif case in ("../../etc/passwd", "1.2/../3"):
        ds.SOPInstanceUID = case
        ds.file_meta.MediaStorageSOPInstanceUID = case
    elif case == "missing SOPInstanceUID":
        del ds.SOPInstanceUID
    elif case == "missing PatientID":
        del ds.PatientID
    out = tmp_path / "malformed.dcm"
    ds.save_as(out, enforce_file_format=False)
    return out.read_bytes()


MALFORMED = {
    "zero-length": "The file is empty.",
    "not DICOM": "This is not a DICOM file",
    "truncated pixel data": "damaged or truncated",
    "truncated header": "damaged or truncated",
    "huge pixel data length": "damaged or truncated",
    "huge header element length": "damaged or truncated",
    "missing pixel data": "describes an image but holds no pixel data",
    "../../etc/passwd": "SOPInstanceUID is not a valid UID",
    "1.2/../3": "SOPInstanceUID is not a valid UID",
    "missing SOPInstanceUID": "The file has no SOPInstanceUID.",
    "missing PatientID": "The file has no patient ID.",
}


def test_counts_are_added_in_sql_and_the_sessions_rows_show_the_sums(runtime, session, tmp_path):
    from core.studies import blobs, service

    files = ct_files(tmp_path, patient_id="COUNT-1", instances=3, series=2, modality="MR")  # 3 in each
    with ExitStack() as scratch:
        arrivals = []
        for path in files[:4]:
            copy = scratch.enter_context(blobs.scratch_file(runtime.blobs, ".dcm"))
            copy.write_bytes(path.read_bytes())
            arrivals.append(service.examine(copy, runtime=runtime))
        assert [r.outcome for r in service.ingest_many(session, arrivals, runtime=runtime)] == ["stored"] * 4
    study = session.scalar(select(Study).join(Patient).where(Patient.patient_id == "COUNT-1"))
    # another writer's instance lands between two batches of ours: its count must survive ours
    session.execute(text("UPDATE study SET instance_count = instance_count + 1 WHERE id = :id"), {"id": study.id})
    assert ingest_file(session, runtime, files[4]).outcome == "stored"
    in_session = (study.instance_count, study.series_count, study.modalities)
    written = session.execute(select(Study.instance_count, Study.series_count, Study.modalities)
                              .where(Study.id == study.id)).one()
    assert written == (6, 2, "MR") and in_session == (5, 2, "MR")
    per_series = session.execute(select(Series.instance_count).where(Series.study_ref == study.id)).scalars()
    assert sorted(per_series) == [2, 3]


def test_a_file_prepared_on_arrival_is_only_moved_by_the_store(runtime, session, tmp_path):
    """A receiver prepares each file as it arrives (``service.prepare``): its folders are made
    then, and the transaction has only the rename left. A refused file is never prepared."""
    from core.studies import blobs, service

    [good] = ct_files(tmp_path, patient_id="EARLY-1", instances=1)
    asked = []
    prepare = runtime.blobs.prepare
    runtime.blobs.prepare = lambda items: (asked.append([key for key, _source in items]), prepare(items))
    with ExitStack() as scratch:
        copies = [scratch.enter_context(blobs.scratch_file(runtime.blobs, ".dcm")) for _ in range(2)]
        copies[0].write_bytes(good.read_bytes())
        copies[1].write_bytes(b"not dicom")
        arrivals = [service.prepare(service.examine(copy, runtime=runtime), runtime=runtime) for copy in copies]
        assert [arrival.prepared for arrival in arrivals] == [True, False]
        [[key]] = asked
        assert runtime.blobs.local_path(key).parent.is_dir() and blob_files(runtime) == set()
        results = service.ingest_many(session, arrivals, runtime=runtime)
    assert [r.outcome for r in results] == ["stored", "refused"]
    assert asked == [[key]] and blob_files(runtime) == {key}  # not prepared a second time


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_file_is_refused_with_a_reason_and_leaves_nothing(case, runtime, session, tmp_path):
    data = _malformed(tmp_path, case)
    source = tmp_path / "bad.dcm"
    source.write_bytes(data)
    rows, events = instance_count(session), len(audit_events(session, "study.instance_stored"))
    result = ingest_file(session, runtime, source)
    assert result.outcome == "refused" and not result.ok
    assert MALFORMED[case] in result.reason
    assert instance_count(session) == rows
    assert session.scalar(select(func.count(Patient.id)).where(Patient.patient_id == "BAD-1")) == 0
    assert len(audit_events(session, "study.instance_stored")) == events
    assert blob_files(runtime) == set()
    assert list(runtime.blobs.scratch.iterdir()) == []


def test_a_file_over_the_sites_size_limit_is_refused(runtime_with, tmp_path):
    runtime, session = runtime_with(studies={"max_file_mb": 1})
    [big] = synthetic.write(synthetic.study(synthetic.StudySpec(instances=1, rows=760, columns=760)), tmp_path)
    assert big.stat().st_size > 2**20
    result = ingest_file(session, runtime, big)
    assert (result.outcome, result.kind) == ("refused", "too_large")
    assert result.reason == "The file is larger than this site accepts (1 MB)."
    assert blob_files(runtime) == set()
    assert session.scalar(select(Instance.id).where(Instance.sop_uid == pydicom.dcmread(big).SOPInstanceUID)) is None


def test_a_study_held_for_another_patient_is_refused(runtime, session, tmp_path):
    spec = synthetic.StudySpec(instances=1, patient_id="OWNER-1")
    [owner] = synthetic.write(synthetic.study(spec), tmp_path / "owner")
    spec.patient_id = "INTRUDER-1"
    [intruder] = synthetic.write(synthetic.study(spec), tmp_path / "intruder")
    assert ingest_file(session, runtime, owner).outcome == "stored"
    held = blob_files(runtime)
    result = ingest_file(session, runtime, intruder)
    assert (result.outcome, result.kind) == ("refused", "conflict")
    assert result.reason == "This study is already held for another patient."
    assert blob_files(runtime) == held
    assert session.scalar(select(Patient).where(Patient.patient_id == "INTRUDER-1")) is None
    assert session.scalar(select(Study).where(Study.study_uid == spec.study_uid)).instance_count == 1


def test_the_issuer_comes_from_the_file_then_the_sites_table_then_its_default(runtime_with, tmp_path):
    runtime, session = runtime_with(studies={"default_issuer": "MAIN", "issuers": {"North Clinic": "NORTH"}})
    cases = [("ISS-1", "FROMFILE", "North Clinic"), ("ISS-2", "", "North Clinic"), ("ISS-3", "", "Elsewhere")]
    for patient_id, issuer, institution in cases:
        [path] = synthetic.write(synthetic.study(synthetic.StudySpec(
            instances=1, patient_id=patient_id, issuer=issuer, institution=institution)), tmp_path / patient_id)
        assert ingest_file(session, runtime, path).outcome == "stored"
    issuers = dict(session.execute(select(Patient.patient_id, Patient.issuer)
                                   .where(Patient.patient_id.in_(["ISS-1", "ISS-2", "ISS-3"]))).all())
    assert issuers == {"ISS-1": "FROMFILE", "ISS-2": "NORTH", "ISS-3": "MAIN"}


# -- reports arriving as DICOM -------------------------------------------------------------------

def test_a_verified_sr_becomes_a_report_and_an_unverified_one_does_not(runtime, session, tmp_path):
    spec = synthetic.StudySpec(patient_id="SR-1")
    verified = synthetic.text_report(spec, "No acute findings.", signed="20260115120000")
    draft = synthetic.text_report(spec, "Draft: do not release.", verified=False)
    paths = synthetic.write([verified, draft], tmp_path)
    assert [ingest_file(session, runtime, p).outcome for p in paths] == ["stored", "stored"]
    study = session.scalar(select(Study).where(Study.study_uid == spec.study_uid))
    [report] = session.scalars(select(Report).where(Report.study_ref == study.id)).all()
    assert report.source_uid == verified.SOPInstanceUID
    assert "No acute findings." in report.text and "Draft" not in report.text
    assert (report.author, report.signed_at) == ("Reader^Riley", datetime(2026, 1, 15, 12, 0, tzinfo=timezone.utc))
    assert report.release_at == report.signed_at and report.pdf_blob_key is None
    assert study.instance_count == 2 and study.modalities == "SR"


def test_an_encapsulated_pdf_becomes_a_report_with_its_pdf_kept(runtime, session, tmp_path):
    spec = synthetic.StudySpec(patient_id="PDF-1")
    pdf = synthetic.minimal_pdf("Impression: normal study.")
    [path] = synthetic.write([synthetic.pdf_report(spec, pdf)], tmp_path)
    assert ingest_file(session, runtime, path).outcome == "stored"
    report = session.scalar(select(Report).join(Study, Report.study_ref == Study.id)
                            .where(Study.study_uid == spec.study_uid))
    assert report.text is None and report.title == "Report"
    with runtime.blobs.open(report.pdf_blob_key) as stored:
        assert stored.read() == pdf
    instance_key = session.scalar(select(Instance.blob_key).where(Instance.sop_uid == report.source_uid))
    assert blob_files(runtime) == {report.pdf_blob_key, instance_key}


# -- after the commit ---------------------------------------------------------------------------

def test_observers_hear_of_each_new_instance_once_after_commit(runtime, session, tmp_path):
    calls = fixture_plugin.CALLS["study_ingested"]
    calls.clear()
    first, second = ct_files(tmp_path, patient_id="OBS-1")
    outcomes = [ingest_file(session, runtime, p).outcome for p in (first, second, first)]
    assert outcomes == ["stored", "stored", "duplicate"]
    sops = [pydicom.dcmread(p).SOPInstanceUID for p in (first, second)]
    assert [(c["sop_uid"], c["new_study"], c["patient"]) for c in calls] == [
        (sops[0], True, "OBS-1"), (sops[1], False, "OBS-1")]
    assert [e.detail["sop_uid"] for e in audit_events(session, "study.instance_stored")] == sops


def test_an_observer_that_fails_does_not_undo_the_store(runtime, session, tmp_path, caplog):
    calls = fixture_plugin.CALLS["study_ingested"]
    calls.clear()
    [path] = ct_files(tmp_path, instances=1, patient_id="OBS-2", description="OBSERVER FAILS")
    with caplog.at_level(logging.ERROR):
        result = ingest_file(session, runtime, path)
    assert result.outcome == "stored"
    assert "failed in study_ingested" in caplog.text and "observer failed on purpose" in caplog.text
    session.rollback()  # nothing is pending: the instance was committed before the observer ran
    instance = session.scalar(select(Instance).where(Instance.sop_uid == result.sop_uid))
    assert instance is not None and runtime.blobs.exists(instance.blob_key)
    assert len(calls) == 1


# -- accounts opened at the scan ------------------------------------------------------------

def test_a_new_study_opens_an_account_for_a_patient_with_an_email(runtime_with, tmp_path):
    runtime, session = runtime_with(identity={"accounts_at_scan": True})
    session.add(Patient(issuer="", patient_id="SCAN-1", family_name="Ortega", given_name="Lucia",
                        birth_date=date(1975, 5, 5), email="lucia.ortega@example.test", created_at=clock.now()))
    session.add(Patient(issuer="", patient_id="SCAN-2", family_name="Nomail", given_name="Nora",
                        birth_date=date(1975, 5, 5), created_at=clock.now()))
    session.commit()
    for patient_id in ("SCAN-1", "SCAN-2"):
        for path in ct_files(tmp_path / patient_id, patient_id=patient_id):
            assert ingest_file(session, runtime, path).outcome == "stored"
    account = session.scalar(select(Account).where(Account.email == "lucia.ortega@example.test"))
    assert account is not None and account.name == "Lucia Ortega"
    link = session.scalar(select(PatientLink).where(PatientLink.account_id == account.id))
    assert session.get(Patient, link.patient_ref).patient_id == "SCAN-1"
    [message] = messages_to(session, "lucia.ortega@example.test")
    assert "/activate/" in message.body_text
    # a second study of the same patient sends nothing more; no email, no account
    for path in ct_files(tmp_path / "again", patient_id="SCAN-1"):
        assert ingest_file(session, runtime, path).outcome == "stored"
    assert len(messages_to(session, "lucia.ortega@example.test")) == 1
    nomail = session.scalar(select(Patient).where(Patient.patient_id == "SCAN-2"))
    assert session.scalar(select(PatientLink).where(PatientLink.patient_ref == nomail.id)) is None


def test_without_accounts_at_scan_no_account_is_opened(runtime, session, tmp_path):
    session.add(Patient(issuer="", patient_id="SCAN-3", family_name="Off", given_name="Otto",
                        email="otto.off@example.test", created_at=clock.now()))
    session.commit()
    for path in ct_files(tmp_path, patient_id="SCAN-3"):
        assert ingest_file(session, runtime, path).outcome == "stored"
    assert session.scalar(select(Account).where(Account.email == "otto.off@example.test")) is None
    assert messages_to(session, "otto.off@example.test") == []


# -- a killed import ------------------------------------------------------------------------

DIE_IN_THE_WINDOW = """
import os, signal, sys
from pathlib import Path
from core.site import load_site
from core.studies import blobs
site = load_site(sys.argv[1])
store = blobs.make_store(site.config.storage)
with blobs.scratch_file(store, ".dcm") as half_received:
    half_received.write_bytes(b"DICM" * 100)
    with blobs.scratch_file(store, ".dcm") as moving_in:
        moving_in.write_bytes(b"not yet committed")
        claim = blobs.claim(store, "dicom/00/00/0000deadbeef")
        store.put(claim.key, moving_in)
        print("in the window", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_a_killed_import_leaves_no_orphans_and_the_rerun_completes(tmp_path):
    site_file = write_site(tmp_path, site_data(tmp_path, plugins={}))
    engine = db.make_engine(f"sqlite:///{tmp_path / 'portal.db'}")
    db.upgrade(engine, plugins.build_manager({}))
    folder = tmp_path / "many"
    total = 0
    for index in range(6):
        total += len(synthetic.write(synthetic.study(synthetic.StudySpec(
            patient_id=f"KILL-{index}", instances=25, rows=32, columns=32)), folder / str(index)))
    command = [sys.executable, "-m", "core.cli", "--site", str(site_file), "import", str(folder)]
    importing = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    with engine.connect() as connection:
        while connection.scalar(text("SELECT count(*) FROM instance")) < 10:
            assert importing.poll() is None and time.monotonic() < deadline, "the import ended too soon"
            connection.rollback()
            time.sleep(0.02)
    importing.send_signal(signal.SIGKILL)
    importing.wait(timeout=30)
    # and a process killed exactly between moving a blob in and committing its row
    window = subprocess.run([sys.executable, "-c", DIE_IN_THE_WINDOW, str(site_file)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert window.returncode == -signal.SIGKILL and "in the window" in window.stdout
    store = build_store(site_file)
    assert store.exists("dicom/00/00/0000deadbeef")
    assert list(store.scratch.glob("*.part")) and list(store.scratch.glob("*.claim"))

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    accepted, held = map(int, re.match(r"accepted (\d+), already held (\d+), refused 0\n", rerun.stdout).groups())
    assert accepted + held == total and held >= 10
    assert list(store.scratch.iterdir()) == []  # no partial file, no claim left
    with engine.connect() as connection:
        keys = set(connection.scalars(text("SELECT blob_key FROM instance")))
    assert len(keys) == total
    assert set(store.keys()) == keys  # no orphan blob, and no row without its blob
    engine.dispose()


def build_store(site_file: Path):
    from core.site import load_site
    from core.studies import blobs

    return blobs.make_store(load_site(site_file).config.storage)
