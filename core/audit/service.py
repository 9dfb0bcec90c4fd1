"""The audit trail: ``record`` in the caller's transaction, ``verify`` the chain.

Each event's hash is SHA-256 over a canonical JSON encoding of its fields and the
previous event's hash, so an edited, inserted or deleted row breaks the chain.
"""
from __future__ import annotations

import hashlib
import json
from datetime import timezone
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from core import clock, db
from core.audit.models import AuditEvent, AuditHead
from core.plugins import call_each

GENESIS = "0" * 64


def _digest(*, seq: int, at, actor: str, action: str, subject: str, detail: dict, prev_hash: str) -> str:
    canonical = json.dumps(
        [seq, at.astimezone(timezone.utc).isoformat(timespec="microseconds"), actor, action, subject, detail, prev_hash],
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def record(session: Session, *, actor: str, action: str, subject: str, detail: dict[str, Any] | None = None) -> AuditEvent:
    """Append one event in the caller's transaction; observers hear of it after commit."""
    return AuditEvent(**record_many(session, [dict(actor=actor, action=action, subject=subject, detail=detail)])[0])


# built once: every event written takes the head, and building a statement costs more than running it
_HEAD = AuditHead.__table__
_TAKE_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update()
_MOVE_HEAD = update(_HEAD).where(_HEAD.c.id == 1).values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))


def record_many(session: Session, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append events (each the keyword arguments of ``record``) in order, taking the chain's
    head once for all of them; the rows as written."""
    head = session.execute(_TAKE_HEAD).first()
    if head is None:
        session.execute(insert(_HEAD).values(id=1, seq=0, hash=GENESIS))
        seq, prev_hash = 0, GENESIS
    else:
        seq, prev_hash = head
    at, values = clock.now(), []
    for event in events:
        seq += 1
        fields = dict(seq=seq, at=at, actor=event["actor"], action=event["action"], subject=event["subject"],
                      detail=json.loads(json.dumps(event.get("detail") or {}, default=str)),
                      prev_hash=prev_hash)  # the detail is stored exactly as hashed
        prev_hash = _digest(**fields)
        values.append(dict(fields, hash=prev_hash))
    session.execute(insert(AuditEvent.__table__), values)  # one statement for all; no unit of work needed
    session.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": prev_hash})
    pm = session.info.get("plugins")
    if pm is not None and pm.hook.audit_event_written.get_hookimpls():
        def tell() -> None:  # observers never undo the commit; one failing does not silence the others
            for row in values:  # each told of the event as its row was written
                call_each(pm, "audit_event_written", strict=False, event=AuditEvent(**row))

        db.after_commit(session, tell)
    return values


def verify(session: Session) -> tuple[bool, str]:
    """Walk the chain; return (ok, "ok N events") or (False, the first broken event)."""
    prev_hash, expected_seq = GENESIS, 1
    rows = session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars()
    count = 0
    for row in rows:
        if row.seq != expected_seq:
            return False, f"event {expected_seq} is missing (next found is {row.seq})"
        if row.prev_hash != prev_hash:
            return False, f"event {row.seq} does not follow event {row.seq - 1} (previous hash differs)"
        fields = dict(seq=row.seq, at=row.at, actor=row.actor, action=row.action, subject=row.subject,
                      detail=row.detail, prev_hash=row.prev_hash)
        if _digest(**fields) != row.hash:
            return False, f"event {row.seq} was changed ({row.action} on {row.subject} at {row.at:%Y-%m-%d %H:%M:%S})"
        prev_hash, expected_seq, count = row.hash, row.seq + 1, count + 1
    head = session.get(AuditHead, 1)
    if head is not None and head.seq != count:
        return False, f"events after {count} are missing (the chain's head is event {head.seq})"
    if head is not None and head.hash != prev_hash:
        return False, f"event {count} is not the one the chain's head recorded (it was replaced)"
    return True, f"ok {count} events"
