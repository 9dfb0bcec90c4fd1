"""What the benchmarks against Orthanc share: an Orthanc and a Filmless server, each
started on free loopback ports with a store of its own in a temporary folder and
stopped at the end; the synthetic data both are given (generated once, cached);
timing with percentiles; and the printed tables.

Nothing here asserts: a script prints what it measured and how that compares with
its target, and a reader decides.
"""
from __future__ import annotations

import http.client
import importlib.util
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import httpx  # noqa: E402
import yaml  # noqa: E402
from support import free_port, wait_for  # noqa: E402

if importlib.util.find_spec("sniffio") is None:
    # httpx's ASGI transport tries ``import sniffio`` on every request; without it each failed
    # import searches sys.path (~1 ms), which the in-process figures would count as the app's.
    sys.modules["sniffio"] = None

PACS_TOKEN = "bench-pacs-token-0123456789"
DATA_ROOT = Path(os.environ.get("FILMLESS_BENCH_DATA", Path(tempfile.gettempdir()) / "filmless-bench"))
ORTHANC_BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


# -- timing -------------------------------------------------------------------

@dataclass
class Samples:
    """Durations in seconds of one kind of request."""

    values: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.values.append(seconds)

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.values) * 1000

    @property
    def p95_ms(self) -> float:
        return self.percentile(0.95) * 1000

    def __len__(self) -> int:
        return len(self.values)


def timed(call: Callable[[], httpx.Response], samples: Samples, expect: Iterable[int] = (200,)) -> httpx.Response:
    start = time.perf_counter()
    answer = call()
    samples.add(time.perf_counter() - start)
    if answer.status_code not in expect:
        raise RuntimeError(f"{answer.request.method} {answer.request.url} answered {answer.status_code}: "
                           f"{answer.content[:300]!r}")
    return answer


@dataclass
class LeanAnswer:
    status_code: int
    headers: dict[str, str]  # names in lower case
    content: bytes
    request: "LeanRequest"

    def json(self):
        return json.loads(self.content)


@dataclass
class LeanRequest:
    method: str
    url: str


class LeanClient:
    """One keep-alive connection through the standard library's ``http.client``, for latencies of a
    few milliseconds: httpx's own work per answer is 0.5–2 ms (more for some servers' answers than
    others'), which would be counted as the server's."""

    def __init__(self, url: str, headers: dict | None = None):
        address = httpx.URL(url)
        self.connection = http.client.HTTPConnection(address.host, address.port, timeout=120)
        self.headers = dict(headers or {})

    def request(self, method: str, path: str, *, params: dict | None = None, json_body=None,
                headers: dict | None = None) -> LeanAnswer:
        if params:
            path += "?" + urlencode(params)
        body = None if json_body is None else json.dumps(json_body).encode()
        headers = {**self.headers, **({"Content-Type": "application/json"} if body else {}), **(headers or {})}
        for attempt in (1, 2):
            try:
                self.connection.request(method, path, body=body, headers=headers)
                answer = self.connection.getresponse()
                content = answer.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.connection.close()  # the server ended an idle keep-alive connection: ask again on a new one
                if attempt == 2:
                    raise
        return LeanAnswer(answer.status, {name.lower(): value for name, value in answer.getheaders()}, content,
                          LeanRequest(method, path))

    def get(self, path: str, headers: dict | None = None, params: dict | None = None) -> LeanAnswer:
        return self.request("GET", path, params=params, headers=headers)

    def post(self, path: str, json: dict | None = None, headers: dict | None = None) -> LeanAnswer:
        return self.request("POST", path, json_body=json, headers=headers)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "LeanClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Throughput:
    items: int
    size: int  # bytes sent
    seconds: float
    latency: Samples

    @property
    def per_second(self) -> float:
        return self.items / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.size / self.seconds / 2**20


def run_clients(clients: int, jobs: list, send: Callable[[httpx.Client, object], httpx.Response],
                make_client: Callable[[], httpx.Client], expect: Iterable[int] = (200,)) -> tuple[float, Samples]:
    """Send every job with ``clients`` threads (one keep-alive connection each) taking jobs from
    one shared queue; the wall time of the whole and each request's latency."""
    pending = iter(jobs)
    lock = threading.Lock()
    samples, failures = Samples(), []
    expect = tuple(expect)

    def work():
        with make_client() as client:
            while not failures:
                with lock:
                    job = next(pending, None)
                if job is None:
                    return
                try:
                    timed(lambda: send(client, job), samples, expect)
                except Exception as exc:  # reported once the others stop
                    failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return time.perf_counter() - start, samples


# -- tables -------------------------------------------------------------------

def table(title: str, headers: list[str], rows: list[list]) -> None:
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  " + "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    print("  " + "  ".join("-" * w for w in widths))
    for row in cells:
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def verdict(measured: float, target: float, *, higher_is_better: bool = True) -> str:
    """``measured`` against ``target`` in words (never an assertion)."""
    met = measured >= target if higher_is_better else measured <= target
    return f"{'meets' if met else 'misses'} target ({'≥' if higher_is_better else '≤'} {target:g})"


def machine() -> str:
    import platform

    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (f"{platform.node()}: {os.cpu_count()} cores (load average {load} before the run), "
            f"Python {platform.python_version()}, {orthanc_version()}")


# -- synthetic data -------------------------------------------------------------

def dicom_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def cached_data(name: str, make: Callable[[Path], None]) -> Path:
    """A folder of generated files, made once and reused by later runs (``complete`` marks it whole)."""
    folder = DATA_ROOT / name
    if not (folder / "complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        started = time.perf_counter()
        make(folder)
        (folder / "complete").write_text(f"{time.perf_counter() - started:.1f} s\n")
        print(f"generated {name} in {time.perf_counter() - started:.1f} s ({folder})", flush=True)
    return folder


def ct_study(count: int = 500, size: int = 512, series: int = 5) -> list[Path]:
    """One CT study of ``count`` instances of ``size``×``size`` 16-bit pixels, in ``series`` series."""
    from core.studies import synthetic

    def make(folder: Path) -> None:
        spec = synthetic.StudySpec(patient_id="BENCH-CT", family_name="Bench", given_name="Ct",
                                   accession_number="BENCH-CT-1", description="CT CHEST ABDOMEN",
                                   series=series, instances=count // series, rows=size, columns=size)
        synthetic.write(synthetic.study(spec), folder)

    return sorted(cached_data(f"ct-{count}x{size}", make).glob("*.dcm"))


def total_size(paths: list[Path]) -> int:
    return sum(path.stat().st_size for path in paths)


# -- DICOMweb requests ------------------------------------------------------------

def multipart_related(parts: list[bytes]) -> tuple[bytes, str]:
    """A STOW-RS body of ``parts`` (DICOM files) and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = bytearray()
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += part
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f'multipart/related; type="application/dicom"; boundary={boundary}'


# -- Orthanc ------------------------------------------------------------------------

def orthanc_version() -> str:
    try:
        line = subprocess.run([ORTHANC_BINARY, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "Orthanc not installed (apt-get install -y orthanc)"
    plugin = "with" if DICOMWEB_PLUGIN.exists() else "without"
    return f"{line} ({plugin} its DICOMweb plugin)"


class Orthanc:
    """A private Orthanc: SQLite index and storage in a temporary folder, free loopback ports,
    no authentication, remote access refused; its DICOMweb plugin loaded when installed."""

    def __init__(self, folder: Path, *, dicomweb: bool = True):
        self.folder = Path(folder)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.dicomweb = dicomweb and DICOMWEB_PLUGIN.exists()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.process: subprocess.Popen | None = None

    def config(self) -> dict:
        config = {
            "Name": "bench", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"), "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "HttpServerEnabled": True, "DicomServerEnabled": True, "SaveJobs": False,
            "Plugins": [str(DICOMWEB_PLUGIN)] if self.dicomweb else [],
        }
        if self.dicomweb:
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True}
        return config

    def start(self) -> "Orthanc":
        if not Path(ORTHANC_BINARY).exists():
            raise RuntimeError("Orthanc is not installed: apt-get install -y orthanc")
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "logs").mkdir(exist_ok=True)
        config_file = self.folder / "orthanc.json"
        config_file.write_text(json.dumps(self.config(), indent=2))
        self.process = subprocess.Popen([ORTHANC_BINARY, f"--logdir={self.folder / 'logs'}", str(config_file)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(f"{self.url}/system", self.process)
        except AssertionError as error:  # Orthanc says why in its log, not on stderr
            logs = "".join(path.read_text(errors="replace")[-2000:] for path in (self.folder / "logs").glob("*"))
            raise RuntimeError(f"{error}\n{logs}") from None
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kwargs)

    def lean_client(self, *, headers: dict | None = None) -> LeanClient:
        return LeanClient(self.url, headers)

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# -- Filmless -------------------------------------------------------------------------

class Filmless:
    """A Filmless site of its own (SQLite, blobs on disk, no plugins, a PACS token) served by a
    real ``filmless serve`` on a free loopback port (``processes`` web processes)."""

    def __init__(self, folder: Path, *, processes: int = 1, **overrides):
        self.folder = Path(folder)
        self.processes = processes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.site_file = self._write_site(overrides)
        self._migrate()

    def _write_site(self, overrides: dict) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = {
            "site": {"name": "Bench Imaging", "base_url": self.url, "timezone": "UTC", "languages": ["en", "es"]},
            "database": f"sqlite:///{self.folder / 'portal.db'}",
            "storage": {"kind": "filesystem", "path": str(self.folder / "blobs")},
            "queue": {"kind": "sqlite", "path": str(self.folder / "queue.db")},
            "mail": {"transport": "outbox"},
            "studies": {"pacs_token": PACS_TOKEN},
            "plugins": {},
            **overrides,
        }
        path = self.folder / "site.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    def _migrate(self) -> None:
        done = subprocess.run([sys.executable, "-m", "core.cli", "--site", str(self.site_file), "migrate"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"filmless migrate failed: {done.stderr}")

    def start(self) -> "Filmless":
        self.process = subprocess.Popen([sys.executable, "-m", "core.cli", "--site", str(self.site_file), "serve",
                                         "--processes", str(self.processes)],
                                        cwd=ROOT, env={**os.environ, "PORT": str(self.port)},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(f"{self.url}/healthz", self.process)
        # uvicorn's access log on stderr would fill the pipe: read it away in the background
        threading.Thread(target=self.process.stderr.read, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self, *, pacs: bool = True, headers: dict | None = None, **kwargs) -> httpx.Client:
        """A keep-alive client, with the PACS's bearer token unless ``pacs`` is false."""
        token = {"Authorization": f"Bearer {PACS_TOKEN}"} if pacs else {}
        return httpx.Client(base_url=self.url, timeout=120, headers={**token, **(headers or {})}, **kwargs)

    def lean_client(self, *, headers: dict | None = None) -> LeanClient:
        """``client`` for latencies (see LeanClient), with the PACS's bearer token."""
        return LeanClient(self.url, {"Authorization": f"Bearer {PACS_TOKEN}", **(headers or {})})

    def runtime(self):
        """The site's runtime in this process (to fill the store without HTTP)."""
        return open_runtime(self.site_file)

    def __enter__(self) -> "Filmless":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def open_runtime(site_file: Path):
    from core.app import build_runtime
    from core.site import load_site

    runtime = build_runtime(load_site(site_file))
    try:
        yield runtime
    finally:
        runtime.close()


def ingest_directly(runtime, paths: list[Path]) -> int:
    """Ingest files through ``studies.service.ingest`` (no HTTP); the number stored."""
    from core.studies import service
    from core.studies.blobs import scratch_file

    stored = 0
    with runtime.sessions() as session:
        for path in paths:
            with scratch_file(runtime.blobs, ".dcm") as scratch:
                shutil.copyfile(path, scratch)
                outcome = service.ingest(session, scratch, runtime=runtime, source="bench")
            if not outcome.ok:
                raise RuntimeError(f"{path}: {outcome.reason}")
            stored += outcome.outcome == "stored"
    return stored


def post_to_orthanc(orthanc: Orthanc, paths: list[Path], clients: int = 4) -> float:
    """Fill Orthanc through ``POST /instances``; the seconds it took."""
    seconds, _ = run_clients(clients, paths, lambda client, path: client.post(
        "/instances", content=path.read_bytes(), headers={"Content-Type": "application/dicom"}),
        orthanc.client)
    return seconds


def route_exists(path: str, method: str = "GET") -> bool:
    """Whether the study store (whose modules are being written) declares ``method path`` yet;
    ``{}`` stands for any path parameter."""
    import re

    from core.access import flatten
    from core.studies import routers

    for route in flatten([route for router in routers() for route in router.routes]):
        shape = re.sub(r"\{[^}]*\}", "{}", getattr(route, "path", ""))
        if shape == path and method in getattr(route, "methods", ()):
            return True
    return False


@contextmanager
def workspace(name: str) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix=f"filmless-{name}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
