"""Plugin loading and the per-app manager: nothing is skipped silently."""
import logging
import types

import pytest
from support import make_site, registry

from core import hookimpl
from core.app import build_runtime, create_app
from core.plugins import PluginError, PluginMeta, build_manager


def plugin(name="extra", **hooks):
    module = types.ModuleType(name)
    module.meta = PluginMeta(name=name, version="1.0", description="test", core_versions=">=0.1")
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    return module


def test_a_misspelled_hook_stops_start_up_with_the_plugin_name():
    def navigaton(principal):
        return []

    with pytest.raises(PluginError, match="plugin 'extra' implements an unknown hook"):
        build_manager({"extra": plugin(navigaton=navigaton)})


def test_a_hook_with_wrong_arguments_is_refused():
    def navigation(principal, wrong):
        return []

    with pytest.raises(PluginError, match="plugin 'extra' has an invalid hook"):
        build_manager({"extra": plugin(navigation=navigation)})


def test_a_plugin_failing_at_startup_stops_it_with_its_name(tmp_path):
    site = make_site(tmp_path, plugins={"fixture": {"fail_at_startup": True}})
    with pytest.raises(PluginError) as caught:
        build_runtime(site)
    assert str(caught.value) == "plugin 'fixture' failed in startup: RuntimeError: cannot reach the fixture gateway"


def test_a_route_without_an_access_rule_stops_start_up(tmp_path):
    from fastapi import APIRouter

    router = APIRouter()

    @router.get("/open-door")
    def open_door():
        return {}

    extra = plugin(routers=lambda: [router])
    site = make_site(tmp_path, reg=registry(extra=lambda: extra), plugins={"extra": None})
    with pytest.raises(PluginError, match="^plugin 'extra' has routes without an access rule: /open-door$"):
        create_app(site)


def test_results_come_in_site_file_order(tmp_path):
    first = plugin("first", template_slot=lambda name, context: "<i>1</i>")
    second = plugin("second", template_slot=lambda name, context: "<i>2</i>")
    reg = registry(first=lambda: first, second=lambda: second)
    site = make_site(tmp_path, reg=reg, plugins={"second": None, "first": None})
    from fastapi.testclient import TestClient

    page = TestClient(create_app(site)).get("/").text
    assert "<i>2</i><i>1</i>" in page


def test_each_app_has_its_own_manager(tmp_path):
    with_fixture = make_site(tmp_path / "a")
    without = make_site(tmp_path / "b", fixture=False)
    first, second = build_runtime(with_fixture), build_runtime(without)
    assert first.pm.get_plugin("fixture") is not None
    assert second.pm.get_plugin("fixture") is None
    assert first.pm is not second.pm
    first.close(), second.close()


def test_a_plugin_with_settings_it_does_not_take(tmp_path):
    from core.site import SiteError

    bare = plugin("bare")
    with pytest.raises(SiteError, match="plugins.bare: plugin 'bare' takes no settings"):
        make_site(tmp_path, reg=registry(bare=lambda: bare), plugins={"bare": {"colour": "red"}})


def test_tracing_logs_calls_implementers_and_results(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FILMLESS_TRACE_HOOKS", "1")
    site = make_site(tmp_path)
    with caplog.at_level(logging.INFO, logger="filmless.hooks"):
        runtime = build_runtime(site)
        runtime.pm.hook.template_slot(name="footer", context={})
    runtime.close()
    assert "hook template_slot(context, name) implementers=['fixture']" in caplog.text
    assert "hook template_slot -> []" in caplog.text


def test_no_tracing_by_default(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("FILMLESS_TRACE_HOOKS", raising=False)
    with caplog.at_level(logging.INFO, logger="filmless.hooks"):
        build_runtime(make_site(tmp_path)).close()
    assert "hook " not in caplog.text


def test_a_failing_observer_does_not_silence_the_others(runtime, session, caplog):
    from core.audit import service as audit

    heard = []
    listener = plugin("listener", audit_event_written=lambda event: heard.append(event.action))
    runtime.pm.register(listener, name="listener")  # registered last: called after the fixture
    session.info["plugins"] = runtime.pm
    audit.record(session, actor="test", action="fixture.observer_fails", subject="nothing")
    with caplog.at_level(logging.ERROR):
        session.commit()
    assert heard == ["fixture.observer_fails"]
    assert "plugin 'fixture' failed in audit_event_written: RuntimeError: observer failed on purpose" in caplog.text


def test_tracing_covers_hooks_called_plugin_by_plugin(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FILMLESS_TRACE_HOOKS", "1")
    with caplog.at_level(logging.INFO, logger="filmless.hooks"):
        build_runtime(make_site(tmp_path)).close()
    for hook in ("settings_model", "startup", "shutdown"):
        assert f"hook {hook}(" in caplog.text
