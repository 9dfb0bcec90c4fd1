"""Helpers for tests: sites written to real YAML files, the plugin registry with
the fixture plugin, and running the ``filmless`` command as a real process."""
from __future__ import annotations

import importlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from core import db, plugins
from core.site import load_site
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("FILMLESS_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


def registry(**extra):
    """Installed plugins plus the fixture plugin (and any others a test adds)."""
    return {**plugins.installed(), "fixture": lambda: importlib.import_module("fixture_plugin"), **extra}


def migrated_plugins() -> dict:
    """The plugins whose tables the shared test database has (see ``database_url`` in conftest.py):
    the fixture plugin, and radnet_icode once it has migrations. Sites enable only those they name."""
    found = {"fixture": importlib.import_module("fixture_plugin")}
    if (ROOT / "plugins" / "radnet_icode" / "migrations").is_dir():
        found["radnet_icode"] = importlib.import_module("plugins.radnet_icode")
    return found


def site_data(tmp_path: Path, database: str | None = None, **overrides) -> dict:
    data = {
        "site": {"name": "Test Imaging", "timezone": "Europe/Madrid", "languages": ["en", "es"]},
        "database": database or f"sqlite:///{tmp_path / 'portal.db'}",
        "storage": {"kind": "filesystem", "path": str(tmp_path / "blobs")},
        "queue": {"kind": "sqlite", "path": str(tmp_path / "queue.db")},
        "mail": {"transport": "outbox"},
        "plugins": {"fixture": {"greeting": "hola"}},
    }
    data.update(overrides)
    return data


def write_site(tmp_path: Path, data: dict, name: str = "site.yaml") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def make_site(tmp_path: Path, reg=None, *, plugins: dict | None = None, fixture: bool = True, **overrides):
    """A site written to ``tmp_path``. ``plugins`` (name -> settings) are enabled after the fixture
    plugin, or instead of its test settings when they name it; ``fixture=False`` leaves it out:
    ``make_site(tmp_path, database=database_url, plugins={"radnet_icode": {...}})``."""
    enabled = dict(site_data(tmp_path)["plugins"]) if fixture else {}
    enabled.update(plugins or {})
    data = site_data(tmp_path, plugins=enabled, **overrides)
    return load_site(write_site(tmp_path, data), registry=reg or registry())


def reset_postgresql(url: str) -> None:
    engine = db.make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()



def demo_site_file(tmp_path: Path, **overrides) -> Path:
    """The demo site with its database, queue and storage moved into ``tmp_path``."""
    data = yaml.safe_load((ROOT / "sites" / "demo.yaml").read_text(encoding="utf-8"))
    data.update(database=f"sqlite:///{tmp_path / 'portal.db'}",
                storage={"kind": "filesystem", "path": str(tmp_path / "blobs")},
                queue={"kind": "sqlite", "path": str(tmp_path / "queue.db")}, **overrides)
    return write_site(tmp_path, data, "demo.yaml")


def filmless(*args: str, env: dict | None = None, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run the real ``filmless`` command from the project root."""
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, **kwargs)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, deadline: float = 60) -> httpx.Response:
    """Poll a real server until it answers (bounded); fail early if it died."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {process.stderr.read()}")
        try:
            return httpx.get(url, timeout=2)
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {deadline}s")


CSRF_COOKIE = "__Host-filmless_csrf"


def csrf_token(client) -> str:
    """The client's CSRF token (any page sets the cookie)."""
    if CSRF_COOKIE not in client.cookies:
        client.get("/")
    return client.cookies[CSRF_COOKIE]


def post_form(client, url: str, data: dict | None = None, **kwargs):
    """Submit a form the way a browser does: with the CSRF token."""
    return client.post(url, data={**(data or {}), "csrf_token": csrf_token(client)}, **kwargs)


def sign_in_as(client, email: str, password: str):
    answer = post_form(client, "/signin", {"email": email, "password": password}, follow_redirects=False)
    assert answer.status_code == 303, answer.text[:500]
    return answer


def messages_to(session, recipient: str) -> list:
    """Messages stored for ``recipient``, oldest first."""
    from sqlalchemy import select

    from core.notify import Message

    return session.scalars(select(Message).where(Message.recipient == recipient).order_by(Message.id)).all()


def last_code(session, recipient: str) -> str:
    """The last 6-digit code sent to ``recipient`` (read from the stored message, as a person would)."""
    import re

    return re.findall(r"\b\d{6}\b", messages_to(session, recipient)[-1].body_text)[-1]


INVITE_LINK = re.compile(r"https?://[^/\s]+(/invite/[A-Za-z0-9_-]+)")


def invite_path(session, email: str) -> str:
    """The link in the last email to ``email``, as its reader would follow it."""
    return INVITE_LINK.findall(messages_to(session, email)[-1].body_text)[-1]


def audit_events(session, action: str) -> list:
    from sqlalchemy import select

    from core.audit.models import AuditEvent

    return session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)).all()


def ingest_file(session, runtime, path, **kwargs):
    """Ingest a copy of ``path`` the way every way in does: from a scratch file of the store."""
    from core.studies import blobs, service

    with blobs.scratch_file(runtime.blobs, ".dcm") as scratch:
        scratch.write_bytes(Path(path).read_bytes())
        return service.ingest(session, scratch, runtime=runtime, **kwargs)


def add_linked_patient(session, account_id: int, relationship: str = "self", **fields):
    """A patient record that ``account_id`` may see (as themselves, or as guardian etc.); flushed, not committed."""
    from core import clock
    from core.identity.models import PatientLink
    from core.studies.models import Patient

    patient = Patient(created_at=clock.now(), **fields)
    session.add(patient)
    session.flush()
    session.add(PatientLink(account_id=account_id, patient_ref=patient.id, relationship=relationship,
                            created_at=clock.now()))
    return patient


def served(site_file, port: int):
    """A real ``filmless serve`` of ``site_file`` on ``port``: yields its address, stops it after."""
    server = subprocess.Popen([sys.executable, "-m", "core.cli", "--site", str(site_file), "serve"], cwd=ROOT,
                              env={**os.environ, "PORT": str(port)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/healthz", server)
    yield url
    server.send_signal(signal.SIGINT)
    server.wait(timeout=30)


def children(pid: int) -> list[int]:
    """The live process ``pid``'s child processes, from /proc."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def multipart_body(datasets, boundary="stow-boundary-1") -> tuple[bytes, str]:
    """A STOW-RS body of ``datasets`` and its Content-Type."""
    body = b""
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'
