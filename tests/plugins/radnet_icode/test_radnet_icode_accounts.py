"""I-Codes and accounts: an account made from an I-Code (the core's four steps, the code as
the identity proof), a later code typed while signed in adding its visit, and minors: no
account of their own, and never a visit of theirs in anyone else's account."""
from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import select
from support import audit_events, last_code, post_form, sign_in_as

from core.identity.models import Account, PatientLink
from plugins.radnet_icode import visits
from plugins.radnet_icode.models import VisitSession

BORN = date(1985, 5, 17)
CHILD_BORN = date(2014, 8, 9)  # 11 on the tests' frozen day
PASSWORD = "a long unique passphrase"


def start_registration(client, *, name: str, born: date, email: str):
    answer = post_form(client, "/register", {"name": name, "birth_day": str(born.day), "birth_month": str(born.month),
                                             "birth_year": str(born.year), "email": email}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/register/verify", answer.text[:300]


def test_an_account_made_from_an_i_code_shows_all_the_patients_exams(session, client, exam, frozen_clock,
                                                                     emailed_code, enter_code):
    austin = exam(email="ana@example.test", description="CT ABDOMEN", modality="CT")
    earlier = exam(institution="Brooklyn Heights Radiology", day=date(2025, 11, 3), description="XR KNEE")
    code = emailed_code("ana@example.test")

    # the visit's page offers the account; it closes the visit in this browser
    enter_code(client, code, BORN)
    assert "Create an account to see all your exams" in client.get("/visit/exams").text
    leaving = post_form(client, "/visit/register", follow_redirects=False)
    assert leaving.headers["location"] == "/register?proof=icode" and visits.COOKIE not in client.cookies

    start_registration(client, name="Ana Rivera", born=BORN, email="ana.rivera@example.test")
    step_two = client.get("/register/verify?proof=icode")
    assert "I-Code from your Portal Pass" in step_two.text
    assert 'value="icode" checked' in step_two.text
    verified = post_form(client, "/register/verify", {"kind": "icode", "number": code.lower(), "last_name": "rivera"},
                         follow_redirects=False)
    assert verified.headers["location"] == "/register/email", verified.text[:500]
    emailed = post_form(client, "/register/email", {"code": last_code(session, "ana.rivera@example.test")},
                        follow_redirects=False)
    assert emailed.headers["location"] == "/register/password"
    done = post_form(client, "/register/password", {"password": PASSWORD, "confirmation": PASSWORD},
                     follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/"

    account = session.scalar(select(Account).where(Account.email == "ana.rivera@example.test"))
    link = session.scalar(select(PatientLink).where(PatientLink.account_id == account.id))
    assert link.patient_ref == austin.patient_ref and link.relationship == "self"
    listed = client.get("/exams").text
    assert "CT ABDOMEN" in listed and "XR KNEE" in listed
    assert client.get(f"/exams/{earlier.study_uid}").status_code == 200


def test_the_i_code_proof_needs_the_right_last_name_and_a_working_code(session, client, exam, frozen_clock,
                                                                      emailed_code):
    exam(email="ana@example.test")
    code = emailed_code("ana@example.test")
    start_registration(client, name="Ana Rivera", born=BORN, email="ana.rivera@example.test")
    wrong = post_form(client, "/register/verify", {"kind": "icode", "number": code, "last_name": "Rivas"})
    assert "We could not match these details" in wrong.text
    assert audit_events(session, "registration.verification_failed")[-1].detail["matched_record"] is False
    assert session.scalar(select(Account).where(Account.email == "ana.rivera@example.test")) is None


@pytest.mark.parametrize("site", [{"identity": {"verify_with": ["patient_id"], "minimum_age": 0}}], indirect=True,
                         ids=["no minimum age"])
def test_a_minor_cannot_make_an_account_from_the_i_code(session, client, exam, frozen_clock, code_of):
    study = exam(patient_id="RAD-3003", family="Rivera", given="Leo", born=CHILD_BORN, institution="Westside Imaging Center")
    code = code_of(study)
    start_registration(client, name="Leo Rivera", born=CHILD_BORN, email="leo@example.test")
    refused = post_form(client, "/register/verify", {"kind": "icode", "number": code, "last_name": "Rivera"})
    assert refused.status_code == 200
    assert "This patient is under 18, so they cannot have their own account" in refused.text
    assert "A parent or guardian can see each visit with the I-Code" in refused.text
    assert audit_events(session, "registration.refused")[-1].detail == {"why": "registration_check"}
    assert session.scalar(select(Account).where(Account.email == "leo@example.test")) is None


def test_a_code_typed_while_signed_in_adds_its_visit_to_the_account(session, client, exam, frozen_clock, code_of,
                                                                    make_account, enter_code):
    study = exam(description="MR KNEE", modality="MR")
    account = make_account(email="ana.rivera@example.test")  # her account, so far with another record
    sign_in_as(client, "ana.rivera@example.test", PASSWORD)
    assert "MR KNEE" not in client.get("/exams").text
    answer = enter_code(client, code_of(study), BORN)
    assert answer.status_code == 303 and answer.headers["location"] == "/exams?icode=linked"
    assert visits.COOKIE not in client.cookies
    link = session.scalar(select(PatientLink).where(PatientLink.account_id == account.id,
                                                    PatientLink.patient_ref == study.patient_ref))
    assert link.relationship == "self"
    assert audit_events(session, "icode.account_linked")[-1].subject == f"patient:{study.patient_ref}"
    page = client.get("/exams?icode=linked")
    assert "The visit of your I-Code is now in your account" in page.text
    picked = post_form(client, "/exams/patient", {"patient": str(study.patient_ref)})
    assert "MR KNEE" in picked.text
    # the same code again: already there
    assert enter_code(client, code_of(study), BORN).headers["location"] == "/exams?icode=already"


def test_a_visit_of_a_patient_with_their_own_account_is_not_added_to_another(session, client, exam, frozen_clock,
                                                                             code_of, make_account, enter_code):
    study = exam()
    owner = make_account(email="ana.rivera@example.test", patient=False)
    session.add(PatientLink(account_id=owner.id, patient_ref=study.patient_ref, relationship="self",
                            created_at=frozen_clock.now()))
    session.commit()
    other = make_account(email="someone.else@example.test")
    sign_in_as(client, "someone.else@example.test", PASSWORD)
    answer = enter_code(client, code_of(study), BORN)
    assert answer.status_code == 200 and "This visit was not added to your account" in answer.text
    assert "already has their own account" in answer.text
    assert session.scalar(select(PatientLink).where(PatientLink.account_id == other.id,
                                                    PatientLink.patient_ref == study.patient_ref)) is None
    assert audit_events(session, "icode.account_not_linked")[-1].detail["outcome"] == "taken"


def test_a_guardian_never_gets_a_minors_visit_in_their_account(session, client, exam, frozen_clock, code_of,
                                                               make_account, enter_code):
    child = exam(patient_id="RAD-3003", family="Rivera", given="Leo", born=CHILD_BORN,
                 institution="Westside Imaging Center", description="XR WRIST")
    guardian = make_account(email="parent@example.test")
    sign_in_as(client, "parent@example.test", PASSWORD)
    code = code_of(child)
    answer = enter_code(client, code, CHILD_BORN)
    assert answer.status_code == 200 and "under 18" in answer.text and "not even a parent" in answer.text
    assert session.scalars(select(PatientLink).where(PatientLink.patient_ref == child.patient_ref)).all() == []
    assert audit_events(session, "icode.account_not_linked")[-1].detail["outcome"] == "minor"
    assert client.get(f"/exams/{child.study_uid}").status_code == 404  # as the account: not theirs

    # the parent may still look at the visit in this browser, with the code, until they close it
    viewing = enter_code(client, code, CHILD_BORN, view="yes")
    assert viewing.headers["location"] == "/visit/exams"
    assert client.get(f"/exams/{child.study_uid}").status_code == 200
    assert "You are viewing the exams of one visit" in client.get("/").text
    post_form(client, "/visit/leave")
    assert session.scalars(select(VisitSession)).all() == []
    assert client.get(f"/exams/{child.study_uid}").status_code == 404
    assert session.scalars(select(PatientLink).where(PatientLink.account_id == guardian.id)).all() != []
    assert session.scalars(select(PatientLink).where(PatientLink.patient_ref == child.patient_ref)).all() == []


def test_a_guardian_the_help_desk_invited_keeps_the_link_they_had(session, client, exam, frozen_clock, code_of,
                                                                  make_account, enter_code):
    child = exam(patient_id="RAD-3003", family="Rivera", given="Leo", born=CHILD_BORN)
    guardian = make_account(email="parent@example.test", patient=False)
    session.add(PatientLink(account_id=guardian.id, patient_ref=child.patient_ref, relationship="guardian",
                            created_at=frozen_clock.now()))
    session.commit()
    sign_in_as(client, "parent@example.test", PASSWORD)
    answer = enter_code(client, code_of(child), CHILD_BORN)
    assert answer.status_code == 200 and "as someone you look after" in answer.text
    links = session.scalars(select(PatientLink).where(PatientLink.patient_ref == child.patient_ref)).all()
    assert [(link.account_id, link.relationship) for link in links] == [(guardian.id, "guardian")]
    assert audit_events(session, "icode.account_not_linked")[-1].detail["outcome"] == "other"


def test_a_staff_account_never_gets_a_patient_from_a_code(session, client, exam, code_of, make_account,
                                                           enter_code):
    study = exam()
    staff = make_account(email="desk@example.test", role="staff", patient=False)
    sign_in_as(client, "desk@example.test", PASSWORD)
    assert "the visit will be added to your account" not in client.get("/visit").text
    assert enter_code(client, code_of(study), BORN).headers["location"] == "/visit/exams"
    assert session.scalars(select(PatientLink).where(PatientLink.account_id == staff.id)).all() == []


def test_the_i_code_page_explains_minors_to_parents(client):
    page = client.get("/visit")
    assert "For parents and guardians" in page.text
    assert "Patients under 18 cannot have their own account on the portal" in page.text
