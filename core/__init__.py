"""microvm: a QEMU-microvm-compatible VMM on Linux KVM whose every device is a plugin.

Importing this package is cheap on purpose (start-up time is a feature): submodules are
imported where they are used. Plugins import what they need from :mod:`microvm.api`.
"""
from __future__ import annotations

__version__ = "0.3.0"


def __getattr__(name: str):  # lazy: ``microvm.hookimpl`` without importing pluggy up front
    if name == "hookimpl":
        import pluggy

        return pluggy.HookimplMarker("microvm")
    raise AttributeError(name)
