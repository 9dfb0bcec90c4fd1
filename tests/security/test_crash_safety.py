"""A web process killed in the middle of a STOW-RS upload (a real ``filmless serve``,
SIGKILL): the instances that were complete stay whole, the half-received one leaves
nothing, the next start clears what the dead process held, the audit chain still
verifies, and the PACS sending everything again gets every instance stored once.
(The worker killed mid-export is in tests/core/test_export_faults.py.)"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from sqlalchemy import text
from support import ROOT, filmless, free_port, site_data, wait_for, write_site

from core import db
from core.site import load_site
from core.studies import blobs, synthetic

TOKEN = "crash-test-pacs-token"
BOUNDARY = "crash-boundary"


def part(data: bytes) -> bytes:
    return f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"


def serve(site_file, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "core.cli", "--site", str(site_file), "serve"], cwd=ROOT,
                            env={**os.environ, "PORT": str(port)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_web_process_killed_mid_stow_leaves_whole_instances_only(tmp_path):
    site_file = write_site(tmp_path, site_data(tmp_path, plugins={}, studies={"pacs_token": TOKEN}))
    assert filmless("--site", str(site_file), "migrate").returncode == 0
    files = [path.read_bytes() for path in synthetic.write(synthetic.study(synthetic.StudySpec(
        patient_id="CRASH-1", instances=6, rows=64, columns=64)), tmp_path / "in")]
    engine = db.make_engine(f"sqlite:///{tmp_path / 'portal.db'}")
    store = blobs.make_store(load_site(site_file).config.storage)

    def stored() -> int:
        with engine.connect() as connection:
            return connection.scalar(text("SELECT count(*) FROM instance"))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = serve(site_file, port)
    wait_for(f"{url}/healthz", server)
    held = threading.Event()

    def body():  # three whole instances, then half of the fourth, then silence
        for data in files[:3]:
            yield part(data)
        yield part(files[3])[: len(files[3]) // 2]
        held.wait(60)

    def upload() -> None:
        try:
            httpx.post(f"{url}/dicomweb/studies", content=body(), timeout=60,
                       headers={"Authorization": f"Bearer {TOKEN}",
                                "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'})
        except httpx.HTTPError:
            pass  # the server died under it, as intended

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    try:
        deadline = time.monotonic() + 60
        while stored() < 3 or not list(store.scratch.glob("*.part")):
            assert server.poll() is None and time.monotonic() < deadline, "the upload did not get under way"
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
    finally:
        held.set()
        sender.join(timeout=30)
    assert list(store.scratch.glob("*.part")), "the half-received part was on disk when the process died"

    server = serve(site_file, port)  # its start clears what the dead process held
    try:
        wait_for(f"{url}/healthz", server)
        assert list(store.scratch.glob("*.part")) == [] and list(store.scratch.glob("*.claim")) == []
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT blob_key, sha256 FROM instance")).all()
        assert len(rows) == 3 and set(store.keys()) == {key for key, _ in rows}
        for key, sha256 in rows:  # every stored instance is whole
            with store.open(key) as handle:
                assert hashlib.sha256(handle.read()).hexdigest() == sha256
        answer = httpx.post(f"{url}/dicomweb/studies", content=b"".join(map(part, files)) + f"--{BOUNDARY}--\r\n".encode(),
                            headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/dicom+json",
                                     "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'},
                            timeout=60)
        assert answer.status_code == 200, answer.text
        assert stored() == 6 and len(set(store.keys())) == 6
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
        engine.dispose()
    verified = filmless("--site", str(site_file), "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
