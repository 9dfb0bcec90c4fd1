"""The database: SQLite settings, migrations of core and plugin branches, and
refusing a schema the code does not match."""
import importlib

import pytest
from sqlalchemy import inspect, text
from support import demo_site_file, migrated_plugins

from core import db, plugins
from core.cli import main

FIXTURE = {"fixture": importlib.import_module("fixture_plugin")}


def test_sqlite_has_wal_and_foreign_keys(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_every_backend_is_fully_migrated(runtime, database_url):
    with runtime.engine.connect() as connection:
        applied, known = db.schema_state(connection, plugins.build_manager(migrated_plugins()))
        tables = set(inspect(connection).get_table_names())
    assert applied == known >= {"0001_audit_trail", "0002_identity", "f001_fixture_note"}
    assert {"audit_event", "account", "message", "patient", "fixture_note", "alembic_version"} <= tables


def test_models_and_migrations_agree(runtime):
    """Every schema change is a migration: autogenerate finds nothing to add or change."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    import core.identity.models  # noqa: F401
    import core.notify  # noqa: F401
    import core.studies.models  # noqa: F401

    with runtime.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), db.Base.metadata)
    # plugin tables (fixture_note, radnet_icode's) and their indexes are not in the core's metadata
    plugin_tables = {d[1].name for d in differences if d[0] == "remove_table"}
    assert all(name == "fixture_note" or name.startswith("radnet_") for name in plugin_tables)
    assert [d for d in differences if not (d[0] == "remove_table" or (
        d[0] == "remove_index" and d[1].table.name in plugin_tables))] == []


def test_migrate_is_idempotent_and_keeps_data(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    core_only = plugins.build_manager({})
    assert db.upgrade(engine, core_only) == ["0001_audit_trail", "0002_identity", "0003_study_store",
                                          "0004_exports", "0005_sharing", "0006_help_topics"]
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 7, 'abc')"))
    assert db.upgrade(engine, core_only) == []
    # enabling a plugin later adds only its branch
    assert db.upgrade(engine, plugins.build_manager(FIXTURE)) == ["f001_fixture_note"]
    with engine.connect() as connection:
        assert connection.execute(text("SELECT seq, hash FROM audit_head")).one() == (7, "abc")
    engine.dispose()


def test_help_topics_upgrade_keeps_the_requests_already_there(tmp_path):
    """0006 adds a topic and a reference to help-desk requests: earlier ones asked for an account."""
    from alembic import command

    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    core_only = plugins.build_manager({})
    with engine.begin() as connection:
        command.upgrade(db.alembic_config(connection, core_only), "0005_sharing")
        connection.execute(text(
            "INSERT INTO account_request (name, email, details, language, status, note, created_at) "
            "VALUES ('Old Request', 'old@example.test', 'No letter', 'es', 'open', '', '2026-01-02 03:04:05')"))
    assert db.upgrade(engine, core_only) == ["0006_help_topics"]
    with engine.connect() as connection:
        row = connection.execute(text("SELECT name, email, details, language, status, topic, reference "
                                      "FROM account_request")).one()
    assert tuple(row) == ("Old Request", "old@example.test", "No letter", "es", "open", "account", "")
    engine.dispose()


def test_a_database_newer_than_the_code_is_refused(tmp_path, capsys):
    site = demo_site_file(tmp_path)
    assert main(["--site", str(site), "migrate"]) == 0
    engine = db.make_engine(f"sqlite:///{tmp_path / 'portal.db'}")
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future' "
                                "WHERE version_num = (SELECT min(version_num) FROM alembic_version)"))
    engine.dispose()
    capsys.readouterr()
    for command in (["migrate"], ["serve", "--port", "0"], ["worker"], ["audit", "verify"]):
        assert main(["--site", str(site), *command]) == 2
        err = capsys.readouterr().err
        assert err.startswith("filmless: the database is at revision 0099_from_the_future, which this code does not know")
        assert err.count("\n") == 1


def test_a_database_behind_the_code_must_be_migrated_first(tmp_path, capsys):
    site = demo_site_file(tmp_path)
    assert main(["--site", str(site), "serve", "--port", "0"]) == 2
    assert capsys.readouterr().err == "filmless: the database is not up to date: run 'filmless migrate'\n"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_nested_transaction_fixture_rolls_back(session, backend):
    session.execute(text("INSERT INTO fixture_note (body) VALUES ('temporary')"))
    session.commit()
    assert session.scalar(text("SELECT count(*) FROM fixture_note WHERE body = 'temporary'")) == 1


def test_the_previous_test_left_nothing_behind(session):
    assert session.scalar(text("SELECT count(*) FROM fixture_note WHERE body = 'temporary'")) == 0
