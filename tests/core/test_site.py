"""Site files: validated before anything starts, every error with its line."""
import textwrap
import types

import pytest
from support import ROOT, registry, site_data, write_site

from core.cli import main
from core.plugins import PluginMeta
from core.site import SiteError, load_site

GOOD = textwrap.dedent("""\
    site:
      name: Regional Imaging
      timezone: America/Chicago
    database: sqlite:///var/test/portal.db
    storage: {kind: filesystem, path: var/test/blobs}
    queue: {kind: sqlite, path: var/test/queue.db}
    mail: {transport: outbox}
    plugins:
      radnet_icode:
        icode_valid_days: 30
    """)


def load_text(tmp_path, text, reg=None):
    path = tmp_path / "x.yaml"
    path.write_text(text, encoding="utf-8")
    return load_site(path, registry=reg)


def problems(tmp_path, text, reg=None):
    with pytest.raises(SiteError) as caught:
        load_text(tmp_path, text, reg)
    return [p.split(": ", 1)[0].rsplit(":", 1)[1] + ": " + p.split(": ", 1)[1] for p in caught.value.problems]


def test_every_site_file_in_the_repository_is_valid():
    files = sorted((ROOT / "sites").glob("*.yaml"))
    assert ROOT / "sites" / "demo.yaml" in files
    for path in files:
        load_site(path)


def test_demo_enables_every_builtin_plugin():
    from core.plugins import installed

    demo = load_site(ROOT / "sites" / "demo.yaml")
    builtin = {name for name in installed() if name != "fixture"}
    assert builtin >= {"ihs_scheduling", "radnet_icode", "nsw_breakglass", "clinic_payments", "cd_uploader"}
    assert set(demo.plugins) == builtin


def test_a_good_file_loads_with_defaults(tmp_path):
    site = load_text(tmp_path, GOOD)
    assert site.name == "Regional Imaging"
    assert site.config.site.languages == ["en", "es"]
    assert site.config.sessions.idle_minutes == 30
    assert site.plugin_settings["radnet_icode"].icode_valid_days == 30


def test_a_typo_is_reported_with_its_line(tmp_path):
    assert problems(tmp_path, GOOD.replace("  timezone:", "  time_zone:")) == ["3: site.time_zone: unknown key"]


def test_a_wrong_value_says_what_was_expected(tmp_path):
    [problem] = problems(tmp_path, GOOD.replace("America/Chicago", "Mars/Olympus"))
    assert problem.startswith("3: site.timezone: an IANA time zone")


def test_a_missing_key_is_reported_at_its_parent(tmp_path):
    assert problems(tmp_path, GOOD.replace("mail: {transport: outbox}\n", "")) == ["1: mail: required key is missing"]


def test_a_plugin_section_is_validated_by_the_plugin(tmp_path):
    [problem] = problems(tmp_path, GOOD.replace("icode_valid_days: 30", "icode_valid_days: soon"))
    assert problem.startswith("10: plugins.radnet_icode.icode_valid_days: Input should be a valid integer")
    assert problems(tmp_path, GOOD.replace("icode_valid_days: 30", "icode_valid_dayz: 30")) == [
        "10: plugins.radnet_icode.icode_valid_dayz: unknown key"]


def test_union_sections_report_the_real_key(tmp_path):
    text = GOOD.replace("queue: {kind: sqlite, path: var/test/queue.db}", "queue: {kind: redis, url: http://q}")
    [problem] = problems(tmp_path, text)
    assert problem.startswith("6: queue.url: ")


def test_environment_references_are_substituted(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "s3cret")
    text = GOOD.replace("mail: {transport: outbox}",
                        "mail: {transport: smtp, sender: a@b.test, host: mail.test, password: '${TEST_SMTP_PASSWORD}'}")
    assert load_text(tmp_path, text).config.mail.password == "s3cret"


def test_a_missing_environment_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_SMTP_PASSWORD", raising=False)
    text = GOOD.replace("mail: {transport: outbox}",
                        "mail: {transport: smtp, sender: a@b.test, host: mail.test, password: '${TEST_SMTP_PASSWORD}'}")
    assert problems(tmp_path, text) == ["7: mail.password: environment variable TEST_SMTP_PASSWORD is not set"]


def test_a_missing_environment_variable_is_reported_once(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_DATABASE_URL", raising=False)
    text = GOOD.replace("database: sqlite:///var/test/portal.db", "database: ${TEST_DATABASE_URL}")
    assert problems(tmp_path, text) == ["4: database: environment variable TEST_DATABASE_URL is not set"]


def test_site_folders_must_exist(tmp_path):
    text = GOOD.replace("  timezone: America/Chicago", "  timezone: America/Chicago\n  static: no/such/folder")
    [problem] = problems(tmp_path, text)
    assert problem.startswith("4: site.static: Path does not point to a directory")


def test_a_plugin_hook_with_wrong_arguments_is_a_site_error(tmp_path):
    from core import hookimpl

    odd = types.ModuleType("odd")
    odd.meta = PluginMeta(name="radnet_icode", version="1.0", description="odd", core_versions=">=0.1")
    odd.navigation = hookimpl(lambda principal, colour: [])
    [problem] = problems(tmp_path, GOOD, registry(radnet_icode=lambda: odd))
    assert problem.startswith("9: plugins.radnet_icode: plugin 'radnet_icode' has an invalid hook")


def test_an_unknown_plugin_is_named(tmp_path):
    [problem] = problems(tmp_path, GOOD.replace("radnet_icode:", "radnet_icodes:"))
    assert problem.startswith("9: plugins.radnet_icodes: plugin 'radnet_icodes' is not installed (installed: ")


def test_a_plugin_raising_at_import_is_named(tmp_path):
    def broken():
        raise ImportError("No module named 'paymentsdk'")

    [problem] = problems(tmp_path, GOOD, registry(radnet_icode=broken))
    assert problem == "9: plugins.radnet_icode: plugin 'radnet_icode' failed to load: ImportError: No module named 'paymentsdk'"


def test_an_incompatible_plugin_is_named(tmp_path):
    old = types.ModuleType("old_plugin")
    old.meta = PluginMeta(name="radnet_icode", version="9.0", description="old", core_versions="<0.1")
    [problem] = problems(tmp_path, GOOD, registry(radnet_icode=lambda: old))
    assert problem == "9: plugins.radnet_icode: plugin 'radnet_icode' 9.0 works with Filmless <0.1, this is 0.1.0"


def test_a_plugin_without_meta_is_named(tmp_path):
    [problem] = problems(tmp_path, GOOD, registry(radnet_icode=lambda: types.ModuleType("bare")))
    assert "plugin 'radnet_icode' has no 'meta = PluginMeta(...)'" in problem


def test_broken_yaml_and_duplicate_keys(tmp_path):
    assert problems(tmp_path, GOOD + "  nested: [unclosed\n")[0].startswith("12: (top): not valid YAML")
    assert problems(tmp_path, GOOD + "database: sqlite:///other.db\n") == ["11: database: this key appears twice"]


def test_all_problems_are_reported_at_once(tmp_path):
    text = GOOD.replace("  timezone:", "  time_zone:").replace("icode_valid_days: 30", "icode_valid_days: -1")
    assert len(problems(tmp_path, text)) == 2


def test_check_site_command_reports_the_line(tmp_path, capsys):
    path = write_site(tmp_path, site_data(tmp_path))
    path.write_text(path.read_text().replace("timezone:", "timezon:"))
    assert main(["check-site", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: site.timezon: unknown key" in err
    assert main(["check-site", str(ROOT / "sites" / "demo.yaml")]) == 0
    assert "ok (Filmless Demo Imaging; plugins: ihs_scheduling" in capsys.readouterr().out


def _keys(model, prefix):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        yield path
        for kind in getattr(field.annotation, "__args__", (field.annotation,)):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from _keys(kind, path)
            for inner in getattr(kind, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    yield from _keys(inner, path)


def test_every_site_file_key_is_documented():
    from core.plugins import installed, single
    from core.site import SiteConfig

    docs = (ROOT / "docs" / "sites.md").read_text(encoding="utf-8")
    keys = set(_keys(SiteConfig, ""))
    for name, load in installed().items():
        model = single(load(), name).hook.settings_model()
        keys |= set(_keys(model, f"plugins.{name}")) if model else set()
    missing = sorted(key for key in keys if f"`{key}`" not in docs)
    assert not missing, f"docs/sites.md does not document: {missing}"


@pytest.mark.parametrize("how, expected", [
    ({}, "sites/demo.yaml"),
    ({"env": {"FILMLESS_SITE": "sites/radnet.yaml"}}, "sites/radnet.yaml"),
    ({"env": {"SITE": "sites/other.yaml"}}, "sites/other.yaml"),
    ({"args": ["SITE=sites/other.yaml"], "env": {"FILMLESS_SITE": "sites/radnet.yaml"}}, "sites/other.yaml"),
])
def test_make_uses_the_site_it_is_given(how, expected):
    import os
    import subprocess

    env = {key: value for key, value in os.environ.items() if key not in ("SITE", "FILMLESS_SITE", "MAKEFLAGS")}
    # -n prints what would run; the site reaches `check-site` and every filmless command of `run`
    printed = subprocess.run(["make", "-n", "-s", "check-site", "run", *how.get("args", [])], cwd=ROOT,
                             env={**env, **how.get("env", {})}, capture_output=True, text=True, check=True).stdout
    assert f"filmless check-site {expected}\n" in printed
    probe = subprocess.run(["make", "-s", "--eval", "probe:\n\t@echo $$FILMLESS_SITE", "probe",
                            *how.get("args", [])], cwd=ROOT, env={**env, **how.get("env", {})},
                           capture_output=True, text=True, check=True).stdout
    assert probe == f"{expected}\n"
