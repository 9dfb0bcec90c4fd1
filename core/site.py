"""The site file: one YAML per organisation, validated before anything starts.

Errors read ``sites/x.yaml:LINE: key.path: what was expected``; unknown keys are
errors; ``${ENV_VAR}`` references are substituted and a missing one is named.
Each enabled plugin's section is validated by that plugin's own settings model.
"""
from __future__ import annotations

import os
import re
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, DirectoryPath, Field, ValidationError, field_validator, model_validator

from core import plugins as plugin_loader

LANGUAGES = ("en", "es")
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
COLOUR = r"^#[0-9a-fA-F]{6}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Branding(Strict):
    logo: str | None = None
    primary_colour: str = Field("#1f4e79", pattern=COLOUR)
    background_colour: str = Field("#f5f7fa", pattern=COLOUR)


class SiteInfo(Strict):
    name: str = Field(min_length=1)
    base_url: str = Field("http://127.0.0.1:8000", pattern=r"^https?://[^/]+$")
    languages: list[Literal["en", "es"]] = Field(default_factory=lambda: list(LANGUAGES), min_length=1)
    default_language: Literal["en", "es"] = "en"
    timezone: str = "UTC"
    branding: Branding = Field(default_factory=Branding)
    templates: DirectoryPath | None = None
    static: DirectoryPath | None = None

    @field_validator("timezone")
    @classmethod
    def known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"an IANA time zone such as America/New_York, not '{value}'") from None
        return value

    @model_validator(mode="after")
    def default_is_offered(self) -> "SiteInfo":
        if self.default_language not in self.languages:
            raise ValueError(f"default_language '{self.default_language}' must be one of languages {self.languages}")
        return self


class FilesystemStorage(Strict):
    kind: Literal["filesystem"]
    path: Path


class S3Storage(Strict):
    """An S3-compatible bucket (needs the ``s3`` extra: ``pip install filmless[s3]``)."""

    kind: Literal["s3"]
    bucket: str = Field(min_length=3)
    prefix: str = ""
    endpoint_url: str | None = Field(None, pattern=r"^https?://")
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    scratch: Path = Path("var/scratch")  # local folder for files on their way in


class SqliteQueue(Strict):
    kind: Literal["sqlite"]
    path: Path


class RedisQueue(Strict):
    kind: Literal["redis"]
    url: str = Field(pattern=r"^rediss?://")


class OutboxMail(Strict):
    transport: Literal["outbox"]
    sender: str = "portal@example.org"


class SmtpMail(Strict):
    transport: Literal["smtp"]
    sender: str
    host: str
    port: int = Field(587, ge=1, le=65535)
    user: str | None = None
    password: str | None = None
    starttls: bool = True


class Sms(Strict):
    transport: str = "outbox"  # "outbox", or a name contributed by a plugin's sms_transports hook


class Identity(Strict):
    self_registration: bool = True
    verify_with: list[Literal["patient_id", "accession_number"]] = Field(
        default_factory=lambda: ["patient_id", "accession_number"], min_length=1)
    request_account_days: int = Field(3, ge=1, le=60)
    minimum_age: int = Field(0, ge=0, le=21)
    second_factor: Literal["optional", "required"] = "optional"
    accounts_at_scan: bool = False
    code_valid_minutes: int = Field(10, ge=1, le=60)
    code_attempts: int = Field(5, ge=1, le=10)
    reset_valid_minutes: int = Field(30, ge=5, le=240)
    invitation_valid_hours: int = Field(24, ge=1, le=24 * 30)


class DicomListener(Strict):
    ae_title: str = Field("FILMLESS", pattern=r"^[ -~]{1,16}$")
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=1, le=65535)


class Studies(Strict):
    max_file_mb: int = Field(512, ge=1, le=16384)  # a larger instance is refused at ingest
    pacs_token: str | None = Field(None, min_length=12)  # bearer token of the PACS (STOW-RS, reports API)
    dicom: DicomListener = Field(default_factory=DicomListener)
    cors_origins: list[str] = Field(default_factory=list)  # e.g. an OHIF viewer's origin
    default_issuer: str = Field("", max_length=64)
    issuers: dict[str, str] = Field(default_factory=dict)  # Institution Name -> issuer of its patient IDs


class Exports(Strict):
    path: Path | None = None  # where finished exports wait; default: "exports" beside the blob store's scratch
    available_hours: int = Field(24, ge=1, le=24 * 30)  # then the file is purged
    zip_level: int = Field(0, ge=0, le=9)  # deflate level of ZIP downloads; 0 stores (see docs/performance.md)
    volume_label: str = Field("", pattern=r"^[A-Z0-9_]{0,32}$")  # of disc images; default from the site name
    disc_viewer: Path | None = None  # a folder of the site's own files put on every disc as VIEWER/
    acknowledgement: dict[str, str] = Field(default_factory=dict)  # language -> text shown before a DICOM download
    alert_to: list[str] = Field(default_factory=list)  # who hears of a failed export; default: admin accounts


class Deidentify(Strict):
    """What a share with "hide patient details" keeps: the options of the DICOM PS3.15 Annex E Basic
    Profile (core/sharing/deidentify.py); everything else identifying is removed or replaced."""

    retain_dates: bool = False  # Retain Longitudinal Temporal Information with Full Dates
    retain_device: bool = False  # Retain Device Identity (serial numbers, station names)
    retain_institution: bool = False  # Retain Institution Identity (where the exam was done)
    retain_patient_characteristics: bool = False  # Retain Patient Characteristics (sex, age, size, weight)
    clean_descriptions: bool = False  # Clean Descriptors: keep descriptions, the patient's identifiers cut out
    uid_secret: str | None = Field(None, min_length=16)  # key of the replacement UIDs; give it as ${ENV}


class Sharing(Strict):
    max_days: int | None = Field(None, ge=1, le=3650)  # the longest a share may last; None: no cap
    default_days: int = Field(30, ge=1, le=3650)  # the expiry the share form suggests
    session_hours: int = Field(4, ge=1, le=72)  # how long an opened share stays open in that browser
    guest_accounts: bool = False  # a share by email also opens a guest account for the recipient
    quick_code_hours: int = Field(24, ge=1, le=24 * 7)  # the life of a Quick Share code
    deidentify: Deidentify = Field(default_factory=Deidentify)  # what "hide patient details" keeps


class Sessions(Strict):
    idle_minutes: int = Field(30, ge=1)
    absolute_hours: int = Field(12, ge=1)


class SiteConfig(Strict):
    site: SiteInfo
    database: str = Field(pattern=r"^(sqlite|postgresql)(\+\w+)?://")
    storage: Annotated[Union[FilesystemStorage, S3Storage], Field(discriminator="kind")]
    queue: Annotated[Union[SqliteQueue, RedisQueue], Field(discriminator="kind")]
    mail: Annotated[Union[OutboxMail, SmtpMail], Field(discriminator="transport")]
    sms: Sms = Field(default_factory=Sms)
    sessions: Sessions = Field(default_factory=Sessions)
    identity: Identity = Field(default_factory=Identity)
    studies: Studies = Field(default_factory=Studies)
    exports: Exports = Field(default_factory=Exports)
    sharing: Sharing = Field(default_factory=Sharing)
    demo: bool = False  # demo accounts' passwords work and /outbox is shown to admins only when true
    plugins: dict[str, dict[str, Any] | None] = Field(default_factory=dict)


@dataclass
class Site:
    """A validated site: the core's config, the loaded plugins and their settings."""

    path: Path
    config: SiteConfig
    plugins: dict[str, ModuleType] = field(default_factory=dict)
    plugin_settings: dict[str, BaseModel | None] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.site.name


class SiteError(Exception):
    """The site file is wrong; ``str()`` is one ``file:line: key: reason`` per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# -- YAML with line numbers ---------------------------------------------------

class _Parsed:
    """YAML data plus the line of every key path, and the problems met on the way."""

    def __init__(self, source: str):
        self.source = source
        self.lines: dict[tuple, int] = {}
        self.problems: list[str] = []
        self.unset: set[tuple] = set()  # values whose ${VAR} is missing: already reported
        self.scalars = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: tuple) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            result = {}
            for key_node, value_node in node.value:
                key = key_node.value
                if key in result:
                    self.problem(key_node.start_mark.line + 1, path + (key,), "this key appears twice")
                result[key] = self.build(value_node, path + (key,))
                self.lines[path + (key,)] = key_node.start_mark.line + 1  # the key's line, not its value's
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        value = self.scalars.construct_object(node)
        return self.substitute(value, path) if isinstance(value, str) else value

    def substitute(self, value: str, path: tuple) -> str:
        def replace(match: re.Match) -> str:
            name = match.group(1)
            if name not in os.environ:
                self.problem(self.lines[path], path, f"environment variable {name} is not set")
                self.unset.add(path)
                return ""
            return os.environ[name]

        return ENV_REF.sub(replace, value)

    def problem(self, line: int, path: tuple, message: str) -> None:
        key = ".".join(str(p) for p in path) or "(top)"
        self.problems.append(f"{self.source}:{line}: {key}: {message}")

    def report(self, data: Any, errors: list[dict], prefix: tuple = ()) -> None:
        for error in errors:
            key_path, line = self.locate(data, prefix + tuple(error["loc"]))
            if key_path not in self.unset:
                self.problem(line, key_path, _explain(error))

    def locate(self, data: Any, loc: tuple) -> tuple[tuple, int]:
        """The real key path of a pydantic error location, and its line."""
        path: tuple = ()
        node = data
        for i, part in enumerate(loc):
            if isinstance(node, dict) and part in node:
                node = node[part]
                path += (part,)
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
                path += (part,)
            elif i == len(loc) - 1:
                return path + (part,), self.lines.get(path + (part,), self.lines.get(path, 1))
            # anything else is a union tag pydantic adds, not a key of the file
        return path, self.lines.get(path, 1)


def _explain(error: dict) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    return error["msg"].removeprefix("Value error, ")


def _parse(text: str, source: str) -> tuple[dict, _Parsed]:
    parsed = _Parsed(source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise SiteError([f"{source}:{line}: (top): not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise SiteError([f"{source}:1: (top): expected a mapping with keys site, database, storage, queue, mail"])
    data = parsed.build(root, ())
    return data, parsed


def _load_plugin(name: str, section, parsed: _Parsed, data: dict, registry) -> tuple | None:
    """(module, validated settings) of one enabled plugin, or None with its problems noted."""
    where = ("plugins", name)
    try:
        module = plugin_loader.load(name, registry)
        model = plugin_loader.single(module, name).hook.settings_model()
    except plugin_loader.PluginError as exc:
        parsed.problem(parsed.lines[where], where, str(exc))
        return None
    if model is None:
        if section:
            parsed.problem(parsed.lines[where], where, f"plugin '{name}' takes no settings")
            return None
        return module, None
    try:
        return module, model.model_validate(section or {})
    except ValidationError as exc:
        parsed.report(data, exc.errors(), where)
        return None


def load_site(path: str | os.PathLike, registry: plugin_loader.Registry | None = None) -> Site:
    """Read, substitute, validate; load and validate every enabled plugin."""
    path = Path(path)
    try:
        source = str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SiteError([f"{source}:0: (file): cannot read the site file: {exc.strerror}"]) from None
    data, parsed = _parse(text, source)
    problems = parsed.problems
    config = None
    try:
        config = SiteConfig.model_validate(data)
    except ValidationError as exc:
        parsed.report(data, exc.errors())
    site = Site(path=path, config=config) if config else None
    sections = data.get("plugins")
    for name, section in sections.items() if isinstance(sections, dict) else ():
        loaded = _load_plugin(name, section, parsed, data, registry)
        if site and loaded:
            site.plugins[name], site.plugin_settings[name] = loaded
    if problems:
        raise SiteError(problems)
    return site
