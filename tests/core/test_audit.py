"""The audit trail: appended in the caller's transaction, chained by hash, so an
edited, deleted or inserted row is found by ``verify`` and ``filmless audit verify``."""
import re
from datetime import datetime, timezone

import pytest
from sqlalchemy import text
from support import demo_site_file

from core import db
from core.audit import service as audit
from core.audit.models import AuditEvent
from core.cli import main


@pytest.fixture
def three_events(session, frozen_clock):
    for n in range(3):
        audit.record(session, actor="patient:1", action="study.view", subject=f"study:{n}", detail={"n": n, "ñ": "sí"})
    session.commit()
    return session


def test_events_take_the_clock_and_chain(three_events):
    events = three_events.query(AuditEvent).order_by(AuditEvent.seq).all()
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[0].at == datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)
    assert events[1].prev_hash == events[0].hash and events[2].prev_hash == events[1].hash
    assert audit.verify(three_events) == (True, "ok 3 events")


def test_an_empty_trail_verifies(session):
    assert audit.verify(session) == (True, "ok 0 events")


def test_an_edited_row_is_found(three_events):
    three_events.execute(text("UPDATE audit_event SET subject = 'study:99' WHERE seq = 2"))
    ok, message = audit.verify(three_events)
    assert not ok and message.startswith("event 2 was changed (study.view on study:99")


def test_an_edited_detail_is_found(three_events):
    three_events.execute(text("UPDATE audit_event SET detail = :d WHERE seq = 1"), {"d": '{"n": 5, "ñ": "sí"}'})
    assert audit.verify(three_events)[1].startswith("event 1 was changed")


def test_a_deleted_row_is_found(three_events):
    three_events.execute(text("DELETE FROM audit_event WHERE seq = 2"))
    assert audit.verify(three_events) == (False, "event 2 is missing (next found is 3)")


def test_a_deleted_last_row_is_found(three_events):
    three_events.execute(text("DELETE FROM audit_event WHERE seq = 3"))
    assert audit.verify(three_events) == (False, "events after 2 are missing (the chain's head is event 3)")


def test_a_rewritten_chain_tail_is_found(three_events):
    """A self-consistent forged last event still disagrees with the chain's head."""
    forged = dict(seq=3, at=datetime(2026, 3, 1, tzinfo=timezone.utc), actor="x", action="study.view",
                  subject="study:2", detail={}, prev_hash=three_events.get(AuditEvent, 2).hash)
    three_events.execute(text("DELETE FROM audit_event WHERE seq = 3"))
    three_events.add(AuditEvent(**forged, hash=audit._digest(**forged)))
    three_events.flush()
    assert audit.verify(three_events) == (False, "event 3 is not the one the chain's head recorded (it was replaced)")


def test_a_rolled_back_event_leaves_no_trace(session):
    audit.record(session, actor="a", action="x", subject="y")
    session.rollback()
    assert audit.verify(session) == (True, "ok 0 events")


def test_audit_verify_command_finds_an_edited_row(tmp_path, capsys):
    site = str(demo_site_file(tmp_path))
    assert main(["--site", site, "migrate"]) == 0
    assert main(["--site", site, "seed-demo"]) == 0
    assert main(["--site", site, "audit", "verify"]) == 0
    assert re.search(r"^ok \d+ events$", capsys.readouterr().out, re.M)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'portal.db'}")
    with engine.begin() as connection:
        connection.execute(text("UPDATE audit_event SET actor = 'someone else' WHERE seq = 1"))
    engine.dispose()
    assert main(["--site", site, "audit", "verify"]) == 1
    assert "event 1 was changed (account.created on account:1 at " in capsys.readouterr().out
