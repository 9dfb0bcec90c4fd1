"""Exports (issue 6) when things go wrong or someone else asks: the acknowledgement, reuse,
ownership and refusals over HTTP; a missing blob, a full disk, a worker killed mid-job (a real
``filmless worker`` process), the purge after the availability window, and the memory an
export of 300 MB takes."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import uuid
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
import test_exports
from support import (ROOT, audit_events, make_site, messages_to, post_form, registry, sign_in_as, site_data,
                     write_site)
from test_exports import PASSWORD, account_with_patient, exported, ingest_exam, principal_of, wait_until

from core import clock, db, plugins
from core.access import Principal
from core.app import build_runtime, create_app
from core.identity import service as identity
from core.site import load_site
from core.studies import blobs, synthetic
from core.studies import service as studies
from core.studies.exports import service
from core.studies.exports.models import Export
from core.studies.models import Instance, Series

own_database_url = test_exports.own_database_url  # the fixture: a database of this module's own

MISSING = ("Some images of this exam are missing from our archive, so the download could not be made. "
           "Our staff have been told and will fix it.")
NO_SPACE = "There is not enough space to make this download right now. Please try again later."
ACKNOWLEDGE = "Please tick the box to confirm that you understand what you are downloading."


@pytest.fixture
def site(tmp_path, database_url, request):
    """The test site; ``parametrize("site", [{...}], indirect=True)`` gives it an ``exports`` section."""
    return make_site(tmp_path, database=database_url, exports=getattr(request, "param", {}))


@pytest.fixture
def alex(session):
    return account_with_patient(session, "alex@example.test", "EXP-ALEX")


def builds_queued(runtime) -> int:
    return sum(1 for task in runtime.huey.pending() if task.name == service.BUILD)


def ask(client, study_uids, format_name="zip", **fields):
    return post_form(client, "/exports", {"format": format_name, "study": study_uids, **fields}, follow_redirects=False)


# -- asking over HTTP -------------------------------------------------------------------------------

def test_a_dicom_export_needs_the_acknowledgement_is_audited_and_asking_twice_reuses_it(client, session, runtime,
                                                                                       tmp_path, alex):
    account, patient = alex
    ct, _ = ingest_exam(session, runtime, tmp_path, patient)
    sign_in_as(client, account.email, PASSWORD)
    confirm = client.get("/exports/new", params={"format": "iso", "study": ct.study_uid})
    assert confirm.status_code == 200 and 'name="acknowledge" value="yes" required' in confirm.text
    for format_name in ("zip", "iso"):
        refused = ask(client, [ct.study_uid], format_name)
        assert refused.status_code == 422 and ACKNOWLEDGE in refused.text
    assert session.scalars(select(Export)).all() == [] and builds_queued(runtime) == 0
    assert audit_events(session, "export.requested") == []

    asked = ask(client, [ct.study_uid], acknowledge="yes")
    [export] = session.scalars(select(Export)).all()
    assert (asked.status_code, asked.headers["location"]) == (303, f"/exports/{export.public_id}")
    [event] = audit_events(session, "export.requested")
    assert (event.actor, event.subject, event.detail) == (
        f"account:{account.id}", f"study:{ct.id}", {"export": export.public_id, "format": "zip", "acknowledged": True})
    assert ask(client, [ct.study_uid], acknowledge="yes").headers["location"] == asked.headers["location"]
    export.status = "running"  # a worker has it
    session.commit()
    assert ask(client, [ct.study_uid], acknowledge="yes").headers["location"] == asked.headers["location"]
    assert builds_queued(runtime) == 1 and len(audit_events(session, "export.requested")) == 1
    export.status = "ready"  # done: asking again makes a new one
    session.commit()
    assert ask(client, [ct.study_uid], acknowledge="yes").headers["location"] != asked.headers["location"]

    pictures = ask(client, [ct.study_uid], "jpg", window="40,400")  # pictures need no acknowledgement
    assert pictures.status_code == 303 and builds_queued(runtime) == 3
    jpg = session.scalar(select(Export).where(Export.format == "jpg"))
    assert jpg.options == {"window": [40.0, 400.0]} and jpg.language == "en"
    assert audit_events(session, "export.requested")[-1].detail["acknowledged"] is None


def test_an_export_is_its_askers_alone(client, session, runtime, tmp_path, alex):
    account, patient = alex
    ct, _ = ingest_exam(session, runtime, tmp_path, patient)
    lee, lees_patient = account_with_patient(session, "lee@example.test", "EXP-LEE")
    export = exported(session, runtime, principal_of(account, patient), "zip", [ct])
    page = f"/exports/{export.public_id}"
    sign_in_as(client, account.email, PASSWORD)
    assert [client.get(page + suffix).status_code for suffix in ("", "/status", "/download")] == [200, 200, 200]

    sign_in_as(client, lee.email, PASSWORD)
    assert [client.get(page + suffix).status_code for suffix in ("", "/status", "/download")] == [404, 404, 404]
    assert client.get("/exports/new", params={"format": "zip", "study": ct.study_uid}).status_code == 404
    assert ask(client, [ct.study_uid], acknowledge="yes").status_code == 404
    lees, _ = ingest_exam(session, runtime, tmp_path, lees_patient)
    assert ask(client, [lees.study_uid, ct.study_uid], acknowledge="yes").status_code == 404  # not even mixed in
    assert session.scalars(select(Export.owner)).all() == [f"account:{account.id}"]
    assert len(audit_events(session, "export.downloaded")) == 1


def test_held_images_a_plugins_refusal_and_the_anonymous_get_nothing(app, client, session, runtime, tmp_path, alex):
    account, patient = alex
    held, _ = ingest_exam(session, runtime, tmp_path, patient, description="HOLD IMAGES")
    barred, _ = ingest_exam(session, runtime, tmp_path, patient, description="NO EXPORT")
    free, _ = ingest_exam(session, runtime, tmp_path, patient)
    sign_in_as(client, account.email, PASSWORD)
    for uids, message in (([held.study_uid], "The images of this exam are not available yet."),
                          ([free.study_uid, barred.study_uid],
                           "These exams cannot be downloaded here. Please contact us if you need a copy.")):
        for format_name in ("zip", "jpg"):
            refused = ask(client, uids, format_name, acknowledge="yes")
            assert refused.status_code == 422 and message in refused.text
    assert ask(client, [free.study_uid], acknowledge="yes").status_code == 303
    [export] = session.scalars(select(Export)).all()

    with TestClient(app, base_url="https://testserver") as anonymous:
        assert anonymous.get("/exports/new", params={"study": free.study_uid}).status_code == 403
        assert ask(anonymous, [free.study_uid], acknowledge="yes").status_code == 403
        assert anonymous.get(f"/exports/{export.public_id}/status").status_code == 403
    assert builds_queued(runtime) == 1


# -- faults -----------------------------------------------------------------------------------------

def test_a_missing_blob_fails_clearly_alerts_the_admins_and_offers_no_file(client, session, runtime, tmp_path, alex):
    account, patient = alex
    identity.create_account(session, email="admin@example.test", name="Ada Admin", role="admin", how="staff",
                            password=PASSWORD, email_verified=True)
    ct, _ = ingest_exam(session, runtime, tmp_path, patient, instances=3)
    lost = session.scalars(select(Instance).join(Series, Series.id == Instance.series_ref)
                           .where(Series.study_ref == ct.id)).first()
    runtime.blobs.local_path(lost.blob_key).unlink()

    export = exported(session, runtime, principal_of(account, patient), "zip", [ct])
    assert (export.status, export.error, export.total) == ("failed", MISSING, 3)
    assert sorted(path.name for path in service.folder(runtime).iterdir()) == [f"{export.public_id}.lock"]
    sign_in_as(client, account.email, PASSWORD)
    status = client.get(f"/exports/{export.public_id}/status").json()
    assert (status["status"], status["message"], status["download"]) == ("failed", MISSING, None)
    assert client.get(f"/exports/{export.public_id}/download").status_code == 404
    [alert] = messages_to(session, "admin@example.test")
    assert alert.subject == "An export failed at Test Imaging" and export.public_id in alert.body_text
    assert "EXP-ALEX" not in alert.body_text and messages_to(session, account.email) == []
    [event] = audit_events(session, "export.failed")
    assert event.detail["alerted"] is True


@pytest.mark.parametrize("site", [{"alert_to": ["imaging-alerts@example.test"]}], indirect=True)
def test_a_full_disk_fails_with_its_own_message_and_leaves_no_work_files(session, runtime, tmp_path, alex):
    with pytest.raises(OSError) as full:  # the kernel's answer the fixture format meets
        with open("/dev/full", "wb", buffering=0) as disk:
            disk.write(b"x")
    assert full.value.errno == errno.ENOSPC
    ct, _ = ingest_exam(session, runtime, tmp_path, alex[1])
    export = exported(session, runtime, principal_of(*alex), "fixture_full_disk", [ct])
    assert (export.status, export.error) == ("failed", NO_SPACE)
    assert not (service.folder(runtime) / f"{export.public_id}.work").exists()
    assert sorted(path.name for path in service.folder(runtime).iterdir()) == [f"{export.public_id}.lock"]
    [alert] = messages_to(session, "imaging-alerts@example.test")
    assert export.public_id in alert.body_text


def test_purge_deletes_files_past_the_window_and_their_links_stop_working(client, session, runtime, tmp_path, alex,
                                                                         frozen_clock):
    account, patient = alex
    ct, _ = ingest_exam(session, runtime, tmp_path, patient)
    start = clock.now()
    old = exported(session, runtime, principal_of(*alex), "zip", [ct])
    assert old.expires_at == start + timedelta(hours=24)
    clock.advance(timedelta(hours=2))
    recent = exported(session, runtime, principal_of(*alex), "jpg", [ct])
    clock.advance(timedelta(hours=22, minutes=1))
    leftover = service.folder(runtime) / f"{old.public_id}.work"  # a worker killed as it finished
    (leftover / "files").mkdir(parents=True)
    assert service.purge(runtime) == 1
    assert not leftover.exists() and not (service.folder(runtime) / f"{old.public_id}.lock").exists()
    session.expire_all()
    assert (session.get(Export, old.id).status, session.get(Export, recent.id).status) == ("expired", "ready")
    assert not service.file_of(runtime, old).exists() and service.file_of(runtime, recent).exists()
    sign_in_as(client, account.email, PASSWORD)
    assert client.get(f"/exports/{old.public_id}/download").status_code == 404
    assert client.get(f"/exports/{old.public_id}/status").json()["text"] == (
        "This download has been deleted. You can ask for it again from the exam.")
    assert client.get(f"/exports/{recent.public_id}/download").status_code == 200
    assert service.purge(runtime) == 0


def test_a_format_the_site_no_longer_offers_fails_instead_of_running_forever(session, runtime, tmp_path, alex,
                                                                            frozen_clock):
    ct, _ = ingest_exam(session, runtime, tmp_path, alex[1])
    export, _ = service.ask(session, runtime, principal_of(*alex), format_name="fixture_gated",
                            study_uids=[ct.study_uid], language="en", acknowledged=True)
    export.format = "retired_robot"  # the plugin that offered it left the site while it waited
    session.commit()
    assert service.run(runtime, export.id) == "failed"
    session.expire_all()
    assert session.get(Export, export.id).error == service.generic_failure()
    clock.advance(timedelta(hours=25))
    assert service.purge(runtime) == 1
    session.expire_all()
    assert session.get(Export, export.id).status == "expired"


# -- a worker killed mid-job (a real process) -------------------------------------------------------

def installed_fixture_plugin(folder: Path) -> dict:
    """The environment of a process that has the fixture plugin installed the way any plugin is:
    an entry point of the ``filmless.plugins`` group in a dist-info folder on its path."""
    dist = folder / "filmless_fixture-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: filmless-fixture\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[filmless.plugins]\nfixture = fixture_plugin\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT / "tests" / "plugins")])}


def start_worker(site_file: Path, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as output:
        return subprocess.Popen([sys.executable, "-m", "core.cli", "--site", str(site_file), "worker"], cwd=ROOT,
                                env=env, stdout=output, stderr=subprocess.STDOUT)


def test_a_worker_killed_mid_job_offers_no_file_and_its_next_start_finishes_the_job(own_database_url, tmp_path):
    site_file = write_site(tmp_path / "site", site_data(tmp_path / "site", database=own_database_url))
    env, log, gate = installed_fixture_plugin(tmp_path / "installed"), tmp_path / "worker.log", tmp_path / "gate"
    os.mkfifo(gate)
    runtime = build_runtime(load_site(site_file, registry=registry()))
    email = f"alex-{uuid.uuid4().hex[:8]}@example.test"
    with runtime.sessions() as session:
        account, patient = account_with_patient(session, email, f"KILL-{uuid.uuid4().hex[:8]}")
        ct, files = ingest_exam(session, runtime, tmp_path, patient, instances=3)
        export, _ = service.ask(session, runtime, principal_of(account, patient), format_name="fixture_gated",
                                study_uids=[ct.study_uid], language="en", acknowledged=True,
                                options={"gate": str(gate)})
        session.commit()
        service.enqueue(runtime, export)

    def state() -> tuple:
        with runtime.sessions() as session:
            found = session.get(Export, export.id)
            return found.status, found.done, found.attempts

    def open_gate() -> bool:
        try:
            os.close(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))  # the job reads to its end and goes on
            return True
        except OSError as error:  # nobody at the gate yet
            assert error.errno == errno.ENXIO
            return False

    worker = start_worker(site_file, env, log)
    try:
        wait_until(lambda: state() == ("running", 1, 1))
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        assert state() == ("running", 1, 1) and not service.file_of(runtime, export).exists()
        with TestClient(create_app(runtime.site, runtime), base_url="https://testserver") as client:
            sign_in_as(client, email, PASSWORD)
            assert client.get(f"/exports/{export.public_id}/status").json()["download"] is None
            assert client.get(f"/exports/{export.public_id}/download").status_code == 404

        worker = start_worker(site_file, env, log)  # its start requeues the export: built again from scratch
        wait_until(lambda: state() == ("running", 1, 2))
        wait_until(open_gate)
        wait_until(lambda: state()[0] == "ready")
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGINT)  # a graceful stop: the job it runs ends first
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:  # stuck at the gate: the test failed before opening it
                worker.kill()
                worker.wait(timeout=30)
        runtime.close()
    assert log.read_text().count("worker consuming") == 2
    with zipfile.ZipFile(service.file_of(runtime, export)) as archive:
        assert len(archive.namelist()) == 3 and all(archive.read(n)[:128] == bytes(128) for n in archive.namelist())
    assert not (service.folder(runtime) / f"{export.public_id}.work").exists()


# -- memory -----------------------------------------------------------------------------------------

# ru_maxrss is no measure here: Linux carries the parent's peak across fork and exec into the
# child's. The job's own growth is the peak RSS of this process (VmHWM), reset just before the
# job so that importing does not count, less the RSS it started from.
MEASURE = """
import re, sys
from core.app import build_runtime
from core.site import load_site
from core.studies.exports import service

def kb(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

runtime = build_runtime(load_site(sys.argv[1]))
with open("/proc/self/clear_refs", "w") as peak:
    peak.write("5")
before = kb("VmRSS")
status = service.run(runtime, int(sys.argv[2]))
print(status, kb("VmHWM") - before)
"""


def test_exporting_300_mb_as_zip_and_iso_takes_under_64_mb_of_memory(tmp_path):
    site_file = write_site(tmp_path, site_data(tmp_path, plugins={}))
    engine = db.make_engine(load_site(site_file).config.database)
    db.upgrade(engine, plugins.build_manager({}))
    engine.dispose()
    runtime = build_runtime(load_site(site_file))
    spec = synthetic.StudySpec(patient_id="BIG-1", rows=8, columns=8)
    pixels = (np.arange(2048 * 1280, dtype=np.uint16) % 4096).tobytes()  # a 2048 x 1280 16-bit CT-like slice: 5 MiB
    series_uid = synthetic.generate_uid()
    with runtime.sessions() as session:
        for index in range(60):
            dataset = synthetic.image(spec, 0, index, series_uid)
            dataset.Rows, dataset.Columns, dataset.PixelData = 2048, 1280, pixels
            with blobs.scratch_file(runtime.blobs, ".dcm") as scratch:  # ingest moves it into the store
                dataset.save_as(scratch, enforce_file_format=True)
                assert studies.ingest(session, scratch, runtime=runtime).outcome == "stored"
        session.commit()
        account = identity.create_account(session, email="big@example.test", name="Big Export", role="staff",
                                          how="staff", password=PASSWORD)
        staff = Principal(kind="account", id=str(account.id), roles=frozenset({"staff"}))
        asked = [service.ask(session, runtime, staff, format_name=name, study_uids=[spec.study_uid], language="en",
                             acknowledged=True)[0] for name in ("zip", "iso")]
        session.commit()
    try:
        for export in asked:
            measured = subprocess.run([sys.executable, "-c", MEASURE, str(site_file), str(export.id)], cwd=ROOT,
                                      capture_output=True, text=True, timeout=120)
            status, grown_kb = measured.stdout.split()
            assert status == "ready", measured.stderr
            assert int(grown_kb) < 64 * 1024, f"{export.format}: RSS grew by {int(grown_kb) // 1024} MB"
            built = service.file_of(runtime, export)
            assert built.stat().st_size >= 300 * 10**6
            built.unlink()
    finally:
        runtime.close()
