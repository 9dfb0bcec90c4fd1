"""A new patient creates an account in Spanish on a phone, end to end: details,
identity check against the demo's records, the emailed code (read from the outbox
by an admin, as a person reads their mail), and a password."""
import re

import pytest
from browsing import fits

pytestmark = pytest.mark.slow


def read_code_from_outbox(browser, demo_url: str, recipient: str) -> str:
    context = browser.new_context()
    admin = context.new_page()
    admin.goto(demo_url + "/signin")
    admin.fill("input[name=email]", "admin@demo.filmless.test")
    admin.fill("input[name=password]", "filmless-demo-admin")
    admin.locator("form[action='/signin'] button[type=submit]").click()
    admin.goto(demo_url + "/outbox")
    text = admin.locator("main").inner_text()
    context.close()
    section = text[text.index(recipient):]
    return re.search(r"\b(\d{6})\b", section).group(1)


def test_a_new_patient_registers_in_spanish(browser, phone, demo_url):
    phone.goto(demo_url + "/language/es?next=/register")
    assert phone.locator("html").get_attribute("lang") == "es"
    assert phone.locator("h1").inner_text() == "Crear una cuenta"
    assert fits(phone)

    phone.fill("input[name=name]", "Casey Newcomer")
    phone.fill("input[name=birth_day]", "30")
    phone.select_option("select[name=birth_month]", "9")
    phone.fill("input[name=birth_year]", "1975")
    phone.fill("input[name=email]", "casey@example.test")
    phone.locator("main form button[type=submit]").click()

    phone.wait_for_url("**/register/verify")
    assert fits(phone)
    phone.fill("input[name=last_name]", "Newcomer")
    phone.check("input[name=kind][value=patient_id]")
    phone.fill("input[name=number]", "DEMO-1003")
    phone.locator("main form button[type=submit]").click()

    phone.wait_for_url("**/register/email")
    code = read_code_from_outbox(browser, demo_url, "casey@example.test")
    phone.fill("input[name=code]", code)
    phone.locator("main form[action='/register/email'] button[type=submit]").click()

    phone.wait_for_url("**/register/password")
    phone.fill("input[name=password]", "un paseo largo por la playa")
    phone.fill("input[name=confirmation]", "un paseo largo por la playa")
    phone.locator("main form button[type=submit]").click()

    phone.wait_for_url(demo_url + "/")
    assert phone.locator("#signed-in").inner_text() == "Ya inició sesión."
    assert phone.locator("html").get_attribute("lang") == "es"
    assert fits(phone)
