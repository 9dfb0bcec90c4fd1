"""Blobs that live or die with a database transaction.

A blob is put just before its rows commit, under a claim (``blobs.claim``) that
lasts until the transaction ends: a rollback deletes the blob, and a process
killed in between leaves an abandoned claim that ``remove_orphans`` settles.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from core.studies import blobs
from core.studies.models import Instance, Report

_UNSETTLED = "filmless_unsettled_blobs"


def blob_key(kind: str, name: str) -> str:
    """A store key from a hash of ``name``, so no UID or file name ever becomes a path."""
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return f"{kind}/{digest[:2]}/{digest[2:4]}/{digest}"


def put_in_transaction(session: Session, store: blobs.BlobStore, key: str, source: Path) -> None:
    """Move ``source`` into the store under ``key``; the blob stays only if the session's
    current transaction commits (a rollback, or closing without commit, deletes it)."""
    put_many_in_transaction(session, store, [(key, source)])


def put_many_in_transaction(session: Session, store: blobs.BlobStore, items: list[tuple[str, Path]], *,
                            prepared: bool = False) -> None:
    """``put_in_transaction`` for several ``(key, source)``, moved in together (``prepared``: see
    ``BlobStore.put_many``). Each key must be one that no committed row names: a rollback deletes
    whatever is at it."""
    session.connection()  # begin the transaction now if none has begun: its end settles the blobs
    unsettled = session.info.setdefault(_UNSETTLED, [])
    for key, _source in items:
        unsettled.append((store, blobs.claim(store, key)))  # claimed before moved: a failure part-way is undone
    store.put_many(items, prepared=prepared)


@event.listens_for(Session, "after_commit")
def _keep_committed_blobs(session: Session) -> None:
    if not session.in_nested_transaction():  # a savepoint's commit is not the end yet
        for _store_, claim in session.info.pop(_UNSETTLED, []):
            claim.release()


@event.listens_for(Session, "after_transaction_end")
def _delete_uncommitted_blobs(session: Session, transaction) -> None:
    if transaction.parent is None:
        for store, claim in session.info.pop(_UNSETTLED, []):
            try:
                store.delete(claim.key)
            finally:
                claim.release()


def remove_orphans(session: Session, runtime) -> int:
    """Delete blobs that a killed process moved in without committing their rows; run at
    the start of ``filmless import`` and ``filmless dicom-listen``. Returns how many."""
    removed = 0
    store = runtime.blobs
    for claim in blobs.abandoned_claims(store):
        try:
            held = session.scalar(select(Instance.id).where(Instance.blob_key == claim.key).limit(1)) or \
                session.scalar(select(Report.id).where(Report.pdf_blob_key == claim.key).limit(1))
            if not held and store.exists(claim.key):
                store.delete(claim.key)
                removed += 1
        finally:
            claim.release()
    session.rollback()
    return removed


def clear_leftovers(runtime) -> int:
    """What a killed process left: half-received scratch files and uncommitted blobs. Safe while
    other processes receive (it touches only what no living process holds). Returns how many."""
    removed = blobs.sweep_scratch(runtime.blobs)
    with runtime.sessions() as session:
        removed += remove_orphans(session, runtime)
    return removed
