"""sites/radnet.yaml: the multi-centre group's site loads and passes `filmless check-site`;
a wrong release rule is reported at its own line; the demo site carries the same centres
and rules; docs/sites.md documents every key of the plugin's section."""
from __future__ import annotations

import re

import pytest
import yaml
from support import ROOT, filmless

from core.site import SiteError, load_site
from plugins.radnet_icode.settings import Location, ReleaseRule, Settings

RADNET = ROOT / "sites" / "radnet.yaml"
CENTRES = [
    ("la-westside", "Westside Imaging Center", "CA", "Southern California", "(310) 555-0142"),
    ("austin-north", "North Austin Imaging", "TX", "Central Texas", "(512) 555-0178"),
    ("brooklyn-heights", "Brooklyn Heights Radiology", "NY", "New York City", "(718) 555-0193"),
]


def radnet_text() -> str:
    return RADNET.read_text(encoding="utf-8")


def line_of(text: str, fragment: str, after: str = "") -> int:
    """The 1-based line of the first ``fragment`` that comes after the line holding ``after``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if after in line) if after else 0
    return next(i for i, line in enumerate(lines) if i >= start and fragment in line) + 1


def problems_of(tmp_path, text: str) -> list[str]:
    path = tmp_path / "x.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SiteError) as caught:
        load_site(path)
    return caught.value.problems


def test_the_radnet_site_is_the_multi_centre_group_of_the_issue():
    site = load_site(RADNET)
    info, identity, settings = site.config.site, site.config.identity, site.plugin_settings["radnet_icode"]
    assert (info.name, info.timezone, info.languages) == ("Regional Imaging Portal Pass", "America/Los_Angeles",
                                                          ["en", "es"])
    assert site.config.database == "sqlite:///var/radnet/portal.db"
    assert str(site.config.storage.path) == "var/radnet/blobs" and str(site.config.queue.path) == "var/radnet/queue.db"
    assert site.config.demo is True and (identity.verify_with, identity.minimum_age) == (["patient_id"], 18)
    assert list(site.plugins) == ["radnet_icode"]
    assert [(c.key, c.name, c.state, c.region, c.phone) for c in settings.locations] == CENTRES
    assert [c.institution_names for c in settings.locations] == [[name] for _k, name, *_ in CENTRES]
    assert [(r.jurisdictions, r.categories, r.flags, r.delay_days, r.delay_hours, r.business_days, r.law)
            for r in settings.release_rules] == [
        (["TX"], [], [], 4, 0, False, "Texas SB 922"), (["CA"], [], [], 4, 0, False, "California SB 1419")]
    assert "radnet" not in info.name.lower()  # no real organisation's name on the pages


def test_check_site_passes_as_a_real_command():
    done = filmless("check-site", "sites/radnet.yaml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "sites/radnet.yaml: ok (Regional Imaging Portal Pass; plugins: radnet_icode)"


def test_wrong_rule_values_point_at_their_line(tmp_path):
    text = radnet_text()
    california = line_of(text, "delay_days: 4", after="name: California")
    texas = line_of(text, "jurisdictions: [TX]")
    lines = text.splitlines()
    lines[california - 1] = lines[california - 1].replace("delay_days: 4", "delay_days: -1")
    lines[texas - 1] = lines[texas - 1].replace("[TX]", "[Texas]")

    found = problems_of(tmp_path, "\n".join(lines) + "\n")

    assert all(problem.startswith(str(tmp_path / "x.yaml") + ":") for problem in found)
    assert sorted(p.split("x.yaml:", 1)[1] for p in found) == [
        f"{texas}: plugins.radnet_icode.release_rules.0.jurisdictions: "
        "jurisdictions are two-letter state codes such as TX, not Texas",
        f"{california}: plugins.radnet_icode.release_rules.1.delay_days: Input should be greater than or equal to 0"]


def test_a_rule_without_delay_or_with_an_unknown_key_is_reported_at_its_line(tmp_path):
    text = radnet_text()
    item = line_of(text, "- name: California")
    without_delay = text.replace("        delay_days: 4\n        law: California", "        law: California")
    assert [p.split("x.yaml:", 1)[1] for p in problems_of(tmp_path, without_delay)] == [
        f"{item}: plugins.radnet_icode.release_rules.1: give delay_days or delay_hours "
        "(a rule without a delay holds nothing)"]
    misspelt = text.replace("law: Texas SB 922", "lawful: Texas SB 922")
    texas_law = line_of(text, "law: Texas SB 922")
    assert sorted(p.split("x.yaml:", 1)[1] for p in problems_of(tmp_path, misspelt)) == sorted([
        f"{texas_law}: plugins.radnet_icode.release_rules.0.lawful: unknown key",
        f"{line_of(text, '- name: Texas')}: plugins.radnet_icode.release_rules.0.law: required key is missing"])


def test_centre_mistakes_are_reported(tmp_path):
    text = radnet_text()
    twice = text.replace("key: brooklyn-heights", "key: austin-north")
    [problem] = problems_of(tmp_path, twice)
    assert problem.endswith("plugins.radnet_icode: location keys must differ: austin-north appears twice")
    unknown_default = text.replace("    age_of_majority: 18\n", "    age_of_majority: 18\n    default_location: dallas\n")
    [problem] = problems_of(tmp_path, unknown_default)
    assert problem.endswith("plugins.radnet_icode: default_location 'dallas' is not the key of a location")
    bad_state = text.replace("state: NY", "state: New York")
    [problem] = problems_of(tmp_path, bad_state)
    assert problem.split("x.yaml:", 1)[1].startswith(
        f"{line_of(text, 'state: NY')}: plugins.radnet_icode.locations.2.state: String should match pattern")


def test_the_demo_site_has_the_same_centres_and_rules():
    demo = load_site(ROOT / "sites" / "demo.yaml").plugin_settings["radnet_icode"]
    radnet = load_site(RADNET).plugin_settings["radnet_icode"]
    assert demo.locations == radnet.locations and demo.release_rules == radnet.release_rules
    assert "report_release" not in yaml.safe_load((ROOT / "sites" / "demo.yaml").read_text())["plugins"]["radnet_icode"]


def section_of_docs() -> str:
    docs = (ROOT / "docs" / "sites.md").read_text(encoding="utf-8")
    return docs.split("### `plugins.radnet_icode`", 1)[1].split("\n### ", 1)[0]


def test_the_docs_describe_every_key_of_the_section():
    section = section_of_docs()
    for name in Settings.model_fields:
        assert f"#### `plugins.radnet_icode.{name}`" in section, name
    for model, key in ((Location, "locations"), (ReleaseRule, "release_rules")):
        for name in model.model_fields:
            assert f"#### `plugins.radnet_icode.{key}.{name}`" in section, f"{model.__name__}.{name}"


def test_the_docs_state_the_law_and_show_the_narrower_texas_rule():
    section = section_of_docs()
    for fact in ("4 days after they are signed", "Texas SB 922", "California SB 1419", "Occupations Code §159.0062",
                 "September 1, 2025", "malignancy", "genetic marker", "third day", "21st Century Cures Act",
                 "information blocking"):
        assert fact in section, fact
    narrower = [block for block in re.findall(r"```yaml\n(.*?)```", section, re.S) if "159.0062" in block]
    assert narrower, "the narrower Texas rule is shown as YAML"
    rules = yaml.safe_load(narrower[0])["release_rules"]
    assert [(r["jurisdictions"], r.get("flags", []), r.get("categories", []), r["delay_days"], r["law"]) for r in rules] == [
        (["TX"], ["possible_malignancy"], [], 3, "Texas Occupations Code §159.0062"),
        (["TX"], [], ["genetic"], 3, "Texas Occupations Code §159.0062")]
    for rule in rules:
        ReleaseRule.model_validate(rule)  # the example is a valid rule
