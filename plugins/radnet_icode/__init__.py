"""Visit codes (I-Codes), report release delayed by state law, minors and locations.

This module holds only hook implementations; each one hands over to the module
that does the work (``service`` for codes and visits, ``release`` for the law's
delays, ``locations`` for the centres), so that a reader sees at a glance every
place where the plugin meets the core.
"""
from pathlib import Path

from core import PluginMeta, hookimpl

meta = PluginMeta(
    name="radnet_icode",
    version="0.2.0",
    description="Visit codes (I-Codes), report release delayed by state law, minors and locations.",
    core_versions=">=0.1,<0.2",
)

HERE = Path(__file__).parent


def settings_of(site):
    return site.plugin_settings["radnet_icode"]


@hookimpl
def settings_model():
    from plugins.radnet_icode.settings import Settings

    return Settings


@hookimpl
def routers():
    from plugins.radnet_icode import centre_routes, routes

    return [routes.router, centre_routes.router]


@hookimpl
def template_dirs():
    return [HERE / "templates"]


@hookimpl
def migrations_dir():
    return HERE / "migrations"


@hookimpl
def template_slot(name, context):
    from plugins.radnet_icode import slots

    return slots.render(name, context)


@hookimpl
def navigation(principal):
    from plugins.radnet_icode import slots

    return slots.navigation(principal)


@hookimpl
def request_principal(request, session):
    from plugins.radnet_icode import service

    return service.principal_for_request(request, session)


@hookimpl
def identity_proofs(site):
    from plugins.radnet_icode import service

    return service.identity_proofs(settings_of(site))


@hookimpl
def registration_check(patient, birth_date, email, site):
    from plugins.radnet_icode import service

    return service.registration_refusal(settings_of(site), site, patient)


@hookimpl
def report_release_at(report, study, site):
    from plugins.radnet_icode import release

    return release.hold_for(settings_of(site), site, report, study)


@hookimpl
def study_ingested(study, patient, new_study, runtime):
    from plugins.radnet_icode import service

    if new_study:
        service.on_new_study(runtime, study.id)


@hookimpl
def tasks(runtime):
    from plugins.radnet_icode import service

    return service.register_tasks(runtime)


@hookimpl
def seed_demo(session, runtime):
    from plugins.radnet_icode import demo

    demo.seed(session, runtime)
