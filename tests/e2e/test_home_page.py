"""The demo home page in a real browser on a 360 px wide phone."""
import pytest

pytestmark = pytest.mark.slow


def test_home_fits_a_phone_and_switches_language(phone, demo_url, tmp_path):
    phone.goto(demo_url + "/")
    assert phone.locator("h1").inner_text() == "Filmless Demo Imaging"
    assert phone.evaluate("document.documentElement.scrollWidth") <= 360
    sign_in = phone.get_by_role("link", name="Sign in", exact=True)
    box = sign_in.bounding_box()
    assert box["height"] >= 44 and box["x"] + box["width"] <= 360  # a thumb-sized, visible target

    phone.get_by_role("link", name="Español").click()
    phone.wait_for_url(demo_url + "/")
    assert phone.locator("html").get_attribute("lang") == "es"
    assert phone.get_by_role("link", name="Iniciar sesión", exact=True).is_visible()
    assert phone.evaluate("document.documentElement.scrollWidth") <= 360

    phone.goto(demo_url + "/visit/")  # the choice sticks on every page
    assert phone.locator("html").get_attribute("lang") == "es"
    phone.screenshot(path=str(tmp_path / "visit-es.png"))


def test_skip_link_is_the_first_stop_for_the_keyboard(phone, demo_url):
    phone.goto(demo_url + "/")
    phone.keyboard.press("Tab")
    focused = phone.evaluate("document.activeElement.getAttribute('href')")
    assert focused == "#main"
    assert phone.locator(".skip-link").is_visible()


def test_not_found_page_in_spanish(phone, demo_url):
    phone.goto(demo_url + "/language/es?next=/nothing-here")
    assert phone.locator("html").get_attribute("lang") == "es"
    assert phone.locator("h1").inner_text() == "Página no encontrada"
