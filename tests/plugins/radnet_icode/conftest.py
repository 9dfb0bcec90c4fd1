"""Shared fixtures of the radnet_icode plugin's tests: a site with the plugin and the three
demo centres (in the shared, migrated test database; the core's ``runtime``, ``session``,
``app`` and ``client`` fixtures then use it), studies put in through the real ingest
path, and the clear code of a visit read the way a person gets it."""
from __future__ import annotations

import re
from datetime import date

import pytest
from sqlalchemy import select
from radnet_support import CENTRES
from support import ingest_file, make_site, messages_to, post_form

from core import clock
from core.studies import synthetic
from core.studies.models import Patient, Study

PACS_TOKEN = "radnet-icode-pacs-token"
PASSWORD = "a long unique passphrase"
AUSTIN, BROOKLYN, WESTSIDE = "North Austin Imaging", "Brooklyn Heights Radiology", "Westside Imaging Center"
CODE_SHAPE = re.compile(r"\b[A-HJKMNP-Z2-9]{4}-[A-HJKMNP-Z2-9]{4}-[A-HJKMNP-Z2-9]{4}\b")


def radnet_settings(**overrides) -> dict:
    settings = {"icode_valid_days": 90, "icode_session_hours": 2, "age_of_majority": 18,
                "help_phone": "(800) 555-0110", "locations": CENTRES}
    settings.update(overrides)
    return settings


def radnet_site(tmp_path, database_url, *, identity: dict | None = None, default_language: str = "en",
                **settings):
    return make_site(tmp_path, database=database_url, fixture=False,
                     site={"name": "Portal Pass Test", "timezone": "America/Los_Angeles", "languages": ["en", "es"],
                           "default_language": default_language, "base_url": "https://portal.example.test"},
                     studies={"pacs_token": PACS_TOKEN}, identity=identity or {"verify_with": ["patient_id"]},
                     plugins={"radnet_icode": radnet_settings(**settings)})


@pytest.fixture
def site(request, tmp_path, database_url):
    """The plugin's site; a test changes it with ``@pytest.mark.parametrize("site", [{"identity": {...},
    "icode_session_hours": 1}], indirect=True)`` (plugin settings, ``identity``, ``default_language``)."""
    return radnet_site(tmp_path, database_url, **getattr(request, "param", {}))


@pytest.fixture
def exam(session, runtime, tmp_path):
    """Ingest a small study through the real path: ``exam(patient_id=..., institution=..., day=...)``.
    A patient's record is made first when ``email`` is given (the practice's own record)."""
    made = []

    def make(*, patient_id="RAD-1001", family="Rivera", given="Ana", born=date(1985, 5, 17), email=None,
             institution=AUSTIN, day=date(2026, 2, 27), modality="CR", description="XR CHEST", instances=1) -> Study:
        if email and session.scalar(select(Patient).where(Patient.patient_id == patient_id)) is None:
            session.add(Patient(issuer="", patient_id=patient_id, family_name=family, given_name=given,
                                birth_date=born, email=email, created_at=clock.now()))
            session.commit()
        spec = synthetic.StudySpec(patient_id=patient_id, family_name=family, given_name=given, birth_date=born,
                                   institution=institution, study_date=day, modality=modality,
                                   description=description, body_part="CHEST", instances=instances,
                                   rows=32, columns=32)
        folder = tmp_path / f"exam{len(made)}"
        for path in synthetic.write(synthetic.study(spec), folder):
            assert ingest_file(session, runtime, path).ok
        made.append(spec)
        return session.scalar(select(Study).where(Study.study_uid == spec.study_uid))

    return make


@pytest.fixture
def code_of(session, runtime):
    """The clear code of a study's visit, as the front desk prints it (a new Portal Pass)."""
    from plugins.radnet_icode import service, visits

    def code(study: Study) -> str:
        visit = visits.visit_of_study(session, study.id)
        issued = service.reissue(session, site=runtime.site, visit=visit, by="staff:test")
        session.commit()
        return issued.code

    return code


@pytest.fixture
def emailed_code(session):
    """The I-Code in the last email to an address, read as its reader would."""

    def code(address: str) -> str:
        return CODE_SHAPE.findall(messages_to(session, address)[-1].body_text)[-1]

    return code


@pytest.fixture
def enter_code():
    """Type a code and a date of birth on ``/visit`` (more fields, e.g. ``view="yes"``, as keywords)."""

    def enter(client, code: str, born: date, **extra):
        return post_form(client, "/visit", {"code": code, "birth_day": str(born.day), "birth_month": str(born.month),
                                            "birth_year": str(born.year), **extra}, follow_redirects=False)

    return enter
