"""Two VMs on one image: the second read-write user is refused with a one-line error, whether
the first is microvm or QEMU."""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from kvm_helpers import build_guest, kvm_reason, microvm_cmd, run_microvm

pytestmark = [pytest.mark.kvm, pytest.mark.skipif(kvm_reason() is not None, reason=f"needs KVM: {kvm_reason()}")]


def test_second_writer_is_refused_while_readers_share(tmp_path):
    elf = build_guest("spin", tmp_path)
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(1 << 20))
    disk = ["--drive", f"id=d,file={img},format=raw,if=none", "--device", "virtio-blk-device,drive=d", "--serial", "null"]
    first = subprocess.Popen(microvm_cmd("run", "--kernel", str(elf), *disk),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)  # the first VM holds the lock from machine creation on
        assert first.poll() is None, first.stderr.read()
        r = run_microvm("run", "--kernel", str(elf), *disk, timeout=30)
        assert r.returncode == 2
        lines = r.stderr.decode().splitlines()
        assert len(lines) == 1 and "is locked by another process" in lines[0], lines
        assert 'Failed to get "write" lock' in lines[0] and str(img) in lines[0], lines  # QEMU's words
    finally:
        first.kill()
        first.wait()
    # once the first VM is gone the image is free again (checked with a reader: it boots and spins)
    ro = ["--drive", f"id=d,file={img},format=raw,if=none,readonly=on", "--device", "virtio-blk-device,drive=d",
          "--serial", "null"]
    with pytest.raises(subprocess.TimeoutExpired):
        run_microvm("run", "--kernel", str(elf), *ro, timeout=2)


QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86)")
def test_microvm_and_qemu_refuse_each_others_image(tmp_path):
    """A running microvm holds the image: QEMU refuses it in its own words; a paused QEMU
    holds it: `microvm run` is one line and status 2 (tcg keeps QEMU off /dev/kvm)."""
    elf = build_guest("spin", tmp_path)
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(1 << 20))
    qemu = [QEMU, "-M", "microvm,acpi=off", "-accel", "tcg", "-S", "-nodefaults", "-no-user-config",
            "-display", "none", "-monitor", "none", "-serial", "none",
            "-drive", f"id=d,file={img},format=raw,if=none", "-device", "virtio-blk-device,drive=d"]
    disk = ["--drive", f"id=d,file={img},format=raw,if=none", "--device", "virtio-blk-device,drive=d", "--serial", "null"]
    vm = subprocess.Popen(microvm_cmd("run", "--kernel", str(elf), *disk),
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        assert vm.poll() is None, vm.stderr.read()
        r = subprocess.run(qemu, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and 'Failed to get "write" lock' in r.stderr, r.stderr
    finally:
        vm.kill()
        vm.wait()
    q = subprocess.Popen(qemu, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.0)
        assert q.poll() is None, q.stderr.read()
        r = run_microvm("run", "--kernel", str(elf), *disk, timeout=30)
        lines = r.stderr.decode().splitlines()
        assert r.returncode == 2 and len(lines) == 1, lines
        assert 'Failed to get "write" lock' in lines[0] and str(img) in lines[0], lines
    finally:
        q.kill()
        q.wait()
