"""Share links in real browsers against the demo site: the demo patient shares two exams with
a password and no download; a doctor's browser (a second context: its own cookies) opens the
link, types a wrong then the right password, sees exactly those two exams and no way to
download; the patient turns the share off and the doctor's next request is refused. In
English and in Spanish, on 360 px wide phones."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect
from browsing import fits

pytestmark = pytest.mark.slow

PATIENT, PATIENT_PASSWORD = "patient@demo.filmless.test", "filmless-demo-patient"
SHARED = ["CT CHEST WITHOUT CONTRAST", "MRI KNEE RIGHT"]
WORDS = {
    "en": {"share": "Share", "make": "Make the link", "copied": "Copied.", "open": "See the exams",
           "wrong": "That password is not right.", "banner": "You are viewing exams shared with you.",
           "images": "Images", "report": "Report", "turn_off": "Turn off", "confirm": "Turn off the share",
           "turned_off": "Turned off", "closed": "This share is no longer open"},
    "es": {"share": "Compartir", "make": "Crear el enlace", "copied": "Copiado.", "open": "Ver los exámenes",
           "wrong": "Esa contraseña no es correcta.", "banner": "Está viendo exámenes que han compartido con usted.",
           "images": "Imágenes", "report": "Informe", "turn_off": "Desactivar", "confirm": "Desactivar el enlace",
           "turned_off": "Desactivado", "closed": "Este enlace compartido ya no está abierto"},
}


def phone_page(browser, language: str):
    context = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True, locale="es-ES" if language == "es" else "en-US")
    return context, context.new_page()


@pytest.mark.parametrize("language", ["en", "es"])
def test_a_patient_shares_two_exams_with_a_password_and_then_turns_the_share_off(browser, demo_url, language):
    words = WORDS[language]
    patient_context, patient = phone_page(browser, language)
    patient_context.grant_permissions(["clipboard-read", "clipboard-write"], origin=demo_url)
    doctor_context, doctor = phone_page(browser, language)
    nickname = f"Dr Rivera ({language})"
    try:
        patient.goto(demo_url + "/signin")
        patient.fill("input[name=email]", PATIENT)
        patient.fill("input[name=password]", PATIENT_PASSWORD)
        patient.locator("main form[action='/signin'] button[type=submit]").click()
        patient.wait_for_url(demo_url + "/")
        patient.goto(f"{demo_url}/language/{language}?next=/exams")  # the account's own choice wins over the browser's

        # the patient ticks two exams and shares them: password on (the default), download off
        for title in SHARED:
            patient.locator(".exam-card", has_text=title).locator(".exam-pick").check()
        patient.get_by_role("button", name=words["share"], exact=True).click()
        patient.wait_for_url(re.compile(r"/shares/new\?"))
        ticked = patient.locator("input[name=study]:checked")
        assert ticked.count() == 2 and patient.locator("input[name=study]").count() == 6
        assert patient.locator("#password").is_checked() and not patient.locator("#download").is_checked()
        assert fits(patient)
        patient.fill("#nickname", nickname)
        patient.locator("#acknowledge").check()
        patient.get_by_role("button", name=words["make"]).click()

        # shown once: the link (copied with the button), its QR code and the password
        link = patient.locator("#share-link").input_value()
        password = patient.locator("#share-password").input_value()
        assert re.fullmatch(r"https?://[^/]+/s/[A-Za-z0-9_-]{43}", link) and re.fullmatch(r"[A-Z0-9-]{14}", password)
        assert patient.locator("svg.share-qr").is_visible()
        patient.locator("[data-copy=share-link]").click()
        expect(patient.locator("#copy-status")).to_have_text(words["copied"])  # the clipboard answers asynchronously
        assert patient.evaluate("navigator.clipboard.readText()") == link
        assert fits(patient)

        # the doctor, in another browser: a wrong password, then the right one
        address = demo_url + urlsplit(link).path  # the demo's base_url names another port
        doctor.goto(address)
        doctor.fill("#share-password", "WRNG-WRNG-WRNG")
        doctor.get_by_role("button", name=words["open"]).click()
        assert words["wrong"] in doctor.locator(".error").inner_text()
        doctor.fill("#share-password", password)
        doctor.get_by_role("button", name=words["open"]).click()
        doctor.wait_for_url(demo_url + "/shared")
        assert doctor.locator(".exam-card h2 a").all_inner_texts() == SHARED
        assert words["banner"] in doctor.locator(".share-banner").inner_text()
        assert fits(doctor)

        # exactly those exams, and nowhere a way to download
        doctor.get_by_role("link", name="CT CHEST WITHOUT CONTRAST").click()
        doctor.get_by_role("link", name=words["report"], exact=True).click()
        assert "The lungs are clear." in doctor.locator(".tab-panel").inner_text()
        assert doctor.locator("a[href*='download=1']").count() == 0
        doctor.get_by_role("link", name=words["images"], exact=True).click()
        assert doctor.locator("img.thumb").count() == 2
        assert doctor.locator("a[href*='download=1']").count() == 0 and doctor.locator(".export-buttons").count() == 0
        exam_address = doctor.url
        doctor.goto(exam_address.replace("/images", "/viewer"))
        assert doctor.locator("#viewer-canvas").count() == 1 and doctor.locator("#viewer-save-image").count() == 0
        assert doctor.goto(demo_url + "/exams").status == 200  # the patient's own list: nothing of theirs
        assert not any(title in doctor.content() for title in ("US ABDOMEN COMPLETE", "XR CHEST 2 VIEWS"))
        doctor.goto(exam_address)

        # the patient's activity page tells who opened the share and what they looked at
        patient.goto(demo_url + "/activity")
        opened = patient.locator("main li", has_text=nickname)
        assert opened.count() >= 2  # the opening and the views, under the share's nickname
        assert "CT CHEST WITHOUT CONTRAST" in patient.locator("main").inner_text()

        # the patient turns the share off; the doctor's next request is refused
        patient.goto(demo_url + "/shares")
        card = patient.locator(".share-card", has_text=nickname)
        card.get_by_role("link", name=re.compile("^" + words["turn_off"])).click()
        patient.get_by_role("button", name=words["confirm"]).click()
        patient.wait_for_url(demo_url + "/shares?revoked=1")
        assert words["turned_off"] in patient.locator(".share-card", has_text=nickname).inner_text()

        refused = doctor.reload()
        assert refused.status == 403 and "CT CHEST WITHOUT CONTRAST" not in doctor.content()
        assert doctor.goto(demo_url + "/shared").status == 410
        assert doctor.locator("h1").inner_text() == words["closed"]
        assert doctor.goto(address).status == 410
    finally:
        patient_context.close()
        doctor_context.close()
