"""Headers and cookies of a signed-in patient's pages: a CSP that no page needs to break
(no inline script, handler or style), no framing, HSTS over HTTPS only, no-store on
every page or answer that carries health information, and cookies that only this
site, over HTTPS, and never a script can read."""
from __future__ import annotations

import re
from datetime import date, timedelta
from http.cookies import SimpleCookie

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from support import add_linked_patient, ingest_file, sign_in_as

from core import clock
from core.studies import service as studies
from core.studies import synthetic
from core.studies.models import Instance, Study

PASSWORD = "a long unique passphrase"
# a <script> without src runs inline, unless it only holds data (type="application/json")
INLINE = [re.compile(r"<script(?![^>]*\b(?:src=|type=\"application/json\"))[^>]*>", re.I), re.compile(r"\son[a-z]+\s*=", re.I),
          re.compile(r"\sstyle\s*=", re.I)]


@pytest.fixture
def signed_in(client, session, runtime, make_account, tmp_path):
    account = make_account(email="hdr@example.test", password=PASSWORD, patient=False)
    add_linked_patient(session, account.id, issuer="H", patient_id="HDR-1", family_name="Header",
                       given_name="Hana", birth_date=date(1980, 1, 2))
    session.commit()
    spec = synthetic.StudySpec(patient_id="HDR-1", issuer="H", rows=16, columns=16, instances=1,
                               study_date=date(2026, 2, 1))
    for path in synthetic.write(synthetic.study(spec), tmp_path / "study"):
        assert ingest_file(session, runtime, path).outcome == "stored"
    study = session.scalar(select(Study).where(Study.study_uid == spec.study_uid))
    report = studies.add_report(session, runtime=runtime, study=study, text="Normal.", flags=[],
                                signed_at=clock.now() - timedelta(hours=2))
    session.commit()
    sop = session.scalar(select(Instance.sop_uid).order_by(Instance.id.desc()).limit(1))
    answer = sign_in_as(client, "hdr@example.test", PASSWORD)
    return client, {"study": study.study_uid, "report": report.id, "sop": sop, "signin": answer}


PHI_ADDRESSES = ["/exams", "/exams/{study}", "/exams/{study}/report", "/exams/{study}/images",
                 "/exams/{study}/viewer", "/exams/{study}/reports/{report}.pdf",
                 "/exams/{study}/reports/{report}/print", "/exams/{study}/images/{sop}.jpg", "/activity",
                 "/dicomweb/studies", "/dicomweb/studies/{study}/metadata"]


def test_health_information_is_never_stored_by_browsers_or_proxies(signed_in):
    client, values = signed_in
    cached = []
    for address in PHI_ADDRESSES:
        answer = client.get(address.format(**values))
        assert answer.status_code == 200, address
        if "no-store" not in answer.headers.get("cache-control", ""):
            cached.append(address)
    assert cached == []


def test_pages_need_no_inline_script_or_style_and_cannot_be_framed(signed_in):
    client, values = signed_in
    for address in ("/", "/signin", "/register", "/exams", "/exams/{study}", "/exams/{study}/report",
                    "/exams/{study}/images", "/exams/{study}/viewer", "/account", "/activity", "/shares/new"):
        answer = client.get(address.format(**values))
        policy = answer.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, address
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        found = [pattern.search(answer.text).group(0) for pattern in INLINE if pattern.search(answer.text)]
        assert found == [], f"{address} has inline code the policy blocks: {found}"


def test_hsts_is_sent_over_https_only(app):
    with TestClient(app, base_url="https://testserver") as secure, TestClient(app, base_url="http://testserver") as plain:
        assert secure.get("/").headers["strict-transport-security"].startswith("max-age=")
        assert "strict-transport-security" not in plain.get("/").headers


def test_cookies_are_host_only_secure_http_only_and_same_site(signed_in):
    _client, values = signed_in
    cookies = SimpleCookie()
    for header in values["signin"].headers.get_list("set-cookie"):  # the sign-in's own answer (a 303)
        cookies.load(header)
    assert "__Host-filmless_session" in cookies
    for name, morsel in cookies.items():
        if name.startswith("__Host-") and morsel.value:
            assert morsel["secure"] and morsel["httponly"] and morsel["path"] == "/" and not morsel["domain"], name
            assert morsel["samesite"].lower() == "lax", name
