"""CSRF on every form: each state-changing route of the demo site (every plugin enabled)
refuses a browser's request that carries the CSRF cookie but not its token, and a
forged token, before anything else happens."""
from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from support import CSRF_COOKIE, demo_site_file

from core import access
from core.app import create_app
from core.site import load_site

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture(scope="module")
def demo_app(tmp_path_factory):
    return create_app(load_site(demo_site_file(tmp_path_factory.mktemp("csrf"))))


def unsafe_routes(app) -> list[tuple[str, str]]:
    found = []
    for route in access.flatten(app.routes):
        for method in sorted(set(getattr(route, "methods", None) or ()) & UNSAFE):
            # any value fits a path parameter here: the token is checked before the path's values are used
            found.append((method, re.sub(r"\{[^}]+\}", "1", route.path)))
    return found


def test_the_demo_site_has_many_forms(demo_app):
    assert len(unsafe_routes(demo_app)) >= 40


@pytest.mark.parametrize("token", [None, "forged"], ids=["no token", "forged token"])
def test_every_form_refuses_a_request_without_its_token(demo_app, token):
    with TestClient(demo_app, base_url="https://testserver") as client:
        client.get("/signin")  # the browser has its CSRF cookie, as a real one would
        assert client.cookies.get(CSRF_COOKIE)
        accepted = []
        for method, path in unsafe_routes(demo_app):
            data = {"csrf_token": token} if token else {}
            answer = client.request(method, path, data=data, follow_redirects=False)
            if answer.status_code != 403:
                accepted.append((method, path, answer.status_code))
        assert accepted == []
