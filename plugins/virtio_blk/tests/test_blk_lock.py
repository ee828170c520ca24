"""Image locking as QEMU 7.2 does it, so that microvm and QEMU refuse each other's images as
each refuses its own (issue 12).

QEMU (block/file-posix.c) holds an OFD read lock on byte 100 + bit for each block permission
it takes and on byte 200 + bit for each one it does not share, and before using an image tests
(F_OFD_GETLK, exclusive) bytes 200 + bit of what it wants and 100 + bit of what it will not
share. flock(2), which microvm used before, is invisible to those tests, and QEMU's locks to
flock. Two processes are used throughout: this one and a helper script, or a real QEMU (no
KVM needed: ``-accel tcg -S`` keeps it paused with its drive open)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from microvm.api import ConfigError
from microvm_virtio_blk.device import VirtioBlk, lock_image, qemu_image_permissions

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(
    QEMU is None,
    reason="qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86)",
)
RW_BYTES = {100, 101, 201}  # consistent read + write taken; write not shared
RO_BYTES = {100, 201}       # consistent read taken; write not shared


@pytest.fixture
def image(tmp_path) -> Path:
    p = tmp_path / "disk.img"
    p.write_bytes(bytes(1 << 20))
    return p


def lock_records(path: Path) -> list[tuple[int, int]]:
    """The locks held on ``path``, from /proc/locks: one (first, last byte) record per lock
    (an open file's adjacent byte locks of one type show as one record)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    out: list[tuple[int, int]] = []
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "->" in fields or dev not in fields:  # "->": a blocked waiter
                continue
            i = fields.index(dev)
            start, end = int(fields[i + 1]), fields[i + 2]
            out.append((start, int(end) if end != "EOF" else start + 1000))
    return out


def locked_bytes(path: Path) -> set[int]:
    """Bytes of ``path`` that some open file holds a lock on."""
    return {b for start, end in lock_records(path) for b in range(start, end + 1)}


# ---- the bytes -------------------------------------------------------------------------------
@pytest.mark.parametrize("readonly, expected", [(False, RW_BYTES), (True, RO_BYTES)])
def test_microvm_locks_qemus_bytes(image, readonly, expected):
    blk = VirtioBlk(image, readonly=readonly)
    try:
        assert locked_bytes(image) == expected
    finally:
        blk.close()
    assert locked_bytes(image) == set()


def test_permissions_are_a_virtio_blk_devices():
    from microvm_virtio_blk import device as d

    assert qemu_image_permissions(False) == (d.BLK_PERM_CONSISTENT_READ | d.BLK_PERM_WRITE,
                                             d.BLK_PERM_CONSISTENT_READ | d.BLK_PERM_WRITE_UNCHANGED | d.BLK_PERM_RESIZE)
    assert qemu_image_permissions(True)[0] == d.BLK_PERM_CONSISTENT_READ


def test_flock_is_not_what_qemu_sees(image):
    """Why flock had to go: an exclusive flock leaves QEMU's test bytes free."""
    import fcntl

    fd = os.open(image, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other = os.open(image, os.O_RDWR)
        try:
            assert lock_image(other, readonly=False) is None
        finally:
            os.close(other)
    finally:
        os.close(fd)


# ---- microvm against microvm, two processes ----------------------------------------------------------
HELPER = textwrap.dedent("""
    import sys
    from microvm.api import ConfigError
    from microvm_virtio_blk.device import VirtioBlk
    try:
        blk = VirtioBlk(sys.argv[1], readonly=sys.argv[2] == "ro")
    except ConfigError as e:
        print("REFUSED", e, flush=True)
        sys.exit(0)
    print("HELD", flush=True)
    sys.stdin.read()   # hold the image until the test closes our stdin
    blk.close()
""")


class Helper:
    """Another process holding (or failing to hold) the image through VirtioBlk."""

    def __init__(self, path: Path, readonly: bool) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", HELPER, str(path), "ro" if readonly else "rw"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.line = self.p.stdout.readline().rstrip("\n")

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=30)


@pytest.mark.parametrize(
    "first_ro, second_ro, refusal",
    [
        (False, False, 'Failed to get "write" lock'),
        (False, True, 'Failed to get shared "write" lock'),
        (True, False, 'Failed to get "write" lock'),
        (True, True, None),
    ],
)
def test_second_microvm_process(image, first_ro, second_ro, refusal):
    """Another process holds the image; this one wants it. Readers share; any writer is alone."""
    holder = Helper(image, first_ro)
    try:
        assert holder.line == "HELD", holder.p.stderr.read()
        if refusal is None:
            VirtioBlk(image, readonly=second_ro).close()
        else:
            with pytest.raises(ConfigError) as info:
                VirtioBlk(image, readonly=second_ro)
            msg = str(info.value)
            assert refusal in msg and str(image) in msg and "is locked by another process" in msg
            assert "\n" not in msg
    finally:
        holder.close()
    VirtioBlk(image).close()  # free again once the holder is gone


def test_this_process_holding_refuses_a_helper(image):
    blk = VirtioBlk(image)
    try:
        h = Helper(image, readonly=False)
        h.close()
        assert h.line.startswith("REFUSED ") and 'Failed to get "write" lock' in h.line
    finally:
        blk.close()


# ---- microvm against a real QEMU ----------------------------------------------------------------------
def qemu_cmd(path: Path, readonly: bool) -> list[str]:
    ro = ",readonly=on" if readonly else ""
    return [QEMU, "-M", "microvm,acpi=off", "-accel", "tcg", "-S", "-nodefaults", "-no-user-config",
            "-display", "none", "-monitor", "none", "-serial", "none",
            "-drive", f"id=d,file={path},format=raw,if=none{ro}", "-device", "virtio-blk-device,drive=d"]


class Qemu:
    """QEMU 7.2 microvm, paused, with the image as a virtio-blk drive. Do not wait for
    ``held`` where QEMU is expected to refuse: it takes its locks before it checks, and drops
    them again when the check fails."""

    def __init__(self, path: Path, readonly: bool) -> None:
        # held: QEMU's two lock records (100[-101] and 201) are there besides those before it
        # started (locks on the bytes alone would not tell its from microvm's)
        before = len(lock_records(path))
        self.p = subprocess.Popen(qemu_cmd(path, readonly), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.held = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.p.poll() is None:
            if len(lock_records(path)) >= before + 2:
                self.held = True
                break
            time.sleep(0.05)

    def refusal(self) -> str:
        """QEMU's stderr after it exited on its own."""
        self.p.wait(timeout=30)
        assert self.p.returncode == 1
        return self.p.stderr.read()

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=30)


@needs_qemu
@pytest.mark.parametrize("readonly, expected", [(False, RW_BYTES), (True, RO_BYTES)])
def test_same_bytes_as_a_real_qemu(image, readonly, expected):
    q = Qemu(image, readonly)
    try:
        assert q.held, q.p.stderr.read() if q.p.poll() is not None else "QEMU never locked the image"
        assert locked_bytes(image) == expected
    finally:
        q.close()


@needs_qemu
@pytest.mark.parametrize(
    "qemu_ro, microvm_ro, refusal",
    [
        (False, False, 'Failed to get "write" lock'),
        (False, True, 'Failed to get shared "write" lock'),
        (True, False, 'Failed to get "write" lock'),
        (True, True, None),
    ],
)
def test_qemu_holding_the_image(image, qemu_ro, microvm_ro, refusal):
    """QEMU has the image open for its virtio-blk device: microvm refuses it as a second QEMU
    would, and shares it read-only."""
    q = Qemu(image, qemu_ro)
    try:
        assert q.held, q.p.stderr.read() if q.p.poll() is not None else "QEMU never locked the image"
        if refusal is None:
            VirtioBlk(image, readonly=microvm_ro).close()
        else:
            with pytest.raises(ConfigError) as info:
                VirtioBlk(image, readonly=microvm_ro)
            assert refusal in str(info.value) and str(image) in str(info.value)
    finally:
        q.close()


@needs_qemu
@pytest.mark.parametrize(
    "microvm_ro, qemu_ro, refusal",
    [
        (False, False, 'Failed to get "write" lock'),
        (False, True, 'Failed to get shared "write" lock'),
        (True, False, 'Failed to get "write" lock'),
        (True, True, None),
    ],
)
def test_microvm_holding_the_image(image, microvm_ro, qemu_ro, refusal):
    """microvm has the image open: QEMU refuses it with its own words, as it refuses an image
    another QEMU holds (and shares it read-only)."""
    blk = VirtioBlk(image, readonly=microvm_ro)
    try:
        q = Qemu(image, qemu_ro)
        try:
            if refusal is None:
                assert q.held, q.p.stderr.read() if q.p.poll() is not None else "QEMU never locked the image"
            else:
                err = q.refusal()
                assert refusal in err and f"Is another process using the image [{image}]?" in err, err
        finally:
            q.close()
    finally:
        blk.close()
