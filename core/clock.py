"""The one source of "now" (DESIGN §6).

Code asks ``clock.now()`` and never ``datetime.now()``, so a test can move time
across an expiry with ``clock.travel()`` instead of sleeping.
"""
from __future__ import annotations

import contextlib
from datetime import datetime, timedelta, timezone
from typing import Iterator

_frozen: datetime | None = None


def now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return _frozen if _frozen is not None else datetime.now(timezone.utc)


def freeze(at: datetime) -> None:
    """Stop the clock at ``at`` (aware) until ``unfreeze()``."""
    global _frozen
    if at.tzinfo is None:
        raise ValueError("clock.freeze needs a timezone-aware datetime")
    _frozen = at.astimezone(timezone.utc)


def advance(delta: timedelta) -> datetime:
    """Move a frozen clock forward by ``delta``; returns the new now."""
    if _frozen is None:
        raise RuntimeError("clock.advance needs a frozen clock")
    freeze(_frozen + delta)
    return now()


def unfreeze() -> None:
    global _frozen
    _frozen = None


@contextlib.contextmanager
def travel(at: datetime) -> Iterator[None]:
    """Freeze the clock at ``at`` for the ``with`` block."""
    freeze(at)
    try:
        yield
    finally:
        unfreeze()
