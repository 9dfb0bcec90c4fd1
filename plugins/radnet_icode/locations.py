"""The imaging centres: where a study was performed, and which centre a visitor chose.

A study belongs to the centre whose ``institution_names`` hold its DICOM Institution
Name, else whose ``station_names`` hold the Station Name of its first instances,
else to the site's ``default_location``. The centre's state is the jurisdiction of
the report-release rules (``release``).

A visitor may choose their centre (``centre_routes``); the choice is kept in a plain
cookie and only changes what the pages show (the centre's name and help line), never
what anyone may see.
"""
from __future__ import annotations

from itertools import islice

from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from core.studies.models import Instance, Series, Study
from plugins.radnet_icode.settings import Location, Settings

COOKIE = "filmless_centre"  # not __Host-: it holds no secret, and only picks what pages show
COOKIE_MAX_AGE = 365 * 24 * 3600
STATION_NAME = "00081010"  # DICOM JSON tag of Station Name
HEADERS_LOOKED_AT = 5  # a report instance often has no Station Name: look past it, not through the whole study


def _normal(name: str) -> str:
    return " ".join(name.split()).casefold()


def location_named(settings: Settings, institution: str = "", station: str = "") -> Location | None:
    """The centre that ``institution`` (a DICOM Institution Name) or else ``station`` names."""
    for given, field in ((institution, "institution_names"), (station, "station_names")):
        wanted = _normal(given or "")
        if not wanted:
            continue
        for location in settings.locations:
            if wanted in {_normal(name) for name in getattr(location, field)}:
                return location
    return None


def location_of_study(settings: Settings, study: Study, session: Session | None = None) -> Location | None:
    """The centre that performed ``study``, or the site's default centre, or None."""
    found = location_named(settings, institution=study.location or "")
    if found is None and any(location.station_names for location in settings.locations):
        session = session or object_session(study)
        if session is not None and study.id is not None:
            found = location_named(settings, station=station_name(session, study))
    return found or settings.location(settings.default_location)


def station_name(session: Session, study: Study) -> str:
    """The Station Name of the study's first instances that carry one, or ""."""
    headers = session.scalars(select(Instance.header).join(Series, Instance.series_ref == Series.id)
                              .where(Series.study_ref == study.id).order_by(Instance.id)
                              .limit(HEADERS_LOOKED_AT))
    for header in islice(headers, HEADERS_LOOKED_AT):
        values = ((header or {}).get(STATION_NAME) or {}).get("Value") or []
        if values and str(values[0]).strip():
            return str(values[0]).strip()
    return ""


# -- the visitor's choice ------------------------------------------------------------------------

def settings_of_request(request) -> Settings:
    return request.app.state.runtime.site.plugin_settings["radnet_icode"]


def location_of_request(request, settings: Settings) -> Location | None:
    """The centre this browser chose (cookie ``filmless_centre``), if it is still one of the site's."""
    return settings.location(request.cookies.get(COOKIE))


def remember_choice(response, location: Location) -> None:
    response.set_cookie(COOKIE, location.key, max_age=COOKIE_MAX_AGE, path="/", secure=True, httponly=True,
                        samesite="lax")


def help_phone(settings: Settings, location: Location | None) -> str:
    """The number a patient of ``location`` calls for help: the centre's, else the help desk's."""
    return location.phone if location is not None else settings.help_phone


def phone_link(phone: str) -> str:
    """A ``tel:`` address of a written phone number: its digits, and a leading + if it has one."""
    digits = "".join(ch for ch in phone if ch.isdigit())
    return "tel:" + ("+" if phone.strip().startswith("+") else "") + digits


def by_region(settings: Settings) -> list[tuple[str, list[Location]]]:
    """The centres grouped by region, regions and centres in site-file order."""
    groups: dict[str, list[Location]] = {}
    for location in settings.locations:
        groups.setdefault(location.region, []).append(location)
    return list(groups.items())


def _current_path(request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _fragment(request, template: str, **context) -> Markup:
    return Markup(request.app.state.templates.get_template(template).render(phone_link=phone_link, **context))


def page_top_html(context: dict) -> Markup | None:
    """The bar at the top of every page: the chosen centre, its help line and a way to change it.
    Nothing on a site with a single centre, or before a centre is chosen."""
    request = context.get("request")
    if request is None:
        return None
    settings = settings_of_request(request)
    chosen = location_of_request(request, settings)
    if chosen is None or len(settings.locations) < 2 or request.url.path.startswith("/visit/centre"):
        return None
    return _fragment(request, "radnet_icode/centre_bar.html", centre=chosen, back=_current_path(request))


def picker_html(context: dict) -> Markup | None:
    """On the sign-in page of a site with several centres: the way to choose one."""
    request = context.get("request")
    if request is None:
        return None
    settings = settings_of_request(request)
    if len(settings.locations) < 2:
        return None
    return _fragment(request, "radnet_icode/centre_picker.html", centre=location_of_request(request, settings),
                     back=_current_path(request))
