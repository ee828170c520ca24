"""Host backends live for the run, not for one boot: a guest reset rebuilds the machine but
keeps its tap (addresses, routes and bridge stay; an fd handed in stays valid) and its
character devices, as QEMU does; every netdev is made at start, used or not."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from kvm_helpers import build_guest, microvm_cmd, requires_kvm, run_microvm
from linux_images import NetNamespace, missing_tools

pytestmark = [pytest.mark.kvm, requires_kvm]


def _why_no_tap() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) for a network namespace and a tap"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun does not exist"
    if missing_tools("ip"):
        return "needs iproute2 (ip)"
    return None


def ifindex(ns: NetNamespace, ifname: str) -> int | None:
    out = ns.ip("-o", "link", "show", "dev", ifname, check=False).stdout
    return int(out.split(":", 1)[0]) if out else None


@pytest.mark.parametrize("how", ["ifname", "fd"])
def test_a_rebooting_guest_keeps_its_tap(tmp_path, how) -> None:
    """hello-pvh triple-faults after each HELLO and, without --no-reboot, the machine is
    rebuilt again and again: the tap must stay the same interface (same ifindex, its host
    address still there), and with fd= the VMM must not lose the descriptor it was given."""
    why = _why_no_tap()
    if why:
        pytest.skip(why)
    elf = build_guest("hello-pvh", tmp_path)
    with NetNamespace("microvm-backends") as ns:
        pass_fds: tuple[int, ...] = ()
        if how == "ifname":
            netdev = "tap,id=n0,ifname=tap0,script=no,downscript=no"
        else:
            # the management layer's way (libvirt, Kata): it makes the tap and passes the fd
            ns.ip("tuntap", "add", "dev", "tap0", "mode", "tap", "vnet_hdr")
            code = ("import fcntl, os, struct, sys; fd = os.open('/dev/net/tun', os.O_RDWR); "
                    "fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'tap0', 0x0002 | 0x1000 | 0x4000)); "
                    "os.set_inheritable(fd, True); os.execvp(sys.argv[1], sys.argv[1:] + ['--netdev', f'tap,id=n0,fd={fd}'])")
            netdev = None
        args = ["run", "--kernel", str(elf), "--serial", "stdio",
                "--device", "virtio-net-device,netdev=n0"] + (["--netdev", netdev] if netdev else [])
        argv = microvm_cmd(*args)
        if netdev is None:
            import sys

            argv = [sys.executable, "-c", code, *argv]
        p = subprocess.Popen(ns.argv(*argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, pass_fds=pass_fds)
        try:
            assert ns.wait_for_link("tap0", timeout=60, alive=lambda: p.poll() is None), p.stderr.read()
            first = ifindex(ns, "tap0")
            ns.ip("addr", "add", "192.0.2.1/24", "dev", "tap0")
            seen = b""
            deadline = time.monotonic() + 120
            while seen.count(b"HELLO") < 6 and time.monotonic() < deadline:  # five resets at least
                chunk = p.stdout.read1(4096)
                assert chunk, p.stderr.read().decode()[-2000:]
                seen += chunk
            assert seen.count(b"HELLO") >= 6 and p.poll() is None
            assert ifindex(ns, "tap0") == first, "the tap was destroyed and made again by a reset"
            assert "192.0.2.1/24" in ns.ip("-o", "addr", "show", "dev", "tap0").stdout
        finally:
            p.terminate()
            out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err.decode()[-2000:]


def test_every_netdev_is_made_and_checked_whether_used_or_not(tmp_path) -> None:
    """QEMU creates every -netdev at start: a bad one fails the run (status 2) even when no
    device names it; a good unused one gets QEMU's 'has no peer' warning."""
    elf = build_guest("hello-pvh", tmp_path)
    r = run_microvm("run", "--kernel", str(elf), "--no-reboot", "--netdev", "tap,id=n0,script=/etc/qemu-ifup")
    assert r.returncode == 2 and b"script" in r.stderr and r.stderr.count(b"\n") == 1, r.stderr
    why = _why_no_tap()
    if why:
        pytest.skip(why)
    with NetNamespace("microvm-backends") as ns:
        r = subprocess.run(ns.argv(*microvm_cmd("run", "--kernel", str(elf), "--no-reboot", "--netdev", "tap,id=n1")),
                           capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0 and r.stdout == b"HELLO\n", r.stderr
        assert b"netdev n1 has no peer" in r.stderr


def test_driver_features_of_every_selector_cost_nothing() -> None:
    """A guest cycling DriverFeaturesSel through 300,000 values: two words are kept, and the
    features beyond them still make FEATURES_OK fail."""
    from microvm.api import GuestMemory, RecordingIrqLine
    from microvm.virtio import constants as C
    from microvm.virtio.testing import MmioDriver, VirtioMmioTransport
    from microvm_virtio_rng.device import VirtioRng

    mem = GuestMemory(1 << 20)
    try:
        t = VirtioMmioTransport(VirtioRng(), mem, RecordingIrqLine(5), legacy=False)
        d = MmioDriver(t)
        for sel in range(2, 300_002):
            d.write(C.VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel)
            d.write(C.VIRTIO_MMIO_DRIVER_FEATURES, 1)
        assert len(t._driver_features) <= 2
        d.write(C.VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1)
        d.write(C.VIRTIO_MMIO_DRIVER_FEATURES, 1)  # VERSION_1
        d.add_status(C.VIRTIO_CONFIG_S_ACKNOWLEDGE | C.VIRTIO_CONFIG_S_DRIVER | C.VIRTIO_CONFIG_S_FEATURES_OK)
        assert not d.read(C.VIRTIO_MMIO_STATUS) & C.VIRTIO_CONFIG_S_FEATURES_OK
    finally:
        mem.close()
