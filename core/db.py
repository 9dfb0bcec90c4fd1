"""Engine, sessions and the declarative base (DESIGN §1, §7).

One engine per app. SQLite gets WAL, foreign keys and real SAVEPOINTs; any other
URL (PostgreSQL) is used as given.
"""
from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Callable, Iterator

from fastapi import Depends, Request
from sqlalchemy import DateTime, Engine, MetaData, TypeDecorator, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always read back timezone-aware, on every backend
    (SQLite would otherwise hand back naive values that formatting takes as local time)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("store timezone-aware datetimes only (use core.clock.now())")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///") and ":memory:" not in url:
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_connection, _record):
        # pysqlite's own transaction handling breaks SAVEPOINT; take it over.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        if ":memory:" not in url:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection):
        # IMMEDIATE: writers queue on the busy timeout instead of failing when a
        # read snapshot turns into a write (most requests write an audit event).
        # Connections opened with execution_options(read_only=True) never write.
        read_only = connection.get_execution_options().get("read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def make_sessionmaker(engine_or_connection, **info) -> sessionmaker[Session]:
    """Sessions carry ``info`` (``plugins``: the manager, ``runtime``) so services and
    after-commit observers reach the site without any module-level state."""
    return sessionmaker(bind=engine_or_connection, expire_on_commit=False, info=info)


_AFTER_COMMIT = "after_commit_callbacks"
_log = logging.getLogger("filmless.db")


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's transaction has committed; never if it rolls back.
    Observers and queued work use this so they never see, or act on, what was undone."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for callback in session.info.pop(_AFTER_COMMIT, []):
        try:
            callback()
        except Exception:  # the commit stands whatever a callback does
            _log.exception("an after-commit callback failed")


@event.listens_for(Session, "after_rollback")
def _forget_after_commit(session: Session) -> None:
    session.info.pop(_AFTER_COMMIT, None)


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.runtime.sessions() as session:
        yield session


DbSession = Annotated[Session, Depends(get_session)]


# -- migrations --------------------------------------------------------------

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class SchemaError(Exception):
    """The database's schema does not match this code."""


def alembic_config(connection, pm):
    """The core's version folder plus one per enabled plugin (``migrations_dir`` hook)."""
    from alembic.config import Config

    locations = [MIGRATIONS_DIR / "versions", *[d for d in pm.hook.migrations_dir() if d]]
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join(str(p) for p in locations))
    config.attributes["connection"] = connection
    return config


def schema_state(connection, pm) -> tuple[set[str], set[str]]:
    """(revisions applied to the database, revisions the code has).

    Applied includes the ancestors and dependencies of the stored heads, since a
    plugin branch that ``depends_on`` a core revision stores only its own head."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(connection, pm))
    known = {revision.revision for revision in script.walk_revisions()}
    current = set(MigrationContext.configure(connection).get_current_heads())
    unknown = sorted(current - known)
    if unknown:
        raise SchemaError(f"the database is at revision {', '.join(unknown)}, which this code does not know: "
                          "it was migrated by a newer Filmless or with a plugin that is not enabled")
    applied = {r.revision for r in script.revision_map.iterate_revisions(tuple(current), "base")} if current else set()
    return applied, known


def check_schema(engine: Engine, pm, *, allow_behind: bool) -> None:
    """Refuse a database newer than the code (always) or behind it (unless migrating)."""
    with engine.connect() as connection:
        applied, known = schema_state(connection, pm)
    if not allow_behind and applied != known:
        raise SchemaError("the database is not up to date: run 'filmless migrate'")


def upgrade(engine: Engine, pm) -> list[str]:
    """Upgrade to every head; returns the revisions applied."""
    from alembic import command

    check_schema(engine, pm, allow_behind=True)
    with engine.begin() as connection:
        before, _ = schema_state(connection, pm)
        command.upgrade(alembic_config(connection, pm), "heads")
        after, _ = schema_state(connection, pm)
    return sorted(after - before)
