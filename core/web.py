"""Pages: the layered Jinja2 environment, ``render``, slots, the language choice,
error pages in the reader's language, and the core's own public routes."""
from __future__ import annotations

import functools
import re
from http import HTTPStatus
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlsplit

import jinja2
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from markupsafe import Markup
from sqlalchemy import text
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

import core
from core import access, i18n
from core.i18n import gettext as _
from core.identity.security import new_token
from core.plugins import NavEntry

CORE_DIR = Path(__file__).resolve().parent
CORE_TEMPLATE_DIRS = [CORE_DIR / "templates", *sorted(CORE_DIR.glob("*/templates"))]
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
HSTS = "max-age=31536000; includeSubDomains"


def template_environment(site, pm) -> jinja2.Environment:
    """Site folder, then each plugin's (site-file order), then the core's; ``core:`` reaches the core's."""
    core_loader = jinja2.FileSystemLoader(CORE_TEMPLATE_DIRS)
    own = [site.config.site.templates] if site.config.site.templates else []
    contributed = [d for dirs in pm.hook.template_dirs() for d in (dirs or [])]
    loader = jinja2.ChoiceLoader([
        jinja2.PrefixLoader({"core": core_loader}, delimiter=":"),
        jinja2.FileSystemLoader([*own, *contributed]),
        core_loader,
    ])
    env = jinja2.Environment(loader=loader, autoescape=True, extensions=["jinja2.ext.i18n"])
    env.install_gettext_callables(
        gettext=lambda message: i18n.translations(i18n.current_language()).gettext(message),
        ngettext=lambda s, p, n: i18n.translations(i18n.current_language()).ngettext(s, p, n),
        newstyle=True,
    )
    env.filters.update(datetime=i18n.format_datetime, date=i18n.format_date,
                       number=i18n.format_number, money=i18n.format_money)
    env.globals.update(version=core.__version__, language_names=i18n.LANGUAGE_NAMES)
    return env


def slot(pm, request: Request, name: str, **context) -> Markup:
    fragments = pm.hook.template_slot(name=name, context={**context, "request": request})
    return Markup("".join(str(f) for f in fragments if f))


def language_of(request: Request) -> str:
    info = request.app.state.runtime.site.config.site
    return i18n.pick_language(info.languages, info.default_language,
                              request.cookies.get(i18n.COOKIE), request.headers.get("accept-language"))


def core_navigation(principal) -> list[NavEntry]:
    """The core's own menu entries; plugins add theirs through the ``navigation`` hook."""
    if principal.kind != "account":
        return []
    entries = [NavEntry(i18n.gettext("My account"), "/account", order=90),
               NavEntry(i18n.gettext("My activity"), "/activity", order=80)]
    if principal.scope:  # linked to at least one patient
        entries.append(NavEntry(i18n.gettext("My exams"), "/exams", order=5))
        entries.append(NavEntry(i18n.gettext("Shared exams"), "/shares", order=7))
    if len(principal.scope) > 1:  # the patient picker matters only to people acting for several
        entries.append(NavEntry(i18n.gettext("My patients"), "/patients", order=10))
    if principal.roles & {"staff", "helpdesk", "admin"}:
        entries.append(NavEntry(i18n.gettext("Find a patient"), "/staff", order=20))
    if principal.roles & {"helpdesk", "admin"}:
        entries.append(NavEntry(i18n.gettext("Account requests"), "/staff/requests", order=30))
    return entries


def render(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
    runtime = request.app.state.runtime
    info = runtime.site.config.site
    i18n.activate(language_of(request), info.timezone)  # again: error pages run outside the middleware
    principal = access.current_principal(request)
    contributed = [core_navigation(principal), *runtime.pm.hook.navigation(principal=principal)]
    entries = sorted((e for found in contributed for e in (found or [])), key=lambda e: e.order)
    page = request.app.state.templates.get_template(template).render(
        request=request, site=info, site_identity=runtime.site.config.identity, demo=runtime.site.config.demo,
        principal=principal, navigation=entries,
        language=i18n.current_language(), languages=info.languages,
        slot=functools.partial(slot, runtime.pm, request),
        csrf_field=Markup('<input type="hidden" name="{}" value="{}">').format(
            access.CSRF_FIELD, getattr(request.state, "csrf_token", "")),
        **context,
    )
    response = HTMLResponse(page, status_code=status_code)
    response.headers["Content-Language"] = i18n.current_language()
    return response


def safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect."""
    parts = urlsplit(target or "/")
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return "/"
    return parts.path + (f"?{parts.query}" if parts.query else "")


router = APIRouter()


@router.get("/", response_class=HTMLResponse, dependencies=[access.public])
async def home(request: Request):
    return render(request, "home.html")


@router.get("/language/{code}", dependencies=[access.public])
def choose_language(request: Request, code: str, next: str = "/"):
    response = RedirectResponse(safe_next(next), status_code=303)
    if code in request.app.state.runtime.site.config.site.languages:
        response.set_cookie(i18n.COOKIE, code, max_age=365 * 24 * 3600, httponly=True, samesite="lax")
        principal = access.current_principal(request)
        if principal.kind == "account":  # also on other browsers, and for the messages we send
            from core.identity.models import Account

            with request.app.state.runtime.sessions() as session:
                session.get(Account, int(principal.id)).language = code
                session.commit()
    return response


@router.get("/branding.css", dependencies=[access.public])
async def branding_css(request: Request):
    branding = request.app.state.runtime.site.config.site.branding
    css = f":root {{ --brand: {branding.primary_colour}; --page: {branding.background_colour}; }}\n"
    return PlainTextResponse(css, media_type="text/css", headers={"Cache-Control": "max-age=300"})


@router.get("/healthz", dependencies=[access.public])
def healthz(request: Request):
    runtime = request.app.state.runtime
    checks = {}
    try:
        with runtime.engine.connect().execution_options(read_only=True) as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        checks["queue"] = "ok"
        checks["queue_pending"] = runtime.huey.pending_count()
    except Exception as exc:
        checks["queue"] = f"error: {type(exc).__name__}"
    healthy = checks["database"] == "ok" and checks["queue"] == "ok"
    return JSONResponse({"status": "ok" if healthy else "error", "version": core.__version__, **checks},
                        status_code=200 if healthy else 503)


def _wants_json(request: Request) -> bool:
    return request.url.path in ("/healthz",) or request.url.path.startswith(("/api/", "/dicomweb/"))


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if _wants_json(request):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
    # a signed-out reader (e.g. following an emailed link) is offered to sign in and come back
    signed_out = exc.status_code == 403 and getattr(request.state, "principal", None) in (None, access.ANONYMOUS)
    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    # our own details are sentences already in the reader's language; Starlette's default is the
    # status phrase in English, and "csrf" a code the template words itself
    reason = exc.detail if isinstance(exc.detail, str) and exc.detail not in (
        HTTPStatus(exc.status_code).phrase, "csrf") else ""
    return render(request, "error.html", status_code=exc.status_code, status=exc.status_code, detail=exc.detail,
                  reason=reason, sign_in_next=safe_next(back) if signed_out and request.method == "GET" else "")


async def server_error(request: Request, exc: Exception) -> Response:
    if _wants_json(request):
        return JSONResponse({"detail": "Internal Server Error"}, status_code=500)
    return render(request, "error.html", status_code=500, status=500)


# a number longer than this is no id, count or page of ours, and overflows the databases' integers
TOO_LONG_NUMBER = re.compile(r"^[+-]?\d{19,}$")


async def refuse_unusable_address(request: Request) -> None:
    """An app-wide dependency, before any route reads the request: a NUL character (PostgreSQL cannot
    even compare a string holding one) or a number beyond 64 bits, in the path or the query, is refused."""
    parts = [*request.url.path.split("/"), *(value for _name, value in request.query_params.multi_items())]
    if "\x00" in request.url.query or any("\x00" in part or TOO_LONG_NUMBER.match(part) for part in parts):
        raise HTTPException(status_code=400, detail=_("The address contains a value that is not allowed."))


# The middlewares are plain ASGI: every request passes through them, and Starlette's
# ``@app.middleware("http")`` (a task and a stream per request) cost more than most
# answers' own work (a cached picture, a QIDO search).

def _csrf_cookie(token: str) -> bytes:
    cookie = SimpleCookie()
    cookie[access.CSRF_COOKIE] = token
    cookie[access.CSRF_COOKIE].update({"path": "/", "secure": True, "httponly": True, "samesite": "lax"})
    return cookie.output(header="").strip().encode("latin-1")


class LanguageCsrfAndHeaders:
    """The reader's language for the request; its CSRF token (``request.state.csrf_token``,
    and the cookie that carries it on a first visit); on every answer the security headers,
    HSTS over HTTPS, ``no-store`` on DICOMweb unless it says otherwise, and ``Vary``."""

    def __init__(self, app, runtime):
        self.app, self.runtime = app, runtime

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        known = request.cookies.get(access.CSRF_COOKIE)
        request.state.csrf_token = token = known or new_token()
        https = scope.get("scheme") == "https"  # behind a proxy, uvicorn takes it from X-Forwarded-Proto
        dicomweb = scope["path"].startswith("/dicomweb/")  # answers carry health information unless they say otherwise

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if not known:
                    headers.raw.append((b"set-cookie", _csrf_cookie(token)))
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if https:
                    headers.setdefault("Strict-Transport-Security", HSTS)
                if dicomweb:
                    headers.setdefault("Cache-Control", "no-store")
                headers.setdefault("Vary", "Cookie, Accept-Language")
            await send(message)

        with i18n.speaking(language_of(request), self.runtime.site.config.site.timezone):
            await self.app(scope, receive, send_with_headers)


class DicomwebCors:
    """CORS for /dicomweb only, for the site's ``studies.cors_origins`` (e.g. an OHIF viewer
    served elsewhere, sending the PACS token). No credentials: cookies stay same-site."""

    def __init__(self, app, origins: frozenset[str]):
        self.app, self.origins = app, origins

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/dicomweb"):
            return await self.app(scope, receive, send)
        request_headers = Headers(scope=scope)
        origin = request_headers.get("origin")
        if origin not in self.origins:
            return await self.app(scope, receive, send)
        if scope["method"] == "OPTIONS" and "access-control-request-method" in request_headers:
            preflight = Response(status_code=204, headers={
                "Access-Control-Allow-Origin": origin, "Vary": "Origin",
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Accept, Content-Type, If-None-Match",
                "Access-Control-Max-Age": "600"})
            return await preflight(scope, receive, send)

        async def send_with_cors(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Access-Control-Allow-Origin"] = origin
                headers["Access-Control-Expose-Headers"] = "ETag, Warning, Content-Location"
                headers["Vary"] = ", ".join(filter(None, [headers.get("Vary"), "Origin"]))
            await send(message)

        await self.app(scope, receive, send_with_cors)


def install(app: FastAPI, runtime) -> None:
    """Templates, language and headers middleware, error pages, static files, core pages."""
    app.state.templates = template_environment(runtime.site, runtime.pm)

    app.add_middleware(LanguageCsrfAndHeaders, runtime=runtime)
    cors_origins = frozenset(runtime.site.config.studies.cors_origins)
    if cors_origins:
        app.add_middleware(DicomwebCors, origins=cors_origins)  # outside the headers: a preflight gets only its own

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, server_error)
    static = StaticFiles(directory=CORE_DIR / "static")
    static.access_action = "public"
    app.mount("/static", static, name="static")
    if runtime.site.config.site.static:
        site_static = StaticFiles(directory=runtime.site.config.site.static)
        site_static.access_action = "public"
        app.mount("/site-static", site_static, name="site-static")
    app.include_router(router)
