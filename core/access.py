"""The one authorization gate (DESIGN §5).

``can(principal, action, resource)`` is deny-by-default: the core's own rules
and the plugins' ``access_vote`` hook decide, and any deny wins. Every route
declares its rule with ``Depends(rule("action"))`` or ``public``; a test fails
on a route without one, and the app refuses to start with one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import hmac

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

ANONYMOUS_KIND = "anonymous"


@dataclass(frozen=True)
class Principal:
    """Who is asking: an account, a share, a visit code, break-glass, or nobody."""

    kind: str = ANONYMOUS_KIND
    id: str | None = None
    roles: frozenset[str] = field(default_factory=frozenset)
    scope: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_anonymous(self) -> bool:
        return self.kind == ANONYMOUS_KIND


ANONYMOUS = Principal()
# Principals that reach studies through a scope: accounts (their patients), and the
# share and visit-code sessions that sharing and plugins open (``study:<id>`` entries).
PATIENT_SIDE_KINDS = {"account", "share", "visit"}
PACS = Principal(kind="pacs", id="pacs", roles=frozenset({"pacs"}))

# Core rules: action -> predicate(principal, resource). Domains add theirs here.
CORE_RULES: dict[str, Callable[[Principal, Any], bool]] = {
    "public": lambda principal, resource: True,
    # a signed-in portal account acting on itself (its settings, its sessions)
    "account.self": lambda principal, resource: principal.kind == "account",
    "staff.any": lambda principal, resource: bool(principal.roles & {"staff", "helpdesk", "admin"}),
    "helpdesk.queue": lambda principal, resource: bool(principal.roles & {"helpdesk", "admin"}),
    "admin.only": lambda principal, resource: "admin" in principal.roles,
    # the study store: reading is scoped object by object in core/studies/queries.py
    "studies.read": lambda principal, resource: principal.kind in PATIENT_SIDE_KINDS or bool(
        principal.roles & {"staff", "helpdesk", "admin", "pacs"}),
    # exports of what one may read (core/studies/exports); plugins may refuse by format or study
    "studies.export": lambda principal, resource: (
        principal.kind in PATIENT_SIDE_KINDS and (principal.kind != "share" or "download" in principal.scope)
    ) or bool(principal.roles & {"staff", "helpdesk", "admin"}),
    # sharing (core/sharing): patients share their own exams; a recipient re-shares if allowed
    "sharing.create": lambda principal, resource: principal.kind == "account" or (
        principal.kind == "share" and "reshare" in principal.scope),
    # a doctor's guest account (core/sharing/invites.py): its list of shares, nothing else
    "sharing.guest": lambda principal, resource: principal.kind == "guest",
    "studies.store": lambda principal, resource: bool(principal.roles & {"staff", "admin", "pacs"}),
    # the demo site's outbox of stored emails and SMS (core/outbox.py)
    "outbox.view": lambda principal, resource: "admin" in principal.roles,
}


def can(pm, principal: Principal, action: str, resource: Any = None) -> bool:
    votes = pm.hook.access_vote(principal=principal, action=action, resource=resource)
    if any(vote is False for vote in votes):
        return False
    core_rule = CORE_RULES.get(action)
    return bool(core_rule and core_rule(principal, resource)) or any(vote is True for vote in votes)


SHARE_COOKIE = "__Host-filmless_share"  # a share's recipient session (core/sharing)
CSRF_COOKIE = "__Host-filmless_csrf"
CSRF_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_PATHS = ("/dicomweb/", "/api/")  # machine callers: 401 with a Bearer challenge, not a page's 403


def current_principal(request: Request) -> Principal:
    """Who sent this request, from its session cookie (resolved once per request)."""
    if not hasattr(request.state, "principal"):
        request.state.principal = _principal_from_cookie(request)
    return request.state.principal


def _principal_from_cookie(request: Request) -> Principal:
    from core.identity import sessions
    from core.sharing import service as sharing

    authorization = request.headers.get("authorization", "")
    if authorization:  # an API caller: only the PACS has a token; a wrong one is nobody
        expected = request.app.state.runtime.site.config.studies.pacs_token
        scheme, _, given = authorization.partition(" ")
        if expected and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode()):
            return PACS
        return ANONYMOUS
    if not request.cookies:
        return ANONYMOUS
    runtime = request.app.state.runtime
    token, shared = request.cookies.get(sessions.COOKIE), request.cookies.get(SHARE_COOKIE)
    # plugins' own sessions (a visit code, break-glass) have cookies the core does not know
    asks_plugins = bool(runtime.pm.hook.request_principal.get_hookimpls())
    if not token and not shared and not asks_plugins:
        return ANONYMOUS
    with runtime.sessions() as session:
        # an opened share wins while it lasts: its recipient sees exactly what was shared
        principal = sharing.principal_for(session, shared) if shared else None
        if principal is None and asks_plugins:
            principal = next((found for found in runtime.pm.hook.request_principal(request=request, session=session)
                              if found is not None), None)
        if principal is None:
            principal = sessions.principal_for(session, sessions.find(session, token=token, site=runtime.site))
        session.commit()
    return principal


async def check_csrf(request: Request) -> None:
    """Every state-changing request from a browser carries the token of its CSRF cookie
    (double submit, ``__Host-`` cookie); API calls with an Authorization header are exempt."""
    if request.method not in UNSAFE_METHODS or "authorization" in request.headers:
        return
    expected = request.cookies.get(CSRF_COOKIE, "")
    given = request.headers.get("x-csrf-token", "")
    if not given and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        given = str((await request.form()).get(CSRF_FIELD, ""))
    if not expected or not hmac.compare_digest(expected, given):
        raise HTTPException(status_code=403, detail="csrf")


def rule(action: str) -> Any:
    """A route dependency: allow the request only if ``can(principal, action)``."""

    async def check(request: Request) -> Principal:
        await check_csrf(request)
        # a bearer token is checked without the database: no need for a worker thread
        principal = current_principal(request) if "authorization" in request.headers \
            else await run_in_threadpool(current_principal, request)
        if not can(request.app.state.runtime.pm, principal, action):
            if principal.is_anonymous and request.url.path.startswith(API_PATHS):
                # an API caller without a (valid) token: say which credentials to bring
                raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"})
            # 404 for the anonymous too would hide pages; 403 names no resource.
            raise HTTPException(status_code=403)
        return principal

    check.access_action = action
    return Depends(check)


public = rule("public")


def flatten(routes) -> list:
    """Every route, looking inside included routers (which recent FastAPI keeps
    nested instead of copying their routes into the app)."""
    found = []
    for route in routes:
        nested = getattr(route, "original_router", None)
        found.extend(flatten(nested.routes) if nested is not None else [route])
    return found


def declared_rule(route) -> str | None:
    """The action a route declared, or None (used by the start-up check and its test)."""
    dependant = getattr(route, "dependant", None)
    for dependency in dependant.dependencies if dependant else ():
        action = getattr(dependency.call, "access_action", None)
        if action:
            return action
    return getattr(getattr(route, "app", None), "access_action", None)
