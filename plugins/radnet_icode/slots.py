"""What the plugin adds to the core's pages (``template_slot``) and menu (``navigation``).

- ``page_top``: the chosen centre's bar (``locations``), the banner of a visit opened
  with an I-Code, and on "My exams" the outcome of an I-Code typed while signed in;
- ``signin_below``: the centre picker (``locations``) and the I-Code box;
  ``home_after_intro``: the I-Code box;
- ``staff_patient``: the patient's visits, their I-Codes, "Print Portal Pass", "Reactivate";
- ``staff_request``: the visit a help request names, with "Reactivate this I-Code".
"""
from __future__ import annotations

from markupsafe import Markup
from sqlalchemy.orm import object_session

from core import access, i18n
from core.audit import service as audit
from core.i18n import gettext as _
from core.plugins import NavEntry
from plugins.radnet_icode import codes, desk, service


def _fragment(request, template: str, **context) -> Markup:
    csrf = Markup('<input type="hidden" name="{}" value="{}">').format(
        access.CSRF_FIELD, getattr(request.state, "csrf_token", ""))
    page = request.app.state.templates.get_template(template)
    return Markup(page.render(request=request, csrf_field=csrf, language=i18n.current_language(),
                              language_names=i18n.LANGUAGE_NAMES, **context))


def _centres(function: str, context: dict) -> Markup | None:
    try:
        from plugins.radnet_icode import locations
    except ImportError:  # the centres are optional for the rest of the plugin
        return None
    return getattr(locations, function)(context)


def render(name: str, context: dict) -> Markup | None:
    request = context.get("request")
    if request is None:
        return None
    if name == "page_top":
        parts = [_centres("page_top_html", context), visit_banner(request), exams_notice(request)]
    elif name == "signin_below":
        parts = [_centres("picker_html", context), _fragment(request, "radnet_icode/slot_icode_box.html")]
    elif name == "home_after_intro":
        parts = [_fragment(request, "radnet_icode/slot_icode_box.html")]
    elif name == "staff_patient" and context.get("patient") is not None:
        parts = [staff_patient(request, context["patient"])]
    elif name == "staff_request" and context.get("ticket") is not None:
        parts = [staff_request(request, context["ticket"])]
    else:
        return None
    found = [part for part in parts if part]
    return Markup("").join(found) if found else None


def visit_banner(request) -> Markup | None:
    if access.current_principal(request).kind != "visit":
        return None
    return _fragment(request, "radnet_icode/slot_visit_banner.html")


def exams_notice(request) -> Markup | None:
    outcome = request.query_params.get("icode")
    if request.url.path != "/exams" or outcome not in ("linked", "already"):
        return None
    return _fragment(request, "radnet_icode/slot_exams_notice.html", outcome=outcome)


def _can_reactivate(request) -> bool:
    return access.can(request.app.state.runtime.pm, access.current_principal(request), "helpdesk.queue")


def _page_session(row):
    """The session of the page being rendered (the row it passed to the slot came from it): a
    second one would wait on the page's own transaction, and SQLite allows one writer."""
    session = object_session(row)
    if session is None:
        raise RuntimeError("the slot was given a row that belongs to no session")
    return session


def staff_patient(request, patient) -> Markup:
    runtime = request.app.state.runtime
    rows = desk.visits_of_patient(_page_session(patient), site=runtime.site, patient_ref=patient.id)
    notice = _("The I-Code works again.") if request.query_params.get("icode") == "reactivated" else ""
    return _fragment(request, "radnet_icode/slot_staff_patient.html", rows=rows, notice=notice,
                     can_reactivate=_can_reactivate(request), languages=runtime.site.config.site.languages,
                     days=service.settings_of(runtime.site).icode_valid_days)


def staff_request(request, ticket) -> Markup | None:
    """The visit a help request names. Showing it shows the patient's name and exams: the look
    is audited and committed with the page's own transaction (the page only reads)."""
    runtime = request.app.state.runtime
    session = _page_session(ticket)
    found = desk.ticket_visit(session, site=runtime.site, ticket=ticket)
    if found is None:
        return None
    name = " ".join(part for part in (found.patient.given_name, found.patient.family_name) if part)
    principal = access.current_principal(request)
    audit.record(session, actor=f"{principal.kind}:{principal.id}", action="icode.request_visit_viewed",
                 subject=f"patient:{found.patient.id}", detail={"request": ticket.id, "icode": found.icode.id})
    session.commit()
    return _fragment(request, "radnet_icode/slot_staff_request.html", found=found, ticket=ticket,
                     patient_name=name, state=codes.status_of(found.icode).state,
                     can_reactivate=_can_reactivate(request),
                     days=service.settings_of(runtime.site).icode_valid_days)


def navigation(principal) -> list[NavEntry]:
    if principal.kind == "visit":
        return [NavEntry(_("Your visit"), "/visit/exams", order=5), NavEntry(_("Get help"), "/visit/help", order=60)]
    if principal.is_anonymous:
        return [NavEntry(_("I-Code"), "/visit", order=50)]
    return []
