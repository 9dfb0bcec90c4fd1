"""What a principal may see, decided in one place (core/studies/queries.py): scope by
patient, person, proxy and share; staff and the PACS see all; reports and images reach
patient-side principals only from their release times."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select
from support import ingest_file

from core import clock
from core.access import PACS, Principal
from core.identity import sessions
from core.identity.models import PatientLink
from core.studies import queries, service, synthetic
from core.studies.models import Patient, Study


def principal_of(session, site, account) -> Principal:
    """The principal a signed-in browser of ``account`` carries (through the real session code)."""
    token = sessions.start(session, account=account, site=site)
    return sessions.principal_for(session, sessions.find(session, token=token, site=site))


def patient_of(session, account) -> Patient:
    link = session.scalar(select(PatientLink).where(PatientLink.account_id == account.id))
    return session.get(Patient, link.patient_ref)


def store_study(session, runtime, tmp_path, patient: Patient, **spec) -> Study:
    """A stored CT study of ``patient`` (same issuer and patient ID), through ingest."""
    spec = synthetic.StudySpec(patient_id=patient.patient_id, issuer=patient.issuer, instances=2, **spec)
    for path in synthetic.write(synthetic.study(spec), tmp_path / spec.study_uid):
        assert ingest_file(session, runtime, path).outcome == "stored"
    return session.scalar(select(Study).where(Study.study_uid == spec.study_uid))


def visible_uids(session, principal) -> set[str]:
    return {study.study_uid for study in session.scalars(queries.studies(session, principal))}


@pytest.fixture
def people(session, runtime, make_account, tmp_path):
    """Two patients with an account and a study each, and a staff member."""
    ana = make_account(email="ana@example.test", name="Ana Ruiz")
    ben = make_account(email="ben@example.test", name="Ben Okafor")
    staff = make_account(email="staff@example.test", name="Sam Staff", role="staff", patient=False)
    studies = {name: store_study(session, runtime, tmp_path / name, patient_of(session, account))
               for name, account in (("ana", ana), ("ben", ben))}
    site = runtime.site
    return {"ana": principal_of(session, site, ana), "ben": principal_of(session, site, ben),
            "staff": principal_of(session, site, staff), "studies": studies, "accounts": {"ana": ana, "ben": ben}}


def test_a_patient_sees_only_their_own_studies(session, people):
    ana, studies = people["ana"], people["studies"]
    assert visible_uids(session, ana) >= {studies["ana"].study_uid}
    assert studies["ben"].study_uid not in visible_uids(session, ana)
    assert queries.study(session, ana, studies["ana"].study_uid).id == studies["ana"].id
    with pytest.raises(queries.NotFound):
        queries.study(session, ana, studies["ben"].study_uid)
    with pytest.raises(queries.NotFound):
        queries.study_by_id(session, ana, studies["ben"].id)
    with pytest.raises(queries.NotFound):
        queries.study(session, ana, "1.2.3.4.no.such.study")


def test_staff_and_the_pacs_see_every_study(session, people):
    both = {people["studies"]["ana"].study_uid, people["studies"]["ben"].study_uid}
    assert visible_uids(session, people["staff"]) >= both
    assert visible_uids(session, PACS) >= both
    assert queries.study(session, PACS, people["studies"]["ben"].study_uid).id == people["studies"]["ben"].id


def test_records_of_one_person_at_two_practices_are_seen_together(session, runtime, people, tmp_path):
    ana_record = patient_of(session, people["accounts"]["ana"])
    elsewhere = Patient(issuer="OTHER-PRACTICE", patient_id="OP-77", family_name="Ruiz", given_name="Ana",
                        created_at=clock.now())
    session.add(elsewhere)
    session.flush()
    other_study = store_study(session, runtime, tmp_path / "elsewhere", elsewhere)
    ana = people["ana"]
    with pytest.raises(queries.NotFound):
        queries.study(session, ana, other_study.study_uid)
    assert service.link_patients(session, ana_record, elsewhere, actor="test") is True
    assert service.link_patients(session, ana_record, elsewhere, actor="test") is False  # once
    session.commit()
    assert queries.study(session, ana, other_study.study_uid).id == other_study.id
    assert other_study.study_uid not in visible_uids(session, people["ben"])


def test_a_proxy_sees_the_studies_of_the_patient_they_look_after(session, runtime, people, make_account):
    carer = make_account(email="carer@example.test", name="Cara Carer", patient=False)
    ben_record = patient_of(session, people["accounts"]["ben"])
    session.add(PatientLink(account_id=carer.id, patient_ref=ben_record.id, relationship="guardian",
                            created_at=clock.now()))
    session.commit()
    carer_principal = principal_of(session, runtime.site, carer)
    assert visible_uids(session, carer_principal) == {people["studies"]["ben"].study_uid}
    with pytest.raises(queries.NotFound):
        queries.study(session, carer_principal, people["studies"]["ana"].study_uid)


def test_a_share_sees_only_the_studies_in_its_scope(session, people):
    studies = people["studies"]
    share = Principal(kind="share", id="s-1", scope=frozenset({f"study:{studies['ben'].id}"}))
    assert visible_uids(session, share) == {studies["ben"].study_uid}
    with pytest.raises(queries.NotFound):
        queries.study(session, share, studies["ana"].study_uid)


def test_a_report_is_hidden_from_the_patient_until_it_is_released(session, runtime, people, frozen_clock, tmp_path):
    """A structured report signed at noon reaches the patient at noon: before then neither the
    report nor the SR instance that carries it is visible patient-side; staff see both."""
    ana, staff = people["ana"], people["staff"]
    record = patient_of(session, people["accounts"]["ana"])
    spec = synthetic.StudySpec(patient_id=record.patient_id, issuer=record.issuer)
    [sr] = synthetic.write([synthetic.text_report(spec, "Small nodule, follow up.", signed="20260301120000")],
                           tmp_path / "sr")
    assert ingest_file(session, runtime, sr).outcome == "stored"
    study = queries.study(session, ana, spec.study_uid)
    release = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)

    held = queries.reports(session, ana, study)
    assert (held.readable, held.held_until) == ([], release)
    assert session.execute(queries.instances(session, ana, study)).all() == []
    [report] = queries.reports(session, staff, study).readable
    assert "Small nodule" in report.text
    assert len(session.execute(queries.instances(session, staff, study)).all()) == 1
    with pytest.raises(queries.NotFound):
        queries.report(session, ana, study, report.id)

    frozen_clock.freeze(release)
    assert [r.id for r in queries.reports(session, ana, study).readable] == [report.id]
    assert queries.report(session, ana, study, report.id).id == report.id
    assert len(session.execute(queries.instances(session, ana, study)).all()) == 1


def test_a_plugins_hold_delays_a_report_and_names_its_law(session, runtime, people, frozen_clock):
    ana, study = people["ana"], people["studies"]["ana"]
    signed = clock.now()
    report = service.add_report(session, runtime=runtime, study=study, signed_at=signed, text="Findings.",
                                flags=["fixture_hold"], source_uid="api-report-1")
    session.commit()
    assert (report.release_at, report.release_rule, report.release_law) == (
        signed + timedelta(hours=72), "fixture 72 h", "the Fixture Act")
    view = queries.reports(session, ana, study)
    assert (view.readable, view.held_until, view.held_law) == ([], signed + timedelta(hours=72), "the Fixture Act")
    assert [r.id for r in queries.reports(session, people["staff"], study).readable] == [report.id]
    frozen_clock.advance(timedelta(hours=71))
    assert queries.reports(session, ana, study).readable == []
    frozen_clock.advance(timedelta(hours=1))
    assert [r.id for r in queries.reports(session, ana, study).readable] == [report.id]


def test_images_held_by_a_plugin_appear_at_their_release(session, runtime, people, frozen_clock, tmp_path):
    ana = people["ana"]
    record = patient_of(session, people["accounts"]["ana"])
    study = store_study(session, runtime, tmp_path / "held", record, description="HOLD IMAGES")
    assert (study.images_release_at, study.images_release_rule) == (
        clock.now() + timedelta(hours=24), "fixture images 24 h")
    assert queries.study(session, ana, study.study_uid).id == study.id  # the exam is listed...
    assert not queries.images_visible(ana, study)  # ...without its images
    assert session.execute(queries.instances(session, ana, study)).all() == []
    assert queries.series(session, ana, study) == []
    assert len(session.execute(queries.instances(session, people["staff"], study)).all()) == 2
    frozen_clock.advance(timedelta(hours=24))
    assert queries.images_visible(ana, study)
    assert len(session.execute(queries.instances(session, ana, study)).all()) == 2
    assert len(queries.series(session, ana, study)) == 1
