"""The centre picker: a visitor says which imaging centre they go to.

The choice sets which centre's name and help line the pages show (``locations``);
it never changes what anyone may see, so both routes are public.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from core import access
from core.i18n import gettext as _
from core.web import render, safe_next
from plugins.radnet_icode import locations

router = APIRouter()


def _page(request: Request, back: str, status_code: int = 200, error: str = ""):
    settings = locations.settings_of_request(request)
    return render(request, "radnet_icode/centre.html", status_code=status_code, regions=locations.by_region(settings),
                  chosen=locations.location_of_request(request, settings), back=safe_next(back), error=error,
                  help_phone=settings.help_phone, phone_link=locations.phone_link)


@router.get("/visit/centre", response_class=HTMLResponse, dependencies=[access.public])
def choose_centre(request: Request, next: str = "/"):
    return _page(request, next)


@router.post("/visit/centre", dependencies=[access.public])
def remember_centre(request: Request, centre: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/"):
    settings = locations.settings_of_request(request)
    chosen = settings.location(centre)
    if chosen is None:
        return _page(request, next, status_code=400, error=_("Please choose one of the centres listed."))
    response = RedirectResponse(safe_next(next), status_code=303)
    locations.remember_choice(response, chosen)
    return response
