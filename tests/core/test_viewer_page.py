"""The viewer page: who may open it, what it shows, and in which language."""
from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from starlette.requests import Request

from core import access
from core.access import Principal
from core.studies import queries, service, synthetic, viewer
from core.studies.models import Patient, Study
from sqlalchemy import select
from support import audit_events, sign_in_as

PASSWORD = "a long unique passphrase"


def _store(session, runtime, tmp_path, spec):
    for path in synthetic.write(synthetic.study(spec), tmp_path / spec.study_uid):
        assert service.ingest(session, path, runtime=runtime).outcome == "stored"
    return spec.study_uid


def _patient_of(session, account):
    from core.identity.models import PatientLink

    link = session.scalar(select(PatientLink).where(PatientLink.account_id == account.id))
    return session.get(Patient, link.patient_ref)


def _spec(patient, **fields):
    return synthetic.StudySpec(patient_id=patient.patient_id, issuer=patient.issuer,
                               family_name="Ignored", given_name="Ignored", **fields)


@pytest.fixture
def owner(session, make_account):
    return make_account(email="owner@example.test", name="Olivia Owner", password=PASSWORD)


def _signed_in(client, email):
    sign_in_as(client, email, PASSWORD)
    return client


def _config(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="viewer-config">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def _strings(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="viewer-strings">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def test_owner_sees_the_viewer_of_their_study(client, session, runtime, owner, tmp_path):
    patient = _patient_of(session, owner)
    study_uid = _store(session, runtime, tmp_path, _spec(patient, series=2, instances=3))
    _store(session, runtime, tmp_path, _spec(patient, study_uid=study_uid, modality="US", frames=5, instances=1,
                                             description="CT CHEST"))
    _signed_in(client, "owner@example.test")

    page = client.get(f"/exams/{study_uid}/viewer")

    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    html = page.text
    assert '<script type="module" src="/static/viewer/main.js"></script>' in html
    assert "<script>" not in html and " style=" not in html and "onerror=" not in html  # nothing CSP would block
    assert "Olivia Owner" in html and 'class="viewer-patient-birth"' in html
    config = _config(html)
    assert config["studyUid"] == study_uid
    # in series number order (the clip is series 1 too); the US clip counts its frames
    assert [(entry["modality"], entry["number"], entry["images"]) for entry in config["series"]] == [
        ("CT", 1, 3), ("US", 1, 5), ("CT", 2, 3)]
    assert config["selected"] == config["series"][0]["uid"]
    assert [p["key"] for p in config["presets"]["CT"]] == ["soft_tissue", "lung", "bone", "brain"]
    for entry in config["series"]:
        assert f'/dicomweb/studies/{study_uid}/series/{entry["uid"]}/thumbnail' in html
    stored = Study.__table__
    study_id = session.scalar(select(stored.c.id).where(stored.c.study_uid == study_uid))
    viewed = audit_events(session, "study.viewed_images")
    assert [(event.actor, event.subject) for event in viewed] == [(f"account:{owner.id}", f"study:{study_id}")]
    assert viewed[0].detail == {"series_uid": config["selected"]}

    chosen = config["series"][2]["uid"]
    assert _config(client.get(f"/exams/{study_uid}/viewer?series={chosen}").text)["selected"] == chosen
    assert client.get(f"/exams/{study_uid}/viewer?series=1.2.3.4").status_code == 404


def test_another_patients_study_is_not_found(client, session, runtime, owner, make_account, tmp_path):
    stranger = make_account(email="stranger@example.test", name="Sam Stranger", password=PASSWORD)
    theirs = _store(session, runtime, tmp_path, _spec(_patient_of(session, stranger)))
    mine = _store(session, runtime, tmp_path, _spec(_patient_of(session, owner)))
    _signed_in(client, "owner@example.test")

    assert client.get(f"/exams/{theirs}/viewer").status_code == 404
    assert client.get(f"/exams/{mine}/viewer").status_code == 200
    assert client.get("/exams/1.2.3/viewer").status_code == 404
    series_of_mine = _config(client.get(f"/exams/{mine}/viewer").text)["series"][0]["uid"]
    # one's own series, asked for under another's study, is not there either
    assert client.get(f"/exams/{theirs}/viewer?series={series_of_mine}").status_code == 404
    assert audit_events(session, "study.viewed_images")[-1].subject != f"study:{theirs}"


def test_signed_out_visitor_is_refused(client, session, runtime, owner, tmp_path):
    study_uid = _store(session, runtime, tmp_path, _spec(_patient_of(session, owner)))
    assert client.get(f"/exams/{study_uid}/viewer").status_code == 403
    assert audit_events(session, "study.viewed_images") == []


def test_study_with_held_images_is_not_found_until_release(client, session, runtime, owner, tmp_path, frozen_clock):
    study_uid = _store(session, runtime, tmp_path, _spec(_patient_of(session, owner), description="HOLD IMAGES"))
    _signed_in(client, "owner@example.test")

    assert client.get(f"/exams/{study_uid}/viewer").status_code == 404

    frozen_clock.freeze(frozen_clock.now() + timedelta(hours=25))
    _signed_in(client, "owner@example.test")  # a day later the session has timed out
    assert client.get(f"/exams/{study_uid}/viewer").status_code == 200


def _page_as(app, session, principal, study_uid):
    """The page as a principal that no sign-in makes yet (a share session), rendered through the route's
    own functions."""
    scope = {"type": "http", "method": "GET", "path": f"/exams/{study_uid}/viewer", "headers": [],
             "query_string": b"", "app": app}
    request = Request(scope)
    request.state.principal = principal
    request.state.csrf_token = ""
    return viewer.viewer_page(request, session, study_uid).body.decode()


def test_hidden_patient_details_are_left_out_of_the_html(app, session, runtime, owner, tmp_path):
    patient = _patient_of(session, owner)
    study_uid = _store(session, runtime, tmp_path, _spec(patient, description="CT ABDOMEN"))
    study = queries.study(session, access.PACS, study_uid)
    share = Principal(kind="share", id="7", scope=frozenset({f"study:{study.id}", "hide_details"}))
    open_share = Principal(kind="share", id="8", scope=frozenset({f"study:{study.id}"}))

    hidden = _page_as(app, session, share, study_uid)
    shown = _page_as(app, session, open_share, study_uid)

    assert "Olivia" in shown and "Owner" in shown and "viewer-patient-birth" in shown
    assert "viewer-study-date" in shown
    for detail in ("Olivia", "Owner", "viewer-patient-birth", "viewer-study-date", "1980"):
        assert detail not in hidden
    assert 'id="viewer-canvas"' in hidden  # the images themselves remain
    assert "CT ABDOMEN" not in hidden  # descriptions too, unless the site keeps them cleaned (sharing.deidentify)
    assert audit_events(session, "study.viewed_images")[-1].actor == "share:8"


def test_viewer_strings_in_spanish(client, session, runtime, owner, tmp_path):
    study_uid = _store(session, runtime, tmp_path, _spec(_patient_of(session, owner)))
    _signed_in(client, "owner@example.test")
    client.get("/language/es")

    page = client.get(f"/exams/{study_uid}/viewer")

    assert page.status_code == 200 and page.headers["content-language"] == "es"
    strings = _strings(page.text)
    assert strings["undecodable"] == "Esta imagen no se puede mostrar."
    assert strings["image"] == "Imagen %(number)s de %(count)s"  # the script fills the placeholders
    assert strings["preset_lung"] == "Pulmón"
    assert "Atajos de teclado" in page.text and "Volver al estudio" in page.text
    assert "Keyboard shortcuts" not in page.text and "This image cannot be displayed." not in page.text
    assert "4 imágenes" in page.text
