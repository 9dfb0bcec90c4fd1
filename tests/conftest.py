"""Shared fixtures: real databases (SQLite always, PostgreSQL when
FILMLESS_TEST_DATABASE_URL is set), sites written to YAML, apps with the fixture
plugin, and a clock that tests move instead of sleeping."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from sqlalchemy.orm import sessionmaker

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "plugins")]

from core import clock, db, plugins  # noqa: E402
from core.app import build_runtime, create_app  # noqa: E402

from support import BACKENDS, PG_URL, make_site, reset_postgresql  # noqa: E402


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request, tmp_path_factory) -> str:
    """A migrated database (core + fixture plugin) shared by the tests of one backend."""
    if request.param == "postgresql":
        reset_postgresql(PG_URL)
        url = PG_URL
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'portal.db'}"
    engine = db.make_engine(url)
    db.upgrade(engine, plugins.build_manager({"fixture": importlib.import_module("fixture_plugin")}))
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
                                    expire_on_commit=False, info={"plugins": runtime.pm})
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

    with TestClient(app, base_url="http://testserver") as test_client:
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
