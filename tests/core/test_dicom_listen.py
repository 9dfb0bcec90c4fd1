"""``filmless dicom-listen`` as a real process: C-ECHO, C-STORE of CT, MR and JPEG
instances from pynetdicom's SCU, failure statuses for refused datasets, a clean stop."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage, Verification
from sqlalchemy import text
from support import ROOT, free_port, site_data, write_site

from core import db, plugins
from core.studies import blobs, synthetic

pytestmark = pytest.mark.slow


def wait_for_port(port: int, process: subprocess.Popen, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise AssertionError(f"the listener exited with {process.returncode}: {process.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listened on port {port} within {deadline}s")


@pytest.fixture
def listener(tmp_path):
    """A migrated site with a listener on a free port; yields (port, site folder, process)."""
    port = free_port()
    data = site_data(tmp_path, plugins={}, studies={"dicom": {"ae_title": "PORTAL_SCP", "port": port}})
    site_file = write_site(tmp_path, data)
    engine = db.make_engine(data["database"])
    db.upgrade(engine, plugins.build_manager({}))
    engine.dispose()
    scratch = tmp_path / "blobs" / "scratch"
    scratch.mkdir(parents=True)
    (scratch / "from-a-killed-run.part").write_bytes(b"half")
    process = subprocess.Popen([sys.executable, "-m", "core.cli", "--site", str(site_file), "dicom-listen"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, process)
        yield port, tmp_path, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def scu() -> AE:
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [ImplicitVRLittleEndian])
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(SecondaryCaptureImageStorage, [JPEGBaseline8Bit])
    return ae


def test_the_listener_stores_what_a_modality_sends_and_stops_cleanly(listener):
    port, folder, process = listener
    ct = synthetic.study(synthetic.StudySpec(patient_id="DIMSE-1", modality="CT", instances=2))
    for ds in ct:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    mr = synthetic.study(synthetic.StudySpec(patient_id="DIMSE-1", modality="MR", description="MR BRAIN", instances=1))
    jpeg = synthetic.study(synthetic.StudySpec(patient_id="DIMSE-2", modality="OT", jpeg=True, instances=1))
    no_patient = synthetic.study(synthetic.StudySpec(patient_id="DIMSE-3", instances=1))[0]
    del no_patient.PatientID
    intruder = synthetic.study(synthetic.StudySpec(patient_id="DIMSE-9", study_uid=ct[0].StudyInstanceUID,
                                                   instances=1))[0]
    intruder.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian

    assert not list((folder / "blobs" / "scratch").glob("*.part"))  # swept at start
    association = scu().associate("127.0.0.1", port, ae_title="PORTAL_SCP")
    assert association.is_established
    try:
        assert association.send_c_echo().Status == 0x0000
        statuses = [association.send_c_store(ds).Status for ds in ct + mr + jpeg]
        assert statuses == [0x0000] * 4
        assert association.send_c_store(ct[0]).Status == 0x0000  # already held: still a success
        refused = association.send_c_store(no_patient)
        assert (refused.Status, refused.ErrorComment) == (0xC001, "The file has no patient ID.")
        conflict = association.send_c_store(intruder)
        assert (conflict.Status, conflict.ErrorComment) == (
            0xC002, "This study is already held for another patient.")
    finally:
        association.release()

    wrong_title = scu().associate("127.0.0.1", port, ae_title="SOMEONE_ELSE")
    assert not wrong_title.is_established

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert "DICOM listener PORTAL_SCP on 127.0.0.1:" in process.stdout.read()
    log = process.stderr.read()
    assert "from MODALITY1: stored 4, already held 1, refused 2" in log

    engine = db.make_engine(f"sqlite:///{folder / 'portal.db'}")
    with engine.connect() as connection:
        rows = dict(connection.execute(text("SELECT sop_uid, transfer_syntax FROM instance")).all())
        keys = set(connection.scalars(text("SELECT blob_key FROM instance")))
        actors = set(connection.scalars(text(
            "SELECT actor FROM audit_event WHERE action = 'study.instance_stored'")))
    engine.dispose()
    assert rows == {**{ds.SOPInstanceUID: ImplicitVRLittleEndian for ds in ct},
                    mr[0].SOPInstanceUID: ExplicitVRLittleEndian, jpeg[0].SOPInstanceUID: JPEGBaseline8Bit}
    store = blobs.FilesystemBlobs(folder / "blobs")
    assert set(store.keys()) == keys
    assert actors == {"dicom:MODALITY1"}
    assert list(store.scratch.iterdir()) == []
