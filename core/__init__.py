"""Filmless core. Plugins need only ``from core import hookimpl`` to take part."""
from core.plugins import NavEntry, PluginMeta, RegistrationChallenge, ReleaseHold, hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "PluginMeta", "NavEntry", "RegistrationChallenge", "ReleaseHold", "__version__"]
