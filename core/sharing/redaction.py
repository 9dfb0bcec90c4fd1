"""Free text as a share that hides patient details gets it: the identifiers known for the
patient (names, IDs, date of birth as it is usually written) cut out, whole words, any case.

Used where the profile lets text be kept "cleaned": report text, the text of structured
reports, and descriptions when the site chooses Clean Descriptors (core.sharing.deidentify).
"""
from __future__ import annotations

import re
from datetime import date
from typing import Iterable

from babel import dates as babel_dates

REDACTED = "***"


def date_forms(day: date) -> set[str]:
    """The ways a date is usually written, as DICOM and in the site's languages."""
    forms = {day.strftime("%Y%m%d"), day.isoformat(), day.strftime("%d/%m/%Y"), day.strftime("%m/%d/%Y"),
             f"{day.day}/{day.month}/{day.year}", f"{day.month}/{day.day}/{day.year}", day.strftime("%d.%m.%Y")}
    for language in ("en", "es"):
        forms |= {babel_dates.format_date(day, format=size, locale=language) for size in ("medium", "long", "full")}
    return forms


def day_of(text: str) -> date | None:
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8])) if len(text) >= 8 and text[:8].isdigit() else None
    except ValueError:
        return None


class Redactor:
    """Cuts known identifiers out of free text (whole words, any case)."""

    def __init__(self, terms: Iterable[str]):
        kept = sorted({term.strip() for term in terms if len(term.strip()) >= 2}, key=len, reverse=True)
        self.pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(term) for term in kept) + r")(?!\w)",
                                  re.IGNORECASE) if kept else None

    def __call__(self, text):
        return self.pattern.sub(REDACTED, text) if self.pattern is not None and isinstance(text, str) else text


def name_parts(name: str) -> set[str]:
    return {part for part in re.split(r"[\^=\s,]+", str(name or "")) if len(part) >= 2}


def known_identifiers(patients) -> set[str]:
    """The terms that identify a patient, from their records (every practice's)."""
    terms: set[str] = set()
    for patient in patients:
        terms |= name_parts(patient.family_name) | name_parts(patient.given_name)
        terms |= {value for value in (patient.patient_id, patient.email, patient.mobile) if value and len(value) >= 3}
        if patient.birth_date:
            terms |= date_forms(patient.birth_date)
    return terms
