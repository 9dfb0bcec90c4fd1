"""Translations: every message the core and the plugins show is in the Spanish
catalogue, translated and not fuzzy, with the same placeholders as the English,
and core.i18n really serves it.

Messages are extracted here the way ``make messages`` does it (babel.cfg, the
same keywords, ``core`` and ``plugins``), so a new string fails this test until
``make messages`` has been run and the string translated in
``locales/es/LC_MESSAGES/messages.po``.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.pofile import read_po

try:
    from babel.messages.frontend import parse_mapping_cfg
except ImportError:  # Babel < 2.15
    from babel.messages.frontend import parse_mapping as parse_mapping_cfg

from core import i18n

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ["core", "plugins"]
# The Makefile's `-k _ -k gettext -k ngettext:1,2`, on top of Babel's defaults.
KEYWORDS = {**DEFAULT_KEYWORDS, "_": None, "gettext": None, "ngettext": (1, 2)}
SPANISH = ROOT / "locales" / "es" / "LC_MESSAGES" / "messages.po"
# %(name)s style placeholders (newstyle gettext in templates, core.i18n in Python).
PLACEHOLDER = re.compile(r"%\((\w+)\)[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?[diouxXeEfFgGcrsa]")


def extracted() -> dict[str, list[str]]:
    """msgid (the singular for plurals) -> where it is used."""
    with (ROOT / "babel.cfg").open(encoding="utf-8") as cfg:
        method_map, options_map = parse_mapping_cfg(cfg, str(ROOT / "babel.cfg"))
    found: dict[str, list[str]] = {}
    for directory in SOURCE_DIRS:
        for filename, lineno, message, _comments, _context in extract_from_dir(
            ROOT / directory, method_map, options_map, keywords=KEYWORDS
        ):
            msgid = message[0] if isinstance(message, (tuple, list)) else message
            if msgid:
                found.setdefault(msgid, []).append(f"{directory}/{filename}:{lineno}")
    return found


def spanish():
    with SPANISH.open("rb") as po:
        return read_po(po, locale="es")


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text.replace("%%", "")))


def test_extraction_finds_messages():
    messages = extracted()
    assert "Sign in" in messages  # a template string
    assert "Powered by Filmless %(version)s" in messages  # newstyle gettext with a placeholder


def test_every_message_is_translated_into_spanish():
    catalog = spanish()
    problems = []
    for msgid, where in sorted(extracted().items()):
        message = catalog.get(msgid)
        used_at = ", ".join(where)
        if message is None:
            problems.append(f"missing: {msgid!r} ({used_at})")
        elif message.fuzzy:
            problems.append(f"fuzzy: {msgid!r} ({used_at})")
        elif not all(message.string if isinstance(message.string, (tuple, list)) else [message.string]):
            problems.append(f"untranslated: {msgid!r} ({used_at})")
    assert not problems, (
        f"{len(problems)} message(s) need work in {SPANISH.relative_to(ROOT)} "
        "(run `make messages`, then translate):\n" + "\n".join(problems)
    )


def test_spanish_keeps_the_placeholders():
    catalog = spanish()
    problems = []
    for message in catalog:
        if not message.id or not message.string:
            continue
        ids = message.id if isinstance(message.id, (tuple, list)) else (message.id,)
        strings = message.string if isinstance(message.string, (tuple, list)) else (message.string,)
        expected = [placeholders(msgid) for msgid in ids]
        for string in strings:
            if string and placeholders(string) not in expected:
                problems.append(f"{ids[0]!r}: {sorted(placeholders(string))} "
                                f"instead of {sorted(expected[-1])} in {string!r}")
    for message, errors in catalog.check():  # Babel's own checkers (python-format, plural forms)
        problems.extend(f"{message.id!r}: {error}" for error in errors)
    assert not problems, "\n".join(problems)


@pytest.fixture
def spanish_active():
    i18n.translations.cache_clear()
    i18n.activate("es")
    yield
    i18n.activate("en")
    i18n.translations.cache_clear()


def test_core_i18n_serves_spanish(spanish_active):
    assert i18n.gettext("Sign in") != "Sign in"
    assert i18n.gettext("Sign in") == spanish().get("Sign in").string
    powered = i18n.gettext("Powered by Filmless %(version)s", version="9.9")
    assert "9.9" in powered and powered != "Powered by Filmless 9.9"
