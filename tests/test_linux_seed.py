"""The seed's examples (QEMU's microvm documentation), byte for byte except the program name.

Each runs in a directory where ``vmlinux`` is the default guest's kernel and ``test.img`` is an
ext4 image the test made (its ``/sbin/init`` a static ``jmp .``, which keeps the kernel alive
without system calls: guest user mode cannot make them on an emulating host), inside a
network namespace the test made, where ``-netdev tap`` creates the guest's tap. The checks are
kernel level: the root on /dev/vda mounted, both virtio-mmio devices registered, the console
where the example puts it. The examples have no ``reboot=t panic=1``: the guest runs until
the test sends SIGTERM, which must end the VMM with status 0. 2 vCPUs and 512 MiB: about
four minutes per boot on an emulating host.
"""
from __future__ import annotations

import re
import signal

import pytest

from kvm_helpers import MICROVM, requires_kvm
from linux_images import ConsoleSession, NetNamespace, build_spin_init, make_ext4, make_rootdir, missing_tools
from test_linux_net import _why_no_network

pytestmark = [pytest.mark.kvm, pytest.mark.linux, requires_kvm]
BOOT_TIMEOUT = 1500

#: the seed's first example, as QEMU's documentation prints it (the program name aside)
FIRST = """-M microvm \\
   -enable-kvm -cpu host -m 512m -smp 2 \\
   -kernel vmlinux -append "earlyprintk=ttyS0 console=ttyS0 root=/dev/vda" \\
   -nodefaults -no-user-config -nographic \\
   -serial stdio \\
   -drive id=test,file=test.img,format=raw,if=none \\
   -device virtio-blk-device,drive=test \\
   -netdev tap,id=tap0,script=no,downscript=no \\
   -device virtio-net-device,netdev=tap0"""


def argv_of(example: str) -> list[str]:
    """The example's arguments, split as a shell splits that text."""
    import shlex

    return shlex.split(example.replace("\\\n", " "))


@pytest.fixture
def seed_dir(default_guest, tmp_path):
    missing = missing_tools("mkfs.ext4")
    if missing:
        pytest.skip("needs e2fsprogs (mkfs.ext4) for test.img")
    (tmp_path / "vmlinux").symlink_to(default_guest.vmlinux)
    init = build_spin_init(tmp_path / "build/init")
    make_ext4(tmp_path / "test.img", make_rootdir(tmp_path / "root", init), "32M")
    return tmp_path


def test_first_example_verbatim(seed_dir) -> None:
    why = _why_no_network()
    if why:
        pytest.skip(why)
    args = argv_of(FIRST)
    assert args[:2] == ["-M", "microvm"] and args[-2:] == ["-device", "virtio-net-device,netdev=tap0"]
    with NetNamespace("microvm-seed1") as ns:
        with ConsoleSession(ns.argv(*MICROVM, *args), timeout=BOOT_TIMEOUT, cwd=seed_dir) as s:
            tapped = ns.wait_for_link("tap0", timeout=120, alive=lambda: s.wait(0) is None)
            up = s.wait_for("Run /sbin/init as init process")
            s.proc.send_signal(signal.SIGTERM)
            status = s.wait(30)
            out, tail = s.text, s.tail()
    assert tapped, f"microvm created no tap0 in the namespace{tail}"
    assert "Command line: earlyprintk=ttyS0 console=ttyS0 root=/dev/vda" in out, tail
    assert re.search(r"smpboot: Total of 2 processors activated", out), f"not 2 vCPUs{tail}"
    # both devices, where QEMU 7.2 puts them: virtio-blk in the first slot, virtio-net next
    assert "virtio-mmio.0 at 0xfeb00e00-0xfeb00fff, IRQ 12" in out, tail
    assert "virtio-mmio.1 at 0xfeb00c00-0xfeb00dff, IRQ 11" in out, tail
    assert re.search(r"EXT4-fs \(vda\): mounted filesystem", out), f"the root on /dev/vda was not mounted{tail}"
    assert up, f"the kernel did not reach /sbin/init{tail}"
    assert status == 0, tail
