"""virtio-net under a real Linux: the default guest's kernel on a tap, checked from the host.

Guest user mode cannot make system calls on an emulating host (docs/emulating-hosts.md), so
the kernel does the networking by itself: ``ip=192.0.2.2::192.0.2.1:255.255.255.0::eth0:off``
configures eth0 at boot and the kernel answers ARP and ICMP echo; ``/init`` (or
``/sbin/init``) is a static ``jmp .`` that keeps the kernel alive. Each test makes a network
namespace of its own (deleted afterwards), runs microvm inside it, gives the host side of
the tap 192.0.2.1/24 once the tap exists, and pings the guest.

Three boots, one per test (slow: see the timeouts):

* the default guest (128 MiB, one vCPU) from an uncompressed initramfs, with
  ``--netdev tap,id=n0,ifname=tap0,script=no,downscript=no
  --device virtio-net-device,netdev=n0,mac=52:54:00:12:34:99``: pings of 56 and 8000 bytes
  (the large ones are fragmented by the host and reassembled by the guest, and the reply
  the other way round: every fragment crosses the device), the guest's MAC in the host's
  neighbour table, the device's counters in ``--metrics``, and the tap gone when the VMM
  ends;
* jumbo frames: the device's ``host_mtu=9000`` (VIRTIO_NET_F_MTU, which makes the guest's
  eth0 MTU 9000) and the tap's MTU 9000; 8000-byte pings then cross the device as single
  8042-byte frames both ways (no fragments: a packet socket on the host side of the tap
  sees every frame), spanning several mergeable receive buffers in the guest;
* the first example of QEMU's microvm documentation in ``microvm run`` spelling:
  ``--smp 2 -m 512M``, the kernel without initramfs and ``root=/dev/vda`` on a raw ext4
  image over virtio-blk, and virtio-net on a tap (``-netdev tap,id=tap0,script=no,
  downscript=no``, no ifname: the kernel names it tap0 in the fresh namespace): the guest
  mounts its root and answers ping.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from kvm_helpers import microvm_cmd, requires_kvm
from linux_images import (
    ConsoleSession, NetNamespace, build_spin_init, make_ext4, make_initramfs, make_rootdir, missing_tools, tool,
)

pytestmark = [pytest.mark.kvm, pytest.mark.linux, requires_kvm]

GUEST_IP = "192.0.2.2"
HOST_CIDR = "192.0.2.1/24"
IP_CONFIG = f"ip={GUEST_IP}::192.0.2.1:255.255.255.0::eth0:off"
GUEST_MAC = "52:54:00:12:34:99"
#: Overall limits per boot; the guest is emulated instruction by instruction here and the
#: machine is shared, so they are generous (a limit, never a measurement).
BOOT_TIMEOUT = 900
BIG_BOOT_TIMEOUT = 1500


def _why_no_network() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) for a network namespace and a tap"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun does not exist"
    missing = missing_tools("ip", "ping", "as", "ld")
    if missing:
        return f"needs {', '.join(missing)} (iproute2, iputils-ping, binutils)"
    return None


@pytest.fixture
def netns():
    why = _why_no_network()
    if why:
        pytest.skip(why)
    with NetNamespace("microvm-nettest") as ns:
        yield ns


def _ping(ns: NetNamespace, size: int, count: int) -> subprocess.CompletedProcess:
    """``ping`` from the host side: exits 0 only when all ``count`` replies came back
    (``-w`` is a generous overall limit, not a measurement)."""
    return ns.run(tool("ping"), "-n", "-c", str(count), "-s", str(size), "-i", "0.5", "-W", "60", "-w", "240",
                  GUEST_IP, timeout=300)


def _boot_and_configure(ns: NetNamespace, session: ConsoleSession, tap: str) -> None:
    """Give the host side of ``tap`` its address as soon as the VMM has created it."""
    if not ns.wait_for_link(tap, timeout=120, alive=lambda: session.proc.poll() is None):
        pytest.fail(f"the VMM did not create {tap} in the namespace{session.tail()}")
    ns.host_side(tap, HOST_CIDR)


def _stop(session: ConsoleSession) -> int | None:
    """SIGTERM, as a user would stop the VMM: it shuts down and writes --metrics."""
    if session.proc.poll() is None:
        session.proc.send_signal(signal.SIGTERM)
    return session.wait(timeout=60)


def test_guest_on_a_tap_answers_ping_with_the_given_mac(default_guest, netns, tmp_path):
    init = build_spin_init(tmp_path / "build/init")
    initrd = make_initramfs(tmp_path / "initramfs.cpio", init)
    metrics = tmp_path / "metrics.json"
    cmd = netns.argv(*microvm_cmd(
        "run", "--kernel", str(default_guest.vmlinux), "--initrd", str(initrd),
        "--append", f"console=ttyS0 reboot=t panic=1 {IP_CONFIG}", "-m", "128M",
        "--netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "--device", f"virtio-net-device,netdev=n0,mac={GUEST_MAC}",
        "--no-reboot", "--metrics", str(metrics), "-v"))
    with ConsoleSession(cmd, timeout=BOOT_TIMEOUT) as s:
        _boot_and_configure(netns, s, "tap0")
        configured = s.wait_for("IP-Config: Complete:")
        up = configured and s.wait_for("Run /init", timeout=300)
        small = _ping(netns, 56, 4) if up else None
        big = _ping(netns, 8000, 3) if up else None
        neigh = netns.neighbour_mac(GUEST_IP, "tap0")
        status = _stop(s)
        tail = s.tail()
        out = s.text
    assert configured, f"the guest kernel did not configure eth0{tail}"
    assert re.search(rf"device=eth0, hwaddr={GUEST_MAC}, ipaddr={GUEST_IP}, mask=255\.255\.255\.0, gw=192\.0\.2\.1", out), tail
    assert up, f"the guest kernel did not reach /init{tail}"
    assert small.returncode == 0, f"ping 56 bytes: {small.stdout}{small.stderr}{tail}"
    assert "4 received" in small.stdout, small.stdout
    assert big.returncode == 0, f"ping 8000 bytes: {big.stdout}{big.stderr}{tail}"
    assert "3 received" in big.stdout and "8008 bytes from 192.0.2.2" in big.stdout, big.stdout
    assert neigh == GUEST_MAC, f"ip neigh shows {neigh!r} for {GUEST_IP}"
    assert status == 0, f"the VMM did not exit 0 on SIGTERM{tail}"
    assert not netns.exists("tap0"), "the tap microvm created outlived it"
    counters = json.loads(metrics.read_text())["devices"]["virtio-net:n0"]
    # 4 + 3 echo requests, 8000 bytes as 6 fragments each, plus ARP: every one crossed the device
    assert counters["rx_packets"] >= 4 + 3 * 6 and counters["tx_packets"] >= 4 + 3 * 6, counters
    assert counters["rx_bytes"] >= 3 * 8000 and counters["tx_bytes"] >= 3 * 8000, counters
    assert counters["bad_chains"] == 0 and counters["needs_reset"] == 0, counters


#: Prints each IPv4 frame seen on interface argv[1] (both directions) as "pkttype length
#: protocol source fragment", until killed; "ready" once the socket is bound.
SNIFFER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL: outgoing frames too
s.bind((sys.argv[1], 3))
print("ready", flush=True)
while True:
    f, addr = s.recvfrom(65535)
    if f[12:14] != b"\x08\x00":
        continue
    frag = struct.unpack("!H", f[20:22])[0] & 0x3FFF  # MF and the fragment offset
    print(addr[2], len(f), f[23], socket.inet_ntoa(f[26:30]), frag, flush=True)
"""


def test_jumbo_frames_with_host_mtu_9000(default_guest, netns, tmp_path):
    """host_mtu=9000 offers VIRTIO_NET_F_MTU; with the tap's MTU at 9000 too, an 8000-byte
    ping and its reply cross the device as one 8042-byte frame each (the guest would
    fragment its reply at the default MTU of 1500): seen on the host side of the tap by a
    packet socket, and counted by the device."""
    init = build_spin_init(tmp_path / "build/init")
    initrd = make_initramfs(tmp_path / "initramfs.cpio", init)
    metrics = tmp_path / "metrics.json"
    cmd = netns.argv(*microvm_cmd(
        "run", "--kernel", str(default_guest.vmlinux), "--initrd", str(initrd),
        "--append", f"console=ttyS0 reboot=t panic=1 {IP_CONFIG}", "-m", "128M",
        "--netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "--device", f"virtio-net-device,netdev=n0,mac={GUEST_MAC},host_mtu=9000",
        "--no-reboot", "--metrics", str(metrics)))
    with ConsoleSession(cmd, timeout=BOOT_TIMEOUT) as s:
        if not netns.wait_for_link("tap0", timeout=120, alive=lambda: s.proc.poll() is None):
            pytest.fail(f"the VMM did not create tap0 in the namespace{s.tail()}")
        netns.ip("link", "set", "tap0", "mtu", "9000")
        netns.host_side("tap0", HOST_CIDR)
        up = s.wait_for("IP-Config: Complete:") and s.wait_for("Run /init", timeout=300)
        frames, jumbo = [], None
        if up:
            sniffer = subprocess.Popen(netns.argv(sys.executable, "-c", SNIFFER, "tap0"), stdout=subprocess.PIPE, text=True)
            try:
                assert sniffer.stdout.readline() == "ready\n"
                jumbo = netns.run(tool("ping"), "-n", "-M", "do", "-c", "3", "-s", "8000", "-i", "0.5", "-W", "60",
                                  "-w", "240", GUEST_IP, timeout=300)
            finally:
                sniffer.kill()
                out, _ = sniffer.communicate(timeout=30)
            frames = [tuple(line.split()) for line in out.splitlines()]
        status = _stop(s)
        tail = s.tail()
    assert up, f"the guest kernel did not configure eth0 and reach /init{tail}"
    assert jumbo.returncode == 0 and "3 received" in jumbo.stdout, f"{jumbo.stdout}{jumbo.stderr}{tail}"
    assert "8008 bytes from 192.0.2.2" in jumbo.stdout, jumbo.stdout
    icmp = [(kind, int(n), src, frag) for kind, n, proto, src, frag in frames if proto == "1"]
    requests = [f for f in icmp if f[2] == "192.0.2.1"]
    replies = [f for f in icmp if f[2] == GUEST_IP]
    assert len(requests) >= 3 and all(n == 8042 and frag == "0" for _, n, _, frag in requests), icmp
    assert len(replies) >= 3 and all(n == 8042 and frag == "0" for _, n, _, frag in replies), icmp
    assert status == 0, f"the VMM did not exit 0 on SIGTERM{tail}"
    counters = json.loads(metrics.read_text())["devices"]["virtio-net:n0"]
    assert counters["rx_bytes"] >= 3 * 8028 and counters["tx_bytes"] >= 3 * 8028, counters
    assert counters["rx_dropped"] == 0 and counters["bad_chains"] == 0 and counters["needs_reset"] == 0, counters


def test_qemu_docs_first_example_smp2_512m_ext4_root_and_tap(default_guest, netns, tmp_path):
    """QEMU's microvm example: 2 vCPUs, 512 MiB, root=/dev/vda on virtio-blk, virtio-net
    on a tap, together; the guest mounts its root and answers ping."""
    missing = missing_tools("mkfs.ext4")
    if missing:
        pytest.skip("needs e2fsprogs (mkfs.ext4) for the root image")
    init = build_spin_init(tmp_path / "build/init")
    image = make_ext4(tmp_path / "test.img", make_rootdir(tmp_path / "root", init), "32M")
    cmd = netns.argv(*microvm_cmd(
        "run", "-M", "microvm", "--smp", "2", "-m", "512M", "--kernel", str(default_guest.vmlinux),
        "--append", f"earlyprintk=ttyS0 console=ttyS0 root=/dev/vda reboot=t panic=1 {IP_CONFIG}",
        "--serial", "stdio",
        "--drive", f"id=test,file={image},format=raw,if=none", "--device", "virtio-blk-device,drive=test",
        "--netdev", "tap,id=tap0,script=no,downscript=no", "--device", "virtio-net-device,netdev=tap0",
        "--no-reboot"))
    with ConsoleSession(cmd, timeout=BIG_BOOT_TIMEOUT) as s:
        _boot_and_configure(netns, s, "tap0")  # no ifname=: the kernel's first tapN here
        mounted = s.wait_for("EXT4-fs (vda): mounted filesystem")
        configured = mounted and s.wait_for("IP-Config: Complete:", timeout=600)
        up = configured and s.wait_for("Run /sbin/init", timeout=600)
        pong = _ping(netns, 56, 3) if up else None
        neigh = netns.neighbour_mac(GUEST_IP, "tap0")
        status = _stop(s)
        tail = s.tail()
        out = s.text
    assert re.search(r"smpboot: Total of 2 processors activated", out), f"not 2 vCPUs{tail}"
    assert mounted, f"the guest did not mount its root{tail}"
    assert re.search(r"VFS: Mounted root \(ext4 filesystem\) on device \d+:\d+", out), tail
    assert configured and up, f"the guest did not configure eth0 and reach /sbin/init{tail}"
    assert pong.returncode == 0 and "3 received" in pong.stdout, f"{pong.stdout}{pong.stderr}{tail}"
    assert neigh == "52:54:00:12:34:56", f"QEMU's first default MAC expected, ip neigh shows {neigh!r}"
    assert status == 0, tail
