"""Finding, checking and wiring plugins (DESIGN §3).

Plugins are found through the entry-point group ``filmless.plugins``; the
built-in ones register there exactly like a third-party package. A site names
the plugins it enables; each is imported, its ``meta`` checked against this
core's version, and registered on a ``PluginManager`` that belongs to one app.
Anything wrong stops start-up with a one-line reason naming the plugin.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import Any, Callable, Mapping

import pluggy
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from core import hookspecs

ENTRY_POINT_GROUP = "filmless.plugins"
PROJECT = "filmless"
hookimpl = pluggy.HookimplMarker(PROJECT)
trace_log = logging.getLogger("filmless.hooks")


@dataclass(frozen=True)
class PluginMeta:
    """What a plugin says about itself; its module must define ``meta = PluginMeta(...)``."""

    name: str
    version: str
    description: str
    core_versions: str  # a PEP 440 range, e.g. ">=0.1,<0.2"


@dataclass(frozen=True)
class NavEntry:
    """A menu entry returned by the ``navigation`` hook."""

    label: str
    url: str
    order: int = 100


@dataclass(frozen=True)
class RegistrationChallenge:
    """An extra sign-up question returned by the ``registration_challenge`` hook."""

    name: str
    label: str
    check: Callable[..., bool]  # check(session=, patient=, answer=) -> bool


@dataclass(frozen=True)
class IdentityProof:
    """Another way to prove who you are at step 2 of sign-up, returned by the ``identity_proofs`` hook.

    Offered as a choice before the site's ``identity.verify_with`` kinds; ``find``
    returns the patient the typed number proves (checking the birth date and the
    last name), or ``None``."""

    name: str  # [a-z0-9_]+, the form's choice and ?proof=<name>
    label: str  # a message id, translated when shown
    hint: str  # a message id, translated when shown under the field ("" for none)
    find: Callable[..., Any]  # find(session=, number=, last_name=, birth_date=) -> Patient | None


@dataclass(frozen=True)
class ReleaseHold:
    """A ``report_release_at`` or ``images_release_at`` vote: not before ``at`` (aware, UTC).

    ``rule`` names the rule that decided (written to the audit trail); ``law``, when
    set, is shown to the patient: "available on <date> as required by <law>"."""

    at: datetime
    rule: str
    law: str = ""


@dataclass(frozen=True)
class ExportFormat:
    """A way to export studies, returned by the ``export_formats`` hook.

    ``build(job)`` runs in the worker: it writes ``job.target`` (the file offered
    for download, named ``<export><suffix>``) from ``job.entries`` and calls
    ``job.advance()`` per file, or raises ``job.failure(message)`` to fail with a
    message for the person who asked. ``dicom`` formats ask that person to
    acknowledge first that the files hold their health information."""

    name: str  # [a-z0-9_]+, in addresses and the database
    label: str  # the button's text, a message id translated when shown
    suffix: str  # ".zip", ".iso"
    media_type: str
    build: Callable[..., None]
    dicom: bool = True


@dataclass(frozen=True)
class ShareOption:
    """An extra yes/no option on the share form, returned by the ``share_options`` hook.

    The patient's choice is kept on the share (``share.options[name]``) and, when on,
    is in the recipient principal's scope as ``option:<name>`` for ``access_vote``."""

    name: str  # [a-z0-9_]+
    label: str  # a message id, translated when shown
    default: bool = False


class PluginError(Exception):
    """A plugin could not be used; the message names it and says why."""


Registry = Mapping[str, Callable[[], ModuleType]]


def installed() -> dict[str, Callable[[], ModuleType]]:
    """Plugins installed in this environment, by name, each as a loader."""
    return {ep.name: ep.load for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def core_version() -> str:
    from core import __version__

    return __version__


def load(name: str, registry: Registry | None = None) -> ModuleType:
    """Import plugin ``name`` and check its meta; raise ``PluginError`` if unusable."""
    registry = installed() if registry is None else registry
    if name not in registry:
        known = ", ".join(sorted(registry)) or "none"
        raise PluginError(f"plugin '{name}' is not installed (installed: {known})")
    try:
        module = registry[name]()
    except Exception as exc:  # a plugin's import error must name the plugin
        raise PluginError(f"plugin '{name}' failed to load: {type(exc).__name__}: {exc}") from exc
    meta = getattr(module, "meta", None)
    if not isinstance(meta, PluginMeta):
        raise PluginError(f"plugin '{name}' has no 'meta = PluginMeta(...)' in {module.__name__}")
    if meta.name != name:
        raise PluginError(f"plugin '{name}' calls itself '{meta.name}' in its meta")
    try:
        compatible = Version(core_version()) in SpecifierSet(meta.core_versions)
    except InvalidSpecifier:
        raise PluginError(f"plugin '{name}' has an invalid core_versions '{meta.core_versions}'") from None
    if not compatible:
        raise PluginError(
            f"plugin '{name}' {meta.version} works with Filmless {meta.core_versions}, "
            f"this is {core_version()}"
        )
    return module


def new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def single(module: ModuleType, name: str) -> pluggy.PluginManager:
    """A manager holding only ``module``, to ask one plugin (e.g. its ``settings_model``)."""
    return build_manager({name: module})


def build_manager(plugins: Mapping[str, ModuleType]) -> pluggy.PluginManager:
    """A new manager with ``plugins`` (in site-file order) registered and checked."""
    pm = new_manager()
    # pluggy calls the last registered first; register in reverse so results
    # come in the order the site file lists the plugins.
    for name, module in reversed(list(plugins.items())):
        try:
            pm.register(module, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin '{name}' has an invalid hook: {exc}") from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin '{pm.get_name(exc.plugin)}' implements an unknown hook: {exc}") from exc
    if os.environ.get("FILMLESS_TRACE_HOOKS") == "1":
        trace(pm)
    return pm


def trace(pm: pluggy.PluginManager) -> None:
    """Log every hook call with its implementers and results (``FILMLESS_TRACE_HOOKS=1``)."""

    def before(hook_name, hook_impls, kwargs):
        names = [impl.plugin_name for impl in reversed(hook_impls)]  # in calling order
        trace_log.warning("hook %s(%s) implementers=%s", hook_name, ", ".join(sorted(kwargs)), names)

    def after(outcome, hook_name, hook_impls, kwargs):
        try:
            trace_log.warning("hook %s -> %r", hook_name, outcome.get_result())
        except BaseException as exc:  # the exception is re-raised by pluggy itself
            trace_log.warning("hook %s raised %r", hook_name, exc)

    pm.add_hookcall_monitoring(before, after)


def call_each(pm: pluggy.PluginManager, hook: str, *, strict: bool = True, **kwargs) -> None:
    """Call ``hook`` plugin by plugin, so a failure names the plugin that failed.

    ``strict`` raises ``PluginError`` at the first failure (start-up); otherwise
    each failure is logged and the other plugins are still called."""
    implementers = list(dict.fromkeys(impl.plugin for impl in reversed(getattr(pm.hook, hook).get_hookimpls())))
    for plugin in implementers:  # each plugin once, even with several implementations of the hook
        others = [other for other in pm.get_plugins() if other is not plugin]
        try:
            pm.subset_hook_caller(hook, others)(**kwargs)
        except Exception as exc:
            error = PluginError(f"plugin '{pm.get_name(plugin)}' failed in {hook}: {type(exc).__name__}: {exc}")
            if strict:
                raise error from exc
            logging.getLogger("filmless").exception(str(error))
