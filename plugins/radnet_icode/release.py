"""Report release delayed by law: the rule engine behind the ``report_release_at`` vote.

A report's study was performed at a centre (``locations.location_of_study``); the
centre's state is the jurisdiction. Every rule of the site file that names that
state, covers the report's category and, if it lists flags, one of the report's
flags, gives a release time; the latest one wins. The rules are data, so a law that
changes is changed in the site file, not here.
"""
from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta, timezone

from core import ReleaseHold
from plugins.radnet_icode import locations
from plugins.radnet_icode.settings import ReleaseRule, Settings

WEEKEND = (5, 6)  # Saturday, Sunday (datetime.weekday())


def hold_for(settings: Settings, site, report, study) -> ReleaseHold | None:
    """The latest hold any matching rule imposes on ``report`` of ``study``, or None.

    The hold's ``rule`` names the rule and the jurisdiction that made it apply (the core
    writes it to the audit trail with the decision); its ``law`` is shown to the patient."""
    centre = locations.location_of_study(settings, study)
    if centre is None:
        return None
    signed_at = _aware(report.signed_at)
    deciding: ReleaseHold | None = None
    for rule in settings.release_rules:
        if not covers(rule, centre.state, report.category, report.flags):
            continue
        at = release_time(rule, signed_at, site.config.site.timezone)
        if deciding is None or at > deciding.at:
            deciding = ReleaseHold(at=at, rule=f"{rule.name} ({centre.state})", law=rule.law)
    return deciding


def covers(rule: ReleaseRule, jurisdiction: str, category: str, flags) -> bool:
    """Whether ``rule`` applies to a report of ``category`` with ``flags`` performed in ``jurisdiction``."""
    if jurisdiction not in rule.jurisdictions:
        return False
    if rule.categories and category not in rule.categories:
        return False
    return not rule.flags or bool(set(rule.flags) & set(flags or ()))


def release_time(rule: ReleaseRule, signed_at: datetime, time_zone: str) -> datetime:
    """``signed_at`` plus the rule's days and hours, in UTC.

    Calendar days are whole days of 24 hours. Business days are counted Monday to
    Friday in the site's time zone and keep the local time of day (a report signed on
    Friday at 16:00 with two business days is released on Tuesday at 16:00)."""
    if rule.business_days:
        moment = add_business_days(signed_at, rule.delay_days, zoneinfo.ZoneInfo(time_zone))
    else:
        moment = signed_at + timedelta(days=rule.delay_days)
    return (moment + timedelta(hours=rule.delay_hours)).astimezone(timezone.utc)


def add_business_days(moment: datetime, days: int, zone: zoneinfo.ZoneInfo) -> datetime:
    """``moment`` moved forward by ``days`` weekdays of ``zone``, at the same local clock time."""
    local = moment.astimezone(zone).replace(tzinfo=None)  # wall-clock arithmetic: DST must not shift the hour
    counted = 0
    while counted < days:
        local += timedelta(days=1)
        if local.weekday() not in WEEKEND:
            counted += 1
    return local.replace(tzinfo=zone).astimezone(timezone.utc)


def _aware(moment: datetime) -> datetime:
    # SQLite hands back what was stored; the core stores UTC
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
