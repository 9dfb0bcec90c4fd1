"""Languages, translations and locale-aware formatting (DESIGN §6).

The reader's language lives in a context variable set per request, so one
Jinja2 environment serves every language. Catalogues are read from
``locales/<lang>/LC_MESSAGES/messages.po`` at start-up (no compiled files to
forget). Dates, times, numbers and money go through Babel in the reader's
locale and the site's time zone.
"""
from __future__ import annotations

import contextvars
import functools
import io
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from babel import dates, numbers
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations

LOCALES_DIR = Path(__file__).resolve().parent.parent / "locales"
LANGUAGE_NAMES = {"en": "English", "es": "Español"}
COOKIE = "filmless_lang"

_language: contextvars.ContextVar[str] = contextvars.ContextVar("language", default="en")
_timezone: contextvars.ContextVar[str] = contextvars.ContextVar("timezone", default="UTC")


@functools.cache
def translations(language: str) -> NullTranslations:
    po_path = LOCALES_DIR / language / "LC_MESSAGES" / "messages.po"
    if language == "en" or not po_path.exists():
        return NullTranslations()
    with po_path.open("rb") as po:
        catalog = read_po(po, locale=language)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return Translations(buffer)


def activate(language: str, timezone: str | None = None) -> None:
    _language.set(language)
    if timezone:
        _timezone.set(timezone)


@contextmanager
def speaking(language: str, timezone: str | None = None):
    """``activate`` for one request: whoever called the app (a test's client, in the same task)
    gets its own language back afterwards."""
    tokens = [(_language, _language.set(language))] + ([(_timezone, _timezone.set(timezone))] if timezone else [])
    try:
        yield
    finally:
        for variable, token in reversed(tokens):
            variable.reset(token)


def current_language() -> str:
    return _language.get()


def gettext(message: str, **variables) -> str:
    text = translations(_language.get()).gettext(message)
    return text % variables if variables else text


def ngettext(singular: str, plural: str, n: int, **variables) -> str:
    text = translations(_language.get()).ngettext(singular, plural, n)
    return text % {"num": n, **variables}


def N_(message: str) -> str:
    """Mark a message to be extracted now and translated where it is shown (``_(label)``)."""
    return message


_ = gettext


def pick_language(offered: list[str], default: str, cookie: str | None, accept_language: str | None) -> str:
    """The cookie's choice if offered, else the browser's first offered language, else the site default."""
    if cookie in offered:
        return cookie
    for part in (accept_language or "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in offered:
            return code
    return default


def _local(moment: datetime) -> datetime:
    return moment.astimezone(ZoneInfo(_timezone.get()))


def format_datetime(moment: datetime, format: str = "medium") -> str:
    return dates.format_datetime(_local(moment), format=format, locale=_language.get())


def format_date(moment, format: str = "long") -> str:
    """A moment's day in the site's zone; a calendar date (a birth date, a study date) as it is."""
    day = _local(moment).date() if isinstance(moment, datetime) else moment
    return dates.format_date(day, format=format, locale=_language.get())


def format_number(value) -> str:
    return numbers.format_decimal(value, locale=_language.get())


def format_money(minor_units: int, currency: str) -> str:
    """Money is integer minor units with an ISO currency code; never floats."""
    digits = numbers.get_currency_precision(currency)
    return numbers.format_currency(
        numbers.decimal.Decimal(minor_units).scaleb(-digits), currency, locale=_language.get()
    )
