"""The audit trail's pages: "My activity" for accounts, and the accounting of disclosures
of one patient for staff (a printable page, or CSV). Both are themselves audited."""
from __future__ import annotations

import csv
import io
from datetime import date
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from core import access, clock, i18n
from core.audit import activity
from core.audit import service as audit
from core.db import DbSession
from core.i18n import gettext as _
from core.studies.models import Patient
from core.studies.pages import patient_name
from core.web import render

router = APIRouter()
NO_STORE = {"Cache-Control": "no-store"}  # who looked at someone's health records is itself private
ACCOUNTING_YEARS = 6  # the period an accounting of disclosures covers unless asked otherwise


def _zone(request: Request) -> str:
    return request.app.state.runtime.site.config.site.timezone


def _today(zone: str) -> date:
    return clock.now().astimezone(ZoneInfo(zone)).date()


@router.get("/activity", response_class=HTMLResponse, dependencies=[access.rule("account.self")])
def my_activity(request: Request, session: DbSession, kind: str = "", date_from: str = "", date_to: str = "",
                page: str = "1"):
    principal = access.current_principal(request)
    filters = activity.ActivityFilters.parse(kind, date_from, date_to, page)
    found = activity.my_activity(session, principal, filters, zone=_zone(request))
    audit.record(session, actor=f"account:{principal.id}", action="activity.viewed",
                 subject=f"account:{principal.id}",
                 detail={"kind": filters.kind, "page": filters.page, "entries": len(found.entries)})
    session.commit()
    response = render(request, "audit/activity.html", filters=filters, found=found,
                      kinds=activity.kind_labels())
    response.headers.update(NO_STORE)
    return response


@router.get("/staff/patients/{patient_ref}/disclosures", dependencies=[access.rule("staff.any")])
def disclosures(request: Request, session: DbSession, patient_ref: int, format: str = "html"):
    patient = session.get(Patient, patient_ref)
    if patient is None:
        raise HTTPException(status_code=404)
    zone = _zone(request)
    # ``from`` is a Python keyword: read from the query string itself
    asked = activity.ActivityFilters.parse("", request.query_params.get("from", ""),
                                           request.query_params.get("to", ""))
    date_to = asked.date_to or _today(zone)
    date_from = asked.date_from or _years_before(date_to, ACCOUNTING_YEARS)
    start, end = activity.period(date_from, date_to, zone)
    rows = activity.disclosures(session, patient.id, start=start, end=end)
    principal = access.current_principal(request)
    as_csv = format == "csv"
    audit.record(session, actor=f"account:{principal.id}", action="disclosures.exported",
                 subject=f"patient:{patient.id}",
                 detail={"from": date_from.isoformat(), "to": date_to.isoformat(), "rows": len(rows),
                         "format": "csv" if as_csv else "html"})
    session.commit()
    if as_csv:
        name = f"disclosures-patient-{patient.id}-{date_from.isoformat()}-{date_to.isoformat()}.csv"
        return Response(disclosures_csv(rows, zone), media_type="text/csv; charset=utf-8",
                        headers={**NO_STORE, "Content-Disposition": f'attachment; filename="{name}"'})
    response = render(request, "audit/disclosures.html", patient=patient, name=patient_name(patient), rows=rows,
                      date_from=date_from, date_to=date_to, problems=asked.problems,
                      printed_at=i18n.format_datetime(clock.now(), "medium"),
                      title=_("Accounting of disclosures"))
    response.headers.update(NO_STORE)
    return response


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return date(day.year - years, 2, 28)


def disclosures_csv(rows: list[activity.Disclosure], zone: str) -> str:
    """The accounting as CSV, times in the site's zone (ISO 8601); cells a spreadsheet would run
    as a formula (a nickname starting with "=") are quoted with an apostrophe."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([_("Date and time"), _("Recipient"), _("Recipient's email"), _("What"), _("Action"),
                     _("Purpose")])
    local = ZoneInfo(zone)
    for row in rows:
        cells = [row.at.astimezone(local).isoformat(timespec="seconds"), row.recipient, row.recipient_email,
                 row.what, row.doing, row.purpose]
        writer.writerow([f"'{cell}" if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell for cell in cells])
    return out.getvalue()
