"""Pages: languages that stick, error pages in the reader's language, template
layering, slots, health, static files, security headers, and the route rules."""
from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient
from support import ROOT, demo_site_file, make_site

from core import access, i18n
from core.app import create_app
from core.site import load_site


def test_home_shows_site_name_and_sign_in(client):
    page = client.get("/")
    assert page.status_code == 200
    assert "<h1>Test Imaging</h1>" in page.text
    assert '<a class="button" href="/signin">Sign in</a>' in page.text
    assert '<html lang="en">' in page.text
    assert 'name="viewport" content="width=device-width, initial-scale=1"' in page.text
    assert '<a class="skip-link" href="#main">' in page.text


def test_browser_language_is_used_when_no_choice_was_made(client):
    page = client.get("/", headers={"Accept-Language": "es-MX,es;q=0.9,en;q=0.5"})
    assert '<html lang="es">' in page.text and "Iniciar sesión" in page.text
    assert page.headers["content-language"] == "es"


def test_language_choice_sticks_and_only_redirects_locally(client):
    answer = client.get("/language/es", params={"next": "/signin"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/signin"
    cookie = answer.headers["set-cookie"]
    assert "filmless_lang=es" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    assert '<html lang="es">' in client.get("/", headers={"Accept-Language": "en"}).text
    for hostile in ("https://evil.test/", "//evil.test/x", "javascript:alert(1)"):
        assert client.get("/language/en", params={"next": hostile}, follow_redirects=False).headers["location"] == "/"
    assert '<html lang="en">' in client.get("/").text


def test_unknown_language_is_ignored(client):
    answer = client.get("/language/fr", follow_redirects=False)
    assert answer.status_code == 303 and "filmless_lang" not in answer.headers.get("set-cookie", "")


def test_not_found_in_the_readers_language(client):
    client.cookies.set("filmless_lang", "es")
    page = client.get("/no-such-page")
    assert page.status_code == 404 and "Página no encontrada" in page.text


def test_forbidden_in_the_readers_language(client):
    page = client.get("/fixture/secret", headers={"Accept-Language": "es"})
    assert page.status_code == 403 and '<html lang="es">' in page.text and "Not allowed" not in page.text


def test_server_error_page_in_the_readers_language(app):
    with TestClient(app, raise_server_exceptions=False) as client:
        page = client.get("/fixture/boom", headers={"Accept-Language": "es"})
    assert page.status_code == 500
    assert '<html lang="es">' in page.text and "Something went wrong" not in page.text
    assert "fixture route failed" not in page.text


def test_healthz(client):
    answer = client.get("/healthz")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "version": "0.1.0", "database": "ok", "queue": "ok", "queue_pending": 0}


def test_healthz_reports_an_unreachable_database(tmp_path):
    from support import free_port

    site = make_site(tmp_path, database=f"postgresql+psycopg://nobody:x@127.0.0.1:{free_port()}/none")
    answer = TestClient(create_app(site)).get("/healthz")
    assert answer.status_code == 503
    assert answer.json()["status"] == "error" and answer.json()["database"] == "error: OperationalError"
    assert answer.json()["queue"] == "ok"


def test_static_files_and_branding_are_served_by_us(client):
    css = client.get("/static/filmless.css")
    assert css.status_code == 200 and "@media" in css.text
    branding = client.get("/branding.css")
    assert branding.headers["content-type"].startswith("text/css") and "--brand: #1f4e79" in branding.text
    page = client.get("/").text
    assert "http://" not in page.replace("http://testserver", "") and "https://" not in page


def test_security_headers(client):
    headers = client.get("/").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src" not in headers["content-security-policy"]  # default-src 'self': no inline scripts
    assert headers["x-content-type-options"] == "nosniff"


def test_site_templates_override_plugin_and_core_and_can_extend_core(tmp_path, database_url):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "home.html").write_text(
        '{% extends "core:home.html" %}{% block content %}<p id="site-own">ours</p>{{ super() }}{% endblock %}')
    site = make_site(tmp_path, database=database_url,
                     site={"name": "Layered", "templates": str(templates)})
    page = TestClient(create_app(site)).get("/").text
    assert '<p id="site-own">ours</p>' in page and "<h1>Layered</h1>" in page


def test_branding_colours_come_from_the_site(tmp_path, database_url):
    site = make_site(tmp_path, database=database_url,
                     site={"name": "Blue", "branding": {"primary_colour": "#004488"}})
    assert "--brand: #004488" in TestClient(create_app(site)).get("/branding.css").text


def test_dates_and_money_in_the_readers_locale_and_site_time_zone():
    moment = datetime(2026, 11, 23, 23, 30, tzinfo=timezone.utc)
    i18n.activate("es", "America/New_York")
    assert i18n.format_datetime(moment) == "23 nov 2026, 18:30:00"
    assert i18n.format_money(123456, "USD") == "1.234,56\xa0US$"
    i18n.activate("en", "Australia/Sydney")
    assert i18n.format_date(moment) == "November 24, 2026"
    assert i18n.format_money(123456, "USD") == "$1,234.56"
    assert i18n.format_money(500, "JPY") == "¥500"


def test_language_picking():
    assert i18n.pick_language(["en", "es"], "en", None, "es-AR,es;q=0.8") == "es"
    assert i18n.pick_language(["en", "es"], "es", None, "fr-FR,de") == "es"
    assert i18n.pick_language(["en"], "en", "es", "es") == "en"


def test_every_route_of_the_demo_app_declares_an_access_rule(tmp_path):
    app = create_app(load_site(demo_site_file(tmp_path)))
    routes = access.flatten(app.routes)
    assert len(routes) >= 11
    undeclared = [getattr(route, "path", route) for route in routes if access.declared_rule(route) is None]
    assert undeclared == []


def test_demo_plugin_pages_answer_in_both_languages(tmp_path):
    client = TestClient(create_app(load_site(demo_site_file(tmp_path))))
    for path in ("/schedule/", "/visit/", "/clinicians/", "/billing/", "/upload/", "/signin"):
        english, spanish = client.get(path), client.get(path, headers={"Accept-Language": "es"})
        assert english.status_code == spanish.status_code == 200
        assert english.text != spanish.text and '<html lang="es">' in spanish.text


@pytest.mark.parametrize("width", [360])
def test_phone_layout_rules_exist(width):
    css = (ROOT / "core" / "static" / "filmless.css").read_text()
    assert "flex-wrap: wrap" in css and "max-width" in css and "@media (min-width" in css


def test_each_request_gets_a_session_that_commits(client, session):
    from sqlalchemy import text

    from support import csrf_token

    assert client.post("/fixture/notes", params={"body": "x"}).status_code == 403  # no CSRF token
    answer = client.post("/fixture/notes", params={"body": "from a request"}, headers={"X-CSRF-Token": csrf_token(client)})
    assert answer.json() == {"notes": 1}
    assert session.scalar(text("SELECT body FROM fixture_note")) == "from a request"


def test_a_nul_character_or_a_huge_number_in_the_address_is_refused_before_any_route(client):
    # PostgreSQL cannot compare a string holding NUL, and numbers beyond 64 bits overflow both
    # databases' integers: found by tests/security/test_schema_fuzz.py
    for address in ("/dicomweb/studies?PatientID=a%00b", "/exams/1.2%003", "/exams?kind=CT%00",
                    "/dicomweb/studies?offset=3467988319581718925304397824", "/staff/patients/-17150232450713714628",
                    "/activity?page=99999999999999999999"):
        answer = client.get(address)
        assert answer.status_code == 400, address
    assert client.get("/dicomweb/studies?PatientID=ab").status_code == 401  # the gate still decides the rest


def test_an_error_page_gives_the_reason_of_a_refusal_in_the_readers_language(client):
    page = client.get("/exams?kind=CT%00")
    assert page.status_code == 400 and "The address contains a value that is not allowed." in page.text
    spanish = client.get("/exams?kind=CT%00", headers={"Accept-Language": "es"})
    assert "La dirección contiene un valor que no está permitido." in spanish.text, spanish.text
