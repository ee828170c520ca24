"""Unit tests of microvm.guest: no KVM, no kernel build, no apt."""
from __future__ import annotations

import importlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import microvm.guest as guest

gb = importlib.import_module("microvm.guest.build")

VERSIONS = {"linux-source-6.1": "6.1.192-2", "busybox-static": "1:1.35.0-4+deb12u1+b1"}
SHARED_FRAGMENT = Path("/work/shared/guest/microvm-6.1.fragment")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("MICROVM_CACHE", str(root))
    return root


@pytest.fixture
def no_subprocess(monkeypatch):
    """Fail the test if anything spawns a process (the cached path must not)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected subprocess: {args!r}")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """Private copies of the fragment and init.sh, so a test can edit them."""
    d = tmp_path / "inputs"
    d.mkdir()
    frag = d / "microvm-6.1.config"
    init = d / "init.sh"
    shutil.copy(guest.CONFIG_FRAGMENT, frag)
    shutil.copy(guest.INIT_SCRIPT, init)
    for mod in (guest, gb):
        monkeypatch.setattr(mod, "CONFIG_FRAGMENT", frag)
        monkeypatch.setattr(mod, "INIT_SCRIPT", init)
    return frag, init


def fake_build(cache: Path, versions=VERSIONS) -> Path:
    """Populate the cache as a finished build would."""
    gd = cache / "guest"
    gd.mkdir(parents=True, exist_ok=True)
    (gd / "versions.json").write_text(json.dumps({"packages": versions}))
    key = guest._current_key(versions)
    d = gd / key
    d.mkdir()
    for name in ("bzImage", "vmlinux", "initramfs.cpio"):
        (d / name).write_bytes(b"x")
    (d / "DONE").write_text(key + "\n")
    return d


# ---- cache_dir and the cache key ---------------------------------------------------------


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MICROVM_CACHE", str(tmp_path / "c"))
    assert guest.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MICROVM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert guest.cache_dir() == tmp_path / "home" / ".cache" / "microvm"


def test_cache_key_stable():
    k = guest.cache_key("CONFIG_A=y\n", "#!/bin/busybox sh\n", VERSIONS)
    assert k == guest.cache_key("CONFIG_A=y\n", "#!/bin/busybox sh\n", dict(reversed(VERSIONS.items())))
    assert len(k) == 16 and all(c in "0123456789abcdef" for c in k)


@pytest.mark.parametrize(
    "change",
    [
        {"fragment": "CONFIG_A=y\nCONFIG_B=y\n"},
        {"init": "#!/bin/busybox sh\necho hi\n"},
        {"versions": {**VERSIONS, "linux-source-6.1": "6.1.193-1"}},
        {"versions": {**VERSIONS, "busybox-static": "1:1.36.1-1"}},
        {"build_version": guest.BUILD_VERSION + 1},
    ],
)
def test_cache_key_changes_with_each_input(change):
    base = dict(fragment="CONFIG_A=y\n", init="#!/bin/busybox sh\n", versions=VERSIONS,
                build_version=guest.BUILD_VERSION)
    key = lambda a: guest.cache_key(a["fragment"], a["init"], a["versions"], a["build_version"])
    assert key(base) != key({**base, **change})


# ---- default_guest -------------------------------------------------------------------------


def test_not_built_raises_without_building(cache, no_subprocess):
    with pytest.raises(guest.GuestNotBuilt) as e:
        guest.default_guest(build=False)
    assert "microvm guest build" in str(e.value)


def test_cached_guest_is_returned_without_subprocess(cache, inputs, no_subprocess):
    d = fake_build(cache)
    a = guest.default_guest(build=False)
    assert a == guest.GuestArtifacts(d / "bzImage", d / "vmlinux", d / "initramfs.cpio",
                                     "console=ttyS0 reboot=t panic=1")
    # build=True takes the same fast path.
    assert guest.default_guest() == a
    # build() without force returns the cache too (no apt, no make).
    assert guest.build() == a


def test_changed_input_is_not_built(cache, inputs, no_subprocess):
    frag, init = inputs
    fake_build(cache)
    frag.write_text(frag.read_text() + "CONFIG_EXTRA=y\n")
    with pytest.raises(guest.GuestNotBuilt, match="microvm guest build"):
        guest.default_guest(build=False)


def test_changed_init_is_not_built(cache, inputs, no_subprocess):
    frag, init = inputs
    fake_build(cache)
    init.write_text(init.read_text() + "# changed\n")
    with pytest.raises(guest.GuestNotBuilt):
        guest.default_guest(build=False)


def test_incomplete_build_is_not_used(cache, inputs, no_subprocess):
    d = fake_build(cache)
    (d / "DONE").unlink()
    with pytest.raises(guest.GuestNotBuilt):
        guest.default_guest(build=False)


# ---- cpio writer ---------------------------------------------------------------------------


def sample_archive() -> bytes:
    buf = io.BytesIO()
    w = gb.CpioWriter(buf)
    w.add_dir("dev")
    w.add_dir("bin")
    w.add_chardev("dev/console", 5, 1)
    w.add_file("bin/hello", b"hello world\n", 0o755)
    w.add_file("empty", b"")
    w.add_file("odd-name-length", b"abc")
    w.add_symlink("bin/sh", "hello")
    w.close()
    return buf.getvalue()


def test_cpio_format_details():
    data = sample_archive()
    assert data.startswith(b"070701")
    assert len(data) % 4 == 0
    assert b"TRAILER!!!\0" in data
    # Walk the headers the way the kernel's unpacker does.
    pos, names = 0, []
    while True:
        hdr = data[pos : pos + 110]
        assert hdr[:6] == b"070701"
        fields = [int(hdr[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        filesize, namesize = fields[6], fields[11]
        name = data[pos + 110 : pos + 110 + namesize]
        assert name.endswith(b"\0")
        names.append(name[:-1].decode())
        pos += (110 + namesize + 3) & ~3
        pos += (filesize + 3) & ~3
        if names[-1] == "TRAILER!!!":
            break
    assert pos == len(data)
    assert names == ["dev", "bin", "dev/console", "bin/hello", "empty", "odd-name-length",
                     "bin/sh", "TRAILER!!!"]


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_cpio_lists_with_gnu_cpio(tmp_path):
    path = tmp_path / "a.cpio"
    path.write_bytes(sample_archive())
    with open(path, "rb") as f:
        out = subprocess.run(["cpio", "-t"], stdin=f, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["dev", "bin", "dev/console", "bin/hello", "empty",
                                  "odd-name-length", "bin/sh"]
    with open(path, "rb") as f:
        verbose = subprocess.run(["cpio", "-tv"], stdin=f, capture_output=True, text=True,
                                 check=True).stdout.splitlines()
    console = next(l for l in verbose if l.endswith("dev/console"))
    assert console.startswith("crw-------")
    assert "5,   1" in console or "5, 1" in console
    assert next(l for l in verbose if l.endswith("bin/hello")).startswith("-rwxr-xr-x")
    assert next(l for l in verbose if "bin/sh" in l).startswith("lrwxrwxrwx")
    assert next(l for l in verbose if l.endswith(" dev")).startswith("drwxr-xr-x")
    # Contents survive the round trip.
    with open(path, "rb") as f:
        got = subprocess.run(["cpio", "-i", "--to-stdout", "bin/hello"], stdin=f,
                             capture_output=True, check=True).stdout
    assert got == b"hello world\n"


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_initramfs_layout(tmp_path):
    path = tmp_path / "initramfs.cpio"
    init = guest.INIT_SCRIPT.read_bytes()
    with open(path, "wb") as f:
        gb.write_initramfs(f, b"\x7fELF fake busybox", init)
    with open(path, "rb") as f:
        listing = subprocess.run(["cpio", "-tv"], stdin=f, capture_output=True, text=True,
                                 check=True).stdout.splitlines()
    names = {l.split()[-1] if "->" not in l else l.split()[-3]: l for l in listing}
    for d in ("dev", "proc", "sys", "bin"):
        assert names[d].startswith("d")
    assert names["dev/console"].startswith("crw")
    assert names["init"].startswith("-rwx")
    assert names["bin/busybox"].startswith("-rwx")
    with open(path, "rb") as f:
        got = subprocess.run(["cpio", "-i", "--to-stdout", "init"], stdin=f,
                             capture_output=True, check=True).stdout
    assert got == init


# ---- inputs shipped with the package -------------------------------------------------------


def test_init_script():
    text = guest.INIT_SCRIPT.read_text()
    assert text.startswith("#!/bin/busybox sh\n")
    assert "MICROVM-GUEST-OK" in text
    assert "reboot -f" in text


def test_config_fragment_contents():
    text = guest.CONFIG_FRAGMENT.read_text()
    values = gb.parse_config(text)
    for sym in ("CONFIG_PVH", "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "CONFIG_BLK_DEV_INITRD",
                "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_BINFMT_SCRIPT", "CONFIG_DEVTMPFS"):
        assert values[sym] == "y", sym
    assert values["CONFIG_LEGACY_PTYS"] == "n"
    assert values["CONFIG_PTP_1588_CLOCK"] == "n"
    if SHARED_FRAGMENT.is_file():
        shared = SHARED_FRAGMENT.read_text()
        assert text.startswith(shared), "the shared fragment must be copied verbatim"


# ---- config check --------------------------------------------------------------------------


def test_check_fragment():
    fragment = (
        "CONFIG_A=y\nCONFIG_B=y\nCONFIG_NR=64\n# CONFIG_C is not set\nCONFIG_D=n\n"
        "CONFIG_GONE=y\n"
    )
    config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_NR=32\nCONFIG_C=y\n"
    known = {"CONFIG_A", "CONFIG_B", "CONFIG_C", "CONFIG_D", "CONFIG_NR"}
    missing, enabled, unknown = gb.check_fragment(fragment, config, known)
    assert missing == ["CONFIG_B (wanted y, got n)", "CONFIG_NR (wanted 64, got 32)"]
    assert enabled == ["CONFIG_C (wanted n, got y)"]
    assert unknown == ["CONFIG_GONE"]
    # A config that honours the fragment passes (the undeclared symbol is only reported).
    assert gb.check_fragment(fragment, fragment, known) == ([], [], ["CONFIG_GONE"])


def test_kconfig_symbols(tmp_path):
    (tmp_path / "Kconfig").write_text("config FOO\n\tbool\nmenuconfig BAR\n\tbool\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "Kconfig.debug").write_text("  config BAZ\n")
    assert gb.kconfig_symbols(tmp_path) == {"CONFIG_FOO", "CONFIG_BAR", "CONFIG_BAZ"}


# ---- ELF note parsing ----------------------------------------------------------------------


def make_elf(notes: list[tuple[bytes, int, bytes]]) -> bytes:
    blob = b""
    for name, ntype, desc in notes:
        n = name + b"\0"
        blob += struct.pack("<III", len(n), len(desc), ntype)
        blob += n + b"\0" * (-len(n) % 4) + desc + b"\0" * (-len(desc) % 4)
    ehdr_size, phdr_size = 64, 56
    note_off = ehdr_size + phdr_size
    ident = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, ehdr_size, 0, 0,
                               ehdr_size, phdr_size, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(blob), len(blob), 4)
    return ehdr + phdr + blob


def test_pvh_entry_found(tmp_path):
    p = tmp_path / "vmlinux"
    p.write_bytes(make_elf([(b"GNU", 3, b"\x01" * 20), (b"Xen", 0x12, struct.pack("<I", 0x1000370))]))
    assert gb.pvh_entry(p) == 0x1000370
    p.write_bytes(make_elf([(b"Xen", 0x12, struct.pack("<Q", 0x1234))]))
    assert gb.pvh_entry(p) == 0x1234


def test_pvh_entry_absent(tmp_path):
    p = tmp_path / "vmlinux"
    p.write_bytes(make_elf([(b"Xen", 0x11, b"\0" * 4), (b"Linux", 0x12, b"\0" * 4)]))
    assert gb.pvh_entry(p) is None
    p.write_bytes(b"not an elf" * 10)
    with pytest.raises(ValueError):
        gb.pvh_entry(p)


# ---- step runner and package queries -------------------------------------------------------


def test_failed_step_names_step_log_and_tail(tmp_path):
    b = gb._Builder(None)
    b.log_dir = tmp_path
    with pytest.raises(guest.GuestBuildError) as e:
        b.run("make something", ["sh", "-c", "for i in 1 2 3; do echo line$i; done; exit 3"])
    msg = str(e.value)
    assert "make something" in msg and "status 3" in msg
    assert "line3" in msg
    assert e.value.log_path is not None and e.value.log_path.is_file()
    assert str(e.value.log_path) in msg
    assert "line1" in e.value.log_path.read_text()


def test_missing_program_is_a_build_error(tmp_path):
    b = gb._Builder(None)
    b.log_dir = tmp_path
    with pytest.raises(guest.GuestBuildError, match="no-such-program"):
        b.run("step", ["no-such-program-microvm"])


def test_progress_gets_one_line_per_step(tmp_path):
    lines = []
    b = gb._Builder(lines.append)
    b.say("guest: hello")
    assert lines == ["guest: hello"]


def test_missing_packages_parses_dpkg_status(monkeypatch):
    out = (
        "Package: flex\nStatus: install ok installed\nVersion: 2\n\n"
        "Package: bison\nStatus: deinstall ok config-files\n\n"
    )

    def fake_run(argv, **kw):
        assert argv[:2] == ["dpkg", "-s"]
        return subprocess.CompletedProcess(argv, 1, out, "dpkg-query: package 'bc' is not installed\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert gb.missing_packages(["flex", "bison", "bc"]) == ["bison", "bc"]


def test_resolve_versions_parses_apt_cache_policy(monkeypatch):
    policy = (
        "linux-source-6.1:\n  Installed: (none)\n  Candidate: 6.1.192-2\n  Version table:\n"
        "     6.1.192-2 500\n        500 http://deb.debian.org/debian-security bookworm-security/main\n"
        "busybox-static:\n  Installed: (none)\n  Candidate: 1:1.35.0-4+deb12u1+b1\n"
    )
    monkeypatch.setattr(gb._Builder, "capture", lambda self, step, argv: policy)
    assert gb.resolve_versions(gb._Builder(None)) == VERSIONS


def test_versions_roundtrip(cache):
    assert guest._read_versions() is None
    gb.write_versions(VERSIONS)
    assert guest._read_versions() == VERSIONS


def test_safe_version_names():
    assert gb._safe("1:1.35.0-4+deb12u1+b1") == "1_1.35.0-4+deb12u1+b1"


# ---- import cost and the build/build name clash --------------------------------------------


def test_import_is_lazy():
    code = (
        "import sys, microvm.guest as g; "
        "assert 'microvm.guest.build' not in sys.modules, 'build imported eagerly'; "
        "assert callable(g.build)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())


def test_build_name_stays_callable():
    # Importing the submodule rebinds the package attribute; it must still be callable.
    assert callable(guest.build)
    assert callable(gb)


def test_builtin_sha256_matches_hashlib():
    import hashlib

    assert guest._sha256()(b"abc").hexdigest() == hashlib.sha256(b"abc").hexdigest()


# ---- the build orchestration, with the slow steps faked ------------------------------------


@pytest.fixture
def fake_steps(monkeypatch, tmp_path):
    """Replace apt, dpkg-deb and make with fakes; returns a dict to steer them."""
    state = {"note": True, "calls": []}

    def deps(b):
        state["calls"].append("deps")

    def resolve(b):
        state["calls"].append("resolve")
        return dict(VERSIONS)

    def fetch(b, src, package, version):
        state["calls"].append(f"fetch {package}")
        p = src / "debs" / f"{package}.deb"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"deb")
        return p

    def kernel_src(b, src, deb, version):
        return src / "tree"

    def busybox(b, src, deb, version):
        p = src / "busybox"
        p.write_bytes(b"\x7fELF busybox")
        return p

    def kernel(b, tree, objdir, fragment):
        state["calls"].append("kernel")
        (objdir / "arch" / "x86" / "boot").mkdir(parents=True, exist_ok=True)
        (objdir / "arch" / "x86" / "boot" / "bzImage").write_bytes(b"bz")
        notes = [(b"Xen", 0x12, struct.pack("<I", 0x1000000))] if state["note"] else []
        (objdir / "vmlinux").write_bytes(make_elf(notes))
        (objdir / ".config").write_text(fragment.read_text())
        return objdir

    monkeypatch.setattr(gb, "ensure_build_deps", deps)
    monkeypatch.setattr(gb, "resolve_versions", resolve)
    monkeypatch.setattr(gb, "fetch_deb", fetch)
    monkeypatch.setattr(gb, "extract_kernel_source", kernel_src)
    monkeypatch.setattr(gb, "extract_busybox", busybox)
    monkeypatch.setattr(gb, "build_kernel", kernel)
    return state


def test_build_assembles_cache(cache, inputs, fake_steps):
    lines = []
    a = guest.build(progress=lines.append)
    d = a.kernel.parent
    assert d.parent == cache / "guest" and d.name == guest._current_key(VERSIONS)
    assert (d / "DONE").read_text().strip() == d.name
    assert a.kernel.read_bytes() == b"bz"
    assert gb.pvh_entry(a.vmlinux) == 0x1000000
    assert a.initramfs.read_bytes().startswith(b"070701")
    assert a.cmdline == "console=ttyS0 reboot=t panic=1"
    assert guest._read_versions() == VERSIONS
    assert lines and all("\n" not in l for l in lines)
    assert not [p for p in (cache / "guest").iterdir() if p.name.startswith(".tmp")]
    assert fake_steps["calls"] == ["resolve", "deps", "fetch linux-source-6.1",
                                   "fetch busybox-static", "kernel"]
    # Now cached: neither resolving nor building again.
    fake_steps["calls"].clear()
    assert guest.default_guest() == a
    assert guest.build() == a
    assert fake_steps["calls"] == []
    # A changed input rebuilds with the recorded versions (no apt-cache).
    frag, _ = inputs
    frag.write_text(frag.read_text() + "CONFIG_EXTRA=y\n")
    b = guest.default_guest()
    assert b != a and b.kernel.parent.name == guest._current_key(VERSIONS)
    assert "resolve" not in fake_steps["calls"] and "kernel" in fake_steps["calls"]
    # force re-resolves and rebuilds in place.
    fake_steps["calls"].clear()
    assert guest.build(force=True) == b
    assert fake_steps["calls"][0] == "resolve" and "kernel" in fake_steps["calls"]


def test_build_without_pvh_note_fails_cleanly(cache, inputs, fake_steps):
    fake_steps["note"] = False
    with pytest.raises(guest.GuestBuildError, match="PVH"):
        guest.build()
    leftovers = [p.name for p in (cache / "guest").iterdir() if p.is_dir()]
    assert leftovers == []
    with pytest.raises(guest.GuestNotBuilt):
        guest.default_guest(build=False)


# ---- variants (patched kernels) -------------------------------------------------------------


def test_variant_key_covers_name_and_patches(monkeypatch, tmp_path):
    base = guest.cache_key("frag", "init", VERSIONS)
    key = guest.variant_key(base, "qemu-compatible")
    assert key != base and len(key) == 16 and guest.variant_key(base, None) == base
    assert guest.variant_key(base, "qemu-compatible") == key  # stable
    patch = tmp_path / "p.patch"
    patch.write_text((guest._HERE / guest.VARIANTS["qemu-compatible"][0][0]).read_text() + "\n")
    monkeypatch.setattr(guest, "variant_patches", lambda v: [patch])
    assert guest.variant_key(base, "qemu-compatible") != key  # a changed patch is another kernel


def test_unknown_variant():
    with pytest.raises(ValueError, match=r"unknown guest variant 'nope' \(known: qemu-compatible\)"):
        guest.variant_patches("nope")
    with pytest.raises(ValueError, match="unknown guest variant"):
        gb.build(variant="nope")


def test_variant_is_served_from_its_own_cache_entry(cache, inputs, no_subprocess):
    fake_build(cache)
    with pytest.raises(guest.GuestNotBuilt, match="qemu-compatible"):
        guest.variant_guest("qemu-compatible", build=False)
    key = guest.variant_key(guest._current_key(VERSIONS), "qemu-compatible")
    d = cache / "guest" / key
    d.mkdir()
    (d / "DONE").write_text(key + "\n")
    assert guest.variant_guest("qemu-compatible", build=False).vmlinux == d / "vmlinux"
    assert guest.default_guest(build=False).vmlinux.parent != d


def test_the_int3_patch_applies_to_its_function():
    """The patch names alternative_instructions' call of int3_selftest and nothing else."""
    text = (guest._HERE / "qemu-compatible-no-int3-selftest.patch").read_text()
    assert text.count("+++ b/") == 1 and "+++ b/arch/x86/kernel/alternative.c" in text
    assert "-\tint3_selftest();" in text and "+\t\tint3_selftest();" in text and "+\tif (0)" in text


@pytest.mark.skipif(shutil.which("patch") is None or shutil.which("cp") is None, reason="needs patch and cp")
def test_patched_source_leaves_the_pristine_tree_alone(tmp_path, monkeypatch):
    src = tmp_path / "src"
    tree = src / "linux-source-6.1_X"
    (tree / "arch/x86/kernel").mkdir(parents=True)
    (tree / "Makefile").write_text("all:\n")
    original = "void __init alternative_instructions(void)\n{\n\tu64 ibt;\n\n\tint3_selftest();\n\n\t/*\n\t * The patching is not fully atomic, so try to avoid local\n"
    (tree / "arch/x86/kernel/alternative.c").write_text("\n" * 1147 + original)
    b = gb._Builder(None)
    b.log_dir = tmp_path / "logs"
    b.log_dir.mkdir()
    out = gb.patched_source(b, src, tree, "qemu-compatible")
    assert out == src / "linux-source-6.1_X-qemu-compatible"
    patched = (out / "arch/x86/kernel/alternative.c").read_text()
    assert "if (0)\n\t\tint3_selftest();" in patched
    assert (tree / "arch/x86/kernel/alternative.c").read_text().endswith(original)  # pristine
    assert os.stat(out / "Makefile").st_ino == os.stat(tree / "Makefile").st_ino  # hard link
    assert gb.patched_source(b, src, tree, "qemu-compatible") == out  # made once
