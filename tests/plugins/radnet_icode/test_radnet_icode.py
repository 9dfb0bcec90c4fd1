"""Visit codes (I-Codes): a visit and its code for each new patient-centre-day, the code
emailed to the patient, opening the visit with the code and the date of birth, the visit
session and what it may see, expiry to the second, slowing down guessing, and new codes
from the staff's Portal Pass and the PACS."""
from __future__ import annotations

import hashlib
import re
from datetime import date, timedelta

import pytest
from sqlalchemy import inspect, select, text
from support import audit_events, messages_to, post_form, sign_in_as

from core import clock
from core.identity.models import Throttle
from plugins.radnet_icode import codes, service, visits
from plugins.radnet_icode.models import ICode, Visit, VisitSession, VisitStudy

BORN = date(1985, 5, 17)
PASSWORD = "a long unique passphrase"
WRONG = "We could not open a visit with this I-Code and date of birth."


# -- codes -------------------------------------------------------------------------------------------

def test_a_code_is_twelve_characters_in_three_groups_of_an_unambiguous_alphabet():
    made = {codes.new_code() for _ in range(200)}
    assert len(made) == 200
    for code in made:
        assert re.fullmatch(r"[A-HJKMNP-Z2-9]{4}-[A-HJKMNP-Z2-9]{4}-[A-HJKMNP-Z2-9]{4}", code), code
    assert not set("".join(made)) & set("01ILO")


def test_a_code_is_typed_in_any_case_with_or_without_dashes_and_spaces():
    assert {codes.digest(typed) for typed in ("PASS-2345-WXYZ", "pass2345wxyz", " Pass 2345 wxyz ",
                                              "pass-2345 - WXYZ")} == {
        hashlib.sha256(b"PASS2345WXYZ").hexdigest()}


# -- visits and their codes ------------------------------------------------------------------------------

def test_a_new_visit_gets_a_code_emailed_to_the_patient_that_opens_it(session, client, exam, frozen_clock,
                                                                       emailed_code, enter_code):
    study = exam(email="ana@example.test")
    sent = messages_to(session, "ana@example.test")
    assert len(sent) == 1 and sent[0].language == "en"
    assert "https://portal.example.test/visit" in sent[0].body_text and "1985" not in sent[0].body_text
    code = emailed_code("ana@example.test")
    icode = session.scalar(select(ICode))
    assert icode.issued_by == "system" and icode.expires_at == clock.now() + timedelta(days=90)
    assert [event.subject for event in audit_events(session, "icode.issued")] == [f"patient:{study.patient_ref}"]

    answer = enter_code(client, code.lower().replace("-", " "), BORN)
    assert answer.status_code == 303 and answer.headers["location"] == "/visit/exams"
    page = client.get("/visit/exams")
    assert page.status_code == 200 and "XR CHEST" in page.text and page.headers["cache-control"] == "no-store"
    assert "North Austin Imaging" in page.text and "Close this visit" in page.text


@pytest.mark.parametrize("site", [{"default_language": "es"}], indirect=True, ids=["spanish site"])
def test_the_code_email_is_in_the_sites_default_language(session, exam, emailed_code):
    exam(email="ana@example.test")
    message = messages_to(session, "ana@example.test")[-1]
    assert message.language == "es" and "Aquí tiene el I-Code de su visita" in message.body_text
    assert emailed_code("ana@example.test")


def test_one_visit_per_patient_centre_and_day(session, exam):
    first = exam(description="MR T-SPINE", modality="MR")
    same_visit = exam(description="MR L-SPINE", modality="MR")
    other_centre = exam(institution="Brooklyn Heights Radiology")
    other_day = exam(day=date(2026, 2, 20))
    other_patient = exam(patient_id="RAD-2002", family="Cole", given="Sam")
    visit_of = {study.id: visits.visit_of_study(session, study.id) for study in
                (first, same_visit, other_centre, other_day, other_patient)}
    assert visit_of[first.id].id == visit_of[same_visit.id].id
    assert len({visit.id for visit in visit_of.values()}) == 4
    assert visit_of[first.id].location_key == "austin-north"
    assert visit_of[other_centre.id].location_key == "brooklyn-heights"
    assert visit_of[first.id].visit_date == date(2026, 2, 27)
    # one code per visit: the second study of a visit joined it without a new code
    assert session.scalar(select(ICode.id).where(ICode.visit_ref == visit_of[first.id].id)) is not None
    assert len(session.scalars(select(ICode).where(ICode.visit_ref == visit_of[first.id].id)).all()) == 1


def test_the_code_is_not_stored_in_clear_anywhere(session, runtime, exam, code_of, client, enter_code):
    study = exam()  # no email address: nothing is sent, so no message holds the code either
    code = code_of(study)
    assert enter_code(client, code, BORN).status_code == 303
    session.commit()
    plain, grouped = codes.normalise(code), code
    found = []
    connection = session.connection()
    for table in inspect(connection).get_table_names():
        for row in connection.execute(text(f'SELECT * FROM "{table}"')):
            for value in row:
                written = str(value).upper() if value is not None else ""
                if plain in written.replace("-", "").replace(" ", "") or grouped in written:
                    found.append((table, value))
    assert found == []
    stored = session.scalars(select(ICode.code_hash)).all()
    assert hashlib.sha256(plain.encode()).hexdigest() in stored
    assert messages_to(session, "ana@example.test") == []


# -- expiry ------------------------------------------------------------------------------------------------

def test_a_code_works_until_its_last_second_and_is_expired_from_then_on(session, client, exam, code_of,
                                                                         frozen_clock, enter_code):
    study = exam()
    code = code_of(study)
    issued = clock.now()
    clock.freeze(issued + timedelta(days=90) - timedelta(seconds=1))
    assert enter_code(client, code, BORN).headers["location"] == "/visit/exams"
    client.cookies.clear()
    clock.freeze(issued + timedelta(days=90))
    assert codes.status_of(session.scalar(select(ICode).where(ICode.revoked_at.is_(None)))).state == "expired"
    clock.freeze(issued + timedelta(days=90, seconds=1))
    expired = enter_code(client, code, BORN)
    assert expired.status_code == 410 and visits.COOKIE not in expired.cookies
    assert "This I-Code expired on May 30, 2026" in expired.text and "Get Help" in expired.text


def test_an_open_visit_ends_with_its_session_and_never_outlives_its_code(session, client, exam, code_of,
                                                                          frozen_clock, enter_code):
    study = exam()
    code = code_of(study)
    answer = enter_code(client, code, BORN)
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{visits.COOKIE}=") and "Secure" in cookie and "HttpOnly" in cookie
    assert "SameSite=lax" in cookie and "Path=/" in cookie and "Max-Age=7200" in cookie
    token = answer.cookies[visits.COOKIE]
    row = session.scalar(select(VisitSession))
    assert row.id_hash == hashlib.sha256(token.encode()).hexdigest() and token not in row.id_hash
    assert row.expires_at == clock.now() + timedelta(hours=2)
    clock.freeze(clock.now() + timedelta(hours=2, seconds=1))
    ended = client.get("/visit/exams")
    assert ended.status_code == 410 and "This visit is no longer open" in ended.text
    assert client.get(f"/exams/{study.study_uid}").status_code == 403

    # a code with an hour left opens the visit for that hour only
    icode = session.scalar(select(ICode).where(ICode.revoked_at.is_(None)))
    icode.expires_at = clock.now() + timedelta(hours=1)
    session.commit()
    client.cookies.clear()
    enter_code(client, code, BORN)
    assert session.scalar(select(VisitSession).order_by(VisitSession.created_at.desc())).expires_at == icode.expires_at


# -- wrong answers and guessing ------------------------------------------------------------------------------

def test_a_wrong_date_of_birth_and_a_wrong_code_get_the_same_answer(session, client, exam, code_of, enter_code):
    code = code_of(exam())
    wrong_birth = enter_code(client, code, date(1985, 5, 18))
    wrong_code = enter_code(client, "ABCD-EFGH-JKMN", BORN)
    assert wrong_birth.status_code == wrong_code.status_code == 422
    assert WRONG in wrong_birth.text and WRONG in wrong_code.text
    assert visits.COOKIE not in client.cookies
    failed = audit_events(session, "icode.open_failed")
    assert [event.detail["known_code"] for event in failed] == [True, False]


def test_guessing_the_date_of_birth_of_one_code_is_slowed_down(session, client, exam, code_of, frozen_clock,
                                                               enter_code):
    code = code_of(exam())
    for day in range(1, 4):  # a few free mistakes
        assert enter_code(client, code, date(1990, 1, day)).status_code == 422
    assert enter_code(client, code, date(1990, 1, 4)).status_code == 422
    # now even the right date of birth must wait
    throttled = enter_code(client, code, BORN)
    assert throttled.status_code == 429 and "Too many attempts" in throttled.text
    # from another address, the code itself is still slowed down
    keys = service.throttle_keys(code, "198.51.100.7")
    assert service.check_code(session, typed=code, birth_date=BORN, ip="198.51.100.7").outcome == "throttled"
    assert session.get(Throttle, keys[0]).failures == 4
    clock.freeze(clock.now() + timedelta(minutes=1))
    assert enter_code(client, code, BORN).status_code == 303
    assert session.get(Throttle, keys[0]) is None  # the right answer forgets the code's failures


def test_guessing_many_codes_from_one_address_is_slowed_down(session, client, exam, code_of, frozen_clock,
                                                             enter_code):
    code = code_of(exam())
    for guess in ("AAAA-BBBB-CCCC", "DDDD-EEEE-FFFF", "GGGG-HHHH-JJJJ", "KKKK-MMMM-NNNN"):
        assert enter_code(client, guess, BORN).status_code == 422
    assert enter_code(client, code, BORN).status_code == 429  # a real code, from the guessing address
    assert service.check_code(session, typed=code, birth_date=BORN, ip="203.0.113.50").outcome == "ok"


def test_a_sweep_of_the_whole_site_stops_every_attempt_for_a_while(session, exam, code_of, frozen_clock):
    code = code_of(exam())
    for n in range(service.GLOBAL_LIMIT):  # each from its own address, each a different code
        guess = codes.new_code()
        assert service.check_code(session, typed=guess, birth_date=BORN, ip=f"10.0.{n // 250}.{n % 250}").outcome \
            == "wrong"
    session.commit()
    stopped = service.check_code(session, typed=code, birth_date=BORN, ip="192.0.2.1")
    assert stopped.outcome == "throttled" and 0 < stopped.wait <= service.GLOBAL_WINDOW.total_seconds()
    clock.freeze(clock.now() + timedelta(seconds=stopped.wait))
    assert service.check_code(session, typed=code, birth_date=BORN, ip="192.0.2.1").outcome == "ok"


# -- what an opened visit may see ------------------------------------------------------------------------------

def test_a_visit_session_sees_its_visit_and_nothing_else_of_the_patient(session, client, exam, code_of,
                                                                        frozen_clock, enter_code):
    mine = exam(description="MR T-SPINE", modality="MR")
    same_visit = exam(description="MR L-SPINE", modality="MR")
    other_visit = exam(day=date(2026, 1, 5), description="XR KNEE")
    enter_code(client, code_of(mine), BORN)
    listed = client.get("/visit/exams").text
    assert "MR T-SPINE" in listed and "MR L-SPINE" in listed and "XR KNEE" not in listed
    for study in (mine, same_visit):
        for tab in ("", "/report", "/images"):
            assert client.get(f"/exams/{study.study_uid}{tab}").status_code == 200
    for tab in ("", "/report", "/images", "/viewer"):
        assert client.get(f"/exams/{other_visit.study_uid}{tab}").status_code == 404
    images = client.get(f"/exams/{mine.study_uid}/images")
    first_image = re.search(r'href="(/exams/[^"?]+\.jpg)"', images.text).group(1)
    assert client.get(first_image).headers["content-type"] == "image/jpeg"
    thumbnail = re.search(r'src="(/dicomweb/[^"]+/thumbnail)"', images.text).group(1)
    assert client.get(thumbnail).status_code == 200
    other_series = client.get(f"/dicomweb/studies/{other_visit.study_uid}/series")
    assert other_series.status_code == 404
    icode = codes.current(session, visits.visit_of_study(session, mine.id).id)
    assert {event.actor for event in audit_events(session, "study.viewed")} == {f"visit:{icode.id}"}


def test_closing_the_visit_ends_it_in_this_browser(session, client, exam, code_of, enter_code):
    study = exam()
    enter_code(client, code_of(study), BORN)
    assert client.get(f"/exams/{study.study_uid}").status_code == 200
    closed = post_form(client, "/visit/leave", follow_redirects=False)
    assert closed.headers["location"] == "/visit?left=1" and visits.COOKIE not in client.cookies
    assert session.scalars(select(VisitSession)).all() == []
    assert client.get(f"/exams/{study.study_uid}").status_code == 403
    assert "You have closed the visit" in client.get("/visit?left=1").text


# -- new codes: the Portal Pass and the PACS -------------------------------------------------------------------

def test_the_pacs_asks_for_a_new_code_and_the_earlier_one_stops(session, client, exam, code_of, enter_code,
                                                               runtime):
    study = exam()
    earlier = code_of(study)
    token = runtime.site.config.studies.pacs_token
    answer = client.post("/api/visits/icode", json={"study_uid": study.study_uid},
                         headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    body = answer.json()
    visit = visits.visit_of_study(session, study.id)
    assert body["visit"] == visit.id and re.fullmatch(r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}", body["icode"])
    newest = codes.current(session, visit.id)
    assert newest.issued_by == "pacs" and body["expires_at"] == newest.expires_at.isoformat()
    replaced = enter_code(client, earlier, BORN)
    assert replaced.status_code == 410 and "This I-Code was replaced by a newer one" in replaced.text
    assert enter_code(client, body["icode"], BORN).headers["location"] == "/visit/exams"

    wrong_token = client.post("/api/visits/icode", json={"study_uid": study.study_uid},
                              headers={"Authorization": "Bearer not-the-pacs-token"})
    assert wrong_token.status_code == 401 and wrong_token.headers["www-authenticate"] == "Bearer"
    assert client.post("/api/visits/icode", json={"study_uid": "1.2.3.999"},
                       headers={"Authorization": f"Bearer {token}"}).status_code == 404


def test_staff_print_a_portal_pass_in_the_patients_language(session, client, exam, code_of, enter_code,
                                                            make_account):
    study = exam()
    earlier = code_of(study)
    visit = visits.visit_of_study(session, study.id)
    make_account(email="desk@example.test", role="staff", patient=False)
    sign_in_as(client, "desk@example.test", PASSWORD)
    patient_page = client.get(f"/staff/patients/{study.patient_ref}")
    assert "Print Portal Pass" in patient_page.text and "active until" in patient_page.text

    slip = post_form(client, f"/visit/staff/visits/{visit.id}/pass", {"language": "es"})
    assert slip.status_code == 200 and slip.headers["cache-control"] == "no-store"
    assert slip.headers["content-language"] == "es" and 'lang="es"' in slip.text
    code = re.search(r'id="slip-code">([^<]+)<', slip.text).group(1)
    assert "Su I-Code" in slip.text and "(512) 555-0178" in slip.text and "https://portal.example.test/visit" in slip.text
    assert codes.current(session, visit.id).issued_by.startswith("staff:")
    assert audit_events(session, "icode.pass_printed")[-1].detail["language"] == "es"

    post_form(client, "/signout")
    client.cookies.clear()
    assert enter_code(client, earlier, BORN).status_code == 410
    assert enter_code(client, code, BORN).status_code == 303


def test_a_patient_cannot_print_a_portal_pass(session, client, exam, make_account):
    study = exam()
    visit = visits.visit_of_study(session, study.id)
    make_account(email="someone@example.test")
    sign_in_as(client, "someone@example.test", PASSWORD)
    assert post_form(client, f"/visit/staff/visits/{visit.id}/pass", {"language": "en"}).status_code == 403
    assert session.scalar(select(ICode).where(ICode.visit_ref == visit.id)).issued_by == "system"


def test_the_visit_tables_link_each_study_once(session, exam):
    study = exam()
    assert session.scalars(select(VisitStudy.study_ref)).all() == [study.id]
    assert session.scalar(select(Visit)).patient_ref == study.patient_ref


def test_the_plugins_models_and_migration_agree(runtime):
    """Every change of models.py is a migration in the plugin's branch: autogenerate finds nothing."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from core import db

    with runtime.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), db.Base.metadata)
    assert [difference for difference in differences if "radnet_" in repr(difference)] == []
