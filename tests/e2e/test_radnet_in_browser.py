"""The visit codes of sites/radnet.yaml in a real browser on a 360 px phone, against a real
``filmless serve`` of that site file (demo data seeded): a patient opens their visit with
the I-Code in Spanish (switching the language, typing the code and the date of birth), sees
the exam and its images, then creates an account from the same I-Code in the core's four
steps (the email code read from the outbox) and lands signed in, seeing their exams. The
README's demo codes open their visits: the adult's Texas report held, the child's visit
open without an account."""
from __future__ import annotations

import re

import httpx
import pytest
import yaml
from browsing import fits, pictures_decoded
from support import ROOT, filmless, free_port, served, write_site

pytestmark = pytest.mark.slow

PACS_TOKEN = "demo-pacs-token"  # sites/radnet.yaml's, for the front desk's system
ADMIN, ADMIN_PASSWORD = "admin@demo.filmless.test", "filmless-demo-admin"


@pytest.fixture(scope="module")
def radnet_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("radnet")
    data = yaml.safe_load((ROOT / "sites" / "radnet.yaml").read_text(encoding="utf-8"))
    port = free_port()
    data.update(database=f"sqlite:///{folder / 'portal.db'}", storage={"kind": "filesystem", "path": str(folder / "blobs")},
                queue={"kind": "sqlite", "path": str(folder / "queue.db")})
    data["site"]["base_url"] = f"http://127.0.0.1:{port}"
    site_file = write_site(folder, data, "radnet.yaml")
    assert filmless("--site", str(site_file), "migrate").returncode == 0
    seeded = filmless("--site", str(site_file), "seed-demo", timeout=180)
    assert seeded.returncode == 0, seeded.stderr
    yield from served(site_file, port)


def phone_page(browser, locale: str = "en-US"):
    context = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True, locale=locale)
    return context, context.new_page()


def front_desk_code(url: str, patient_id: str) -> str:
    """What the front desk's system does: find the study (QIDO-RS) and ask for its visit's I-Code."""
    headers = {"Authorization": f"Bearer {PACS_TOKEN}"}
    found = httpx.get(f"{url}/dicomweb/studies", params={"PatientID": patient_id}, headers=headers, timeout=30)
    study_uid = found.json()[0]["0020000D"]["Value"][0]
    answer = httpx.post(f"{url}/api/visits/icode", json={"study_uid": study_uid}, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["icode"]


def read_code_from_outbox(browser, url: str, recipient: str) -> str:
    context = browser.new_context()
    admin = context.new_page()
    admin.goto(url + "/signin")
    admin.fill("input[name=email]", ADMIN)
    admin.fill("input[name=password]", ADMIN_PASSWORD)
    admin.locator("main form[action='/signin'] button[type=submit]").click()
    admin.wait_for_url(url + "/")
    admin.goto(url + "/outbox")
    text = admin.locator("main").inner_text()
    context.close()
    return re.search(r"\b(\d{6})\b", text[text.index(recipient):]).group(1)


def type_birth_date(page, day: str, month: str, year: str) -> None:
    page.fill("input[name=birth_day]", day)
    page.select_option("select[name=birth_month]", month)
    page.fill("input[name=birth_year]", year)


def test_a_patient_opens_their_visit_in_spanish_and_makes_an_account_from_its_i_code(browser, radnet_url):
    code = front_desk_code(radnet_url, "DEMO-1003")  # Casey Newcomer, who has no account yet
    context, phone = phone_page(browser)
    try:
        phone.goto(radnet_url + "/")
        phone.get_by_role("link", name="Español").click()
        assert phone.locator("html").get_attribute("lang") == "es"
        phone.locator("#icode-box").get_by_role("link", name="Ingrese su I-Code").click()
        phone.wait_for_url(radnet_url + "/visit")
        assert phone.locator("h1").inner_text() == "Ingrese su I-Code"
        assert "Los pacientes menores de 18 años" in phone.locator("main").inner_text()
        assert fits(phone)

        phone.fill("#code", code.lower().replace("-", " "))
        type_birth_date(phone, "30", "9", "1975")
        phone.get_by_role("button", name="Ver mi visita").click()
        phone.wait_for_url(radnet_url + "/visit/exams")
        assert phone.locator("h1").inner_text().startswith("Su visita del")
        assert "Está viendo los exámenes de una visita" in phone.locator(".visit-banner").inner_text()
        assert fits(phone)

        phone.get_by_role("link", name="XR CHEST").click()
        phone.get_by_role("link", name="Imágenes", exact=True).click()
        thumbnail = phone.locator("img.thumb").first
        thumbnail.wait_for()
        assert pictures_decoded(thumbnail)
        assert fits(phone)

        # an account from the same I-Code: the visit's page starts it
        phone.goto(radnet_url + "/visit/exams")
        phone.get_by_role("button", name="Crear una cuenta para ver todos sus exámenes").click()
        phone.wait_for_url(re.compile(r"/register\?proof=icode$"))
        phone.fill("input[name=name]", "Casey Newcomer")
        type_birth_date(phone, "30", "9", "1975")
        phone.fill("input[name=email]", "casey.newcomer@example.test")
        phone.locator("main form button[type=submit]").click()

        phone.wait_for_url("**/register/verify")
        assert phone.locator("input[name=kind][value=icode]").is_checked()
        assert "I-Code de su Portal Pass" in phone.locator("main").inner_text()
        phone.fill("input[name=last_name]", "Newcomer")
        phone.fill("input[name=number]", code)
        phone.locator("main form button[type=submit]").click()

        phone.wait_for_url("**/register/email")
        phone.fill("input[name=code]", read_code_from_outbox(browser, radnet_url, "casey.newcomer@example.test"))
        phone.locator("main form[action='/register/email'] button[type=submit]").click()

        phone.wait_for_url("**/register/password")
        phone.fill("input[name=password]", "un paseo largo por la playa")
        phone.fill("input[name=confirmation]", "un paseo largo por la playa")
        phone.locator("main form button[type=submit]").click()

        phone.wait_for_url(radnet_url + "/")
        assert phone.locator("#signed-in").inner_text() == "Ya inició sesión."
        phone.goto(radnet_url + "/exams")
        assert "XR CHEST" in phone.locator(".exam-list").inner_text()
        assert fits(phone)
    finally:
        context.close()


def test_the_readmes_demo_codes_open_their_visits(browser, radnet_url):
    context, phone = phone_page(browser)
    try:
        phone.goto(radnet_url + "/visit")
        phone.fill("#code", "PASS-2345-WXYZ")
        type_birth_date(phone, "12", "4", "1980")
        phone.get_by_role("button", name="See my visit").click()
        phone.wait_for_url(radnet_url + "/visit/exams")
        card = phone.locator(".exam-card", has_text="CT ABDOMEN WITH CONTRAST").inner_text()
        assert "North Austin Imaging" in card and "as required by Texas SB 922" in card
        assert phone.locator(".exam-card").count() == 1  # this visit only: not the Brooklyn X-ray
        phone.get_by_role("button", name="Close this visit").first.click()
        phone.wait_for_url(radnet_url + "/visit?left=1")

        phone.fill("#code", "teen 2345 wxyz")
        type_birth_date(phone, "1", "6", "2015")
        phone.get_by_role("button", name="See my visit").click()
        phone.wait_for_url(radnet_url + "/visit/exams")
        assert "XR ANKLE RIGHT" in phone.locator(".exam-list").inner_text()
        assert "Westside Imaging Center" in phone.locator("main").inner_text()
        assert fits(phone)
    finally:
        context.close()
