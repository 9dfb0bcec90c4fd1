"""The demo patient downloads a CT exam from the browser, as a ZIP and as a disc image,
through a real web server and a real worker: the acknowledgement, the progress page
updating without a reload, the saved file (a ZIP with a DICOMDIR; an ISO 9660 volume),
the email in the outbox. Then the same in Spanish, for two exams ticked on the exams page.

The first download is asked for while the worker is stopped, so that the page is sure to
start at "Waiting to start…" and must follow the job by itself once the worker runs."""
from __future__ import annotations

import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pycdlib
import pydicom
import pytest
from browsing import fits
from support import ROOT, demo_site_file, filmless, free_port, wait_for

pytestmark = pytest.mark.slow

PATIENT = ("patient@demo.filmless.test", "filmless-demo-patient")
CT = "CT CHEST WITHOUT CONTRAST"
XR = "XR CHEST 2 VIEWS"
READY = 30_000  # ms: the demo CT (48 small images) is built in about a second once the worker has it


class Portal:
    """The demo site served by ``filmless serve`` with its ``filmless worker`` beside it."""

    def __init__(self, folder: Path):
        self.site_file = demo_site_file(folder)
        self.database = folder / "portal.db"
        assert filmless("--site", str(self.site_file), "migrate").returncode == 0
        assert filmless("--site", str(self.site_file), "seed-demo").returncode == 0
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = self._start("serve", PORT=str(port))
        self.worker = self._start("worker")
        wait_for(f"{self.url}/healthz", self.server)

    def _start(self, command: str, **env) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "core.cli", "--site", str(self.site_file), command],
                                cwd=ROOT, env={**os.environ, **env}, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop_worker(self) -> None:
        self.worker.send_signal(signal.SIGINT)  # graceful: the consumer finishes what it holds
        assert self.worker.wait(timeout=30) == 0

    def start_worker(self) -> None:
        self.worker = self._start("worker")

    def stop(self) -> None:
        for process in (self.server, self.worker):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                process.wait(timeout=30)

    def emails_to(self, recipient: str) -> list[tuple[str, str, str]]:
        """(subject, body, language) of the outbox's messages to ``recipient``, oldest first."""
        with sqlite3.connect(self.database) as connection:
            return connection.execute("SELECT subject, body_text, language FROM message WHERE recipient = ? "
                                      "ORDER BY id", (recipient,)).fetchall()


@pytest.fixture(scope="module")
def portal(tmp_path_factory):
    running = Portal(tmp_path_factory.mktemp("exports"))
    yield running
    running.stop()


def new_page(browser, **options):
    """A page that records every Content-Security-Policy complaint (the CSP forbids inline code)."""
    context = browser.new_context(accept_downloads=True, **options)
    page = context.new_page()
    page.csp_violations = []
    page.on("console", lambda message: "Content Security Policy" in message.text
            and page.csp_violations.append(message.text))
    return context, page


def sign_in(page, url: str) -> None:
    page.goto(url + "/signin")
    page.fill("input[name=email]", PATIENT[0])
    page.fill("input[name=password]", PATIENT[1])
    page.locator("main form[action='/signin'] button[type=submit]").click()
    page.wait_for_url(url + "/")


def watch_without_reload(page) -> None:
    """Mark this document and record each text the progress line shows from now on."""
    page.evaluate("""() => {
        window.sameDocument = true;
        window.progressTexts = [];
        const text = document.getElementById("export-text");
        new MutationObserver(() => window.progressTexts.push(text.textContent))
            .observe(text, {childList: true, characterData: true, subtree: true});
    }""")


def save(page, tmp_path: Path, label: str) -> tuple[Path, str]:
    with page.expect_download() as info:
        page.get_by_role("link", name=label).click()
    download = info.value
    assert download.failure() is None
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    return path, download.suggested_filename


def dicom_files_of_zip(path: Path) -> tuple[list[str], pydicom.Dataset, zipfile.ZipFile]:
    archive = zipfile.ZipFile(path)
    assert archive.testzip() is None  # every entry's CRC matches: a whole archive
    dicomdir = pydicom.dcmread(io.BytesIO(archive.read("DICOMDIR")))
    return [name for name in archive.namelist() if name.startswith("DICOM/")], dicomdir, archive


def referenced_files(dicomdir: pydicom.Dataset) -> set[str]:
    return {"/".join(record.ReferencedFileID) for record in dicomdir.DirectoryRecordSequence
            if "ReferencedFileID" in record}


def test_the_demo_patient_downloads_a_ct_as_zip_and_disc_on_a_phone(browser, portal, tmp_path):
    context, phone = new_page(browser, viewport={"width": 360, "height": 740}, device_scale_factor=2,
                              is_mobile=True, has_touch=True, locale="en-US")
    sign_in(phone, portal.url)
    phone.goto(portal.url + "/exams")
    phone.get_by_role("link", name=CT).click()
    exam_url = phone.url
    study_uid = exam_url.rstrip("/").rsplit("/", 1)[-1]
    phone.get_by_role("link", name="Images", exact=True).click()

    phone.get_by_role("button", name="Download (ZIP)").click()
    assert phone.locator("h1").inner_text() == "Download (ZIP)"
    assert CT in phone.locator(".export-studies").inner_text()
    acknowledgement = phone.get_by_label(re.compile("These files contain your health information"))
    assert acknowledgement.get_attribute("required") is not None
    assert fits(phone)
    acknowledgement.check()

    portal.stop_worker()  # the job must wait in the queue: the page starts at its first state
    phone.get_by_role("button", name="Prepare the download").click()
    phone.wait_for_url(re.compile(r"/exports/[0-9a-f]{32}$"))
    zip_export = phone.url.rsplit("/", 1)[-1]
    assert phone.locator("#export-text").inner_text() == "Waiting to start…"
    assert phone.locator("progress#export-bar").is_visible()
    assert phone.get_by_text("You can leave this page: we will email you when it is ready").is_visible()
    assert not phone.get_by_role("link", name="Save the file").is_visible()
    assert fits(phone)
    watch_without_reload(phone)

    portal.start_worker()
    phone.get_by_role("link", name="Save the file").wait_for(timeout=READY)
    assert phone.evaluate("window.sameDocument") is True  # the script updated the page: no reload
    shown = phone.evaluate("window.progressTexts")
    assert shown and re.fullmatch(r"Ready: [\d.]+ (MB|KB)\. Available until .+\.", shown[-1])
    assert all(re.fullmatch(r"Waiting to start…|\d+ of 49 files done \(\d+%\)|Ready: .+", text) for text in shown)
    assert not phone.locator("progress#export-bar").is_visible()
    assert phone.locator(".export-progress").get_attribute("data-status") == "ready"
    assert fits(phone)
    phone.screenshot(path=str(tmp_path / "ready.png"), full_page=True)

    path, name = save(phone, tmp_path, "Save the file")
    assert re.fullmatch(r"exams-\d{4}-\d{2}-\d{2}\.zip", name)
    files, dicomdir, archive = dicom_files_of_zip(path)
    assert {"DICOMDIR", "README.TXT", "INDEX.HTM"} <= set(archive.namelist())
    assert len(files) == 49  # 2 series of 24 images and the report
    assert referenced_files(dicomdir) == set(files)  # the DICOMDIR lists every file, and only them
    for name_in_zip in files:
        data = archive.read(name_in_zip)
        assert data[:128] == bytes(128) and data[128:132] == b"DICM"
        assert pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID == study_uid
    assert "Medical images from Filmless Demo Imaging" in archive.read("README.TXT").decode("utf-8")

    phone.goto(exam_url)
    phone.get_by_role("link", name="Images", exact=True).click()
    phone.get_by_role("button", name="Disc image (ISO)").click()
    assert phone.locator("h1").inner_text() == "Disc image (ISO)"
    phone.get_by_label(re.compile("These files contain your health information")).check()
    phone.get_by_role("button", name="Prepare the download").click()
    phone.wait_for_url(re.compile(r"/exports/[0-9a-f]{32}$"))
    iso_export = phone.url.rsplit("/", 1)[-1]
    assert iso_export != zip_export
    phone.get_by_role("link", name="Save the file").wait_for(timeout=READY)
    assert re.fullmatch(r"Ready: [\d.]+ (MB|KB)\. Available until .+\.", phone.locator("#export-text").inner_text())
    assert fits(phone)

    path, name = save(phone, tmp_path, "Save the file")
    assert re.fullmatch(r"disc-\d{4}-\d{2}-\d{2}\.iso", name)
    with path.open("rb") as disc:
        disc.seek(32769)
        assert disc.read(5) == b"CD001"  # the primary volume descriptor of an ISO 9660 volume
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        root = {child.file_identifier().decode().split(";")[0].rstrip(".") for child in iso.list_children(iso_path="/")}
        assert {"DICOMDIR", "README.TXT", "INDEX.HTM", "DICOM"} <= root
        with iso.open_file_from_iso(rr_path="/DICOMDIR") as handle:
            on_disc = pydicom.dcmread(io.BytesIO(handle.read()))
    finally:
        iso.close()
    assert len(referenced_files(on_disc)) == 49

    emails = [(subject, body) for subject, body, _ in portal.emails_to(PATIENT[0])
              if subject == "Your download from Filmless Demo Imaging is ready"]
    assert any(f"/exports/{zip_export}" in body for _, body in emails)
    assert any(f"/exports/{iso_export}" in body for _, body in emails)
    assert phone.csp_violations == []
    context.close()


def test_two_exams_ticked_on_the_exams_page_download_in_spanish(browser, portal, tmp_path):
    context, page = new_page(browser, viewport={"width": 1280, "height": 900}, locale="es-ES")
    sign_in(page, portal.url)
    page.goto(portal.url + "/exams")
    page.get_by_role("link", name="Español").click()
    assert page.locator("h1").inner_text() == "Mis exámenes"

    page.get_by_role("checkbox", name=CT).check()
    page.get_by_role("checkbox", name=XR).check()
    assert page.locator(".export-selection").inner_text().startswith("Marque los exámenes que desee")
    page.get_by_role("button", name="Descargar (ZIP)").click()

    assert page.locator("h1").inner_text() == "Descargar (ZIP)"
    assert "Se incluirán estos 2 exámenes:" in page.locator("main").inner_text()
    assert {CT, XR} == set(page.locator(".export-studies strong").all_inner_texts())
    acknowledgement = page.get_by_label(re.compile("Estos archivos contienen su información de salud"))
    assert page.locator("form.export-form").evaluate("form => form.checkValidity()") is False  # not ticked yet
    acknowledgement.check()
    page.get_by_role("button", name="Preparar la descarga").click()

    page.wait_for_url(re.compile(r"/exports/[0-9a-f]{32}$"))
    export = page.url.rsplit("/", 1)[-1]
    page.get_by_role("link", name="Guardar el archivo").wait_for(timeout=READY)
    ready = page.locator("#export-text").inner_text()
    assert re.fullmatch(r"Lista: [\d,]+ (MB|KB)\. Disponible hasta el .+\.", ready), ready

    path, name = save(page, tmp_path, "Guardar el archivo")
    files, dicomdir, archive = dicom_files_of_zip(path)
    studies = [record for record in dicomdir.DirectoryRecordSequence if record.DirectoryRecordType == "STUDY"]
    assert len(studies) == 2 and referenced_files(dicomdir) == set(files)
    readme = archive.read("README.TXT").decode("utf-8")
    assert "Imágenes médicas de Filmless Demo Imaging" in readme and CT in readme and XR in readme

    spanish = [(subject, body) for subject, body, language in portal.emails_to(PATIENT[0]) if language == "es"]
    assert any(subject == "Su descarga de Filmless Demo Imaging está lista" and f"/exports/{export}" in body
               for subject, body in spanish)

    page.get_by_role("link", name="Volver a mis exámenes").click()
    downloads = page.get_by_role("region", name="Sus descargas")
    assert downloads.locator(f"a[href='/exports/{export}']").inner_text() == "Descargar (ZIP)"
    assert page.csp_violations == []
    context.close()
