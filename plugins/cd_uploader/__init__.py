"""Upload of old CDs and USB drives (DICOMDIR); accounts created at the scan."""
from pathlib import Path

from core import PluginMeta, hookimpl

meta = PluginMeta(
    name="cd_uploader",
    version="0.1.0",
    description="Upload of old CDs and USB drives (DICOMDIR); accounts created at the scan.",
    core_versions=">=0.1,<0.2",
)


@hookimpl
def settings_model():
    from plugins.cd_uploader.settings import Settings

    return Settings


@hookimpl
def routers():
    from plugins.cd_uploader.routes import router

    return [router]


@hookimpl
def template_dirs():
    return [Path(__file__).parent / "templates"]
