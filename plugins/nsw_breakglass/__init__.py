"""Clinician guest accounts, one-time-password sign-in and break-glass search."""
from pathlib import Path

from core import PluginMeta, hookimpl

meta = PluginMeta(
    name="nsw_breakglass",
    version="0.1.0",
    description="Clinician guest accounts, one-time-password sign-in and break-glass search.",
    core_versions=">=0.1,<0.2",
)


@hookimpl
def settings_model():
    from plugins.nsw_breakglass.settings import Settings

    return Settings


@hookimpl
def routers():
    from plugins.nsw_breakglass.routes import router

    return [router]


@hookimpl
def template_dirs():
    return [Path(__file__).parent / "templates"]
