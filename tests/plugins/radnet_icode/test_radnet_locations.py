"""The imaging centres (plugins/radnet_icode/locations.py and centre_routes.py).

A study belongs to the centre its DICOM Institution Name names, else the one its Station
Name names, else the site's default centre. A visitor chooses their centre on a page that
lists the centres by region; the choice puts the centre's name and help line on every page
and changes nothing about what anyone may see.
"""
from __future__ import annotations

import re
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from support import ingest_file, make_site, post_form, sign_in_as

from core import i18n
from core.studies import synthetic
from core.identity.models import PatientLink
from core.studies.models import Patient, Study
from plugins.radnet_icode import locations
from plugins.radnet_icode.models import Visit, VisitStudy

PASSWORD = "a long unique passphrase"
CENTRES = [
    {"key": "la-westside", "name": "Westside Imaging Center", "state": "CA", "region": "Southern California",
     "phone": "(310) 555-0142", "institution_names": ["Westside Imaging Center"]},
    {"key": "la-harbor", "name": "Harbor Open MRI", "state": "CA", "region": "Southern California",
     "phone": "+1 310 555 0166", "institution_names": ["Harbor Open MRI"], "station_names": ["HARBOR-MR1"]},
    {"key": "austin-north", "name": "North Austin Imaging", "state": "TX", "region": "Central Texas",
     "phone": "(512) 555-0178", "institution_names": ["North Austin Imaging"], "station_names": ["NAI-CT2"]},
    {"key": "brooklyn-heights", "name": "Brooklyn Heights Radiology", "state": "NY", "region": "New York City",
     "phone": "(718) 555-0193", "institution_names": ["Brooklyn Heights Radiology"]},
]
RULES = [{"name": "Texas reports 4 days after signing", "jurisdictions": ["TX"], "delay_days": 4,
          "law": "Texas SB 922"}]


def centres_site(tmp_path, database_url, **settings):
    section = {"help_phone": "(800) 555-0110", "locations": CENTRES, "release_rules": RULES, **settings}
    return make_site(tmp_path, database=database_url, fixture=False,
                     site={"name": "Portal Pass Test", "timezone": "America/Chicago", "languages": ["en", "es"]},
                     plugins={"radnet_icode": section})


@pytest.fixture
def site(request, tmp_path, database_url):
    """Four centres in three regions, or the plugin settings a test gives through indirect parametrizing."""
    return centres_site(tmp_path, database_url, **getattr(request, "param", {}))


def settings_of(runtime):
    return runtime.site.plugin_settings["radnet_icode"]


def stored_study(session, runtime, folder, *, institution: str, station: str = "", report_first: bool = False,
                 patient_id: str = "LOC-1") -> Study:
    """A study ingested from synthetic DICOM; ``report_first`` sends an SR without a Station Name first."""
    spec = synthetic.StudySpec(patient_id=patient_id, institution=institution, instances=2, rows=16, columns=16)
    datasets = synthetic.study(spec)
    for ds in datasets:
        if station:
            ds.StationName = station
    if report_first:
        datasets.insert(0, synthetic.text_report(spec, "No acute findings.", verified=False))
    for path in synthetic.write(datasets, folder / spec.study_uid):
        assert ingest_file(session, runtime, path).outcome == "stored"
    session.commit()
    return session.scalar(select(Study).where(Study.study_uid == spec.study_uid))


# -- where a study was done --------------------------------------------------------------------

def test_a_study_belongs_to_the_centre_its_institution_name_names(session, runtime, tmp_path):
    settings = settings_of(runtime)
    study = stored_study(session, runtime, tmp_path, institution="  north AUSTIN imaging ")
    assert locations.location_of_study(settings, study).key == "austin-north"
    assert locations.location_of_study(settings, study, session).key == "austin-north"
    brooklyn = stored_study(session, runtime, tmp_path, institution="Brooklyn Heights Radiology", station="NAI-CT2")
    assert locations.location_of_study(settings, brooklyn).key == "brooklyn-heights"  # the institution comes first


def test_else_the_station_name_of_its_first_images(session, runtime, tmp_path):
    settings = settings_of(runtime)
    study = stored_study(session, runtime, tmp_path, institution="Imaging Group Inc", station="harbor-mr1",
                         report_first=True)
    assert locations.station_name(session, study) == "harbor-mr1"
    assert locations.location_of_study(settings, study).key == "la-harbor"
    assert locations.location_of_study(settings, study).state == "CA"


@pytest.mark.parametrize("site", [{"default_location": "brooklyn-heights"}], indirect=True, ids=["default"])
def test_else_the_sites_default_centre(session, runtime, tmp_path):
    study = stored_study(session, runtime, tmp_path, institution="Somewhere Else", station="UNKNOWN-1")
    assert locations.location_of_study(settings_of(runtime), study).key == "brooklyn-heights"


def test_else_no_centre(session, runtime, tmp_path):
    study = stored_study(session, runtime, tmp_path, institution="Somewhere Else", station="UNKNOWN-1")
    assert locations.location_of_study(settings_of(runtime), study) is None
    assert locations.location_named(settings_of(runtime)) is None


def test_each_visit_records_the_centre_of_its_studies(session, runtime, tmp_path):
    texas = stored_study(session, runtime, tmp_path, institution="North Austin Imaging")
    unknown = stored_study(session, runtime, tmp_path, institution="Somewhere Else", patient_id="LOC-2")

    def centre_of_visit(study):
        return session.scalar(select(Visit.location_key).join(VisitStudy, VisitStudy.visit_ref == Visit.id)
                              .where(VisitStudy.study_ref == study.id))

    assert (centre_of_visit(texas), centre_of_visit(unknown)) == ("austin-north", "")


# -- choosing a centre -------------------------------------------------------------------------

def test_the_picker_lists_the_centres_by_region_with_their_phones(client):
    page = client.get("/visit/centre", params={"next": "/signin"})
    assert page.status_code == 200
    html = page.text
    assert re.findall(r"<legend>([^<]+)</legend>", html) == ["Southern California", "Central Texas", "New York City"]
    assert re.findall(r'name="centre" value="([^"]+)"', html) == [c["key"] for c in CENTRES]
    for centre in CENTRES:
        assert centre["name"] in html and centre["phone"] in html
    assert 'href="tel:3105550142"' in html and 'href="tel:+13105550166"' in html
    assert 'name="csrf_token"' in html and '<input type="hidden" name="next" value="/signin">' in html
    assert 'name="viewport" content="width=device-width' in html  # readable on a phone
    assert "Not sure? Call our help desk:" in html and 'href="tel:8005550110"' in html


def test_choosing_a_centre_remembers_it_and_goes_back(client):
    answer = post_form(client, "/visit/centre", {"centre": "austin-north", "next": "/signin?x=1"},
                       follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/signin?x=1"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("filmless_centre=austin-north;")
    assert "Path=/" in cookie and "SameSite=lax" in cookie and "Max-Age=31536000" in cookie
    assert "Secure" in cookie and "HttpOnly" in cookie and "__Host-" not in cookie
    assert 'value="austin-north" required checked' in client.get("/visit/centre").text


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "javascript:alert(1)"])
def test_it_goes_back_only_to_a_page_of_this_site(client, target):
    answer = post_form(client, "/visit/centre", {"centre": "la-westside", "next": target}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/"


def test_an_unknown_centre_is_refused_and_nothing_is_remembered(client):
    answer = post_form(client, "/visit/centre", {"centre": "dallas", "next": "/"}, follow_redirects=False)
    assert answer.status_code == 400 and "Please choose one of the centres listed." in answer.text
    assert "filmless_centre" not in answer.headers.get("set-cookie", "")
    assert post_form(client, "/visit/centre", {"next": "/"}).status_code == 400


def test_the_form_needs_its_csrf_token(client):
    client.get("/visit/centre")
    answer = client.post("/visit/centre", data={"centre": "austin-north"}, follow_redirects=False)
    assert answer.status_code == 403 and "filmless_centre" not in answer.headers.get("set-cookie", "")


def test_the_chosen_centre_is_on_every_page_with_its_help_line(client):
    assert "Your centre:" not in client.get("/").text  # nothing chosen yet
    signin = client.get("/signin").text
    assert 'href="/visit/centre?next=/signin">Choose your centre</a>' in signin

    post_form(client, "/visit/centre", {"centre": "brooklyn-heights", "next": "/"})
    home = client.get("/").text
    bar = re.search(r'<p class="notice centre-bar">(.*?)</p>', home, re.S).group(1)
    assert "Your centre: Brooklyn Heights Radiology" in bar and 'href="tel:7185550193">(718) 555-0193</a>' in bar
    assert 'href="/visit/centre?next=/">Change</a>' in bar
    signin = client.get("/signin").text
    assert signin.count("Your centre: Brooklyn Heights Radiology") == 1  # the bar, not the picker again
    assert 'href="/visit/centre?next=/signin">Choose another centre</a>' in signin


def test_the_choice_is_shown_in_spanish(client):
    client.cookies.set(i18n.COOKIE, "es")
    assert "Elija su centro" in client.get("/visit/centre").text
    post_form(client, "/visit/centre", {"centre": "la-westside", "next": "/"})
    assert "Su centro: Westside Imaging Center" in client.get("/").text


@pytest.mark.parametrize("site", [{"locations": CENTRES[:1]}], indirect=True, ids=["one centre"])
def test_a_site_with_one_centre_offers_no_choice(client):
    post_form(client, "/visit/centre", {"centre": "la-westside", "next": "/"})
    assert client.cookies.get("filmless_centre") == "la-westside"
    assert "Your centre:" not in client.get("/").text
    assert "Choose your centre" not in client.get("/signin").text


def test_a_centre_no_longer_listed_is_forgotten(client, runtime):
    client.cookies.set("filmless_centre", "closed-centre")
    assert "Your centre:" not in client.get("/").text
    request = type("Request", (), {"cookies": {"filmless_centre": "closed-centre"}})()
    assert locations.location_of_request(request, settings_of(runtime)) is None
    request.cookies["filmless_centre"] = "la-harbor"
    assert locations.location_of_request(request, settings_of(runtime)).name == "Harbor Open MRI"


def test_the_choice_opens_nothing(app, session, runtime, tmp_path, make_account, frozen_clock):
    """A centre chosen by cookie changes neither who may see what nor when a report is released:
    the release follows the centre that did the exam."""
    chooser = TestClient(app, base_url="https://testserver")
    post_form(chooser, "/visit/centre", {"centre": "brooklyn-heights", "next": "/"})
    assert chooser.get("/exams", follow_redirects=False).status_code == 403
    account = make_account(email="nina@example.test", name="Nina York", password=PASSWORD)
    record = session.get(Patient, session.scalar(select(PatientLink.patient_ref)
                                                 .where(PatientLink.account_id == account.id)))
    signed = frozen_clock.now().strftime("%Y%m%d%H%M%S")
    uids = {}
    for institution in ("North Austin Imaging", "Brooklyn Heights Radiology"):
        spec = synthetic.StudySpec(patient_id=record.patient_id, issuer=record.issuer, institution=institution,
                                   instances=1, rows=16, columns=16)
        report = synthetic.text_report(spec, f"Findings at {institution}.", signed=signed)
        for path in synthetic.write([*synthetic.study(spec), report], tmp_path / spec.study_uid):
            assert ingest_file(session, runtime, path).outcome == "stored"
        uids[institution] = spec.study_uid
    session.commit()
    sign_in_as(chooser, "nina@example.test", PASSWORD)

    texas = chooser.get(f"/exams/{uids['North Austin Imaging']}/report").text
    assert "Report available on March 5, 2026 as required by Texas SB 922" in texas
    assert "Findings at North Austin Imaging." not in texas
    new_york = chooser.get(f"/exams/{uids['Brooklyn Heights Radiology']}/report").text
    assert "Findings at Brooklyn Heights Radiology." in new_york
    assert "Your centre: Brooklyn Heights Radiology" in new_york
