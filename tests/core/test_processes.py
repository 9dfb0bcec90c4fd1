"""Real processes: a huey consumer, ``filmless worker``, ``filmless run``; and the
one-line refusals that start nothing."""
import os
import signal
import subprocess
import time
import socket
import sys

import httpx
import pytest
from sqlalchemy import text
from support import ROOT, alive, children, demo_site_file, filmless, free_port, wait_for

from core.app import build_runtime
from core.site import load_site

pytestmark = pytest.mark.slow


def test_a_real_consumer_runs_plugin_tasks(runtime):
    consumer = runtime.huey.create_consumer(workers=1, worker_type="thread", periodic=False)
    consumer.start()
    try:
        write_note = next(t for t in runtime.tasks if t.name == "fixture.write_note")
        assert write_note("queued note").get(blocking=True, timeout=30) == "QUEUED NOTE"
    finally:
        consumer.stop(graceful=True)
    with runtime.sessions() as session:
        assert session.scalar(text("SELECT count(*) FROM fixture_note WHERE body = 'queued note'")) == 1
        session.execute(text("DELETE FROM fixture_note"))
        session.commit()


def test_filmless_worker_consumes_the_sites_queue(tmp_path):
    site_file = demo_site_file(tmp_path)
    assert filmless("--site", str(site_file), "migrate").returncode == 0
    worker = subprocess.Popen([sys.executable, "-m", "core.cli", "--site", str(site_file), "worker"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runtime = build_runtime(load_site(site_file))
    try:
        ping = next(t for t in runtime.tasks if t.name == "core.ping")
        assert ping().get(blocking=True, timeout=60) == "pong"
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=30)
        runtime.close()
    assert "worker consuming" in worker.stdout.read()


def test_filmless_run_serves_both_languages_and_stops_cleanly(tmp_path):
    listener_port = free_port()
    site_file = demo_site_file(tmp_path, studies={"dicom": {"port": listener_port}})
    assert filmless("--site", str(site_file), "migrate").returncode == 0
    assert filmless("--site", str(site_file), "seed-demo").stdout == "demo data loaded\n"
    port = free_port()
    run = subprocess.Popen([sys.executable, "-m", "core.cli", "--site", str(site_file), "run"], cwd=ROOT,
                           env={**os.environ, "PORT": str(port)},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        health = wait_for(f"http://127.0.0.1:{port}/healthz", run)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        english = httpx.get(f"http://127.0.0.1:{port}/")
        spanish = httpx.get(f"http://127.0.0.1:{port}/", headers={"Accept-Language": "es"})
        assert "Filmless Demo Imaging" in english.text and "Sign in" in english.text
        assert '<html lang="es">' in spanish.text and "Iniciar sesión" in spanish.text
        workers = children(run.pid)  # the worker and the DICOM listener
        assert len(workers) == 2 and all(alive(worker) for worker in workers)
        wait_for_port(listener_port)

        busy = filmless("--site", str(site_file), "serve", env={"PORT": str(port)})
        assert busy.returncode == 2
        assert busy.stderr == f"filmless: port {port} on 127.0.0.1 is already in use: stop the other server or set PORT\n"
    finally:
        run.send_signal(signal.SIGINT)
        run.wait(timeout=30)
    assert not any(alive(worker) for worker in workers)


@pytest.mark.parametrize("signum, when", [(signal.SIGTERM, "serving"), (signal.SIGHUP, "serving"),
                                           (signal.SIGTERM, "starting")], ids=["term", "hup", "term_at_start_up"])
def test_sigterm_or_sighup_to_filmless_run_stops_all_three_as_ctrl_c_does(tmp_path, signum, when):
    # what `kill`, `timeout 30 make run` (make passes SIGTERM on) and a closed terminal send
    listener_port = free_port()
    site_file = demo_site_file(tmp_path, studies={"dicom": {"port": listener_port}})
    assert filmless("--site", str(site_file), "migrate").returncode == 0
    port = free_port()
    run = subprocess.Popen([sys.executable, "-m", "core.cli", "--site", str(site_file), "run"], cwd=ROOT,
                           env={**os.environ, "PORT": str(port)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers = []
    try:
        if when == "serving":
            wait_for(f"http://127.0.0.1:{port}/healthz", run)
            wait_for_port(listener_port)
            runtime = build_runtime(load_site(site_file))
            try:  # the worker consumes
                ping = next(t for t in runtime.tasks if t.name == "core.ping")
                assert ping().get(blocking=True, timeout=60) == "pong"
            finally:
                runtime.close()
            workers = children(run.pid)
        else:  # the worker and the listener are started, the web server not yet
            deadline = time.monotonic() + 30
            while len(workers) < 2 and time.monotonic() < deadline and run.poll() is None:
                workers = children(run.pid)
        assert len(workers) == 2 and all(alive(worker) for worker in workers)
        run.send_signal(signum)
        run.wait(timeout=10)  # the children stop gracefully in a second or two; 15 s each before a kill
    finally:
        survivors = [worker for worker in workers if alive(worker)]
        for process in survivors:
            os.kill(process, signal.SIGKILL)
        if run.poll() is None:
            run.kill()
            run.wait()
    assert survivors == []
    assert run.returncode in (0, 130)  # as after Ctrl-C: 130 if stopped before it served
    if when == "serving":  # the worker was asked to finish, not cut short or restarted
        assert "Shutting down gracefully" in run.stderr.read()


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)  # waiting for another process to listen, not moving test time
    raise AssertionError(f"nothing listens on port {port}")


BAD_STARTS = {
    "missing_env": ({"mail": {"transport": "smtp", "sender": "a@b.test", "host": "mail.test",
                              "password": "${FILMLESS_TEST_UNSET}"}},
                    "environment variable FILMLESS_TEST_UNSET is not set"),
    "unknown_plugin": ({"plugins": {"cd_uploaderz": None}}, "plugin 'cd_uploaderz' is not installed"),
    "bad_value": ({"sessions": {"idle_minutes": 0}}, "sessions.idle_minutes: Input should be greater than or equal to 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_STARTS))
def test_bad_start_up_is_one_line_and_starts_nothing(tmp_path, case):
    overrides, expected = BAD_STARTS[case]
    site_file = demo_site_file(tmp_path, **overrides)
    result = filmless("--site", str(site_file), "run", env={"PORT": str(free_port())})
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"{site_file}:") and expected in line
    assert not (tmp_path / "portal.db").exists() and not (tmp_path / "queue.db").exists()


def test_a_missing_site_file_is_one_line(tmp_path):
    result = filmless("--site", str(tmp_path / "absent.yaml"), "run")
    assert result.returncode == 2
    assert result.stderr == f"{tmp_path / 'absent.yaml'}:0: (file): cannot read the site file: No such file or directory\n"
