"""microvm's default guest: a small Linux kernel plus a busybox initramfs.

The guest is built from Debian packages (``linux-source-6.1`` and ``busybox-static``)
by :mod:`microvm.guest.build` and cached under :func:`cache_dir`::

    cache_dir()/guest/<key>/{bzImage, vmlinux, initramfs.cpio, config, inputs.json, DONE}
    cache_dir()/guest/versions.json     resolved Debian package versions
    cache_dir()/src/                    downloaded .debs, extracted sources, kernel objects
    cache_dir()/logs/guest-<key>/       one log file per build step

``<key>`` is a short sha256 over every input of the build (the kernel config fragment,
``init.sh``, the exact Debian versions of the two packages and :data:`BUILD_VERSION`).

A *variant* (:data:`VARIANTS`, ``microvm guest build --variant NAME``) is the same guest
with patch files of this directory applied to the kernel source: its key also covers the
variant's name and patches, its kernel is compiled from a patched copy of the source in
``cache_dir()/src/kbuild-<version>-<variant>``, and the default guest never changes.

This module is imported on the VMM's start-up path, so it stays cheap: the fast path
of :func:`default_guest` reads two small text files and one small json, hashes them and
checks that ``DONE`` exists. Everything that builds lives in :mod:`microvm.guest.build`
and is imported only when a build is needed. The package versions are resolved with
``apt-cache`` only when nothing is recorded yet or on ``build(force=True)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Optional

if TYPE_CHECKING:
    from types import ModuleType

__all__ = [
    "BUILD_VERSION",
    "DEFAULT_CMDLINE",
    "GuestArtifacts",
    "GuestBuildError",
    "GuestNotBuilt",
    "build",
    "cache_dir",
    "cache_key",
    "default_guest",
    "variant_guest",
    "VARIANTS",
]

#: Bump whenever the build recipe changes in a way that changes the artifacts
#: (steps, cpio layout, make targets...). It is part of the cache key.
BUILD_VERSION = 1

#: The Debian packages the guest is built from; their exact versions enter the key.
KERNEL_PACKAGE = "linux-source-6.1"
BUSYBOX_PACKAGE = "busybox-static"
PACKAGES = (KERNEL_PACKAGE, BUSYBOX_PACKAGE)

#: Default kernel command line for this guest. Host-specific workarounds (for example
#: ``noxsave clearcpuid=...`` on an emulating hypervisor) are the VMM's to add.
DEFAULT_CMDLINE = "console=ttyS0 reboot=t panic=1"

#: The line ``init.sh`` prints once guest user space runs.
GUEST_OK_MARKER = "MICROVM-GUEST-OK"

_HERE = Path(__file__).resolve().parent
CONFIG_FRAGMENT = _HERE / "microvm-6.1.config"
INIT_SCRIPT = _HERE / "init.sh"

#: Guest variants: name -> (patch files in this directory, applied to the kernel source in
#: order, what the variant is for). ``qemu-compatible`` skips Linux's INT3 self-test, which
#: stops QEMU 7.2 on an emulating host KVM (docs/emulating-hosts.md); the benchmarks boot it
#: under both VMMs.
VARIANTS: dict[str, tuple[tuple[str, ...], str]] = {
    "qemu-compatible": (("qemu-compatible-no-int3-selftest.patch",),
                        "no INT3 self-test, so QEMU can boot it on an emulating host KVM"),
}

KERNEL_NAME = "bzImage"
VMLINUX_NAME = "vmlinux"
INITRAMFS_NAME = "initramfs.cpio"
DONE_NAME = "DONE"


@dataclass(frozen=True)
class GuestArtifacts:
    """The files of one built guest."""

    kernel: Path  #: bzImage
    vmlinux: Path  #: ELF with the PVH note (XEN_ELFNOTE_PHYS32_ENTRY)
    initramfs: Path  #: uncompressed newc cpio
    cmdline: str = DEFAULT_CMDLINE  #: default command line for this guest

    @classmethod
    def in_dir(cls, directory: Path) -> "GuestArtifacts":
        return cls(
            kernel=directory / KERNEL_NAME,
            vmlinux=directory / VMLINUX_NAME,
            initramfs=directory / INITRAMFS_NAME,
            cmdline=DEFAULT_CMDLINE,
        )


class GuestNotBuilt(Exception):
    """The default guest is not in the cache (or its inputs changed) and building was not allowed."""

    def __init__(self, detail: str = "") -> None:
        msg = "the default guest is not built"
        if detail:
            msg += f" ({detail})"
        msg += "; run `microvm guest build` to build it (takes a few minutes)"
        super().__init__(msg)


class GuestBuildError(Exception):
    """A build step failed; the message names the step, its log file and the log's tail."""

    def __init__(self, step: str, detail: str, log_path: Optional[Path] = None, tail: str = "") -> None:
        self.step = step
        self.log_path = log_path
        msg = f"guest build step '{step}' failed: {detail}"
        if log_path is not None:
            msg += f"\nfull log: {log_path}"
        if tail:
            msg += f"\n--- last lines of the log ---\n{tail.rstrip()}"
        super().__init__(msg)


def cache_dir() -> Path:
    """``$MICROVM_CACHE`` if set, else ``~/.cache/microvm``."""
    env = os.environ.get("MICROVM_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "microvm"


def cache_key(
    fragment: str,
    init_script: str,
    versions: Mapping[str, str],
    build_version: int = BUILD_VERSION,
) -> str:
    """A short sha256 over every input of the guest build."""
    import json

    sha256 = _sha256()

    material = json.dumps(
        {
            "build_version": build_version,
            "fragment": fragment,
            "init": init_script,
            "versions": {pkg: versions[pkg] for pkg in sorted(versions)},
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return sha256(material.encode()).hexdigest()[:16]


def _sha256():
    """sha256 without ``import hashlib`` when possible.

    ``hashlib`` loads OpenSSL (~4 ms, a third of a bare interpreter start) and this runs
    on every VM start; CPython's built-in implementation gives the same digest.
    """
    try:
        from _sha2 import sha256  # CPython >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256  # CPython <= 3.11
        except ImportError:
            from hashlib import sha256
    return sha256


def _versions_file() -> Path:
    return cache_dir() / "guest" / "versions.json"


def _read_versions() -> Optional[dict]:
    """The package versions recorded by the last resolution, or None."""
    import json

    try:
        data = json.loads(_versions_file().read_text())
        versions = {pkg: str(data["packages"][pkg]) for pkg in PACKAGES}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return versions


def _current_key(versions: Mapping[str, str]) -> str:
    return cache_key(CONFIG_FRAGMENT.read_text(), INIT_SCRIPT.read_text(), versions)


def variant_patches(variant: str) -> list[Path]:
    """The patch files of ``variant`` (a ValueError names the known variants)."""
    try:
        names = VARIANTS[variant][0]
    except KeyError:
        raise ValueError(f"unknown guest variant {variant!r} (known: {', '.join(sorted(VARIANTS))})") from None
    return [_HERE / n for n in names]


def variant_key(base_key: str, variant: str | None) -> str:
    """The cache key of ``variant`` of the guest whose key is ``base_key`` (itself for None)."""
    if variant is None:
        return base_key
    h = _sha256()(f"{base_key}\0{variant}\0".encode())
    for p in variant_patches(variant):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _cached(key: str) -> Optional[GuestArtifacts]:
    directory = cache_dir() / "guest" / key
    if (directory / DONE_NAME).is_file():
        return GuestArtifacts.in_dir(directory)
    return None


def default_guest(
    build: bool = True, progress: Optional[Callable[[str], None]] = None
) -> GuestArtifacts:
    """The default guest's artifacts.

    Returns the cached artifacts if their inputs are unchanged. Otherwise builds them
    (``build=True``) or raises :class:`GuestNotBuilt`.
    """
    versions = _read_versions()
    if versions is not None:
        found = _cached(_current_key(versions))
        if found is not None:
            return found
    if not build:
        if versions is None:
            raise GuestNotBuilt(f"nothing cached in {cache_dir() / 'guest'}")
        raise GuestNotBuilt("its inputs changed since the last build")
    return _build_module().build(force=False, progress=progress)


def variant_guest(
    variant: str, build: bool = True, progress: Optional[Callable[[str], None]] = None
) -> GuestArtifacts:
    """The artifacts of guest ``variant`` (:data:`VARIANTS`), built on first use unless
    ``build`` is False (then :class:`GuestNotBuilt`)."""
    versions = _read_versions()
    if versions is not None:
        found = _cached(variant_key(_current_key(versions), variant))
        if found is not None:
            return found
    if not build:
        raise GuestNotBuilt(f"variant {variant}; `microvm guest build --variant {variant}` builds it")
    return _build_module().build(force=False, progress=progress, variant=variant)


def build(
    force: bool = False, progress: Optional[Callable[[str], None]] = None, variant: Optional[str] = None
) -> GuestArtifacts:
    """Build the default guest, or its ``variant`` (or return it from the cache unless ``force``).

    ``force`` re-resolves the Debian package versions and rebuilds the kernel from a
    clean object directory; downloaded packages and extracted sources are reused.
    """
    return _build_module().build(force=force, progress=progress, variant=variant)


def _build_module() -> ModuleType:
    """Import :mod:`microvm.guest.build` on demand.

    Note the name clash the API asks for: the function :func:`build` and the submodule
    ``build.py``. Importing a submodule binds it as an attribute of its package, so once
    ``microvm.guest.build`` has been imported, ``microvm.guest.build`` is that module. The
    module is made callable with this function's signature, so ``microvm.guest.build(...)``
    and ``from microvm.guest import build; build(...)`` work before and after.
    """
    import importlib

    return importlib.import_module(__name__ + ".build")
