"""Quick Share codes (issue 7): a short code shown with a QR code, stored only hashed, that
opens its share only with the patient's date of birth, is slowed down per code, per address
and for the whole site, answers alike whether or not a code exists, and expires."""
from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select
from support import audit_events, make_site, post_form, sign_in_as
from test_exports import PASSWORD, account_with_patient, ingest_exam, principal_of

from core import clock
from core.access import SHARE_COOKIE
from core.identity import security
from core.sharing import quick, service
from core.sharing.models import Share
from core.studies.models import Patient

BASE_URL = "https://portal.example.test"
CODE = re.compile(r'<code id="quick-code">([A-Z2-9]{4}-[A-Z2-9]{4})</code>')
BORN = {"birth_day": "2", "birth_month": "1", "birth_year": "1980"}  # account_with_patient's patient


@pytest.fixture
def site(tmp_path, database_url):
    return make_site(tmp_path, database=database_url,
                     site={"name": "Test Imaging", "timezone": "Europe/Madrid", "languages": ["en", "es"],
                           "base_url": BASE_URL})


@pytest.fixture
def patient(session, runtime, tmp_path):
    account, record = account_with_patient(session, "alex@example.test", "QS-1")
    knee, _ = ingest_exam(session, runtime, tmp_path, record, description="MR KNEE", modality="MR", instances=1)
    chest, _ = ingest_exam(session, runtime, tmp_path, record, description="CT CHEST", instances=1)
    return account, record, knee, chest


def make_code(client, account, studies, **fields) -> str:
    sign_in_as(client, account.email, PASSWORD)
    answer = post_form(client, "/shares/quick", {"study": [study.study_uid for study in studies],
                                                 "acknowledge": "yes", **fields})
    assert answer.status_code == 200, answer.text[:500]
    assert answer.headers["cache-control"] == "no-store"
    return CODE.search(answer.text).group(1)


def open_code(client, code: str, **born):
    return post_form(client, "/s", {"code": code, **(born or BORN)}, follow_redirects=False)


def test_the_patient_gets_a_grouped_code_and_a_qr_code_and_only_its_hash_is_stored(
        client, session, patient, frozen_clock):
    account, record, knee, chest = patient
    form = client.get(f"/shares/quick?study={knee.study_uid}")  # signed out: the gate asks to sign in
    assert form.status_code == 403
    sign_in_as(client, account.email, PASSWORD)
    form = client.get(f"/shares/quick?study={knee.study_uid}")
    assert form.status_code == 200 and "MR KNEE" in form.text and "CT CHEST" in form.text
    answer = post_form(client, "/shares/quick", {"study": [knee.study_uid], "acknowledge": "yes"})
    code = CODE.search(answer.text).group(1)
    assert set(code.replace("-", "")) <= set(quick.CODE_ALPHABET)
    assert "<svg" in answer.text and f"{BASE_URL}/s" in answer.text

    share = session.scalar(select(Share))
    assert share.quick_code_hash == quick.code_digest(code) and len(share.quick_code_hash) == 64
    assert share.study_refs == [knee.id] and share.password_hash is None and share.nickname == "Quick Share"
    assert share.expires_at == clock.now() + timedelta(hours=24)
    columns = {column.key: getattr(share, column.key) for column in inspect(Share).mapper.column_attrs}
    for value in columns.values():  # the code itself is nowhere in the row
        assert code not in str(value) and code.replace("-", "") not in str(value)
    assert audit_events(session, "share.created")[-1].detail["studies"] == [knee.id]


def test_right_code_and_birth_date_open_exactly_the_shared_exams(app, client, session, patient):
    account, record, knee, chest = patient
    code = make_code(client, account, [knee])
    with TestClient(app, base_url="https://testserver") as doctor:
        prefilled = doctor.get(f"/s?code={code}")
        assert prefilled.status_code == 200 and f'value="{code.replace("-", "")}"' in prefilled.text
        opened = open_code(doctor, code.lower().replace("-", " "))  # as typed, in any case
        assert opened.status_code == 303 and opened.headers["location"] == "/shared"
        cookie = opened.headers["set-cookie"]
        assert cookie.startswith(f"{SHARE_COOKIE}=") and "Secure" in cookie and "HttpOnly" in cookie
        assert "Path=/" in cookie and "Domain" not in cookie
        assert doctor.get(f"/exams/{knee.study_uid}").status_code == 200
        assert doctor.get(f"/exams/{chest.study_uid}").status_code == 404
    share = session.scalar(select(Share))
    session.refresh(share)
    assert share.times_opened == 1


def test_a_wrong_birth_date_and_a_wrong_code_get_the_same_answer(app, client, session, patient):
    account, record, knee, chest = patient
    code = make_code(client, account, [knee])
    with TestClient(app, base_url="https://testserver") as doctor:
        wrong_date = open_code(doctor, code, birth_day="3", birth_month="1", birth_year="1980")
        wrong_code = open_code(doctor, "ABCD-EFGH" if code != "ABCD-EFGH" else "HGFE-DCBA")
        assert wrong_date.status_code == wrong_code.status_code == 403
        strip = lambda page: re.sub(r'value="[^"]*"', "", page)  # noqa: E731  (what was typed)
        assert strip(wrong_date.text) == strip(wrong_code.text)
        assert "This code and date of birth do not open a share." in wrong_date.text
        assert SHARE_COOKIE not in doctor.cookies
    assert len(audit_events(session, "share.quick_code_failed")) == 2
    assert session.scalar(select(Share)).times_opened == 0


def test_wrong_tries_on_one_code_are_slowed_down_then_allowed_again(app, client, session, patient, frozen_clock):
    account, record, knee, chest = patient
    code = make_code(client, account, [knee])
    with TestClient(app, base_url="https://testserver") as doctor:
        for year in ("1981", "1982", "1983", "1984"):
            assert open_code(doctor, code, birth_day="2", birth_month="1", birth_year=year).status_code == 403
        held = open_code(doctor, code)  # right, but this code is held back for a while
        assert held.status_code == 429 and "Too many attempts" in held.text
        assert SHARE_COOKIE not in doctor.cookies
        clock.advance(timedelta(minutes=1))
        assert open_code(doctor, code).status_code == 303


def test_one_address_trying_many_codes_is_slowed_down(session, runtime, patient, frozen_clock):
    account, record, knee, chest = patient
    made = quick.create(session, runtime, principal_of(account, record), study_uids=[knee.study_uid],
                        acknowledged=True)
    session.commit()
    for guess in ("AAAA-AAAA", "BBBB-BBBB", "CCCC-CCCC", "DDDD-DDDD"):
        with pytest.raises(service.ShareError) as refused:
            quick.open_by_code(session, runtime, code=guess, birth_date=date(1980, 1, 2), client="198.51.100.7")
        assert refused.value.kind == "not_found"
    with pytest.raises(service.ShareError) as refused:
        quick.open_by_code(session, runtime, code=made.code, birth_date=date(1980, 1, 2), client="198.51.100.7")
    assert refused.value.kind == "throttled"
    assert quick.open_by_code(session, runtime, code=made.code, birth_date=date(1980, 1, 2), client="203.0.113.9")


def test_guesses_spread_over_many_addresses_pause_quick_share_for_the_hour(session, runtime, patient, frozen_clock):
    account, record, knee, chest = patient
    made = quick.create(session, runtime, principal_of(account, record), study_uids=[knee.study_uid],
                        acknowledged=True)
    session.commit()
    for n in range(quick.SITE_FAILURES_PER_HOUR):
        with pytest.raises(service.ShareError):
            quick.open_by_code(session, runtime, code=f"{n:04d}-WXYZ", birth_date=date(1980, 1, 2),
                               client=f"10.0.{n // 250}.{n % 250}")
    with pytest.raises(service.ShareError) as refused:
        quick.open_by_code(session, runtime, code=made.code, birth_date=date(1980, 1, 2), client="203.0.113.9")
    assert refused.value.kind == "throttled"
    clock.advance(timedelta(hours=1))
    assert quick.open_by_code(session, runtime, code=made.code, birth_date=date(1980, 1, 2), client="203.0.113.9")


def test_the_code_expires_with_its_share(app, client, session, patient, frozen_clock):
    account, record, knee, chest = patient
    code = make_code(client, account, [knee])
    clock.advance(timedelta(hours=24, minutes=1))
    with TestClient(app, base_url="https://testserver") as doctor:
        doctor.get("/language/es")
        expired = open_code(doctor, code)
        assert expired.status_code == 410 and SHARE_COOKIE not in doctor.cookies
        assert "Abrir un Compartir rápido" in expired.text
    with pytest.raises(service.ShareError) as refused:
        quick.open_by_code(session, runtime_of(app), code=code, birth_date=date(1980, 1, 2), client="203.0.113.9")
    assert refused.value.kind == "expired"


def test_a_revoked_code_no_longer_opens(app, client, session, patient):
    account, record, knee, chest = patient
    code = make_code(client, account, [knee])
    service.revoke(session, principal_of(account, record), session.scalar(select(Share)).id)
    session.commit()
    with TestClient(app, base_url="https://testserver") as doctor:
        assert open_code(doctor, code).status_code == 410 and SHARE_COOKIE not in doctor.cookies


def test_the_doctors_form_and_its_answers_are_in_spanish(app, client, session, patient):
    account, record, knee, chest = patient
    make_code(client, account, [knee])
    with TestClient(app, base_url="https://testserver") as doctor:
        doctor.get("/language/es")
        page = doctor.get("/s")
        assert "Escriba el código que le dio el paciente" in page.text and "enero" in page.text
        refused = open_code(doctor, "ABCD-EFGH")
        assert "Este código y esta fecha de nacimiento no abren ningún examen compartido." in refused.text
        incomplete = post_form(doctor, "/s", {"code": "ABCD-EFGH", "birth_day": "2", "birth_month": "1"})
        assert incomplete.status_code == 422 and "día, mes y año" in incomplete.text


def test_a_patient_without_a_birth_date_is_offered_a_link_instead(client, session, patient):
    account, record, knee, chest = patient
    session.get(Patient, record.id).birth_date = None
    session.commit()
    sign_in_as(client, account.email, PASSWORD)
    answer = post_form(client, "/shares/quick", {"study": [knee.study_uid], "acknowledge": "yes"})
    assert answer.status_code == 422 and "Send a share link instead." in answer.text
    assert session.scalar(select(Share)) is None


def test_the_code_lasts_as_long_as_the_site_says(tmp_path, database_url, session, runtime, patient, frozen_clock):
    account, record, knee, chest = patient
    short = make_site(tmp_path / "short", database=database_url, sharing={"quick_code_hours": 2})
    runtime.site = short  # same database and session, a site with 2-hour codes
    made = quick.create(session, runtime, principal_of(account, record), study_uids=[knee.study_uid],
                        acknowledged=True)
    assert made.expires_at == clock.now() + timedelta(hours=2) == made.share.expires_at
    assert security.digest(made.code) != made.share.quick_code_hash  # a digest of its own, not the bare code's


def runtime_of(app):
    return app.state.runtime
