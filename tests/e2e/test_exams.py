"""The demo patient's exams in a real browser on a 360 × 740 phone: the exam list, one
exam's visit summary, report and images tabs, a held report, and a guardian choosing
whose exams to see. No page may scroll sideways."""
import re

import pytest
from browsing import fits, pictures_decoded

pytestmark = pytest.mark.slow


def sign_in(page, demo_url: str, email: str, password: str) -> None:
    page.goto(demo_url + "/signin")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.locator("main form[action='/signin'] button[type=submit]").click()
    page.wait_for_url(demo_url + "/")


def exam_titles(page) -> list[str]:
    return page.locator(".exam-card h2 a, .exam-card h3 a").all_inner_texts()


def test_the_demo_patient_reads_a_report_and_sees_thumbnails_on_a_phone(phone, demo_url, tmp_path):
    sign_in(phone, demo_url, "patient@demo.filmless.test", "filmless-demo-patient")
    phone.get_by_role("link", name="See my exams").click()
    phone.wait_for_url(demo_url + "/exams")

    assert phone.locator("h1").inner_text() == "My exams"
    # with the visits of plugins/radnet_icode/demo.py (CT ABDOMEN in Texas, XR KNEE in New York)
    assert exam_titles(phone) == ["CT ABDOMEN WITH CONTRAST", "US ABDOMEN COMPLETE", "CT CHEST WITHOUT CONTRAST",
                                  "XR KNEE LEFT 3 VIEWS", "MRI KNEE RIGHT", "XR CHEST 2 VIEWS"]
    held = phone.locator(".exam-card", has_text="US ABDOMEN COMPLETE").inner_text()
    assert re.search(r"Report available on \w+ \d+, \d{4} as required by Texas Occupations Code", held)
    assert "Report ready" in phone.locator(".exam-card", has_text="CT CHEST").inner_text()
    assert fits(phone)
    phone.screenshot(path=str(tmp_path / "exams.png"), full_page=True)

    phone.locator(".filters summary").click()
    phone.select_option("select[name=kind]", "MR")
    phone.get_by_role("button", name="Apply").click()
    assert exam_titles(phone) == ["MRI KNEE RIGHT"]
    phone.get_by_role("link", name="Clear the filters").click()
    assert len(exam_titles(phone)) == 6

    phone.get_by_role("link", name="CT CHEST WITHOUT CONTRAST").click()
    assert phone.locator("h1").inner_text() == "CT CHEST WITHOUT CONTRAST"
    summary = phone.locator(".tab-panel").inner_text()
    assert "Chest" in summary and "2 series, 48 images" in summary and "ACC-1001" in summary
    assert "XR CHEST 2 VIEWS" in summary  # the earlier exam of the same body part
    assert fits(phone)

    phone.get_by_role("link", name="Report", exact=True).click()
    report = phone.locator(".tab-panel")
    assert "The lungs are clear." in report.inner_text() and "Signed by Inés Muñoz" in report.inner_text()
    assert phone.get_by_role("link", name="Printable view").is_visible()
    assert fits(phone)

    phone.get_by_role("link", name="Images", exact=True).click()
    thumbnails = phone.locator("img.thumb")
    assert thumbnails.count() == 2
    assert pictures_decoded(thumbnails)
    assert phone.get_by_role("link", name="Open viewer").count() == 2
    assert fits(phone)
    phone.screenshot(path=str(tmp_path / "images.png"), full_page=True)

    phone.goto(demo_url + "/exams")
    phone.get_by_role("link", name="US ABDOMEN COMPLETE").click()
    phone.get_by_role("link", name="Report", exact=True).click()
    panel = phone.locator(".tab-panel").inner_text()
    assert "as required by Texas Occupations Code" in panel and "gallbladder" not in panel
    assert fits(phone)


def test_the_printable_report_fits_a_phone(phone, demo_url):
    sign_in(phone, demo_url, "patient@demo.filmless.test", "filmless-demo-patient")
    phone.goto(demo_url + "/exams")
    phone.get_by_role("link", name="XR CHEST 2 VIEWS").click()
    phone.get_by_role("link", name="Report", exact=True).click()
    phone.get_by_role("link", name="Printable view").click()
    assert "The lungs are clear" in phone.locator(".report-text").inner_text()
    assert fits(phone)
    phone.emulate_media(media="print")
    assert not phone.locator(".site-header").is_visible() and not phone.locator(".no-print").first.is_visible()


def test_a_guardian_chooses_the_childs_exams_in_spanish(phone, demo_url):
    sign_in(phone, demo_url, "guardian@demo.filmless.test", "filmless-demo-guardian")
    phone.goto(demo_url + "/language/es?next=/exams")
    assert phone.locator("h1").inner_text() == "Mis exámenes"
    phone.select_option("select[name=patient]", label="Riley Demo")
    phone.get_by_role("button", name="Mostrar exámenes").click()
    phone.wait_for_url(demo_url + "/exams")
    assert exam_titles(phone) == ["XR ANKLE RIGHT", "XR WRIST LEFT"]  # the ankle: radnet_icode's demo visit
    assert "Informe listo" in phone.locator(".exam-card", has_text="XR WRIST LEFT").inner_text()
    assert fits(phone)
