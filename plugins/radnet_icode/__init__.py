"""Visit codes (I-Codes), report release delayed by state law, minors and locations."""
from pathlib import Path

from core import PluginMeta, hookimpl

meta = PluginMeta(
    name="radnet_icode",
    version="0.1.0",
    description="Visit codes (I-Codes), report release delayed by state law, minors and locations.",
    core_versions=">=0.1,<0.2",
)


@hookimpl
def settings_model():
    from plugins.radnet_icode.settings import Settings

    return Settings


@hookimpl
def routers():
    from plugins.radnet_icode.routes import router

    return [router]


@hookimpl
def template_dirs():
    return [Path(__file__).parent / "templates"]
