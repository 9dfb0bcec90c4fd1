"""Every hook a Filmless plugin can implement.

This module is the plugin author's reference: each docstring says when the hook
is called, what it receives, what to return, and shows an example. Implement a
hook with ``@hookimpl`` (``from core import hookimpl``) in your plugin's
``__init__.py``; take only the arguments you need, by name.

Kinds: *contribute* hooks return things to add (all results are used, in the
order the site file lists the plugins); *decide* hooks vote; *observe* hooks are
told after the fact and cannot undo anything.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("filmless")


# -- configuration -----------------------------------------------------------

@hookspec(firstresult=True)
def settings_model():
    """Contribute the pydantic model of this plugin's section of the site file.

    Called once per plugin while the site file is validated, before anything
    starts; only this plugin's implementation is asked. The validated object is
    available as ``runtime.site.plugin_settings["<plugin name>"]``. A plugin
    with nothing to configure need not implement it (its section must then be
    empty). Use ``extra="forbid"`` so a typo is reported with its line.

    Example::

        class Settings(BaseModel):
            model_config = ConfigDict(extra="forbid")
            icode_valid_days: int = Field(90, ge=1)

        @hookimpl
        def settings_model():
            return Settings
    """


# -- contribute --------------------------------------------------------------

@hookspec
def routers():
    """Contribute FastAPI routers to mount on the app.

    Called once when the app is built. Return a list of ``APIRouter``. Every
    route must declare its access rule with ``Depends(access.rule("action"))``
    (or ``access.public``); the app refuses to start otherwise.

    Example::

        router = APIRouter(prefix="/visit")

        @router.get("/", dependencies=[access.public])
        def visit_home(request: Request):
            return render(request, "icode/home.html")

        @hookimpl
        def routers():
            return [router]
    """


@hookspec
def template_dirs():
    """Contribute folders of Jinja2 templates.

    Called once when the app is built. Return a list of ``pathlib.Path``. They
    are searched after the site's own folder and before the core's, so a plugin
    may override a core template; ``{% extends "core:base.html" %}`` always
    reaches the core's. Put your templates in a sub-folder named after the
    plugin to avoid clashes.

    Example::

        @hookimpl
        def template_dirs():
            return [Path(__file__).parent / "templates"]
    """


@hookspec
def navigation(principal):
    """Contribute menu entries for the signed-in (or anonymous) ``principal``.

    Called on every page render. Return a list of ``NavEntry(label, url,
    order=100)``; labels should already be translated (``core.i18n.gettext``).
    Return nothing for principals who should not see the entry.

    Example::

        @hookimpl
        def navigation(principal):
            if principal.kind == "account" and principal.scope:  # signed in, with patients
                return [NavEntry(gettext("Schedule an exam"), "/schedule/", order=30)]
    """


@hookspec
def template_slot(name, context):
    """Fill the named slot ``name`` of a page with an HTML fragment.

    Called when a template says ``{{ slot("study_actions", study=study) }}``;
    ``context`` is a dict of the keyword arguments plus ``request``. Return a
    string of HTML (escape anything user-supplied, e.g. with
    ``markupsafe.escape``) or ``None`` when this plugin has nothing for this
    slot. Fragments are joined in plugin order.

    Example::

        @hookimpl
        def template_slot(name, context):
            if name == "home_after_intro":
                return '<p><a href="/visit/">' + gettext("Have a visit code?") + "</a></p>"
    """


@hookspec
def migrations_dir():
    """Contribute this plugin's Alembic version folder.

    Called by ``filmless migrate``. Return a ``pathlib.Path``. Revisions there
    start their own branch (``branch_labels = ("<plugin name>",)``,
    ``depends_on`` a core revision when they reference core tables) and create
    only the plugin's own tables.

    Example::

        @hookimpl
        def migrations_dir():
            return Path(__file__).parent / "migrations"
    """


@hookspec
def tasks(runtime):
    """Register background tasks on ``runtime.huey``.

    Called once when the runtime (web or worker) is built. Register with
    ``runtime.huey.task()`` or ``runtime.huey.periodic_task(crontab(...))``
    and return the task objects. Open a database session in a task with
    ``with runtime.sessions() as session:``.

    Example::

        @hookimpl
        def tasks(runtime):
            @runtime.huey.periodic_task(crontab(minute="0"))
            def expire_codes():
                with runtime.sessions() as session:
                    service.expire_codes(session=session)
                    session.commit()
            return [expire_codes]
    """


@hookspec
def seed_demo(session, runtime):
    """Add this plugin's demo data to the demo site.

    Called once by ``filmless seed-demo`` (``make run``) in one transaction;
    the core commits it. Create only rows of your own or through core services.

    Example::

        @hookimpl
        def seed_demo(session, runtime):
            service.issue_code(session=session, visit_id="DEMO-1")
    """


@hookspec
def sms_transports():
    """Contribute SMS transports, by name, for ``sms.transport`` in the site file.

    Called once when the runtime is built. Return a dict of name -> an object
    with ``send(to: str, text: str) -> None`` that raises on failure (the
    message stays queued and is retried). The core ships ``outbox`` (messages
    are only stored and listed on the outbox page).

    Example::

        class GatewaySms:
            def send(self, to, text):
                gateway.post("/messages", json={"to": to, "text": text}).raise_for_status()

        @hookimpl
        def sms_transports():
            return {"regional_gateway": GatewaySms()}
    """


@hookspec
def registration_challenge(site):
    """Contribute extra questions for step 2 (identity verification) of sign-up.

    Called when the verification form is shown and checked, with the ``site``
    (read your settings from ``site.plugin_settings["<plugin name>"]``). Return a list of
    ``RegistrationChallenge(name, label, check)``; ``label`` is translated text,
    ``check(session=, patient=, answer=)`` returns True when the answer proves
    the person is that patient. Every challenge must pass.

    Example::

        @hookimpl
        def registration_challenge(site):
            if not site.plugin_settings["radnet_icode"].ask_visit_code:
                return []
            return [RegistrationChallenge("visit_code", gettext("Visit code on your paperwork"),
                                          lambda session, patient, answer: service.code_matches(
                                              session=session, patient=patient, code=answer))]
    """


@hookspec
def identity_proofs(site):
    """Contribute other ways to prove who you are at step 2 (identity verification) of sign-up.

    Called when the verification form is shown and checked, with the ``site``.
    Return a list of ``core.IdentityProof(name, label, hint, find)``. They are
    offered as choices before the site's ``identity.verify_with`` kinds (the
    first plugin proof is the default); ``/register/verify?proof=<name>``
    preselects one. ``label`` and ``hint`` are message ids (mark them with
    ``N_``), translated when shown. ``find(session=, number=, last_name=,
    birth_date=)`` returns the ``core.studies.models.Patient`` that the typed
    number proves, or ``None``: it must check the birth date and the last name
    itself (compare names with ``core.identity.registration.name_key``). The
    core's throttling, ``registration_check``, minimum age, email code and
    password steps then apply as for any other kind.

    Example::

        from core import IdentityProof

        def patient_of_code(session, number, last_name, birth_date):
            patient = service.patient_of_code(session=session, code=number)
            if patient and patient.birth_date == birth_date and name_key(patient.family_name) == name_key(last_name):
                return patient

        @hookimpl
        def identity_proofs(site):
            return [IdentityProof(name="visit_code", label=N_("Visit code"),
                                  hint=N_("Printed on your visit paperwork"), find=patient_of_code)]
    """


@hookspec
def registration_check(patient, birth_date, email, site):
    """Refuse a self-registration for ``patient`` (a ``core.studies.models.Patient``).

    Called after identity verification succeeded, before the account is made,
    with the ``site`` (your settings are ``site.plugin_settings["<plugin name>"]``).
    Return a translated message to refuse (shown to the person), or ``None``.
    Any refusal wins.

    Example::

        @hookimpl
        def registration_check(patient, birth_date, email):
            if patient.issuer == "EMERGENCY":
                return gettext("Please ask the help desk to open your account.")
    """


@hookspec
def export_formats(runtime):
    """Contribute ways to export studies: a list of ``core.ExportFormat``.

    Called once per runtime. The core offers ``zip``, ``iso`` and ``jpg``; plugins'
    formats come after them. Each format gets a button on the exam pages and
    runs as a background job with progress; ``build(job)`` writes ``job.target``
    from ``job.entries`` (each with ``file_id``, ``instance``, ``series``,
    ``study``), and the job's helpers give the DICOMDIR, the README and each DICOM
    file with a zeroed preamble. To refuse an export, vote ``False`` on the
    action ``studies.export`` in ``access_vote`` (the resource has ``format`` and
    ``studies``).

    Example (a disc robot that takes the same files as the ISO)::

        from core import ExportFormat

        def send_to_robot(job):
            for entry in job.entries:
                robot.add(job.file_id(entry), job.dicom_path(entry))
                job.advance()
            job.target.write_text("sent to the robot")

        @hookimpl
        def export_formats(runtime):
            return [ExportFormat(name="robot", label="Burn a CD at the front desk", suffix=".txt",
                                 media_type="text/plain", build=send_to_robot)]
    """


@hookspec
def share_options(runtime):
    """Contribute yes/no options to the share form: a list of ``core.ShareOption``.

    The patient's answers are stored on the share; an option that is on appears in
    the recipient's principal scope as ``option:<name>``, so an ``access_vote``
    can act on it.

    Example::

        from core import ShareOption

        @hookimpl
        def share_options(runtime):
            return [ShareOption(name="second_opinion", label=N_("This is for a second opinion"))]
    """


# -- decide ------------------------------------------------------------------

@hookspec
def request_principal(request, session):
    """Say who sent a request that carries this plugin's own session cookie.

    Called once per request that has any cookie, after an opened share (which
    wins) and before the portal account's session: the first answer that is
    not ``None`` is the principal. ``request`` is the Starlette ``Request``;
    ``session`` an open SQLAlchemy session (the core commits it, so a plugin
    may note the last use). Return a ``core.access.Principal`` (e.g. kind
    ``"visit"`` with ``study:<id>`` entries in its scope, which
    ``core/studies/queries.py`` honours like a share's) or ``None``.

    Example::

        @hookimpl
        def request_principal(request, session):
            cookie = request.cookies.get("filmless_visit")
            visit = service.visit_of_cookie(session, cookie) if cookie else None
            if visit:
                return Principal(kind="visit", id=str(visit.id),
                                 scope=frozenset(f"study:{ref}" for ref in visit.study_refs))
    """


@hookspec
def access_vote(principal, action, resource):
    """Vote on whether ``principal`` may do ``action`` on ``resource``.

    Called by ``access.can`` for every check. Return ``True`` to allow,
    ``False`` to deny, ``None`` to abstain. A single ``False`` denies whatever
    the core or other plugins say; with no allow from anyone the answer is no.

    Example::

        @hookimpl
        def access_vote(principal, action, resource):
            if action == "study.download" and principal.kind == "icode":
                return False
    """


@hookspec
def report_release_at(report, study, site):
    """Hold a report back from patients until a time: return a ``ReleaseHold`` or ``None``.

    Called once when a report is stored (``report`` is the new
    ``core.studies.models.Report``, with ``category``, ``flags`` and
    ``signed_at``; ``study`` its ``Study``, with ``location``; ``site`` the
    site, for your settings in ``site.plugin_settings``). The report
    reaches patient-side principals (patients, proxies, shares, visit codes) at
    the latest of its signing and every vote; staff always see it. The decision,
    with the vote's ``rule``, is written to the audit trail, and the patient is
    shown the date and the vote's ``law``.

    Example::

        from datetime import timedelta
        from core import ReleaseHold

        @hookimpl
        def report_release_at(report, study):
            if "possible_malignancy" in report.flags and study.location.endswith("(TX)"):
                return ReleaseHold(at=report.signed_at + timedelta(days=3), rule="TX results likely malignant",
                                   law="Texas Occupations Code §159.0062")
    """


@hookspec
def images_release_at(study, site):
    """Hold a study's images back from patients until a time: a ``ReleaseHold`` or ``None``.

    Called once when a study's first instance is stored, with the ``site``
    (for your settings in ``site.plugin_settings``). Images reach
    patient-side principals at the latest of the study's arrival and every vote.

    Example::

        @hookimpl
        def images_release_at(study):
            if study.modalities == "MG":
                return ReleaseHold(at=study.created_at + timedelta(hours=24), rule="mammography read first")
    """


# -- observe -----------------------------------------------------------------

@hookspec
def study_ingested(study, patient, instance, new_study, runtime):
    """Be told that a DICOM instance was stored and committed.

    ``study``, ``patient`` and ``instance`` are the stored
    ``core.studies.models`` rows; ``new_study`` is true for the first instance
    of a study (the moment to issue a visit code or send an activation).
    The core's transaction is already committed: to write rows, open your own
    with ``with runtime.sessions() as session:`` and commit it.
    Called once per new instance, never for a file that was already stored. An
    exception here is logged and ignored: the instance stays stored.

    Example::

        @hookimpl
        def study_ingested(study, patient, new_study, runtime):
            if new_study:
                with runtime.sessions() as session:
                    service.issue_visit_code(session, study_id=study.id)
                    session.commit()
    """


@hookspec
def share_created(share):
    """Be told that a share was made (``core.sharing.models.Share``), before its transaction
    commits: use it to note or notify, never to refuse (vote with ``access_vote`` instead).

    Example::

        @hookimpl
        def share_created(share):
            if share.recipient_email:
                log.info("share %s sent to %s", share.id, share.recipient_email)
    """


@hookspec
def share_opened(share):
    """Be told that a recipient opened a share (after its password, if any, was right).

    Example::

        @hookimpl
        def share_opened(share):
            metrics.increment("shares.opened")
    """


@hookspec
def startup(runtime):
    """Be told that the web app or the worker is starting.

    Called once, after the site is loaded and before the first request or task.
    An exception here stops start-up with the plugin's name.

    Example::

        @hookimpl
        def startup(runtime):
            runtime.site.plugin_settings["my_plugin"].check_reachable()
    """


@hookspec
def shutdown(runtime):
    """Be told that the web app or the worker is stopping. Release resources.

    Example::

        @hookimpl
        def shutdown(runtime):
            gateway_client.close()
    """


@hookspec
def account_created(account, how):
    """Be told that a portal account was created and committed.

    ``account`` is the ``core.identity.models.Account``; ``how`` is one of
    ``"registration"``, ``"invitation"``, ``"at_scan"``, ``"staff"``.

    Example::

        @hookimpl
        def account_created(account, how):
            if how == "at_scan":
                metrics.increment("activations_sent")
    """


@hookspec
def audit_event_written(event):
    """Be told of an audit event, after the transaction that wrote it committed.

    ``event`` is the stored ``AuditEvent`` (``seq``, ``at``, ``actor``,
    ``action``, ``subject``, ``detail``). An exception here is logged and
    ignored: observers never undo the core's commit.

    Example::

        @hookimpl
        def audit_event_written(event):
            if event.action == "breakglass.open":
                alert_privacy_officer(event)
    """
