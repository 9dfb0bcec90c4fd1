"""Shared fixtures: real databases (SQLite always, PostgreSQL when
FILMLESS_TEST_DATABASE_URL is set), sites written to YAML, apps with the fixture
plugin, and a clock that tests move instead of sleeping."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "plugins")]

from core import clock, db, plugins  # noqa: E402
from core.app import build_runtime, create_app  # noqa: E402

from support import BACKENDS, PG_URL, make_site, migrated_plugins, reset_postgresql  # noqa: E402


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request, tmp_path_factory) -> str:
    """A migrated database (core, the fixture plugin and radnet_icode) shared by the tests of one
    backend. Each plugin is enabled only in the sites that name it; its tables are always there."""
    if request.param == "postgresql":
        reset_postgresql(PG_URL)
        url = PG_URL
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'portal.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine, plugins.build_manager(migrated_plugins()))
    engine.dispose()
    return url


@pytest.fixture
def site(tmp_path, database_url):
    return make_site(tmp_path, database=database_url)


@pytest.fixture
def runtime(site):
    runtime = build_runtime(site)
    yield runtime
    runtime.close()


@pytest.fixture
def session(runtime):
    """A session whose every commit is rolled back after the test (nested transaction).
    The app built by ``app`` uses the same connection, so it sees what the test wrote."""
    connection = runtime.engine.connect()
    outer = connection.begin()
    runtime.sessions = sessionmaker(bind=connection, join_transaction_mode="create_savepoint",
                                    expire_on_commit=False, info={"plugins": runtime.pm, "runtime": runtime})
    with runtime.sessions() as session:
        yield session
    outer.rollback()
    connection.close()


@pytest.fixture
def app(runtime, session):
    return create_app(runtime.site, runtime)


@pytest.fixture
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app, base_url="https://testserver") as test_client:
        yield test_client


@pytest.fixture
def frozen_clock():
    from datetime import datetime, timezone

    clock.freeze(datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc))
    yield clock
    clock.unfreeze()


@pytest.fixture(autouse=True)
def _english_by_default():
    from core import i18n

    i18n.activate("en", "UTC")
    yield


@pytest.fixture
def make_account(session):
    """Create a portal account (optionally linked to a new patient record) in the test's transaction."""
    from datetime import date

    from core import clock
    from core.identity import service
    from core.identity.models import PatientLink
    from core.studies.models import Patient

    def make(email="pat@example.test", password="a long unique passphrase", name="Pat Example",
             role="user", patient: bool = True, **fields):
        account = service.create_account(session, email=email, name=name, role=role, password=password,
                                         how="staff", email_verified=True, **fields)
        if patient:
            record = Patient(issuer="T", patient_id=f"P-{account.id}", family_name=name.split()[-1],
                             given_name=name.split()[0], birth_date=date(1980, 1, 2), created_at=clock.now())
            session.add(record)
            session.flush()
            session.add(PatientLink(account_id=account.id, patient_ref=record.id, relationship="self",
                                    created_at=clock.now()))
        session.commit()
        return account

    return make


@pytest.fixture
def custom_client(tmp_path):
    """A client for a site with different settings, on its own freshly migrated SQLite database:
    ``client, runtime = custom_client(identity={"second_factor": "required"})``."""
    from fastapi.testclient import TestClient

    made = []

    def build(**overrides):
        folder = tmp_path / f"site{len(made)}"
        runtime = build_runtime(make_site(folder, **overrides))
        db.upgrade(runtime.engine, runtime.pm)
        client = TestClient(create_app(runtime.site, runtime), base_url="https://testserver")
        made.append((client, runtime))
        return client, runtime

    yield build
    for client, runtime in made:
        client.close()
        runtime.close()
