"""``filmless serve --processes N``: several web processes on one port, one site."""
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from support import ROOT, alive, children, demo_site_file, filmless, free_port, multipart_body, wait_for

from core.app import build_runtime
from core.site import load_site
from core.studies import synthetic
from core.studies.models import Instance

pytestmark = pytest.mark.slow
CLIENTS, REQUESTS_EACH = 4, 12


def web_processes(pid: int) -> list[int]:
    """The server processes uvicorn started (not multiprocessing's resource tracker)."""
    return [child for child in children(pid) if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_several_web_processes_share_the_port_the_store_and_the_audit_chain(tmp_path):
    site_file = demo_site_file(tmp_path)
    assert filmless("--site", str(site_file), "migrate").returncode == 0
    spec = synthetic.StudySpec(patient_id="WP-1", instances=CLIENTS * REQUESTS_EACH, rows=128, columns=128)
    bodies = [multipart_body([dataset]) for dataset in synthetic.study(spec)]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "core.cli", "--site", str(site_file), "serve", "--processes", "2"],
                              cwd=ROOT, env={**os.environ, "PORT": str(port)},
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = f"http://127.0.0.1:{port}"
    answers, web = [], []
    try:
        wait_for(f"{url}/healthz", server)
        web = web_processes(server.pid)
        assert len(web) == 2 and all(alive(pid) for pid in web)
        before = {pid: cpu_ticks(pid) for pid in web}

        def send(share):  # a connection per request, so each is accepted by whichever process is free
            for content, content_type in share:
                answers.append(httpx.post(f"{url}/dicomweb/studies", content=content, timeout=60, headers={
                    "Content-Type": content_type, "Accept": "application/dicom+json",
                    "Authorization": "Bearer demo-pacs-token"}).status_code)

        threads = [threading.Thread(target=send, args=(bodies[n::CLIENTS],)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        used = {pid: cpu_ticks(pid) - before[pid] for pid in web}
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    assert "(2 web processes)" in server.stdout.read()
    assert answers == [200] * len(bodies)
    assert all(share >= sum(used.values()) / 5 for share in used.values()), f"CPU ticks per process: {used}"
    assert not any(alive(pid) for pid in web)
    runtime = build_runtime(load_site(site_file))
    try:
        with runtime.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Instance)) == len(bodies)
    finally:
        runtime.close()
    verified = filmless("--site", str(site_file), "audit", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith("ok "), verified.stdout


def test_the_number_of_web_processes_is_checked(tmp_path):
    refused = filmless("--site", str(demo_site_file(tmp_path)), "serve", "--processes", "0")
    assert refused.returncode == 2
    assert "argument --processes: a whole number of at least 1, not '0'" in refused.stderr
