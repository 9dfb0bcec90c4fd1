"""The one authorization gate (DESIGN §5).

``can(principal, action, resource)`` is deny-by-default: the core's own rules
and the plugins' ``access_vote`` hook decide, and any deny wins. Every route
declares its rule with ``Depends(rule("action"))`` or ``public``; a test fails
on a route without one, and the app refuses to start with one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from fastapi import Depends, HTTPException, Request

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

# Core rules: action -> predicate(principal, resource). Domains add theirs here.
CORE_RULES: dict[str, Callable[[Principal, Any], bool]] = {
    "public": lambda principal, resource: True,
}


def can(pm, principal: Principal, action: str, resource: Any = None) -> bool:
    votes = pm.hook.access_vote(principal=principal, action=action, resource=resource)
    if any(vote is False for vote in votes):
        return False
    core_rule = CORE_RULES.get(action)
    return bool(core_rule and core_rule(principal, resource)) or any(vote is True for vote in votes)


def current_principal(request: Request) -> Principal:
    return getattr(request.state, "principal", ANONYMOUS)


def rule(action: str) -> Any:
    """A route dependency: allow the request only if ``can(principal, action)``."""

    async def check(request: Request) -> Principal:  # pure CPU: no thread hop
        principal = current_principal(request)
        if not can(request.app.state.runtime.pm, principal, action):
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
