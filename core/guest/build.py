"""The build steps of microvm's default guest (see :mod:`microvm.guest`).

Everything comes from Debian packages, by name:

1. build dependencies (``flex bison libelf-dev bc build-essential cpio``), installed with
   apt-get only if ``dpkg -s`` says they are missing;
2. ``linux-source-6.1`` and ``busybox-static`` fetched with ``apt-get download`` into
   ``cache_dir()/src/debs`` and unpacked with ``dpkg-deb -x`` (kept for later rebuilds);
3. the kernel: ``make tinyconfig``, the fragment merged with ``merge_config.sh -m``,
   ``make olddefconfig``, a check that the fragment survived, ``make bzImage vmlinux``
   (out of tree, in ``cache_dir()/src/kbuild-<version>``, so a config change rebuilds
   incrementally), and a check that ``vmlinux`` carries the PVH entry note;
4. the initramfs: a newc cpio written here in Python (so ``/dev/console`` needs no mknod)
   holding busybox, ``/init`` and the mount points.

Artifacts are assembled in a temporary directory next to their final place and renamed
into place, with ``DONE`` written last. Each step's full output goes to its own log file
under ``cache_dir()/logs/guest-<key>/``; a failing step raises :class:`GuestBuildError`
with that path and the log's tail.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Mapping, Optional, Sequence

from . import (
    BUILD_VERSION,
    BUSYBOX_PACKAGE,
    CONFIG_FRAGMENT,
    DONE_NAME,
    INIT_SCRIPT,
    INITRAMFS_NAME,
    KERNEL_NAME,
    KERNEL_PACKAGE,
    PACKAGES,
    VMLINUX_NAME,
    GuestArtifacts,
    GuestBuildError,
    _cached,
    _read_versions,
    _versions_file,
    cache_dir,
    cache_key,
    variant_key,
    variant_patches,
)

log = logging.getLogger(__name__)

Progress = Optional[Callable[[str], None]]

#: Debian packages needed to compile the kernel (busybox-static is downloaded, not installed).
BUILD_DEPS = ("flex", "bison", "libelf-dev", "bc", "build-essential", "cpio")

#: Lines of a failing step's log quoted in the error message.
LOG_TAIL_LINES = 25

#: ELF note owner and type of XEN_ELFNOTE_PHYS32_ENTRY, the PVH entry point
#: (include/xen/interface/elfnote.h).
XEN_NOTE_OWNER = b"Xen"
XEN_ELFNOTE_PHYS32_ENTRY = 0x12


# --------------------------------------------------------------------------------------
# newc cpio writer
# --------------------------------------------------------------------------------------

S_IFDIR = 0o040000
S_IFREG = 0o100000
S_IFLNK = 0o120000
S_IFCHR = 0o020000
S_IFBLK = 0o060000

_NEWC_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


class CpioWriter:
    """Writes an uncompressed ``newc`` (SVR4, no checksum) cpio archive.

    This is the format the kernel's initramfs unpacker reads
    (Documentation/driver-api/early-userspace/buffer-format.rst). Writing it here lets
    the archive hold device nodes without ``mknod`` privileges, and makes it reproducible:
    owner root, mtime 0, inode numbers in order of insertion.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 0
        self._closed = False

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
        ino: Optional[int] = None,
    ) -> None:
        if self._closed:
            raise ValueError("cpio archive already closed")
        name = name.lstrip("/")
        if not name:
            raise ValueError("empty cpio member name")
        if ino is None:
            self._ino += 1
            ino = self._ino
        encoded = name.encode() + b"\0"
        fields = (
            ino,
            mode,
            0,  # uid
            0,  # gid
            nlink,
            0,  # mtime
            len(data),
            0,  # devmajor
            0,  # devminor
            rdev[0],
            rdev[1],
            len(encoded),
            0,  # check
        )
        header = _NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded)
        self._out.write(b"\0" * (-(len(header) + len(encoded)) % 4))
        self._out.write(data)
        self._out.write(b"\0" * (-len(data) % 4))

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, S_IFDIR | mode, nlink=2)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, S_IFLNK | 0o777, target.encode())

    def add_chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, S_IFCHR | mode, rdev=(major, minor))

    def add_blockdev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, S_IFBLK | mode, rdev=(major, minor))

    def close(self) -> None:
        """Write the trailer. The writer does not close the underlying file."""
        if not self._closed:
            self._entry(_TRAILER, 0, ino=0)
            self._closed = True


def write_initramfs(out: BinaryIO, busybox: bytes, init_script: bytes) -> None:
    """The default guest's initramfs: busybox, /init and the mount points."""
    w = CpioWriter(out)
    for d in ("bin", "dev", "proc", "sys", "tmp"):
        w.add_dir(d)
    w.add_chardev("dev/console", 5, 1, 0o600)
    w.add_file("bin/busybox", busybox, 0o755)
    w.add_symlink("bin/sh", "busybox")
    w.add_file("init", init_script, 0o755)
    w.close()


# --------------------------------------------------------------------------------------
# ELF notes (the PVH entry check)
# --------------------------------------------------------------------------------------

PT_NOTE = 4
SHT_NOTE = 7


def elf_notes(path: Path) -> Iterator[tuple[bytes, int, bytes]]:
    """Yield ``(owner, type, desc)`` of every note of a little-endian ELF64 file.

    Notes are read from the PT_NOTE program headers, or from SHT_NOTE sections when
    the file has no PT_NOTE segment.
    """
    with open(path, "rb") as f:
        ident = f.read(64)
        if len(ident) < 64 or ident[:4] != b"\x7fELF":
            raise ValueError(f"{path}: not an ELF file")
        if ident[4] != 2 or ident[5] != 1:
            raise ValueError(f"{path}: not a little-endian ELF64 file")
        (e_phoff, e_shoff) = struct.unpack_from("<QQ", ident, 0x20)
        (e_phentsize, e_phnum, e_shentsize, e_shnum) = struct.unpack_from("<HHHH", ident, 0x36)

        ranges: list[tuple[int, int]] = []
        for i in range(e_phnum):
            f.seek(e_phoff + i * e_phentsize)
            p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack("<IIQQQQ", f.read(40))
            if p_type == PT_NOTE:
                ranges.append((p_offset, p_filesz))
        if not ranges:
            for i in range(e_shnum):
                f.seek(e_shoff + i * e_shentsize)
                _name, sh_type, _flags, _addr, sh_offset, sh_size = struct.unpack(
                    "<IIQQQQ", f.read(40)
                )
                if sh_type == SHT_NOTE:
                    ranges.append((sh_offset, sh_size))

        for offset, size in ranges:
            f.seek(offset)
            blob = f.read(size)
            pos = 0
            while pos + 12 <= len(blob):
                namesz, descsz, ntype = struct.unpack_from("<III", blob, pos)
                pos += 12
                name = blob[pos : pos + namesz].rstrip(b"\0")
                pos += (namesz + 3) & ~3
                desc = blob[pos : pos + descsz]
                pos += (descsz + 3) & ~3
                yield name, ntype, desc


def pvh_entry(path: Path) -> Optional[int]:
    """The XEN_ELFNOTE_PHYS32_ENTRY address of an ELF file, or None if it has none."""
    for owner, ntype, desc in elf_notes(path):
        if owner == XEN_NOTE_OWNER and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
            if len(desc) >= 8:
                return struct.unpack_from("<Q", desc)[0]
            if len(desc) >= 4:
                return struct.unpack_from("<I", desc)[0]
    return None


# --------------------------------------------------------------------------------------
# kernel config fragment checks
# --------------------------------------------------------------------------------------

_SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """Kconfig assignments of a .config or fragment; ``n`` for ``# CONFIG_X is not set``."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        m = _SET_RE.match(line)
        if m:
            values[m.group(1)] = m.group(2)
            continue
        m = _UNSET_RE.match(line)
        if m:
            values[m.group(1)] = "n"
    return values


def kconfig_symbols(srctree: Path) -> set[str]:
    """Every symbol (as ``CONFIG_NAME``) declared by a Kconfig file of the tree."""
    decl = re.compile(r"^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$", re.MULTILINE)
    symbols: set[str] = set()
    for kconfig in srctree.rglob("Kconfig*"):
        if not kconfig.is_file():
            continue
        try:
            text = kconfig.read_text(errors="replace")
        except OSError:
            continue
        symbols.update("CONFIG_" + s for s in decl.findall(text))
    return symbols


def check_fragment(
    fragment: str, config: str, known_symbols: Optional[set[str]] = None
) -> tuple[list[str], list[str], list[str]]:
    """Compare a fragment with the resulting .config.

    Returns ``(missing, enabled, unknown)``: ``=y`` options of the fragment that are not
    ``=y`` in the config (and value options, e.g. ``NR_CPUS=64``, that differ); options the fragment turns off (``=n`` / ``is not set``) that
    the config has on; options the kernel does not declare at all (only when
    ``known_symbols`` is given; those are left out of the other two lists).
    """
    wanted = parse_config(fragment)
    got = parse_config(config)
    missing, enabled, unknown = [], [], []
    for sym, val in wanted.items():
        if known_symbols is not None and sym not in known_symbols:
            unknown.append(sym)
            continue
        have = got.get(sym, "n")
        if val == "y" and have != "y":
            missing.append(f"{sym} (wanted y, got {have})")
        elif val == "n" and have not in ("n", ""):
            enabled.append(f"{sym} (wanted n, got {have})")
        elif val not in ("y", "n") and have != val:
            missing.append(f"{sym} (wanted {val}, got {have})")
    return missing, enabled, unknown


# --------------------------------------------------------------------------------------
# running steps
# --------------------------------------------------------------------------------------


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _safe(version: str) -> str:
    """A Debian version as a file name component (the epoch colon is not path friendly)."""
    return re.sub(r"[^A-Za-z0-9.+~-]", "_", version)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(LC_ALL="C", LANG="C", DEBIAN_FRONTEND="noninteractive")
    env.update(extra)
    return env


class _Builder:
    """State of one build: where logs go and how progress is reported."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self.log_dir: Optional[Path] = None
        self._n = 0
        self.t0 = time.monotonic()

    def say(self, line: str) -> None:
        log.info("%s", line)
        if self._progress is not None:
            self._progress(line)

    def log_path(self, step: str) -> Path:
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="microvm-guest-logs-"))
        self._n += 1
        name = re.sub(r"[^A-Za-z0-9.-]+", "-", step).strip("-")
        return self.log_dir / f"{self._n:02d}-{name}.log"

    def run(
        self,
        step: str,
        argv: Sequence[str],
        cwd: Optional[Path] = None,
        env: Optional[Mapping[str, str]] = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run one step with its whole output in its own log file."""
        path = self.log_path(step)
        with open(path, "wb") as logf:
            logf.write(f"$ {' '.join(argv)}\n# cwd: {cwd or os.getcwd()}\n".encode())
            logf.flush()
            try:
                proc = subprocess.run(
                    list(argv),
                    cwd=cwd,
                    env=dict(env) if env is not None else _env(),
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                )
            except OSError as e:
                raise GuestBuildError(step, f"cannot run {argv[0]}: {e}", path) from e
            logf.write(f"\n# exit status {proc.returncode}\n".encode())
        if check and proc.returncode != 0:
            raise GuestBuildError(
                step,
                f"`{' '.join(argv)}` exited with status {proc.returncode}",
                path,
                _tail(path),
            )
        return proc

    def capture(self, step: str, argv: Sequence[str]) -> str:
        """Run a quick query and return its stdout (failures raise GuestBuildError)."""
        try:
            proc = subprocess.run(
                list(argv), env=_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True
            )
        except OSError as e:
            raise GuestBuildError(step, f"cannot run {argv[0]}: {e}") from e
        if proc.returncode != 0:
            raise GuestBuildError(
                step,
                f"`{' '.join(argv)}` exited with status {proc.returncode}",
                tail=(proc.stdout + proc.stderr)[-4000:],
            )
        return proc.stdout


# --------------------------------------------------------------------------------------
# packages
# --------------------------------------------------------------------------------------


def missing_packages(packages: Sequence[str]) -> list[str]:
    """Those of ``packages`` that ``dpkg -s`` does not report as installed."""
    proc = subprocess.run(
        ["dpkg", "-s", *packages], env=_env(), capture_output=True, text=True
    )
    installed = set()
    current = None
    for line in proc.stdout.splitlines():
        if line.startswith("Package:"):
            current = line.split(":", 1)[1].strip()
        elif line.startswith("Status:") and current is not None:
            if line.split()[-1] == "installed":
                installed.add(current)
    return [p for p in packages if p not in installed]


def _apt_update(b: _Builder) -> None:
    b.say("guest: apt-get update (package lists look stale)")
    b.run("apt-get update", ["apt-get", "update"])


def ensure_build_deps(b: _Builder) -> None:
    missing = missing_packages(BUILD_DEPS)
    if not missing:
        return
    if os.geteuid() != 0:
        raise GuestBuildError(
            "build dependencies",
            f"missing Debian packages: {' '.join(missing)}; install them with "
            f"`sudo apt-get install {' '.join(missing)}` and run `microvm guest build` again",
        )
    b.say(f"guest: installing build dependencies: {' '.join(missing)}")
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if b.run("apt-get install", argv, check=False).returncode != 0:
        _apt_update(b)
        b.run("apt-get install", argv)


def resolve_versions(b: _Builder) -> dict[str, str]:
    """The candidate versions of the guest's packages, as ``apt-cache policy`` reports them."""

    def query() -> dict[str, str]:
        out = b.capture("resolve package versions", ["apt-cache", "policy", *PACKAGES])
        found: dict[str, str] = {}
        current = None
        for line in out.splitlines():
            if line and not line[0].isspace() and line.rstrip().endswith(":"):
                current = line.rstrip()[:-1]
            elif current and line.strip().startswith("Candidate:"):
                cand = line.split(":", 1)[1].strip()
                if cand and cand != "(none)":
                    found[current] = cand
        return found

    b.say(f"guest: resolving versions of {' '.join(PACKAGES)}")
    found = query()
    if any(p not in found for p in PACKAGES) and os.geteuid() == 0:
        _apt_update(b)
        found = query()
    absent = [p for p in PACKAGES if p not in found]
    if absent:
        raise GuestBuildError(
            "resolve package versions",
            f"apt has no candidate for {' '.join(absent)}; run `apt-get update` "
            "(Debian 12 'bookworm' main and security sources are needed)",
        )
    return found


def write_versions(versions: Mapping[str, str]) -> None:
    path = _versions_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "packages": dict(versions),
        "resolved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "build_version": BUILD_VERSION,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _deb_fields(b: _Builder, deb: Path) -> tuple[str, str]:
    out = b.capture("inspect .deb", ["dpkg-deb", "-f", str(deb), "Package", "Version"])
    fields = dict(
        (k.strip(), v.strip()) for k, v in (l.split(":", 1) for l in out.splitlines() if ":" in l)
    )
    return fields.get("Package", ""), fields.get("Version", "")


class _VersionUnavailable(Exception):
    pass


def fetch_deb(b: _Builder, src: Path, package: str, version: str) -> Path:
    """``apt-get download package=version`` into ``src/debs`` (reused when present)."""
    debs = src / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    target = debs / f"{package}_{_safe(version)}.deb"
    if target.is_file():
        if _deb_fields(b, target) == (package, version):
            return target
        target.unlink()
    b.say(f"guest: downloading {package} {version}")
    tmp = Path(tempfile.mkdtemp(prefix=f".dl-{package}-", dir=debs))
    try:
        proc = b.run(f"download {package}", ["apt-get", "download", f"{package}={version}"],
                     cwd=tmp, check=False)
        got = sorted(tmp.glob("*.deb"))
        if proc.returncode != 0 or len(got) != 1:
            raise _VersionUnavailable(f"{package}={version}")
        fields = _deb_fields(b, got[0])
        if fields != (package, version):
            raise GuestBuildError(
                f"download {package}",
                f"apt-get downloaded {fields[0]} {fields[1]}, expected {package} {version}",
            )
        os.replace(got[0], target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def extract_kernel_source(b: _Builder, src: Path, deb: Path, version: str) -> Path:
    """Unpack ``linux-source-6.1``'s tarball into ``src/linux-source-<version>`` once."""
    tree = src / f"{KERNEL_PACKAGE}_{_safe(version)}"
    if (tree / "Makefile").is_file() and (tree / ".microvm-extracted").is_file():
        return tree
    if tree.exists():
        shutil.rmtree(tree)
    b.say(f"guest: extracting {KERNEL_PACKAGE} {version}")
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=src))
    try:
        b.run("unpack linux-source .deb", ["dpkg-deb", "-x", str(deb), str(tmp / "deb")])
        tarballs = sorted((tmp / "deb" / "usr" / "src").glob("linux-source-*.tar.*"))
        if len(tarballs) != 1:
            raise GuestBuildError(
                "unpack linux-source .deb",
                f"expected one linux-source-*.tar.* in {deb}, found {[t.name for t in tarballs]}",
            )
        (tmp / "src").mkdir()
        b.run("untar kernel source", ["tar", "-xf", str(tarballs[0]), "-C", str(tmp / "src")])
        tops = [p for p in (tmp / "src").iterdir() if p.is_dir()]
        if len(tops) != 1 or not (tops[0] / "Makefile").is_file():
            raise GuestBuildError("untar kernel source", f"unexpected layout of {tarballs[0].name}")
        (tops[0] / ".microvm-extracted").write_text(f"{KERNEL_PACKAGE} {version}\n")
        os.rename(tops[0], tree)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tree


def extract_busybox(b: _Builder, src: Path, deb: Path, version: str) -> Path:
    """``bin/busybox`` out of ``busybox-static``, kept as ``src/busybox-static_<version>/busybox``."""
    out_dir = src / f"{BUSYBOX_PACKAGE}_{_safe(version)}"
    binary = out_dir / "busybox"
    if binary.is_file():
        return binary
    b.say(f"guest: extracting {BUSYBOX_PACKAGE} {version}")
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=src))
    try:
        b.run("unpack busybox-static .deb", ["dpkg-deb", "-x", str(deb), str(tmp)])
        found = tmp / "bin" / "busybox"
        if not found.is_file():
            raise GuestBuildError("unpack busybox-static .deb", f"no bin/busybox in {deb}")
        if found.read_bytes()[:4] != b"\x7fELF":
            raise GuestBuildError("unpack busybox-static .deb", f"bin/busybox in {deb} is not ELF")
        staging = Path(tempfile.mkdtemp(prefix=".busybox-", dir=src))
        shutil.copy2(found, staging / "busybox")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(staging, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return binary


# --------------------------------------------------------------------------------------
# kernel
# --------------------------------------------------------------------------------------


def _jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def build_kernel(b: _Builder, tree: Path, objdir: Path, fragment: Path) -> Path:
    """Configure and compile the kernel out of tree in ``objdir``; returns ``objdir``."""
    objdir.mkdir(parents=True, exist_ok=True)
    env = _env(
        KBUILD_BUILD_USER="microvm",
        KBUILD_BUILD_HOST="microvm",
        KBUILD_BUILD_TIMESTAMP="1970-01-01",
    )
    make = ["make", "-C", str(tree), f"O={objdir}"]

    b.say("guest: kernel config (tinyconfig + fragment, olddefconfig)")
    b.run("make tinyconfig", [*make, "tinyconfig"], env=env)
    b.run(
        "merge_config.sh",
        [str(tree / "scripts" / "kconfig" / "merge_config.sh"), "-m", "-O", str(objdir),
         str(objdir / ".config"), str(fragment)],
        cwd=tree,
        env=env,
    )
    b.run("make olddefconfig", [*make, "olddefconfig"], env=env)

    config = (objdir / ".config").read_text()
    missing, enabled, unknown = check_fragment(fragment.read_text(), config, kconfig_symbols(tree))
    if unknown:
        b.say(f"guest: note: this kernel declares no {' '.join(unknown)}; fragment lines ignored")
    if missing or enabled:
        problems = "; ".join(missing + enabled)
        path = b.log_path("check config")
        path.write_text(
            "options of the fragment that did not survive make olddefconfig "
            "(an unmet dependency, or a typo):\n" + "\n".join(missing + enabled) + "\n"
        )
        raise GuestBuildError(
            "check config",
            f"{len(missing) + len(enabled)} option(s) of {fragment.name} did not survive "
            f"olddefconfig (add their dependencies to the fragment): {problems}",
            path,
        )

    jobs = _jobs()
    b.say(f"guest: compiling kernel (make -j{jobs} bzImage vmlinux, a few minutes)")
    t = time.monotonic()
    b.run("make bzImage vmlinux", [*make, f"-j{jobs}", "bzImage", "vmlinux"], env=env)
    b.say(f"guest: kernel compiled in {time.monotonic() - t:.0f} s")
    return objdir


# --------------------------------------------------------------------------------------
# the whole build
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path, b: _Builder) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            b.say("guest: waiting for another guest build to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(force: bool = False, progress: Progress = None, variant: Optional[str] = None) -> GuestArtifacts:
    """Build the default guest (or its ``variant``), or return the cached one (unless ``force``)."""
    if variant is not None:
        variant_patches(variant)  # an unknown variant fails before anything is done
    b = _Builder(progress)
    root = cache_dir()
    guest_dir = root / "guest"
    src = root / "src"
    guest_dir.mkdir(parents=True, exist_ok=True)
    src.mkdir(parents=True, exist_ok=True)

    with _locked(guest_dir / ".lock", b):
        versions = None if force else _read_versions()
        resolved = False
        if versions is None:
            versions = resolve_versions(b)
            resolved = True
        while True:
            key = _key(versions, variant)
            if not force:
                found = _cached(key)
                if found is not None:
                    if resolved:
                        write_versions(versions)
                    return found
            try:
                return _build_key(b, root, key, versions, force, variant)
            except _VersionUnavailable as e:
                if resolved:
                    raise GuestBuildError(
                        "download", f"apt-get could not download {e}; run `apt-get update`"
                    ) from e
                # The recorded versions are gone from the archive: resolve them again.
                b.say(f"guest: {e} is no longer available; resolving again")
                versions = resolve_versions(b)
                resolved = True


def _key(versions: Mapping[str, str], variant: Optional[str] = None) -> str:
    return variant_key(cache_key(CONFIG_FRAGMENT.read_text(), INIT_SCRIPT.read_text(), versions), variant)


def patched_source(b: _Builder, src: Path, tree: Path, variant: str) -> Path:
    """A copy of the kernel ``tree`` with ``variant``'s patches applied, in
    ``src/<tree>-<variant>`` (made once; remade when the patches change).

    The copy is hard links (``cp -al``: seconds, no space) except for the files a patch
    touches, which are copied first so that patching never changes the pristine tree."""
    patches = variant_patches(variant)
    stamp_text = "".join(f"{p.name}\n{p.read_text()}" for p in patches)
    out = src / f"{tree.name}-{variant}"
    stamp = out / ".microvm-patched"
    if stamp.is_file() and stamp.read_text() == stamp_text:
        return out
    if out.exists():
        shutil.rmtree(out)
    b.say(f"guest: kernel source for variant {variant} (patches: {' '.join(p.name for p in patches)})")
    tmp = Path(tempfile.mkdtemp(prefix=f".patch-{variant}-", dir=src))
    try:
        copy = tmp / "tree"
        b.run("copy kernel source (hard links)", ["cp", "-al", str(tree), str(copy)])
        for patch in patches:
            for rel in re.findall(r"^\+\+\+ b/(\S+)", patch.read_text(), re.MULTILINE):
                f = copy / rel
                if f.exists():  # break the hard link: the pristine tree keeps its file
                    data = f.read_bytes()
                    f.unlink()
                    f.write_bytes(data)
            b.run(f"apply {patch.name}", ["patch", "-p1", "--forward", "--batch", "-i", str(patch)], cwd=copy)
        stamp_tmp = copy / ".microvm-patched"
        stamp_tmp.write_text(stamp_text)
        os.rename(copy, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _build_key(
    b: _Builder, root: Path, key: str, versions: Mapping[str, str], force: bool, variant: Optional[str] = None
) -> GuestArtifacts:
    guest_dir = root / "guest"
    src = root / "src"
    log_dir = root / "logs" / f"guest-{key}"
    if log_dir.exists():
        shutil.rmtree(log_dir)
    log_dir.mkdir(parents=True)
    b.log_dir = log_dir
    b.say(f"guest: building {key} (logs in {log_dir})")

    ensure_build_deps(b)
    kdeb = fetch_deb(b, src, KERNEL_PACKAGE, versions[KERNEL_PACKAGE])
    bdeb = fetch_deb(b, src, BUSYBOX_PACKAGE, versions[BUSYBOX_PACKAGE])
    # Both downloads are the recorded versions: from here on the key is right.
    write_versions(versions)

    tree = extract_kernel_source(b, src, kdeb, versions[KERNEL_PACKAGE])
    busybox = extract_busybox(b, src, bdeb, versions[BUSYBOX_PACKAGE])

    objdir = src / f"kbuild-{_safe(versions[KERNEL_PACKAGE])}"
    if variant is not None:
        tree = patched_source(b, src, tree, variant)
        objdir = objdir.with_name(f"{objdir.name}-{variant}")
    if force and objdir.exists():
        b.say("guest: removing old kernel objects (forced rebuild)")
        shutil.rmtree(objdir)

    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=guest_dir))
    try:
        build_kernel(b, tree, objdir, CONFIG_FRAGMENT)
        shutil.copyfile(objdir / "arch" / "x86" / "boot" / "bzImage", tmp / KERNEL_NAME)
        shutil.copyfile(objdir / "vmlinux", tmp / VMLINUX_NAME)
        shutil.copyfile(objdir / ".config", tmp / "config")

        b.say("guest: checking vmlinux for the PVH entry note")
        try:
            entry = pvh_entry(tmp / VMLINUX_NAME)
        except (OSError, ValueError, struct.error) as e:
            raise GuestBuildError("check PVH note", f"cannot read vmlinux notes: {e}") from e
        if entry is None:
            raise GuestBuildError(
                "check PVH note",
                "vmlinux has no Xen note type 0x12 (XEN_ELFNOTE_PHYS32_ENTRY); "
                "is CONFIG_PVH=y in the fragment?",
            )

        b.say("guest: writing initramfs")
        with open(tmp / INITRAMFS_NAME, "wb") as out:
            write_initramfs(out, busybox.read_bytes(), INIT_SCRIPT.read_bytes())

        inputs = {
            "key": key,
            "build_version": BUILD_VERSION,
            "packages": dict(versions),
            "fragment": CONFIG_FRAGMENT.name,
            "variant": variant,
            "patches": [p.name for p in variant_patches(variant)] if variant else [],
            "pvh_entry": f"{entry:#x}",
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "inputs.json").write_text(json.dumps(inputs, indent=2) + "\n")
        for p in tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        (tmp / DONE_NAME).write_text(f"{key}\n")
        os.chmod(tmp, 0o755)

        final = guest_dir / key
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{key}-", dir=guest_dir))
            os.rename(final, old / key)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    b.say(f"guest: ready in {final} ({time.monotonic() - b.t0:.0f} s)")
    return GuestArtifacts.in_dir(final)


# --------------------------------------------------------------------------------------
# ``microvm.guest.build`` is both this module and the package's build() function (the API
# wants both names). Importing the module rebinds the package attribute to the module, so
# make the module callable as build().
# --------------------------------------------------------------------------------------


class _CallableModule(types.ModuleType):
    def __call__(self, force: bool = False, progress: Progress = None, variant: Optional[str] = None) -> GuestArtifacts:
        return build(force=force, progress=progress, variant=variant)


sys.modules[__name__].__class__ = _CallableModule
