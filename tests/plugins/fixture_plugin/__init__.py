"""The fixture plugin: implements every hook, so tests can prove each one is called.

It records what it is told in ``CALLS`` (hook name -> list of keyword arguments).
"""
from collections import defaultdict
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import escape
from pydantic import BaseModel, ConfigDict
from sqlalchemy import text

from core import NavEntry, PluginMeta, access, hookimpl
from core.db import DbSession
from core.i18n import gettext
from core.web import render

HERE = Path(__file__).parent
CALLS: dict[str, list[dict]] = defaultdict(list)

meta = PluginMeta(name="fixture", version="1.0", description="Implements every hook for the tests.",
                  core_versions=">=0.1")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    greeting: str = "hello"
    fail_at_startup: bool = False
    favourite_colour_challenge: bool = False  # ask "favourite colour" at registration step 2
    fixture_card_proof: bool = False  # offer "fixture card" (CARD-<patient id>) as a proof at step 2


router = APIRouter(prefix="/fixture")


@router.get("/", response_class=HTMLResponse, dependencies=[access.public])
def fixture_page(request: Request):
    return render(request, "fixture/page.html")


@router.get("/secret", dependencies=[access.rule("fixture.secret")])
def fixture_secret():
    return {"secret": True}


@router.get("/denied", dependencies=[access.rule("public"), access.rule("fixture.denied")])
def fixture_denied():
    return {"reached": True}


@router.post("/notes", dependencies=[access.public])
def add_note(body: str, session: DbSession):
    session.execute(text("INSERT INTO fixture_note (body) VALUES (:body)"), {"body": body})
    session.commit()
    return {"notes": session.scalar(text("SELECT count(*) FROM fixture_note"))}


@router.get("/boom", dependencies=[access.public])
def fixture_boom():
    raise RuntimeError("fixture route failed on purpose")


@hookimpl
def settings_model():
    return Settings


@hookimpl
def routers():
    return [router]


@hookimpl
def template_dirs():
    return [HERE / "templates"]


@hookimpl
def navigation(principal):
    CALLS["navigation"].append({"principal": principal})
    return [NavEntry(gettext("Sign in"), "/fixture/", order=5)]


@hookimpl
def template_slot(name, context):
    CALLS["template_slot"].append({"name": name})
    if name == "home_after_intro":
        return f'<p id="fixture-slot">{escape(context["request"].url.path)}</p>'
    if name == "staff_patient":
        return f'<p id="fixture-staff-patient">{escape(context["patient"].patient_id)}</p>'
    if name == "staff_request":
        return f'<p id="fixture-staff-request">{escape(context["ticket"].topic)}</p>'
    return None


@hookimpl
def migrations_dir():
    return HERE / "migrations"


@hookimpl
def tasks(runtime):
    @runtime.huey.task(name="fixture.write_note")
    def write_note(body: str) -> str:
        with runtime.sessions() as session:
            session.execute(text("INSERT INTO fixture_note (body) VALUES (:body)"), {"body": body})
            session.commit()
        return body.upper()

    return [write_note]


@hookimpl
def seed_demo(session, runtime):
    greeting = runtime.site.plugin_settings["fixture"].greeting
    session.execute(text("INSERT INTO fixture_note (body) VALUES (:body)"), {"body": f"seeded: {greeting}"})


SENT_SMS: list[dict] = []  # what the fixture_sms transport was given, in order


class FixtureSms:
    """An SMS gateway that records each text; numbers ending in 0000 are refused
    (raise), so tests can follow a failing delivery."""

    def send(self, to: str, text: str) -> None:
        if to.endswith("0000"):
            raise ConnectionError(f"the fixture gateway refused {to}")
        SENT_SMS.append({"to": to, "text": text})


@hookimpl
def sms_transports():
    CALLS["sms_transports"].append({})
    return {"fixture_sms": FixtureSms()}


FIXTURE_VISIT_COOKIE = "fixture_visit"  # a visit-like session: the cookie names the one study it may see


@hookimpl
def request_principal(request, session):
    from sqlalchemy import select

    from core.access import Principal
    from core.studies.models import Study

    study_uid = request.cookies.get(FIXTURE_VISIT_COOKIE)
    CALLS["request_principal"].append({"cookie": study_uid, "path": request.url.path})
    study = session.scalar(select(Study).where(Study.study_uid == study_uid)) if study_uid else None
    if study is None:
        return None
    return Principal(kind="visit", id=f"fixture:{study.id}", scope=frozenset({f"study:{study.id}"}))


@hookimpl
def access_vote(principal, action, resource):
    CALLS["access_vote"].append({"action": action})
    if action == "fixture.denied":
        return False
    if action == "fixture.secret" and principal.kind == "staff":
        return True
    if action == "studies.export" and resource is not None and any(
            study.description == "NO EXPORT" for study in resource.studies):
        return False
    return None


@hookimpl
def startup(runtime):
    CALLS["startup"].append({"site": runtime.site.name})
    if runtime.site.plugin_settings["fixture"].fail_at_startup:
        raise RuntimeError("cannot reach the fixture gateway")


@hookimpl
def shutdown(runtime):
    CALLS["shutdown"].append({"site": runtime.site.name})


@hookimpl
def audit_event_written(event):
    CALLS["audit_event_written"].append({"seq": event.seq, "action": event.action})
    if event.action == "fixture.observer_fails":
        raise RuntimeError("observer failed on purpose")


@hookimpl
def account_created(account, how):
    CALLS["account_created"].append({"email": account.email, "how": how})


# -- registration: a challenge that the site's fixture settings switch on, and a check --

def _colour_is_blue(session, patient, answer):
    CALLS["registration_challenge"].append({"patient": patient.patient_id, "answer": answer})
    return answer.strip().lower() == "blue"


@hookimpl
def registration_challenge(site):
    from core import RegistrationChallenge

    if not site.plugin_settings["fixture"].favourite_colour_challenge:
        return []
    return [RegistrationChallenge("favourite_colour", gettext("Your favourite colour"), _colour_is_blue)]


def _patient_of_card(session, number, last_name, birth_date):
    """The fixture's identity card: "CARD-<patient id>" in any case, with the birth date and last name on record."""
    from sqlalchemy import select

    from core.identity.registration import name_key
    from core.studies.models import Patient

    CALLS["identity_proofs"].append({"number": number, "last_name": last_name, "birth_date": birth_date})
    if not number.upper().startswith("CARD-"):
        return None
    patient = session.scalar(select(Patient).where(Patient.patient_id == number.upper()[5:]).limit(1))
    if patient and patient.birth_date == birth_date and name_key(patient.family_name) == name_key(last_name):
        return patient
    return None


@hookimpl
def identity_proofs(site):
    from core import IdentityProof

    if not site.plugin_settings["fixture"].fixture_card_proof:
        return []
    return [IdentityProof(name="fixture_card", label="Fixture card number", hint="On the back of your fixture card",
                          find=_patient_of_card)]


@hookimpl
def registration_check(patient, birth_date, email, site):
    CALLS["registration_check"].append({"patient": patient.patient_id, "birth_date": birth_date, "email": email,
                                        "site": site.name})
    if patient.issuer == "REFUSE":
        return gettext("Please call the help desk to open your account.")
    return None


# -- the study store: hold reports flagged "fixture_hold" and images of "HOLD IMAGES" studies --

@hookimpl
def report_release_at(report, study, site):
    from datetime import timedelta

    from core import ReleaseHold

    CALLS["report_release_at"].append({"category": report.category, "study": study.study_uid, "site": site.name})
    if "fixture_hold" in report.flags:
        return ReleaseHold(at=report.signed_at + timedelta(hours=72), rule="fixture 72 h", law="the Fixture Act")
    return None


@hookimpl
def images_release_at(study, site):
    from datetime import timedelta

    from core import ReleaseHold

    CALLS["images_release_at"].append({"study": study.study_uid, "site": site.name})
    if study.description == "HOLD IMAGES":
        return ReleaseHold(at=study.created_at + timedelta(hours=24), rule="fixture images 24 h")
    return None


@hookimpl
def study_ingested(study, patient, instance, new_study, runtime):
    CALLS["study_ingested"].append({"study": study.study_uid, "patient": patient.patient_id,
                                    "sop_uid": instance.sop_uid, "new_study": new_study,
                                    "site": runtime.site.name})
    if study.description == "OBSERVER FAILS":
        raise RuntimeError("observer failed on purpose")


# -- exports: a format that stops on a gate the test opens, and one that meets a full disk --

def _build_behind_gate(job):
    """A ZIP of the DICOM files that waits, after the first file, until the FIFO named by
    ``options["gate"]`` is opened for writing and closed: a job a test can catch mid-way."""
    import zipfile

    with zipfile.ZipFile(job.target, "w") as archive:
        for number, entry in enumerate(job.entries):
            with archive.open(entry.path, "w") as out:
                job.copy_dicom(entry, out)
            job.advance()
            if number == 0 and job.options.get("gate"):
                with open(job.options["gate"], "rb") as gate:
                    gate.read()


def _build_on_full_disk(job):
    """Starts the archive, then writes the files to /dev/full, where the kernel answers ENOSPC."""
    job.target.write_bytes(b"PK half an archive")
    with open("/dev/full", "wb", buffering=0) as disk:
        for entry in job.entries:
            job.copy_dicom(entry, disk)
            job.advance()


@hookimpl
def export_formats(runtime):
    from core import ExportFormat

    CALLS["export_formats"].append({"site": runtime.site.name})
    return [ExportFormat(name="fixture_gated", label="Fixture gated ZIP", suffix=".zip", media_type="application/zip",
                         build=_build_behind_gate),
            ExportFormat(name="fixture_full_disk", label="Fixture full disk", suffix=".bin",
                         media_type="application/octet-stream", build=_build_on_full_disk)]


# -- sharing: one extra option on the share form, and observers (one fails on purpose) --

@hookimpl
def share_options(runtime):
    from core import ShareOption

    CALLS["share_options"].append({"site": runtime.site.name})
    return [ShareOption(name="fixture_second_opinion", label="For a second opinion (fixture)")]


@hookimpl
def share_created(share):
    CALLS["share_created"].append({"share": share.id, "nickname": share.nickname, "parent": share.parent_ref})
    if share.nickname == "OBSERVER FAILS":
        raise RuntimeError("observer failed on purpose")


@hookimpl
def share_opened(share):
    CALLS["share_opened"].append({"share": share.id, "times_opened": share.times_opened})
