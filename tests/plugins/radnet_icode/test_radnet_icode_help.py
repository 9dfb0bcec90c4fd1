"""Help with an I-Code: the expired code's Get Help button, the help form (with the chosen
centre's phone number), the ticket in the help desk's queue naming the visit, and the
help desk reactivating the code (new expiry, audited, the person told, the ticket closed)."""
from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import select
from support import audit_events, messages_to, post_form, sign_in_as

from core import clock
from core.identity.models import AccountRequest
from plugins.radnet_icode import codes, visits

BORN = date(1985, 5, 17)
PASSWORD = "a long unique passphrase"


def help_form(code: str = "", **fields) -> dict:
    return {"topic": "visit_code", "name": "Ana Rivera", "birth_day": str(BORN.day), "birth_month": str(BORN.month),
            "birth_year": str(BORN.year), "email": "ana@example.test", "mobile": "(512) 555-0100", "code": code,
            "text": "", **fields}


@pytest.fixture
def expired(session, exam, code_of, frozen_clock):
    """A visit whose code expired yesterday: (study, its clear code)."""
    study = exam()
    code = code_of(study)
    clock.freeze(clock.now() + timedelta(days=91))
    return study, code


def test_an_expired_code_offers_a_prefilled_reactivation_request(session, client, expired, enter_code):
    study, code = expired
    page = enter_code(client, code, BORN)
    assert page.status_code == 410 and "This I-Code expired on May 30, 2026" in page.text
    # Get Help: the form comes back with the code, the date of birth and the request filled in
    prefilled = post_form(client, "/visit/help", {"prefill": "1", "topic": "visit_code", "code": code,
                                                  "birth_day": "17", "birth_month": "5", "birth_year": "1985"})
    assert prefilled.status_code == 200 and f'value="{code}"' in prefilled.text
    assert "Please reactivate my I-Code." in prefilled.text and 'value="visit_code" checked' in prefilled.text
    assert session.scalars(select(AccountRequest)).all() == []

    sent = post_form(client, "/visit/help", help_form(code, text="Please reactivate my I-Code."),
                     follow_redirects=False)
    assert sent.headers["location"] == "/visit/help/sent"
    ticket = session.scalar(select(AccountRequest))
    icode = codes.current(session, visits.visit_of_study(session, study.id).id)
    assert (ticket.topic, ticket.reference, ticket.status) == ("visit_code", f"icode:{icode.id}", "open")
    assert messages_to(session, "ana@example.test")[-1].subject
    assert "Thank you: we received your request" in client.get("/visit/help/sent").text


def test_a_request_with_a_wrong_code_names_no_visit(session, client, expired):
    _study, code = expired
    post_form(client, "/visit/help", help_form(code, birth_day="18"))
    ticket = session.scalar(select(AccountRequest))
    assert ticket.topic == "visit_code" and ticket.reference == ""
    assert audit_events(session, "icode.open_failed")[-1].detail["purpose"] == "help"


def test_a_sign_in_problem_reaches_the_queue_with_its_topic(session, client):
    assert post_form(client, "/visit/help", help_form(topic="sign_in", text="I forgot which email I used."),
                     follow_redirects=False).status_code == 303
    ticket = session.scalar(select(AccountRequest))
    assert (ticket.topic, ticket.reference, ticket.details) == ("sign_in", "", "I forgot which email I used.")


def test_the_help_form_asks_for_what_the_help_desk_needs(session, client):
    refused = post_form(client, "/visit/help", help_form(name="", mobile="", email="not an address"))
    assert refused.status_code == 422 and session.scalars(select(AccountRequest)).all() == []
    assert "Enter your full name." in refused.text and "Enter a phone number" in refused.text


def test_the_help_page_shows_the_chosen_centres_phone_else_the_help_desk(client):
    assert "(800) 555-0110" in client.get("/visit/help").text
    client.cookies.set("filmless_centre", "brooklyn-heights")
    page = client.get("/visit/help?topic=sign_in")
    assert "Call Brooklyn Heights Radiology:" in page.text and "(718) 555-0193" in page.text
    assert 'value="sign_in" checked' in page.text


def test_the_help_desk_reactivates_the_code_from_the_request(session, client, expired, make_account, enter_code,
                                                             frozen_clock):
    study, code = expired
    post_form(client, "/visit/help", help_form(code, text="Please reactivate my I-Code."))
    ticket = session.scalar(select(AccountRequest))
    icode = codes.current(session, visits.visit_of_study(session, study.id).id)
    desk = make_account(email="helpdesk@example.test", role="helpdesk", patient=False)
    sign_in_as(client, "helpdesk@example.test", PASSWORD)

    page = client.get(f"/staff/requests/{ticket.id}")
    assert "The visit of this I-Code" in page.text and "Ana Rivera" in page.text
    assert "expired on" in page.text and "Reactivate this I-Code for 90 days" in page.text
    assert audit_events(session, "icode.request_visit_viewed")[-1].subject == f"patient:{study.patient_ref}"

    unconfirmed = post_form(client, f"/visit/staff/icodes/{icode.id}/reactivate", {"ticket": str(ticket.id)})
    assert unconfirmed.status_code == 422 and "Tick the box" in unconfirmed.text
    done = post_form(client, f"/visit/staff/icodes/{icode.id}/reactivate", {"ticket": str(ticket.id), "confirm": "yes"},
                     follow_redirects=False)
    assert done.headers["location"] == "/staff/requests?done=closed"

    session.refresh(icode)
    session.refresh(ticket)
    assert icode.expires_at == clock.now() + timedelta(days=90)
    assert icode.reactivated_at == clock.now() and icode.reactivated_by == f"staff:{desk.id}"
    assert (ticket.status, ticket.handled_by) == ("closed", desk.id) and "reactivated" in ticket.note
    event = audit_events(session, "icode.reactivated")[-1]
    assert event.actor == f"account:{desk.id}" and event.detail["icode"] == icode.id
    told = messages_to(session, "ana@example.test")[-1]
    assert told.subject == "Your I-Code works again" and "August 29, 2026" in told.body_text

    # a second click changes nothing
    again = post_form(client, f"/visit/staff/icodes/{icode.id}/reactivate", {"ticket": str(ticket.id), "confirm": "yes"})
    assert again.status_code == 422
    post_form(client, "/signout")
    client.cookies.clear()
    assert enter_code(client, code, BORN).headers["location"] == "/visit/exams"


def test_only_the_help_desk_reactivates(session, client, expired, make_account):
    study, _code = expired
    icode = codes.current(session, visits.visit_of_study(session, study.id).id)
    make_account(email="desk@example.test", role="staff", patient=False)
    sign_in_as(client, "desk@example.test", PASSWORD)
    page = client.get(f"/staff/patients/{study.patient_ref}").text
    assert "expired on" in page and "Print Portal Pass" in page and "Reactivate" not in page
    assert post_form(client, f"/visit/staff/icodes/{icode.id}/reactivate", {"confirm": "yes"}).status_code == 403
    assert codes.status_of(icode).state == "expired"


def test_the_help_desk_reactivates_from_the_patients_page(session, client, expired, make_account, enter_code):
    study, code = expired
    icode = codes.current(session, visits.visit_of_study(session, study.id).id)
    make_account(email="helpdesk@example.test", role="helpdesk", patient=False)
    sign_in_as(client, "helpdesk@example.test", PASSWORD)
    assert "Reactivate this I-Code for 90 days" in client.get(f"/staff/patients/{study.patient_ref}").text
    done = post_form(client, f"/visit/staff/icodes/{icode.id}/reactivate", {"confirm": "yes"}, follow_redirects=False)
    assert done.headers["location"] == f"/staff/patients/{study.patient_ref}?icode=reactivated"
    page = client.get(done.headers["location"]).text
    assert "The I-Code works again." in page and "active until" in page
    post_form(client, "/signout")
    client.cookies.clear()
    assert enter_code(client, code, BORN).headers["location"] == "/visit/exams"


def test_a_replaced_code_is_not_reactivated(session, client, expired, make_account, code_of):
    study, _code = expired
    old = codes.current(session, visits.visit_of_study(session, study.id).id)
    code_of(study)  # a new Portal Pass
    make_account(email="helpdesk@example.test", role="helpdesk", patient=False)
    sign_in_as(client, "helpdesk@example.test", PASSWORD)
    refused = post_form(client, f"/visit/staff/icodes/{old.id}/reactivate", {"confirm": "yes"})
    assert refused.status_code == 422 and "replaced by a newer one" in refused.text
    assert old.revoked_at is not None and old.reactivated_at is None
