"""virtio-blk under a real Linux: the default guest's kernel mounts an ext4 root on /dev/vda.

Two boots (30-60 s each on an emulating host):

* read-write, legacy virtio-mmio transport (the default): the kernel finds the disk with
  the image's size, mounts it, and — driven by Magic SysRq on the console — syncs, remounts
  read-only and reboots; the image is then clean for ``e2fsck -fn`` and its superblock
  records the guest's mount (mount count 1, state clean): the kernel wrote to the disk;
* read-only (``readonly=on``), modern transport (``force-legacy=off``): the kernel sees
  the disk write-protected (VIRTIO_BLK_F_RO), so even with ``rw`` on its command line it
  mounts the root read-only, and the image is byte-identical afterwards.

Both read the features the driver accepted from the VMM's log (``-v``): without
VIRTIO_F_VERSION_1 on the legacy transport, with it (and VIRTIO_BLK_F_RO) on the modern one.

No guest user space is needed (it cannot make system calls on an emulating host, docs/emulating-hosts.md):
``/sbin/init`` is ``jmp .``, which keeps the kernel alive for the SysRq keys.
"""
from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

from kvm_helpers import microvm_cmd, requires_kvm
from linux_images import ConsoleSession, build_spin_init, make_ext4, make_rootdir, missing_tools, superblock, tool

pytestmark = [pytest.mark.kvm, pytest.mark.linux, requires_kvm]

IMAGE_SIZE = 32 * 1024 * 1024
IMAGE_SIZE_ARG = "32M"  # mkfs.ext4 takes a bare number as a count of blocks
#: Overall limit for one boot (a boot takes about a minute on an emulating host).
BOOT_TIMEOUT = 420
CMDLINE = "console=ttyS0 reboot=t panic=1 root=/dev/vda rw sysrq_always_enabled"


@pytest.fixture(scope="session")
def default_guest():
    from microvm.guest import default_guest as get

    return get(build=True, progress=lambda s: print(f"guest build: {s}"))


@pytest.fixture
def root_image(tmp_path) -> Path:
    """A 32 MiB ext4 image (``mkfs.ext4 -d``) whose /sbin/init spins in user mode."""
    missing = missing_tools("as", "ld")
    if missing:
        pytest.skip(f"needs binutils ({', '.join(missing)} not found) to build the spinning /sbin/init")
    missing = missing_tools("mkfs.ext4", "e2fsck", "dumpe2fs")
    if missing:
        pytest.skip(f"needs e2fsprogs ({', '.join(missing)} not found) to make and check the ext4 image")
    init = build_spin_init(tmp_path / "build/init")
    root = make_rootdir(tmp_path / "root", init)
    return make_ext4(tmp_path / "root.img", root, IMAGE_SIZE_ARG)


def _size_line_re(size: int) -> re.Pattern[str]:
    """Linux 6.1 virtblk_update_capacity(): ``[vda] N 512-byte logical blocks (33.6 MB/32.0 MiB)``."""
    return re.compile(rf"virtio_blk virtio\d+: \[vda\] {size // 512} 512-byte logical blocks \(")


def _boot(kernel: Path, drive: str, device: str) -> ConsoleSession:
    return ConsoleSession(
        microvm_cmd("run", "--kernel", str(kernel), "--append", CMDLINE,
                    "--drive", drive, "--device", device, "--no-reboot", "-v"),
        timeout=BOOT_TIMEOUT,
    )


VIRTIO_F_VERSION_1 = 1 << 32


def _negotiated(err: str) -> int | None:
    """The features the driver accepted, from the VMM's debug log (``activated with features``)."""
    m = re.search(r"virtio-blk:d: activated with features (0x[0-9a-f]+)", err)
    return int(m.group(1), 16) if m else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_guest_mounts_ext4_root_read_write_and_writes_the_superblock(default_guest, root_image):
    """Legacy transport: the kernel mounts the ext4 root read-write; SysRq s/u/b sync,
    remount read-only and reboot; the image is clean and records the guest's mount."""
    assert superblock(root_image)["Mount count"] == "0"
    s = _boot(default_guest.vmlinux, f"id=d,file={root_image},format=raw,if=none",
              "virtio-blk-device,drive=d")
    with s:
        mounted = s.wait_for("VFS: Mounted root")
        remounted = False
        if mounted:
            s.wait_for("Run /sbin/init", timeout=60)
            s.sysrq_until("s", "Emergency Sync complete")
            remounted = s.sysrq_until("u", "Emergency Remount complete")
            s.sysrq_until("b", None)
        status = s.wait()
        tail = s.tail()
        out, err = s.text, s.errtext
    assert mounted, f"the kernel did not mount the root{tail}"
    assert _size_line_re(IMAGE_SIZE).search(out), f"no size line for a {IMAGE_SIZE}-byte disk{tail}"
    assert "/32.0 MiB)" in out, tail
    assert re.search(r"EXT4-fs \(vda\): mounted filesystem", out), tail
    assert re.search(r"VFS: Mounted root \(ext4 filesystem\) on device", out), f"not mounted read-write{tail}"
    assert remounted, f"no 'Emergency Remount complete' after SysRq u{tail}"
    assert status == 0, f"the VMM did not exit 0 after SysRq b (reboot=t, --no-reboot){tail}"
    features = _negotiated(err)
    assert features is not None, f"no 'activated with features' in the -v log{tail}"
    assert not features & VIRTIO_F_VERSION_1, f"legacy transport expected, features {features:#x}"

    fsck = subprocess.run([tool("e2fsck"), "-fn", str(root_image)], capture_output=True, text=True)
    assert fsck.returncode == 0, f"e2fsck -fn: status {fsck.returncode}\n{fsck.stdout}{fsck.stderr}"
    sb = superblock(root_image)
    assert sb["Mount count"] == "1", sb
    assert sb["Filesystem state"] == "clean", sb
    assert sb.get("Last mount time", "n/a") != "n/a", sb


def test_guest_sees_readonly_drive_write_protected_on_modern_transport(default_guest, root_image):
    """``readonly=on`` + ``force-legacy=off``: VIRTIO_BLK_F_RO reaches the kernel over the
    modern transport, so ``rw`` on the command line still ends in a read-only root mount,
    and not one byte of the image changes."""
    before = _sha256(root_image)
    s = _boot(default_guest.vmlinux, f"id=d,file={root_image},format=raw,if=none,readonly=on",
              "virtio-blk-device,drive=d,force-legacy=off")
    with s:
        mounted = s.wait_for("VFS: Mounted root")
        if mounted:
            s.wait_for("Run /sbin/init", timeout=60)
            s.sysrq_until("b", None)
        status = s.wait()
        tail = s.tail()
        out, err = s.text, s.errtext
    assert mounted, f"the kernel did not mount the root{tail}"
    assert _size_line_re(IMAGE_SIZE).search(out), f"no size line for a {IMAGE_SIZE}-byte disk{tail}"
    # mount_block_root(): the rw attempt fails with EACCES on a read-only disk, then the
    # kernel retries read-only and says so
    assert re.search(r"VFS: Mounted root \(ext4 filesystem\) readonly on device", out), f"not mounted read-only{tail}"
    assert "I/O error" not in out, tail
    assert status == 0, f"the VMM did not exit 0 after SysRq b (reboot=t, --no-reboot){tail}"
    features = _negotiated(err)
    assert features is not None, f"no 'activated with features' in the -v log{tail}"
    assert features & VIRTIO_F_VERSION_1, f"modern transport (VIRTIO_F_VERSION_1) expected, features {features:#x}"
    assert features & (1 << 5), f"VIRTIO_BLK_F_RO not negotiated, features {features:#x}"
    assert _sha256(root_image) == before, "the read-only image changed"
    assert superblock(root_image)["Mount count"] == "0"
