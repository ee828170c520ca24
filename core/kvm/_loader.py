"""Import the compiled bindings, with an error that says how to get them."""
from __future__ import annotations

try:
    from ._kvm_cffi import ffi, lib  # type: ignore[import-not-found]
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "microvm's KVM bindings are not compiled; reinstall the package "
        "(pip install -e .) on a host with a C compiler and the Linux headers"
    ) from e

__all__ = ["ffi", "lib"]
