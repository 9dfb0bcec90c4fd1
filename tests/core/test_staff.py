"""Staff and help desk: the route rules of every /staff page, finding a patient,
their portal users and invitations, unlocking a sign-in, the queue of account
requests from a request to an accepted invitation, and ``filmless create-staff``."""
import io
import re
from datetime import date, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from support import audit_events as events, invite_path, demo_site_file, messages_to, post_form, sign_in_as

from core import access, clock
from core.app import build_runtime, create_app
from core.cli import main
from core.identity import sessions
from core.identity.models import AccountRequest, Invitation, PatientLink, Throttle
from core.identity.security import record_failure, verify_password
from core.identity.service import account_by_email
from core.site import load_site
from core.studies.models import Patient, Study

PASSWORD = "a long unique passphrase"
NEW_PASSWORD = "violet kettle under the stairs"




def sign_out(client) -> None:
    post_form(client, "/signout")


@pytest.fixture
def staff_member(make_account):
    return make_account(email="staff@example.test", name="Jo Staff", role="staff", patient=False)


@pytest.fixture
def helpdesk(make_account):
    return make_account(email="desk@example.test", name="Dee Desk", role="helpdesk", patient=False)


@pytest.fixture
def casey(session) -> Patient:
    """A patient record with an exam and no portal account yet."""
    patient = Patient(issuer="T", patient_id="MRN-77", family_name="Newcomer", given_name="Casey",
                      birth_date=date(1975, 9, 30), email="casey@example.test", created_at=clock.now())
    session.add(patient)
    session.flush()
    session.add(Study(patient_ref=patient.id, study_uid="1.2.3.77", accession_number="ACC-77",
                      study_date=date(2026, 1, 5), description="MR knee", created_at=clock.now()))
    session.commit()
    return patient


def open_request(session, *, name="Casey Newcomer", email="casey.n@example.test", days_ago=0) -> AccountRequest:
    ticket = AccountRequest(name=name, email=email, birth_date=date(1975, 9, 30), mobile="+34 600 000 000",
                            details="No letter at hand", language="es",
                            created_at=clock.now() - timedelta(days=days_ago))
    session.add(ticket)
    session.commit()
    return ticket


# -- route rules ----------------------------------------------------------------------

def staff_routes(app) -> list:
    return [r for r in access.flatten(app.routes) if getattr(r, "path", "").startswith("/staff")]


def calls(app, ids: dict):
    for route in staff_routes(app):
        for method in sorted(route.methods - {"HEAD"}):
            yield method, route.path.format(**ids), route


def ask(client, method: str, url: str):
    return client.get(url) if method == "GET" else post_form(client, url, {"patient": "1", "note": "x",
                                                                          "confirm": "yes", "verified": "yes"})


def test_every_staff_route_declares_a_staff_rule(app):
    routes = staff_routes(app)
    assert len(routes) >= 9
    for route in routes:
        expected = "helpdesk.queue" if route.path.startswith("/staff/requests") else "staff.any"
        assert access.declared_rule(route) == expected, route.path


def test_patients_and_the_anonymous_get_403_on_every_staff_url(client, session, site, make_account, casey):
    pat = make_account()
    ticket = open_request(session)
    invitation_id = 1
    ids = {"patient_ref": casey.id, "invitation_id": invitation_id, "account_id": pat.id, "request_id": ticket.id}
    asked = 0
    for method, url, _route in calls(client.app, ids):
        assert ask(client, method, url).status_code == 403, ("anonymous", method, url)
        asked += 1
    assert asked >= 9
    sign_in_as(client, "pat@example.test", PASSWORD)
    for method, url, _route in calls(client.app, ids):
        assert ask(client, method, url).status_code == 403, ("patient", method, url)
    session.expire_all()
    assert session.get(AccountRequest, ticket.id).status == "open"
    assert events(session, "staff.patient_viewed") == []


def test_the_queue_is_for_the_help_desk_and_not_for_plain_staff(client, session, staff_member, helpdesk, casey):
    ticket = open_request(session)
    ids = {"patient_ref": casey.id, "invitation_id": 1, "account_id": staff_member.id, "request_id": ticket.id}
    sign_in_as(client, "staff@example.test", PASSWORD)
    assert client.get("/staff").status_code == 200
    assert client.get(f"/staff/patients/{casey.id}").status_code == 200
    assert 'href="/staff/requests"' not in client.get("/staff").text
    for method, url, route in calls(client.app, ids):
        if url.startswith("/staff/requests"):
            assert ask(client, method, url).status_code == 403, (method, url)
    session.expire_all()
    assert session.get(AccountRequest, ticket.id).status == "open"
    sign_in_as(client, "desk@example.test", PASSWORD)
    queue = client.get("/staff/requests")
    assert queue.status_code == 200 and "Casey Newcomer" in queue.text
    assert client.get("/staff").status_code == 200


# -- finding a patient ----------------------------------------------------------------

@pytest.mark.parametrize("query", ["newcomer", "Casey NEWCOMER", "mrn-77", "ACC-77", "1975-09-30"])
def test_staff_find_a_patient_by_name_id_accession_or_birth_date(client, session, staff_member, casey, query):
    other = Patient(issuer="T", patient_id="MRN-78", family_name="Else", given_name="Casey",
                    birth_date=date(1990, 1, 1), created_at=clock.now())
    session.add(other)
    session.commit()
    sign_in_as(client, "staff@example.test", PASSWORD)
    page = client.get("/staff", params={"q": query})
    assert page.status_code == 200
    assert f'href="/staff/patients/{casey.id}"' in page.text
    assert f'href="/staff/patients/{other.id}"' not in page.text
    [searched] = events(session, "staff.patients_searched")
    assert searched.actor == f"account:{staff_member.id}" and searched.detail == {"results": [casey.id]}


def test_a_search_without_a_match_says_so(client, staff_member, casey):
    sign_in_as(client, "staff@example.test", PASSWORD)
    assert "No patient record matches." in client.get("/staff", params={"q": "1999-12-31"}).text
    assert "No patient record matches." in client.get("/staff", params={"q": "%"}).text


def test_the_patient_page_shows_portal_users_and_invitations_and_is_audited(
        client, session, site, staff_member, casey, make_account):
    from core.identity import invitations

    guardian = make_account(email="gus@example.test", name="Gus Guardian", patient=False)
    session.add(PatientLink(account_id=guardian.id, patient_ref=casey.id, relationship="guardian",
                            permissions=["view_images", "payments"], created_at=clock.now()))
    invitations.invite(session, site=site, inviter=None, email="casey@example.test", name="Casey Newcomer",
                       patient=casey, relationship="self", permissions=["view_reports"], language="en")
    session.commit()
    sign_in_as(client, "staff@example.test", PASSWORD)
    page = client.get(f"/staff/patients/{casey.id}")
    assert page.status_code == 200
    assert "MRN-77" in page.text and "1975-09-30" in page.text and "ACC-77" in page.text
    assert "Gus Guardian" in page.text and "gus@example.test" in page.text and "Parent or guardian" in page.text
    assert "See images, Pay bills" in page.text
    assert "Invitations not accepted yet" in page.text and "casey@example.test" in page.text
    assert f'action="/staff/patients/{casey.id}/unlock/{guardian.id}"' in page.text
    [viewed] = events(session, "staff.patient_viewed")
    assert viewed.actor == f"account:{staff_member.id}" and viewed.subject == f"patient:{casey.id}"
    assert client.get("/staff/patients/999999").status_code == 404


def test_staff_invite_for_a_patient_and_resend_the_invitation(client, session, staff_member, frozen_clock, casey):
    sign_in_as(client, "staff@example.test", PASSWORD)
    form = client.get(f"/staff/patients/{casey.id}").text
    assert 'value="casey@example.test"' in form  # the record's own address is offered
    answer = post_form(client, f"/staff/patients/{casey.id}/invite", {
        "name": "Casey Newcomer", "email": "casey@example.test", "relationship": "self",
        "permissions": ["view_images", "view_reports"], "language": "es"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == f"/staff/patients/{casey.id}?done=invited"
    invitation = session.scalar(select(Invitation).where(Invitation.email == "casey@example.test"))
    assert invitation.invited_by == staff_member.id and invitation.relationship == "self"
    first = messages_to(session, "casey@example.test")[-1]
    assert first.language == "es" and "Jo Staff" not in first.body_text
    assert events(session, "invitation.sent")[-1].actor == f"account:{staff_member.id}"
    old_path = invite_path(session, "casey@example.test")
    frozen_clock.advance(timedelta(days=2))
    sign_in_as(client, "staff@example.test", PASSWORD)  # the earlier session has timed out
    answer = post_form(client, f"/staff/patients/{casey.id}/invitations/{invitation.id}/resend",
                       follow_redirects=False)
    assert answer.status_code == 303
    assert len(messages_to(session, "casey@example.test")) == 2
    session.expire_all()
    assert session.get(Invitation, invitation.id).expires_at == clock.now() + timedelta(hours=24)
    assert invite_path(session, "casey@example.test") != old_path
    assert events(session, "invitation.renewed")[-1].actor == f"account:{staff_member.id}"


def test_staff_invite_form_errors(client, session, staff_member, casey):
    sign_in_as(client, "staff@example.test", PASSWORD)
    answer = post_form(client, f"/staff/patients/{casey.id}/invite", {
        "name": "Casey", "email": "casey@", "relationship": "self", "permissions": ["view_images"]})
    assert answer.status_code == 422 and 'role="alert" id="invite-error"' in answer.text
    assert session.scalar(select(func.count(Invitation.id))) == 0


def test_unlock_sign_in_clears_the_accounts_failed_attempts(client, session, staff_member, make_account):
    pat = make_account()
    for _ in range(8):  # a guesser from many addresses: only the account's own key fills up
        record_failure(session, ["account:pat@example.test"])
    session.commit()
    patient_ref = session.scalar(select(PatientLink.patient_ref).where(PatientLink.account_id == pat.id))
    refused = post_form(client, "/signin", {"email": "pat@example.test", "password": PASSWORD},
                        follow_redirects=False)
    assert refused.status_code == 200 and "Too many attempts" in refused.text
    sign_in_as(client, "staff@example.test", PASSWORD)
    answer = post_form(client, f"/staff/patients/{patient_ref}/unlock/{pat.id}", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].endswith("?done=unlocked")
    session.expire_all()
    assert session.get(Throttle, "account:pat@example.test") is None
    [unlocked] = events(session, "staff.sign_in_unlocked")
    assert unlocked.actor == f"account:{staff_member.id}" and unlocked.subject == f"account:{pat.id}"
    sign_out(client)
    sign_in_as(client, "pat@example.test", PASSWORD)


def test_unlock_is_only_for_accounts_linked_to_the_patient(client, session, staff_member, make_account, casey):
    pat = make_account()
    sign_in_as(client, "staff@example.test", PASSWORD)
    assert post_form(client, f"/staff/patients/{casey.id}/unlock/{pat.id}").status_code == 404
    assert events(session, "staff.sign_in_unlocked") == []


# -- the help desk --------------------------------------------------------------------

def test_the_queue_lists_open_requests_oldest_first_with_their_age(client, session, helpdesk, frozen_clock):
    open_request(session, name="Newer Person", email="newer@example.test", days_ago=1)
    open_request(session, name="Older Person", email="older@example.test", days_ago=3)
    closed = open_request(session, name="Closed Person", email="closed@example.test", days_ago=5)
    closed.status = "closed"
    session.commit()
    sign_in_as(client, "desk@example.test", PASSWORD)
    page = client.get("/staff/requests").text
    assert page.index("Older Person") < page.index("Newer Person") and "Closed Person" not in page
    assert "waiting 3 days" in page and "waiting 1 day" in page


def test_from_a_request_to_an_accepted_invitation(client, session, site, helpdesk, frozen_clock, casey):
    ticket = open_request(session, days_ago=2)
    sign_in_as(client, "desk@example.test", PASSWORD)
    page = client.get(f"/staff/requests/{ticket.id}")
    assert "casey.n@example.test" in page.text and "No letter at hand" in page.text
    page = client.get(f"/staff/requests/{ticket.id}", params={"patient_id": "MRN-77"})
    assert f'name="patient" value="{casey.id}"' in page.text and "1975-09-30" in page.text
    assert events(session, "staff.patients_searched")[-1].detail == {"results": [casey.id]}
    unverified = post_form(client, f"/staff/requests/{ticket.id}/invite", {"patient": casey.id,
                                                                          "patient_id": "MRN-77"})
    assert unverified.status_code == 422 and "verified this person by phone" in unverified.text
    assert messages_to(session, "casey.n@example.test") == []
    answer = post_form(client, f"/staff/requests/{ticket.id}/invite",
                       {"patient": casey.id, "verified": "yes"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/staff/requests?done=invited"
    session.expire_all()
    ticket = session.get(AccountRequest, ticket.id)
    assert (ticket.status, ticket.handled_by, ticket.handled_at) == ("invited", helpdesk.id, clock.now())
    [handled] = events(session, "helpdesk.request_invited")
    assert handled.actor == f"account:{helpdesk.id}" and handled.detail["patient"] == casey.id
    again = post_form(client, f"/staff/requests/{ticket.id}/invite", {"patient": casey.id, "verified": "yes"},
                      follow_redirects=False)
    assert again.headers["location"] == "/staff/requests?done=handled"
    assert len(messages_to(session, "casey.n@example.test")) == 1  # a second click sends nothing
    assert messages_to(session, "casey.n@example.test")[0].language == "es"
    assert "Casey Newcomer" not in client.get("/staff/requests").text
    sign_out(client)
    path = invite_path(session, "casey.n@example.test")
    created = post_form(client, path, {"name": "Casey Newcomer", "password": NEW_PASSWORD,
                                       "confirm": NEW_PASSWORD}, follow_redirects=False)
    assert created.status_code == 303
    session.expire_all()
    casey_account = account_by_email(session, "casey.n@example.test")
    link = session.scalar(select(PatientLink).where(PatientLink.account_id == casey_account.id))
    assert (link.patient_ref, link.relationship) == (casey.id, "self")
    principal = sessions.principal_for(session, sessions.find(session, token=client.cookies[sessions.COOKIE],
                                                                site=site))
    assert principal.scope == frozenset({str(casey.id)})


def test_a_patient_id_shared_by_two_issuers_offers_both_records(client, session, helpdesk, casey):
    twin = Patient(issuer="OTHER", patient_id="MRN-77", family_name="Twin", given_name="Terry",
                   created_at=clock.now())
    session.add(twin)
    ticket = open_request(session)
    sign_in_as(client, "desk@example.test", PASSWORD)
    page = client.get(f"/staff/requests/{ticket.id}", params={"patient_id": "MRN-77"}).text
    assert f'name="patient" value="{casey.id}"' in page and f'name="patient" value="{twin.id}"' in page
    assert "No patient record has this patient ID." in client.get(
        f"/staff/requests/{ticket.id}", params={"patient_id": "NOPE"}).text


def test_a_request_is_closed_with_a_note_after_confirming(client, session, helpdesk):
    ticket = open_request(session)
    sign_in_as(client, "desk@example.test", PASSWORD)
    unconfirmed = post_form(client, f"/staff/requests/{ticket.id}/close", {"note": "Not our patient"})
    assert unconfirmed.status_code == 422 and 'role="alert"' in unconfirmed.text
    no_note = post_form(client, f"/staff/requests/{ticket.id}/close", {"note": " ", "confirm": "yes"})
    assert no_note.status_code == 422
    session.expire_all()
    assert session.get(AccountRequest, ticket.id).status == "open"
    answer = post_form(client, f"/staff/requests/{ticket.id}/close", {"note": "Not our patient", "confirm": "yes"},
                       follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/staff/requests?done=closed"
    session.expire_all()
    ticket = session.get(AccountRequest, ticket.id)
    assert (ticket.status, ticket.note, ticket.handled_by) == ("closed", "Not our patient", helpdesk.id)
    assert events(session, "helpdesk.request_closed")[-1].actor == f"account:{helpdesk.id}"
    assert messages_to(session, "casey.n@example.test") == []
    assert "already been handled" in client.get(f"/staff/requests/{ticket.id}").text


def test_help_topics_are_queued_with_their_label_and_closed_with_a_note(client, session, site, helpdesk, casey):
    from core.identity import registration

    account = open_request(session, name="Account Asker", email="asker@example.test", days_ago=1)
    details = registration.Details("Visit Asker", date(1975, 9, 30), "visit.asker@example.test", None,
                                   "My code does not work")
    assert registration.request_account(session, site=site, details=details, language="en", ip="192.0.2.9",
                                        topic="visit_code", reference="icode:12") == 0
    session.commit()
    ticket = session.scalars(select(AccountRequest).where(AccountRequest.email == "visit.asker@example.test")).one()
    assert (ticket.topic, ticket.reference, account.topic, account.reference) == (
        "visit_code", "icode:12", "account", "")
    [received] = messages_to(session, "visit.asker@example.test")  # not the "request for an account" email
    assert "request for help" in received.subject and "request for an account" not in received.body_text
    assert events(session, "account_request.created")[-1].detail == {"topic": "visit_code"}
    sign_in_as(client, "desk@example.test", PASSWORD)
    queue = client.get("/staff/requests").text
    assert re.search(r"Account Asker</a> · <span class=\"topic\">Account request</span>", queue)
    assert re.search(r"Visit Asker</a> · <span class=\"topic\">Visit code</span>", queue)
    client.get("/language/es")
    assert '<span class="topic">Código de visita</span>' in client.get("/staff/requests").text
    client.get("/language/en")
    page = client.get(f"/staff/requests/{ticket.id}", params={"patient_id": "MRN-77"}).text
    assert '<dd id="ticket-topic">Visit code</dd>' in page and "icode:12" in page
    assert '<p id="fixture-staff-request">visit_code</p>' in page  # the staff_request slot
    assert "/invite" not in page and "Find the record" not in page  # only accounts are answered by invitation
    refused = post_form(client, f"/staff/requests/{ticket.id}/invite", {"patient": casey.id, "verified": "yes"})
    assert refused.status_code == 422 and "Only a request for an account" in refused.text
    assert "Find the record" in client.get(f"/staff/requests/{account.id}").text
    closed = post_form(client, f"/staff/requests/{ticket.id}/close", {"note": "New code sent", "confirm": "yes"},
                       follow_redirects=False)
    assert closed.headers["location"] == "/staff/requests?done=closed"
    session.expire_all()
    assert session.get(AccountRequest, ticket.id).status == "closed"


def test_the_staff_patient_page_has_a_slot_for_plugins(client, staff_member, casey):
    sign_in_as(client, "staff@example.test", PASSWORD)
    assert '<p id="fixture-staff-patient">MRN-77</p>' in client.get(f"/staff/patients/{casey.id}").text


# -- filmless create-staff ---------------------------------------------------------------

def test_create_staff_makes_an_account_that_signs_in_on_the_same_page(tmp_path, monkeypatch, capsys):
    site_file = str(demo_site_file(tmp_path))
    assert main(["--site", site_file, "migrate"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(NEW_PASSWORD + "\n"))
    assert main(["--site", site_file, "create-staff", "X@Y.test", "--name", "X", "--role", "helpdesk",
                 "--password-stdin"]) == 0
    assert "helpdesk account x@y.test created" in capsys.readouterr().out
    runtime = build_runtime(load_site(site_file))
    try:
        with runtime.sessions() as session:
            account = account_by_email(session, "x@y.test")
            assert (account.role, account.name) == ("helpdesk", "X")
            assert account.email_verified_at is not None and verify_password(account.password_hash, NEW_PASSWORD)
            assert events(session, "account.created")[-1].detail == {"how": "staff", "role": "helpdesk"}
        with TestClient(create_app(runtime.site, runtime), base_url="https://testserver") as client:
            sign_in_as(client, "x@y.test", NEW_PASSWORD)
            assert client.get("/staff/requests").status_code == 200
    finally:
        runtime.close()
    monkeypatch.setattr("sys.stdin", io.StringIO(NEW_PASSWORD + "\n"))
    assert main(["--site", site_file, "create-staff", "x@y.test", "--name", "X", "--password-stdin"]) == 2
    assert "exists" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("password\n"))
    assert main(["--site", site_file, "create-staff", "z@y.test", "--name", "Z", "--password-stdin"]) == 2
    assert "too common" in capsys.readouterr().err
