"""Invitations (hashed single-use links that expire, renewal, acceptance with a new
or an existing account) and the people page (who has access, inviting a proxy,
removing access, and who may do so)."""
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from support import audit_events as events, invite_path, messages_to, post_form, sign_in_as

from core import access, clock
from core.identity import invitations, sessions
from core.identity.models import Account, Invitation, PatientLink
from core.identity.security import digest
from core.identity.service import AccountError, account_by_email
from core.notify import Message
from core.studies.models import Patient

PASSWORD = "a long unique passphrase"
NEW_PASSWORD = "violet kettle under the stairs"




def patient_of(session, account) -> Patient:
    link = session.scalar(select(PatientLink).where(PatientLink.account_id == account.id))
    return session.get(Patient, link.patient_ref)


def principal_of(client, session, site):
    session.expire_all()
    return sessions.principal_for(session, sessions.find(session, token=client.cookies.get(sessions.COOKIE), site=site))


@pytest.fixture
def pat(make_account):
    """A patient with an account (pat@example.test), linked to their own record."""
    return make_account()


@pytest.fixture
def record(session, pat) -> Patient:
    return patient_of(session, pat)


def send(session, site, inviter, record, email="sam@example.test", relationship="family",
         permissions=("view_images",), language="en", name="Sam Proxy") -> Invitation:
    invitation = invitations.invite(session, site=site, inviter=inviter, email=email, name=name, patient=record,
                                    relationship=relationship, permissions=list(permissions), language=language)
    session.commit()
    return invitation


def accept_form(client, path, name="Sam Proxy", password=NEW_PASSWORD, confirm=None):
    return post_form(client, path, {"name": name, "password": password,
                                    "confirm": password if confirm is None else confirm}, follow_redirects=False)


# -- sending ----------------------------------------------------------------------

def test_an_invitation_stores_only_a_hash_and_emails_a_link_in_its_language(session, site, frozen_clock, pat,
                                                                             record):
    invitation = send(session, site, pat, record, language="es", permissions=["view_images", "share"])
    message = messages_to(session, "sam@example.test")[-1]
    token = invite_path(session, "sam@example.test").rsplit("/", 1)[1]
    assert len(token) >= 43  # 256 random bits
    assert invitation.token_hash == digest(token)
    stored = session.execute(select(Invitation.__table__).where(Invitation.id == invitation.id)).one()
    assert not any(token in str(value) for value in stored)
    assert invitation.expires_at == clock.now() + timedelta(hours=24)
    assert message.language == "es" and f"{site.config.site.base_url}/invite/{token}" in message.body_text
    assert "Pat Example" in message.body_text and invitation.permissions == ["view_images", "share"]
    [sent] = events(session, "invitation.sent")
    assert sent.actor == f"account:{pat.id}" and sent.subject == f"invitation:{invitation.id}"


def test_the_link_is_valid_for_the_hours_the_site_sets(tmp_path, database_url, frozen_clock):
    from support import make_site

    from core.app import build_runtime

    runtime = build_runtime(make_site(tmp_path, database=database_url, identity={"invitation_valid_hours": 2}))
    connection = runtime.engine.connect()
    outer = connection.begin()
    try:
        from sqlalchemy.orm import Session

        with Session(bind=connection, join_transaction_mode="create_savepoint",
                     info={"plugins": runtime.pm, "runtime": runtime}) as session:
            record = Patient(issuer="T", patient_id="P-hours", family_name="Hours", created_at=clock.now())
            session.add(record)
            session.flush()
            invitation = invitations.invite(session, site=runtime.site, inviter=None, email="h@example.test", name="H",
                                            patient=record, relationship="self", permissions=["view_images"],
                                            language="en")
            assert invitation.expires_at == clock.now() + timedelta(hours=2)
            assert "2 hours" in messages_to(session, "h@example.test")[-1].body_text
    finally:
        outer.rollback()
        connection.close()
        runtime.close()


def test_inviting_the_same_email_for_the_same_patient_again_replaces_the_earlier_invitation(
        client, session, site, pat, record):
    send(session, site, pat, record)
    first = invite_path(session, "sam@example.test")
    send(session, site, pat, record, relationship="carer")
    second = invite_path(session, "sam@example.test")
    assert first != second
    open_ones = session.scalars(select(Invitation).where(Invitation.email == "sam@example.test",
                                                         Invitation.accepted_at.is_(None))).all()
    assert [i.relationship for i in open_ones] == ["carer"]
    assert "This invitation has expired" in client.get(first).text
    assert "Create my account" in client.get(second).text
    assert [e.detail["replaced"] for e in events(session, "invitation.sent")] == [False, True]


@pytest.mark.parametrize("change, problem", [
    ({"email": "not-an-email"}, "valid email"),
    ({"permissions": []}, "at least one"),
    ({"relationship": "cousin"}, "related"),
])
def test_an_invitation_needs_an_email_a_relationship_and_a_permission(session, site, pat, record, change, problem):
    values = {"email": "sam@example.test", "relationship": "family", "permissions": ["view_images"], **change}
    with pytest.raises(AccountError, match=problem):
        invitations.invite(session, site=site, inviter=pat, name="Sam", patient=record, language="en", **values)


def test_nobody_is_invited_to_a_patient_they_already_have(session, site, pat, record):
    with pytest.raises(AccountError, match="already has access"):
        invitations.invite(session, site=site, inviter=None, email="PAT@example.test", name="Pat", patient=record,
                           relationship="self", permissions=["view_images"], language="en")


# -- accepting with a new account ---------------------------------------------------------

def test_accepting_creates_a_verified_account_with_the_chosen_access_and_signs_in(
        client, session, site, frozen_clock, pat, record):
    send(session, site, pat, record, relationship="carer", permissions=["view_images", "view_reports"])
    path = invite_path(session, "sam@example.test")
    page = client.get(path)
    assert page.status_code == 200 and 'value="Sam Proxy"' in page.text
    assert 'autocomplete="new-password"' in page.text and "See images" in page.text
    answer = accept_form(client, path)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    session.expire_all()
    sam = account_by_email(session, "sam@example.test")
    assert sam.email_verified_at == clock.now() and sam.password_hash
    link = session.scalar(select(PatientLink).where(PatientLink.account_id == sam.id))
    assert (link.patient_ref, link.relationship, link.permissions) == (record.id, "carer", ["view_images", "view_reports"])
    invitation = session.scalar(select(Invitation).where(Invitation.email == "sam@example.test"))
    assert invitation.accepted_at == clock.now() and invitation.account_id == sam.id
    principal = principal_of(client, session, site)
    assert principal.kind == "account" and principal.id == str(sam.id) and str(record.id) in principal.scope
    assert "You are signed in." in client.get("/").text
    assert events(session, "account.created")[-1].detail == {"how": "invitation", "role": "user"}
    assert events(session, "invitation.accepted")[-1].actor == f"account:{sam.id}"
    assert events(session, "signin.succeeded")[-1].subject == f"account:{sam.id}"


@pytest.mark.parametrize("password, confirm, problem", [
    (NEW_PASSWORD, NEW_PASSWORD + "x", "not the same"),
    ("password123", "password123", "too common"),
    ("short", "short", "at least 8"),
])
def test_a_refused_password_creates_nothing(client, session, site, pat, record, password, confirm, problem):
    send(session, site, pat, record)
    path = invite_path(session, "sam@example.test")
    answer = accept_form(client, path, password=password, confirm=confirm)
    assert answer.status_code == 422 and 'role="alert"' in answer.text and problem in answer.text
    assert 'aria-describedby="password-hint invitation-error"' in answer.text
    session.expire_all()
    assert account_by_email(session, "sam@example.test") is None
    assert session.scalar(select(Invitation.accepted_at).where(Invitation.email == "sam@example.test")) is None


def test_a_double_submitted_acceptance_creates_one_account(client, session, site, pat, record):
    send(session, site, pat, record)
    path = invite_path(session, "sam@example.test")
    assert accept_form(client, path).status_code == 303
    again = accept_form(client, path)
    assert again.status_code == 200 and "This invitation was already used" in again.text
    assert session.scalar(select(func.count(Account.id)).where(Account.email == "sam@example.test")) == 1


def test_a_used_invitation_says_to_sign_in_and_cannot_be_renewed(client, session, site, pat, record):
    send(session, site, pat, record)
    path = invite_path(session, "sam@example.test")
    accept_form(client, path)
    client.cookies.clear()
    page = client.get(path)
    assert "This invitation was already used" in page.text and 'href="/signin"' in page.text
    post_form(client, f"{path}/renew")
    assert len(messages_to(session, "sam@example.test")) == 1


# -- expiry and renewal ----------------------------------------------------------------

def test_an_expired_invitation_says_so_and_sends_a_new_one_to_the_invited_address(
        client, session, site, frozen_clock, pat, record):
    send(session, site, pat, record)
    path = invite_path(session, "sam@example.test")
    frozen_clock.advance(timedelta(hours=23, minutes=59))
    assert "Create my account" in client.get(path).text
    post_form(client, f"{path}/renew")  # a link that still works is not replaced
    assert len(messages_to(session, "sam@example.test")) == 1 and "Create my account" in client.get(path).text
    frozen_clock.advance(timedelta(minutes=1))
    page = client.get(path)
    assert "This invitation has expired" in page.text and "Send me a new invitation" in page.text
    assert f'action="{path}/renew"' in page.text
    assert "This invitation has expired" in accept_form(client, path).text
    assert account_by_email(session, "sam@example.test") is None
    answer = post_form(client, f"{path}/renew", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/invite/renewed"
    assert "If this invitation can be renewed, we have sent a new one" in client.get("/invite/renewed").text
    sent = session.scalars(select(Message)).all()
    assert [m.recipient for m in sent] == ["sam@example.test", "sam@example.test"]
    new_path = invite_path(session, "sam@example.test")
    assert new_path != path and "This invitation has expired" in client.get(path).text
    assert accept_form(client, new_path).status_code == 303
    assert events(session, "invitation.renewed")[-1].actor.startswith("ip:")


def test_an_unknown_link_looks_exactly_like_an_expired_one(client, session, site, frozen_clock, pat, record):
    send(session, site, pat, record)
    path = invite_path(session, "sam@example.test")
    frozen_clock.advance(timedelta(days=2))
    unknown = "/invite/" + "x" * 43
    expired_page, unknown_page = client.get(path), client.get(unknown)
    assert expired_page.status_code == unknown_page.status_code == 200
    assert expired_page.text.replace(path, "") == unknown_page.text.replace(unknown, "")
    renew_unknown = post_form(client, f"{unknown}/renew", follow_redirects=False)
    renew_expired = post_form(client, f"{path}/renew", follow_redirects=False)
    assert renew_unknown.headers["location"] == renew_expired.headers["location"] == "/invite/renewed"
    assert len(session.scalars(select(Message)).all()) == 2  # the first and the one renewal


def test_renew_for_email_renews_only_unused_invitations_of_addresses_without_an_account(
        session, site, frozen_clock, pat, record, make_account):
    send(session, site, pat, record)
    frozen_clock.advance(timedelta(days=3))
    assert invitations.renew_for_email(session, email=" Sam@Example.test ") is True  # site from the session
    invitation = session.scalar(select(Invitation).where(Invitation.email == "sam@example.test"))
    assert invitation.expires_at == clock.now() + timedelta(hours=24)
    assert len(messages_to(session, "sam@example.test")) == 2
    assert invitations.renew_for_email(session, site=site, email="nobody@example.test") is False
    send(session, site, pat, record, email="kim@example.test")
    make_account(email="kim@example.test", name="Kim Has Account", patient=False)
    assert invitations.renew_for_email(session, site=site, email="kim@example.test") is False
    assert len(messages_to(session, "kim@example.test")) == 1
    invitation.accepted_at = clock.now()
    session.flush()
    assert invitations.renew_for_email(session, site=site, email="sam@example.test") is False


# -- accepting with an existing account ------------------------------------------------------

def test_an_existing_account_signs_in_first_then_accepting_adds_the_link(
        client, session, site, pat, record, make_account):
    sam = make_account(email="sam@example.test", name="Sam Other", patient=False)
    send(session, site, pat, record, relationship="guardian", permissions=["view_reports"])
    path = invite_path(session, "sam@example.test")
    page = client.get(path)
    assert "Sign in first" in page.text and 'name="password"' not in page.text
    assert "Sign in first" in accept_form(client, path).text  # no second account, nothing accepted
    assert post_form(client, f"{path}/accept").status_code == 403
    sign_in_as(client, "sam@example.test", PASSWORD)
    page = client.get(path)
    assert f'action="{path}/accept"' in page.text
    answer = post_form(client, f"{path}/accept", follow_redirects=False)
    assert answer.status_code == 303
    session.expire_all()
    links = session.scalars(select(PatientLink).where(PatientLink.account_id == sam.id)).all()
    assert [(link.patient_ref, link.relationship, link.permissions) for link in links] == \
        [(record.id, "guardian", ["view_reports"])]
    assert str(record.id) in principal_of(client, session, site).scope
    again = post_form(client, f"{path}/accept")
    assert "This invitation was already used" in again.text
    assert session.scalar(select(func.count(PatientLink.id)).where(PatientLink.account_id == sam.id)) == 1


def test_another_signed_in_account_cannot_accept(client, session, site, pat, record, make_account):
    make_account(email="carl@example.test", name="Carl Else", patient=False)
    send(session, site, pat, record)
    path = invite_path(session, "sam@example.test")
    sign_in_as(client, "carl@example.test", PASSWORD)
    assert "another account" in client.get(path).text
    assert "another account" in post_form(client, f"{path}/accept").text
    assert "another account" in accept_form(client, path).text
    session.expire_all()
    carl = account_by_email(session, "carl@example.test")
    assert session.scalar(select(PatientLink).where(PatientLink.account_id == carl.id)) is None
    assert account_by_email(session, "sam@example.test") is None
    assert session.scalar(select(Invitation.accepted_at).where(Invitation.email == "sam@example.test")) is None


def test_an_invitation_is_claimed_once(session, site, pat, record, make_account):
    sam = make_account(email="sam@example.test", name="Sam Other", patient=False)
    invitation = send(session, site, pat, record)
    invitations.accept_for_account(session, invitation=invitation, account=sam)
    with pytest.raises(invitations.NotAcceptable) as refused:
        invitations.accept_for_account(session, invitation=invitation, account=sam)
    assert refused.value.reason == "used"


# -- the people page ---------------------------------------------------------------------

def test_people_pages_need_a_signed_in_account(client):
    routes = [r for r in access.flatten(client.app.routes) if getattr(r, "path", "").startswith("/account/people")]
    assert len(routes) >= 4
    for route in routes:
        url = route.path.format(patient_ref=1, invitation_id=1, link_id=1)
        for method in route.methods:
            answer = client.get(url) if method == "GET" else post_form(client, url, {"patient": "1"})
            assert answer.status_code == 403, (method, url)


def test_a_patient_invites_a_proxy_who_then_sees_the_patient(client, session, site, frozen_clock, pat, record):
    sign_in_as(client, "pat@example.test", PASSWORD)
    page = client.get("/account/people")
    assert page.status_code == 200 and "Nobody else has access." in page.text
    assert 'value="self"' not in page.text  # a patient invites proxies, not another "self"
    answer = post_form(client, "/account/people/invite", {
        "patient": record.id, "name": "Sam Proxy", "email": "sam@example.test", "relationship": "carer",
        "permissions": ["view_images", "download"], "language": "es"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/account/people?done=invited"
    page = client.get("/account/people?done=invited")
    assert "The invitation is on its way" in page.text and "sam@example.test" in page.text
    assert "The link works until" in page.text
    assert messages_to(session, "sam@example.test")[-1].language == "es"
    client.post("/signout", data={"csrf_token": client.cookies["__Host-filmless_csrf"]})
    assert accept_form(client, invite_path(session, "sam@example.test")).status_code == 303
    assert str(record.id) in principal_of(client, session, site).scope
    client.post("/signout", data={"csrf_token": client.cookies["__Host-filmless_csrf"]})
    sign_in_as(client, "pat@example.test", PASSWORD)
    page = client.get("/account/people")
    assert "Sam Proxy" in page.text and "Carer" in page.text and "See images, Download images" in page.text
    assert "Invitations not accepted yet" not in page.text


@pytest.mark.parametrize("change, problem", [
    ({"email": "sam@"}, "valid email"),
    ({"permissions": []}, "at least one"),
    ({"relationship": "self"}, "related"),
    ({"name": " "}, "name"),
])
def test_the_invite_form_refuses_what_is_missing(client, session, pat, record, change, problem):
    sign_in_as(client, "pat@example.test", PASSWORD)
    data = {"patient": record.id, "name": "Sam", "email": "sam@example.test", "relationship": "family",
            "permissions": ["view_images"], "language": "en", **change}
    answer = post_form(client, "/account/people/invite", data)
    assert answer.status_code == 422 and 'role="alert" id="invite-error"' in answer.text and problem in answer.text
    assert 'aria-describedby="invite-error"' in answer.text
    assert session.scalar(select(func.count(Invitation.id))) == 0


def test_a_guardian_may_invite_but_a_carer_may_not_invite_or_remove(client, session, site, pat, record,
                                                                    make_account):
    carer = make_account(email="carer@example.test", name="Cary Carer", patient=False)
    guardian = make_account(email="guardian@example.test", name="Gus Guardian", patient=False)
    for account, relationship in ((carer, "carer"), (guardian, "guardian")):
        session.add(PatientLink(account_id=account.id, patient_ref=record.id, relationship=relationship,
                                created_at=clock.now()))
    session.commit()
    carer_link = session.scalar(select(PatientLink).where(PatientLink.account_id == carer.id))
    pending = send(session, site, pat, record)
    data = {"patient": record.id, "name": "Kim", "email": "kim@example.test", "relationship": "family",
            "permissions": ["view_images"], "language": "en"}

    sign_in_as(client, "carer@example.test", PASSWORD)
    page = client.get("/account/people")
    assert page.status_code == 200 and 'action="/account/people/invite"' not in page.text
    assert post_form(client, "/account/people/invite", data).status_code == 403
    assert client.get(f"/account/people/{record.id}/remove/{carer_link.id}").status_code == 403
    assert post_form(client, f"/account/people/{record.id}/remove/{carer_link.id}").status_code == 403
    assert post_form(client, f"/account/people/{record.id}/invitations/{pending.id}/resend").status_code == 403
    assert messages_to(session, "kim@example.test") == [] and len(messages_to(session, "sam@example.test")) == 1

    sign_in_as(client, "guardian@example.test", PASSWORD)
    page = client.get("/account/people")
    assert "Cary Carer" in page.text and "Pat Example" in page.text
    assert post_form(client, "/account/people/invite", data, follow_redirects=False).status_code == 303
    assert len(messages_to(session, "kim@example.test")) == 1


def test_removing_access_asks_first_then_deletes_the_link(client, session, site, pat, record, make_account):
    sam = make_account(email="sam@example.test", name="Sam Proxy", patient=False)
    session.add(PatientLink(account_id=sam.id, patient_ref=record.id, relationship="family", created_at=clock.now()))
    session.commit()
    link_id = session.scalar(select(PatientLink.id).where(PatientLink.account_id == sam.id))
    url = f"/account/people/{record.id}/remove/{link_id}"
    sign_in_as(client, "pat@example.test", PASSWORD)
    assert f'href="{url}"' in client.get("/account/people").text
    confirm = client.get(url)
    assert confirm.status_code == 200 and "Yes, remove access" in confirm.text and f'action="{url}"' in confirm.text
    assert session.scalar(select(PatientLink.id).where(PatientLink.id == link_id))  # asking changed nothing
    answer = post_form(client, url, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/account/people?done=removed"
    assert session.scalar(select(PatientLink.id).where(PatientLink.id == link_id)) is None
    [revoked] = events(session, "access.revoked")
    assert revoked.actor == f"account:{pat.id}" and revoked.detail["account"] == sam.id
    assert post_form(client, url, follow_redirects=False).status_code == 303  # a second click does no harm
    assert len(events(session, "access.revoked")) == 1
    assert client.get(url).status_code == 404


def test_nobody_removes_the_patients_own_access_or_a_patient_they_do_not_manage(
        client, session, pat, record, make_account):
    other = make_account(email="olga@example.test", name="Olga Other")
    guardian = make_account(email="guardian@example.test", name="Gus Guardian", patient=False)
    session.add(PatientLink(account_id=guardian.id, patient_ref=record.id, relationship="guardian",
                            created_at=clock.now()))
    session.commit()
    own_link = session.scalar(select(PatientLink).where(PatientLink.account_id == pat.id))
    other_link = session.scalar(select(PatientLink).where(PatientLink.account_id == other.id))
    sign_in_as(client, "guardian@example.test", PASSWORD)
    assert f"/remove/{own_link.id}" not in client.get("/account/people").text
    assert client.get(f"/account/people/{record.id}/remove/{own_link.id}").status_code == 404
    assert post_form(client, f"/account/people/{record.id}/remove/{own_link.id}").status_code == 403
    assert post_form(client, f"/account/people/{other_link.patient_ref}/remove/{other_link.id}").status_code == 403
    assert post_form(client, f"/account/people/{record.id}/remove/{other_link.id}").status_code == 403
    remaining = session.scalars(select(PatientLink.id)).all()
    assert own_link.id in remaining and other_link.id in remaining
    assert events(session, "access.revoked") == []


def test_a_pending_invitation_can_be_sent_again_from_the_people_page(client, session, site, frozen_clock, pat,
                                                                     record):
    invitation = send(session, site, pat, record)
    frozen_clock.advance(timedelta(days=2))
    sign_in_as(client, "pat@example.test", PASSWORD)
    assert "The link has expired." in client.get("/account/people").text
    answer = post_form(client, f"/account/people/{record.id}/invitations/{invitation.id}/resend",
                       follow_redirects=False)
    assert answer.status_code == 303
    assert len(messages_to(session, "sam@example.test")) == 2
    client.cookies.clear()
    assert "Create my account" in client.get(invite_path(session, "sam@example.test")).text
    assert events(session, "invitation.renewed")[-1].actor == f"account:{pat.id}"


def test_the_new_account_takes_the_language_the_page_was_read_in(client, session, site, pat, record):
    send(session, site, pat, record)
    path = invite_path(session, "sam@example.test")
    page = client.get(path, headers={"Accept-Language": "es"})
    assert page.status_code == 200 and '<html lang="es">' in page.text
    client.get("/language/es")
    assert accept_form(client, path).status_code == 303
    session.expire_all()
    assert account_by_email(session, "sam@example.test").language == "es"


def test_forgot_password_on_an_unused_expired_invitation_sends_a_new_one(client, session, site, frozen_clock, pat,
                                                                         record):
    send(session, site, pat, record)
    old_path = invite_path(session, "sam@example.test")
    frozen_clock.advance(timedelta(days=2))
    answer = post_form(client, "/password/forgot", {"email": "sam@example.test"}, follow_redirects=False)
    assert answer.status_code == 303
    assert len(messages_to(session, "sam@example.test")) == 2
    new_path = invite_path(session, "sam@example.test")
    assert new_path != old_path and "Create my account" in client.get(new_path).text
