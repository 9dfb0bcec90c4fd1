"""Self-scheduling of ordered exams: orders, slots, questionnaires and billing."""
from pathlib import Path

from core import PluginMeta, hookimpl

meta = PluginMeta(
    name="ihs_scheduling",
    version="0.1.0",
    description="Self-scheduling of ordered exams: orders, slots, questionnaires and billing.",
    core_versions=">=0.1,<0.2",
)


@hookimpl
def settings_model():
    from plugins.ihs_scheduling.settings import Settings

    return Settings


@hookimpl
def routers():
    from plugins.ihs_scheduling.routes import router

    return [router]


@hookimpl
def template_dirs():
    return [Path(__file__).parent / "templates"]
