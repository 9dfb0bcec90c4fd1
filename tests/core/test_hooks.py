"""The hook contract: every hookspec is documented, implemented by the fixture
plugin, and exercised by a ``test_hook_<name>`` below that goes through the
real code path."""
import inspect
import logging
import re
from pathlib import Path

import fixture_plugin
import pytest
from sqlalchemy import text

from core import hookspecs
from core.access import ANONYMOUS, Principal, can
from core.audit import service as audit

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(name for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
               if hasattr(f, "filmless_spec"))


def test_there_are_hooks():
    assert {"routers", "template_dirs", "navigation", "template_slot", "migrations_dir", "tasks",
            "startup", "shutdown", "settings_model", "access_vote", "audit_event_written"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    assert getattr(hookspecs, hook).__doc__.count("Example") == 1
    docs = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert re.search(rf"^#+ .*`{hook}\(", docs, re.M), f"docs/plugins.md has no section for `{hook}()`"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_implemented_and_tested(hook, runtime):
    implementers = [impl.plugin_name for impl in getattr(runtime.pm.hook, hook).get_hookimpls()]
    assert "fixture" in implementers
    assert f"test_hook_{hook}" in globals(), f"no test_hook_{hook} in {__file__}"


def test_hook_settings_model(site):
    assert site.plugin_settings["fixture"].greeting == "hola"


def test_hook_routers(client):
    assert client.get("/fixture/").status_code == 200


def test_hook_template_dirs(client):
    assert 'id="fixture-page"' in client.get("/fixture/").text


def test_hook_navigation(client):
    fixture_plugin.CALLS["navigation"].clear()
    page = client.get("/").text
    assert '<a href="/fixture/">Sign in</a>' in page
    assert fixture_plugin.CALLS["navigation"][-1]["principal"] == ANONYMOUS


def test_hook_template_slot(client):
    assert '<p id="fixture-slot">/</p>' in client.get("/").text
    names = {call["name"] for call in fixture_plugin.CALLS["template_slot"]}
    assert {"page_top", "home_after_intro", "footer"} <= names


def test_hook_migrations_dir(session):
    session.execute(text("INSERT INTO fixture_note (body) VALUES ('migrated')"))
    assert session.scalar(text("SELECT count(*) FROM fixture_note WHERE body = 'migrated'")) == 1


def test_hook_tasks(runtime):
    names = {task.name for task in runtime.tasks}
    assert {"core.ping", "fixture.write_note"} <= names
    # run in-process (huey's immediate mode): the worker test runs a real consumer
    runtime.huey.immediate = True
    result = next(t for t in runtime.tasks if t.name == "fixture.write_note")("note from task")
    assert result() == "NOTE FROM TASK"
    with runtime.sessions() as session:
        assert session.scalar(text("SELECT count(*) FROM fixture_note WHERE body = 'note from task'")) == 1
        session.execute(text("DELETE FROM fixture_note"))
        session.commit()


def test_hook_seed_demo(runtime, session):
    from core.app import seed_demo

    assert seed_demo(runtime) is True
    assert seed_demo(runtime) is False  # once only
    assert session.scalars(text("SELECT body FROM fixture_note")).all() == ["seeded: hola"]


def test_hook_sms_transports(tmp_path):
    from support import make_site

    from core import db, notify
    from core.app import build_runtime

    fixture_plugin.SENT_SMS.clear()
    runtime = build_runtime(make_site(tmp_path, sms={"transport": "fixture_sms"}))
    try:
        db.upgrade(runtime.engine, runtime.pm)
        with runtime.sessions() as session:
            message = notify.send_sms(session, to="+34600111222", template="sign_in_code", language="en",
                                      code="482913", minutes=10)
            session.commit()
        deliver = next(t for t in runtime.tasks if t.name == notify.DELIVER)
        deliver.call_local(message.id)
        assert fixture_plugin.SENT_SMS == [{"to": "+34600111222", "text": message.body_text}]
        assert "482913" in message.body_text
        with runtime.sessions() as session:
            assert session.get(notify.Message, message.id).status == "sent"
    finally:
        runtime.close()


def test_hook_access_vote(runtime):
    staff = Principal(kind="staff", id="s1")
    assert can(runtime.pm, staff, "fixture.secret")
    assert not can(runtime.pm, ANONYMOUS, "fixture.secret")
    assert not can(runtime.pm, staff, "fixture.denied")


def test_hook_startup(site):
    from core.app import build_runtime

    fixture_plugin.CALLS["startup"].clear()
    build_runtime(site).close()
    assert fixture_plugin.CALLS["startup"] == [{"site": "Test Imaging"}]


def test_hook_shutdown(site):
    from core.app import build_runtime

    fixture_plugin.CALLS["shutdown"].clear()
    build_runtime(site).close()
    assert fixture_plugin.CALLS["shutdown"] == [{"site": "Test Imaging"}]


def test_hook_audit_event_written(session, caplog):
    calls = fixture_plugin.CALLS["audit_event_written"]
    calls.clear()
    event = audit.record(session, actor="test", action="fixture.seen", subject="nothing")
    assert calls == []  # not before commit
    session.commit()
    assert calls == [{"seq": event.seq, "action": "fixture.seen"}]
    audit.record(session, actor="test", action="fixture.rolled_back", subject="nothing")
    session.rollback()
    audit.record(session, actor="test", action="fixture.observer_fails", subject="nothing")
    with caplog.at_level(logging.ERROR):
        session.commit()  # an observer's failure is logged, the commit stands
    assert [c["action"] for c in calls] == ["fixture.seen", "fixture.observer_fails"]
    assert "observer failed" in caplog.text or "audit_event_written" in caplog.text


def test_hook_account_created(session):
    from core.identity import service

    calls = fixture_plugin.CALLS["account_created"]
    calls.clear()
    service.create_account(session, email="New@Example.test", name="New Person", how="staff",
                           password="a long unique passphrase")
    assert calls == []  # only after commit
    session.commit()
    assert calls == [{"email": "new@example.test", "how": "staff"}]


def _registration_draft(session, patient_id: str, issuer: str):
    from datetime import date

    from core import clock
    from core.identity import registration
    from core.studies.models import Patient

    session.add(Patient(issuer=issuer, patient_id=patient_id, family_name="Ruiz", given_name="Ana",
                        birth_date=date(1990, 1, 1), created_at=clock.now()))
    session.flush()
    details = registration.Details("Ana Ruiz", date(1990, 1, 1), "ana@example.test", None)
    return registration.find_draft(session, registration.start_draft(session, details=details, language="en"))


def test_hook_registration_challenge(session, site, tmp_path, database_url):
    from core.app import build_runtime
    from core.identity import registration
    from support import make_site

    build_runtime(site).close()
    assert registration.challenges(session.info["plugins"], site) == []  # the fixture asks only when its settings say so
    asking = make_site(tmp_path / "asking", database=database_url,
                       plugins={"fixture": {"favourite_colour_challenge": True}})
    runtime = build_runtime(asking)
    try:
        [challenge] = registration.challenges(runtime.pm, runtime.site)
        assert (challenge.name, challenge.label) == ("favourite_colour", "Your favourite colour")
        draft = _registration_draft(session, "CH-1", "H")
        calls = fixture_plugin.CALLS["registration_challenge"]
        calls.clear()
        attempt = dict(site=asking, draft=draft, kind="patient_id", number="CH-1", last_name="Ruiz", ip="10.1.1.1")
        assert registration.verify(session, answers={"favourite_colour": "green"}, **attempt).outcome == "failed"
        assert registration.verify(session, answers={"favourite_colour": "Blue"}, **attempt).outcome == "verified"
        assert calls == [{"patient": "CH-1", "answer": "green"}, {"patient": "CH-1", "answer": "Blue"}]
    finally:
        runtime.close()


def test_hook_registration_check(session, site):
    from datetime import date

    from core.identity import registration

    calls = fixture_plugin.CALLS["registration_check"]
    calls.clear()
    refused = _registration_draft(session, "RC-1", "REFUSE")
    result = registration.verify(session, site=site, draft=refused, kind="patient_id", number="RC-1",
                                 last_name="RUIZ", answers={}, ip="10.1.1.2")
    assert (result.outcome, result.message) == ("refused", "Please call the help desk to open your account.")
    assert refused.patient_ref is None
    accepted = _registration_draft(session, "RC-2", "H")
    assert registration.verify(session, site=site, draft=accepted, kind="patient_id", number="RC-2",
                               last_name="ruiz", answers={}, ip="10.1.1.2").outcome == "verified"
    assert calls == [{"patient": "RC-1", "birth_date": date(1990, 1, 1), "email": "ana@example.test",
                      "site": "Test Imaging"},
                     {"patient": "RC-2", "birth_date": date(1990, 1, 1), "email": "ana@example.test",
                      "site": "Test Imaging"}]


def test_hook_identity_proofs(session, tmp_path, database_url):
    """A plugin's proof ("fixture card") is offered first at step 2 and proves who you are end to end."""
    from datetime import date

    from fastapi.testclient import TestClient
    from sqlalchemy import select
    from sqlalchemy.orm import sessionmaker
    from support import make_site, post_form

    from core import clock
    from core.app import build_runtime, create_app
    from core.identity import registration
    from core.identity.models import RegistrationDraft
    from core.studies.models import Patient

    patient = Patient(issuer="H", patient_id="PT-1", family_name="Núñez", given_name="Eva",
                      birth_date=date(1985, 6, 1), created_at=clock.now())
    session.add(patient)
    session.commit()
    asking = make_site(tmp_path, database=database_url, plugins={"fixture": {"fixture_card_proof": True}})
    runtime = build_runtime(asking)
    runtime.sessions = sessionmaker(bind=session.bind, join_transaction_mode="create_savepoint",
                                    expire_on_commit=False, info={"plugins": runtime.pm, "runtime": runtime})
    [proof] = registration.proofs(runtime.pm, asking)
    assert (proof.name, proof.label, proof.hint) == ("fixture_card", "Fixture card number",
                                                     "On the back of your fixture card")
    calls = fixture_plugin.CALLS["identity_proofs"]
    calls.clear()
    try:
        with TestClient(create_app(asking, runtime), base_url="https://testserver") as client:
            post_form(client, "/register", {"name": "Eva Núñez", "birth_day": "1", "birth_month": "6",
                                            "birth_year": "1985", "email": "eva@example.test", "mobile": ""})
            page = client.get("/register/verify").text
            # the proof comes before the site's numbers, chosen by default, with its label and hint
            radios = re.findall(r'<input type="radio" name="kind" value="(\w+)"( checked)?', page)
            assert radios == [("fixture_card", " checked"), ("patient_id", ""), ("accession_number", "")]
            assert "Fixture card number" in page and "On the back of your fixture card" in page
            chosen = client.get("/register/verify?proof=fixture_card").text
            assert re.search(r'value="fixture_card" checked', chosen)
            attempt = {"last_name": "NUNEZ", "kind": "fixture_card"}

            def verify(**changes):
                return post_form(client, "/register/verify", {**attempt, **changes}, follow_redirects=False)

            # the wrong card, a kind nobody offers, and the card typed as a patient ID all fail alike
            for changes in ({"number": "CARD-PT-2"}, {"number": "CARD-PT-1", "kind": "library_card"},
                            {"number": "CARD-PT-1", "kind": "patient_id"}):
                answer = verify(**changes)
                assert answer.status_code == 200 and "We could not match these details" in answer.text
            assert calls == [{"number": "CARD-PT-2", "last_name": "NUNEZ", "birth_date": date(1985, 6, 1)}]
            answer = verify(number=" card-pt-1 ")
            assert answer.status_code == 303 and answer.headers["location"] == "/register/email"
            assert calls[-1] == {"number": "card-pt-1", "last_name": "NUNEZ", "birth_date": date(1985, 6, 1)}
        draft = session.scalars(select(RegistrationDraft).where(RegistrationDraft.email == "eva@example.test")).one()
        assert draft.patient_ref == patient.id
    finally:
        runtime.close()


# -- requests ------------------------------------------------------------------------------

def test_hook_request_principal(client, session, runtime, tmp_path):
    """A plugin's own cookie makes a visit principal that sees exactly the one study it names."""
    from support import ingest_file

    from core.studies import synthetic

    seen, other = (synthetic.StudySpec(patient_id="VISIT-1", instances=1, description=text)
                   for text in ("Seen by the visit", "Not in the visit"))
    for spec in (seen, other):
        [path] = synthetic.write(synthetic.study(spec), tmp_path / spec.study_uid)
        assert ingest_file(session, runtime, path).outcome == "stored"
    calls = fixture_plugin.CALLS["request_principal"]
    calls.clear()
    assert client.get(f"/exams/{seen.study_uid}").status_code == 403  # no cookie at all: nobody is asked
    assert calls == []
    client.cookies.set("fixture_visit", seen.study_uid)
    page = client.get(f"/exams/{seen.study_uid}")
    assert page.status_code == 200 and "Seen by the visit" in page.text
    assert calls[-1] == {"cookie": seen.study_uid, "path": f"/exams/{seen.study_uid}"}
    assert client.get(f"/exams/{other.study_uid}").status_code == 404
    client.cookies.set("fixture_visit", "1.2.3.no.such.study")
    assert client.get(f"/exams/{seen.study_uid}").status_code == 403  # the plugin said None: anonymous


# -- the study store -----------------------------------------------------------------------

def test_hook_study_ingested(runtime, session, tmp_path, caplog):
    from support import ingest_file

    from core.studies import synthetic
    from core.studies.models import Instance

    calls = fixture_plugin.CALLS["study_ingested"]
    calls.clear()
    spec = synthetic.StudySpec(patient_id="HOOK-1", instances=2)
    first, second = synthetic.write(synthetic.study(spec), tmp_path / "in")
    stored = [ingest_file(session, runtime, path) for path in (first, second, first)]
    assert [result.outcome for result in stored] == ["stored", "stored", "duplicate"]
    assert calls == [{"study": spec.study_uid, "patient": "HOOK-1", "sop_uid": stored[0].sop_uid, "new_study": True,
                      "site": "Test Imaging"},
                     {"study": spec.study_uid, "patient": "HOOK-1", "sop_uid": stored[1].sop_uid, "new_study": False,
                      "site": "Test Imaging"}]
    failing = synthetic.StudySpec(patient_id="HOOK-2", instances=1, description="OBSERVER FAILS")
    [path] = synthetic.write(synthetic.study(failing), tmp_path / "failing")
    with caplog.at_level(logging.ERROR):
        result = ingest_file(session, runtime, path)
    assert result.outcome == "stored" and "plugin 'fixture' failed in study_ingested" in caplog.text
    session.rollback()
    assert session.scalar(text("SELECT count(*) FROM instance WHERE sop_uid = :uid"), {"uid": result.sop_uid}) == 1
    assert session.query(Instance).filter_by(sop_uid=result.sop_uid).one().size == path.stat().st_size


def test_hook_report_release_at(runtime, session, frozen_clock):
    from datetime import timedelta

    from support import audit_events

    from core import clock
    from core.studies import service
    from core.studies.models import Patient, Study

    patient = Patient(issuer="H", patient_id="HOOK-3", family_name="Hook", created_at=clock.now())
    session.add(patient)
    session.flush()
    study = Study(patient_ref=patient.id, study_uid="1.2.826.0.1.99.3", location="Fixture Clinic",
                  created_at=clock.now())
    session.add(study)
    session.flush()
    calls = fixture_plugin.CALLS["report_release_at"]
    calls.clear()
    signed = clock.now() - timedelta(hours=1)
    held = service.add_report(session, runtime=runtime, study=study, signed_at=signed, text="Held.",
                              flags=["fixture_hold"], source_uid="hook-held")
    free = service.add_report(session, runtime=runtime, study=study, signed_at=signed, text="Free.",
                              source_uid="hook-free")
    session.commit()
    assert calls == [{"category": "radiology", "study": "1.2.826.0.1.99.3", "site": "Test Imaging"}] * 2
    assert (held.release_at, held.release_rule, held.release_law) == (
        signed + timedelta(hours=72), "fixture 72 h", "the Fixture Act")
    assert (free.release_at, free.release_rule, free.release_law) == (signed, "", "")
    rules = [event.detail["rule"] for event in audit_events(session, "report.stored")]
    assert rules == ["fixture 72 h", "signed"]


def test_hook_images_release_at(runtime, session, tmp_path, frozen_clock):
    from datetime import timedelta

    from support import audit_events, ingest_file

    from core import clock
    from core.studies import synthetic
    from core.studies.models import Study

    calls = fixture_plugin.CALLS["images_release_at"]
    calls.clear()
    held = synthetic.StudySpec(patient_id="HOOK-4", instances=2, description="HOLD IMAGES")
    free = synthetic.StudySpec(patient_id="HOOK-4", instances=1)
    for spec in (held, free):
        for path in synthetic.write(synthetic.study(spec), tmp_path / spec.study_uid):
            assert ingest_file(session, runtime, path).outcome == "stored"
    # once per study, not per instance
    assert calls == [{"study": held.study_uid, "site": "Test Imaging"}, {"study": free.study_uid, "site": "Test Imaging"}]
    by_uid = {s.study_uid: s for s in session.query(Study).filter(Study.study_uid.in_([held.study_uid,
                                                                                         free.study_uid]))}
    assert (by_uid[held.study_uid].images_release_at, by_uid[held.study_uid].images_release_rule) == (
        clock.now() + timedelta(hours=24), "fixture images 24 h")
    assert (by_uid[free.study_uid].images_release_at, by_uid[free.study_uid].images_release_rule) == (clock.now(), "")
    [event] = audit_events(session, "study.images_held")
    assert event.subject == f"study:{by_uid[held.study_uid].id}" and event.detail["rule"] == "fixture images 24 h"


def test_hook_export_formats(runtime, session, tmp_path):
    import zipfile

    from support import ingest_file

    from core.access import Principal
    from core.studies import synthetic
    from core.studies.exports import service as exports

    calls = fixture_plugin.CALLS["export_formats"]
    calls.clear()
    assert list(exports.formats(runtime)) == ["zip", "iso", "jpg", "fixture_gated", "fixture_full_disk"]
    assert list(exports.formats(runtime)) and calls == [{"site": "Test Imaging"}]  # asked once per runtime
    spec = synthetic.StudySpec(patient_id="HOOK-5", instances=2)
    for path in synthetic.write(synthetic.study(spec), tmp_path / spec.study_uid):
        assert ingest_file(session, runtime, path).outcome == "stored"
    staff = Principal(kind="account", id="1", roles=frozenset({"staff"}))
    export, _ = exports.ask(session, runtime, staff, format_name="fixture_gated", study_uids=[spec.study_uid],
                            language="en", acknowledged=True)
    session.commit()
    assert exports.run(runtime, export.id) == "ready"  # the plugin's build(job) made the file on offer
    with zipfile.ZipFile(exports.file_of(runtime, export)) as archive:
        names = archive.namelist()
        assert len(names) == 2 and all(archive.read(name)[:132] == bytes(128) + b"DICM" for name in names)


def _shared_study(session, make_account):
    """An account, its patient and one study of theirs, and the account's principal."""
    from sqlalchemy import select

    from core import clock
    from core.identity.models import PatientLink
    from core.studies.models import Study

    account = make_account(email="hook-share@example.test", name="Hook Share")
    patient_ref = session.scalar(select(PatientLink.patient_ref).where(PatientLink.account_id == account.id))
    study = Study(patient_ref=patient_ref, study_uid="1.2.826.0.1.99.7", created_at=clock.now())
    session.add(study)
    session.flush()
    return study, Principal(kind="account", id=str(account.id), roles=frozenset({"user"}),
                            scope=frozenset({str(patient_ref)}))


def test_hook_share_options(runtime):
    from core.sharing.routes import share_options

    calls = fixture_plugin.CALLS["share_options"]
    calls.clear()
    [option] = share_options(runtime)  # what the share form offers besides the core's choices
    assert (option.name, option.label, option.default) == (
        "fixture_second_opinion", "For a second opinion (fixture)", False)
    assert calls == [{"site": "Test Imaging"}]


def test_hook_share_created(runtime, session, make_account, caplog):
    from core.sharing import service as sharing

    study, principal = _shared_study(session, make_account)
    calls = fixture_plugin.CALLS["share_created"]
    calls.clear()
    made = sharing.create(session, runtime, principal, nickname="Hook", study_uids=[study.study_uid],
                          acknowledged=True, options={"fixture_second_opinion": True}).share
    assert calls == [{"share": made.id, "nickname": "Hook", "parent": None}]
    with caplog.at_level(logging.ERROR):  # an observer that fails stops nothing
        failing = sharing.create(session, runtime, principal, nickname="OBSERVER FAILS",
                                 study_uids=[study.study_uid], acknowledged=True).share
    assert "plugin 'fixture' failed in share_created" in caplog.text and failing.id
    assert "option:fixture_second_opinion" in sharing.scope_of(made)


def test_hook_share_opened(runtime, session, make_account):
    from core.sharing import service as sharing

    study, principal = _shared_study(session, make_account)
    made = sharing.create(session, runtime, principal, nickname="Hook", study_uids=[study.study_uid],
                          acknowledged=True).share
    calls = fixture_plugin.CALLS["share_opened"]
    calls.clear()
    cookie = sharing.open_share(session, runtime, made, client="192.0.2.1")
    assert calls == [{"share": made.id, "times_opened": 1}]
    assert sharing.principal_for(session, cookie).scope == frozenset({f"study:{study.id}"})
