"""Portal users for several patients, invitations, forms, invoices and payments."""
from pathlib import Path

from core import PluginMeta, hookimpl

meta = PluginMeta(
    name="clinic_payments",
    version="0.1.0",
    description="Portal users for several patients, invitations, forms, invoices and payments.",
    core_versions=">=0.1,<0.2",
)


@hookimpl
def settings_model():
    from plugins.clinic_payments.settings import Settings

    return Settings


@hookimpl
def routers():
    from plugins.clinic_payments.routes import router

    return [router]


@hookimpl
def template_dirs():
    return [Path(__file__).parent / "templates"]
