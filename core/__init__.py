"""Filmless core. Plugins need only ``from core import hookimpl`` to take part."""
from core.plugins import ExportFormat, IdentityProof, NavEntry, PluginMeta, RegistrationChallenge, ReleaseHold, ShareOption, hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "ExportFormat", "IdentityProof", "PluginMeta", "NavEntry", "RegistrationChallenge", "ReleaseHold", "ShareOption", "__version__"]
