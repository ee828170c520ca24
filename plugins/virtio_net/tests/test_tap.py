"""The tap backend. The unit tests at the top need nothing; the rest need root (CAP_NET_ADMIN),
``/dev/net/tun`` and ``ip``, and run inside a network namespace they create (and delete),
with addresses from 192.0.2.0/24 (TEST-NET-1) only."""
from __future__ import annotations

import errno
import fcntl
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

import microvm.api as C
from microvm.api import ConfigError
from microvm_virtio_net import constants as N
from microvm_virtio_net import tap as T
from microvm_virtio_net.tap import Tap, open_tap, tun_offload_flags
from virtio_net_testlib import MEM_SIZE, NetEnv, NetNs, vnet_hdr

MEM_SIZE = MEM_SIZE  # for the mem fixture

CSUM, TSO4, TSO6, ECN, UFO = T.TUN_F_CSUM, T.TUN_F_TSO4, T.TUN_F_TSO6, T.TUN_F_TSO_ECN, T.TUN_F_UFO


def bit(*bits: int) -> int:
    return sum(1 << b for b in bits)


# -- without privileges ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "features,flags",
    [
        (0, 0),
        (bit(N.VIRTIO_NET_F_GUEST_CSUM), CSUM),
        (N.GUEST_OFFLOAD_FEATURES, CSUM | TSO4 | TSO6 | ECN | UFO),
        (bit(N.VIRTIO_NET_F_GUEST_CSUM, N.VIRTIO_NET_F_GUEST_TSO4), CSUM | TSO4),
        (bit(N.VIRTIO_NET_F_GUEST_CSUM, N.VIRTIO_NET_F_GUEST_TSO6, N.VIRTIO_NET_F_GUEST_ECN), CSUM | TSO6 | ECN),
        (bit(N.VIRTIO_NET_F_GUEST_CSUM, N.VIRTIO_NET_F_GUEST_UFO), CSUM | UFO),
        # inconsistent acks get the consistent subset (the kernel refuses TSO without CSUM)
        (bit(N.VIRTIO_NET_F_GUEST_TSO4, N.VIRTIO_NET_F_GUEST_TSO6, N.VIRTIO_NET_F_GUEST_UFO), 0),
        (bit(N.VIRTIO_NET_F_GUEST_CSUM, N.VIRTIO_NET_F_GUEST_ECN), CSUM),
        # host (transmit) offloads and transport bits don't concern the tap's reader
        (N.HOST_OFFLOAD_FEATURES | bit(32, 29, 28, N.VIRTIO_NET_F_MRG_RXBUF), 0),
    ],
)
def test_offload_mapping(features, flags):
    assert tun_offload_flags(features) == flags


@pytest.mark.parametrize("name,match", [("a" * 16, "longer than 15"), ("", "not a valid"), ("a/b", "not a valid"), ("a b", "not a valid"), ("..", "not a valid"), ("x:1", "not a valid")])
def test_bad_interface_names(name, match):
    with pytest.raises(ConfigError, match=match) as e:
        Tap.open(name)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"tap {name}:" if name else "tap:")


def test_fifteen_characters_are_fine_for_the_check():
    T.check_ifname("a" * 15)


def test_no_tun_device(tmp_path):
    with pytest.raises(ConfigError, match=r"^tap tap7: .*does not exist \(is the tun module loaded\?\)$"):
        Tap.open("tap7", tun_device=str(tmp_path / "tun"))


def test_inherited_fd_that_is_not_a_tap():
    r, w = os.pipe()
    try:
        with pytest.raises(ConfigError, match=rf"^tap fd={r}: not a tap device"):
            Tap.from_fd(r)
        assert os.fstat(r)  # left open: not ours on failure
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(ConfigError, match=rf"^tap fd={r}: not open"):
        Tap.from_fd(r)


def test_ifname_and_fd_together():
    with pytest.raises(ConfigError, match="ifname= and fd="):
        open_tap(ifname="tap0", fd=3)


def test_ioctl_numbers():
    """linux/if_tun.h, as computed by _IOW/_IOR on x86-64."""
    assert (T.TUNSETIFF, T.TUNGETIFF, T.TUNSETOFFLOAD, T.TUNSETVNETHDRSZ, T.TUNGETVNETHDRSZ, T.TUNGETFEATURES) == (
        0x400454CA, 0x800454D2, 0x400454D0, 0x400454D8, 0x800454D7, 0x800454CF,
    )
    assert T.IFREQ.size == 40


# -- a network namespace (virtio_net_testlib.NetNs, the netns fixture in conftest.py) ---------------
def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_cleanup_closes_a_leaked_tap_and_deletes_the_namespace():
    """What the netns fixture does after a failed test: a tap left open by the test is
    closed (its interface goes), a process left inside is killed, the namespace deleted."""
    from virtio_net_testlib import close_leaked_taps, tun_fds, wait_for, why_no_tap

    if why_no_tap():
        pytest.skip(why_no_tap())
    ns = NetNs.create()
    before = tun_fds()
    try:
        with ns.entered():
            leaked = Tap.open("mvleak0")  # as a test that failed before closing it
            assert ns.exists("mvleak0")
            p = subprocess.Popen(ns.exec_argv("sleep", "600"))
            wait_for(lambda: p.pid in ns.pids(), "the process entering the namespace")
            assert close_leaked_taps(before) == [leaked.fileno()]
            assert not ns.exists("mvleak0")
    finally:
        close_leaked_taps(before)
        ns.delete()
    assert p.wait(timeout=30) == -9
    assert not os.path.exists(f"/run/netns/{ns.name}")


# -- creating, attaching, inheriting ---------------------------------------------------------------
def test_create_named_tap(netns):
    with Tap.open("mvtap0") as tap:
        assert (tap.ifname, tap.created, tap.vnet_hdr) == ("mvtap0", True, True)
        info = netns.link("mvtap0")
        assert info["linkinfo"]["info_kind"] == "tun" and info["linkinfo"]["info_data"]["type"] == "tap"
        assert info["linkinfo"]["info_data"]["pi"] is False and info["linkinfo"]["info_data"]["vnet_hdr"] is True
        assert not os.get_blocking(tap.fileno()) and not os.get_inheritable(tap.fileno())
        assert tap.offload == 0
    assert not netns.exists("mvtap0")  # not persistent: gone with its descriptor


def test_kernel_picks_the_name(netns):
    with Tap.open() as tap:
        assert tap.ifname.startswith("tap") and netns.exists(tap.ifname)
    with Tap.open("mv%d") as tap:
        assert tap.ifname == "mv0" and tap.created


def test_attach_to_an_existing_tap(netns):
    netns.ip("tuntap", "add", "dev", "mvpers0", "mode", "tap")
    with Tap.open("mvpers0") as tap:
        assert not tap.created and tap.ifname == "mvpers0"
        assert netns.link("mvpers0")["linkinfo"]["info_data"]["vnet_hdr"] is True
    assert netns.exists("mvpers0")  # persistent: still there


def test_vnet_hdr_off(netns):
    with open_tap("mvplain0", vnet_hdr=False) as tap:
        assert not tap.vnet_hdr and not tap.has_ufo
        assert netns.link("mvplain0")["linkinfo"]["info_data"]["vnet_hdr"] is False
        tap.set_offload(N.GUEST_OFFLOAD_FEATURES)  # nothing to set without the header
        tap.set_vnet_hdr_size(12)
        assert tap.offload == 0


def test_busy_interface(netns):
    with Tap.open("mvbusy0"):
        with pytest.raises(ConfigError, match=r"^tap mvbusy0: the interface is busy \(another process has it open\)$"):
            Tap.open("mvbusy0")


@pytest.mark.parametrize("kind", ["lo", "tun"])
def test_not_a_tap(netns, kind):
    name = "lo" if kind == "lo" else "mvtun0"
    if kind == "tun":
        netns.ip("tuntap", "add", "dev", name, "mode", "tun")
    with pytest.raises(ConfigError, match=rf"^tap {name}: the interface exists but is not a single-queue tap"):
        Tap.open(name)


def test_failed_open_leaves_nothing_behind(netns, monkeypatch):
    def refuse(self, features):
        raise OSError(errno.EINVAL, "Invalid argument")

    before_links, before_fds = netns.links(), open_fds()
    monkeypatch.setattr(Tap, "set_offload", refuse)
    with pytest.raises(ConfigError, match=r"^tap mvfail0: TUNSETOFFLOAD refused: Invalid argument$"):
        Tap.open("mvfail0")
    assert netns.links() == before_links and open_fds() == before_fds


def _raw_tap(name: str, flags: int) -> int:
    fd = os.open(T.TUN_DEVICE, os.O_RDWR)
    fcntl.ioctl(fd, T.TUNSETIFF, bytearray(T.IFREQ.pack(name.encode(), flags)))
    return fd


def test_inherit_fd(netns):
    """As libvirt passes it: a descriptor opened and TUNSETIFF'd by the parent."""
    fd = _raw_tap("mvfd0", T.IFF_TAP | T.IFF_NO_PI | T.IFF_VNET_HDR)
    tap = open_tap(fd=fd)
    assert (tap.ifname, tap.vnet_hdr, tap.fileno(), tap.created) == ("mvfd0", True, fd, False)
    assert not os.get_blocking(fd)
    tap.set_vnet_hdr_size(12)
    tap.close()
    assert not netns.exists("mvfd0")
    fd = _raw_tap("mvfd1", T.IFF_TAP | T.IFF_NO_PI)
    with pytest.raises(ConfigError, match=rf"^tap mvfd1 \(fd={fd}\): vnet_hdr=on asked for, but the descriptor has IFF_VNET_HDR off$"):
        Tap.from_fd(fd, vnet_hdr=True)
    tap = Tap.from_fd(fd)
    assert not tap.vnet_hdr
    tap.close()


@pytest.mark.parametrize(
    "flags,match",
    [
        (None, "a /dev/net/tun descriptor not attached to an interface"),
        (T.IFF_TUN | T.IFF_NO_PI, "is a tun \\(layer 3\\) device, not a tap"),
    ],
)
def test_inherit_fd_refused(netns, flags, match):
    fd = os.open(T.TUN_DEVICE, os.O_RDWR) if flags is None else _raw_tap("mvbad0", flags)
    try:
        with pytest.raises(ConfigError, match=match) as e:
            Tap.from_fd(fd)
        assert f"fd={fd}" in str(e.value)
    finally:
        os.close(fd)


def test_offload_and_header_size_ioctls(netns):
    with Tap.open("mvoff0") as tap:
        for size in (12, 10):
            tap.set_vnet_hdr_size(size)
            got = struct.unpack("i", fcntl.ioctl(tap.fileno(), T.TUNGETVNETHDRSZ, bytes(4)))[0]
            assert got == size == tap.vnet_hdr_size
        for features, flags in [
            (N.GUEST_OFFLOAD_FEATURES, CSUM | TSO4 | TSO6 | ECN | (UFO if tap.has_ufo else 0)),
            (bit(N.VIRTIO_NET_F_GUEST_CSUM, N.VIRTIO_NET_F_GUEST_TSO4), CSUM | TSO4),
            (bit(N.VIRTIO_NET_F_GUEST_TSO4), 0),
            (0, 0),
        ]:
            tap.set_offload(features)  # the kernel accepts every mapping
            assert tap.offload == flags


# -- without CAP_NET_ADMIN ---------------------------------------------------------------------------
UNPRIVILEGED = """
import sys
import microvm.api as C
from microvm.api import ConfigError
from microvm_virtio_net.tap import Tap
try:
    Tap.open(sys.argv[1]).close()
except ConfigError as e:
    print(e)
else:
    print("opened")
"""


def unprivileged(netns: NetNs, ifname: str) -> str:
    if shutil.which("setpriv") is None:
        pytest.skip("needs util-linux's setpriv to drop CAP_NET_ADMIN")
    cmd = ["ip", "netns", "exec", netns.name, "setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", sys.executable, "-c", UNPRIVILEGED, ifname]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def test_permission_errors(netns):
    assert unprivileged(netns, "mvperm0") == (
        "tap mvperm0: permission denied creating the interface (needs CAP_NET_ADMIN; "
        "or create it first: ip tuntap add dev NAME mode tap user $USER)"
    )
    assert not netns.exists("mvperm0")
    netns.ip("tuntap", "add", "dev", "mvowned0", "mode", "tap", "user", "4242")
    assert unprivileged(netns, "mvowned0") == (
        "tap mvowned0: permission denied attaching to the interface (it belongs to another user; needs CAP_NET_ADMIN)"
    )
    netns.ip("tuntap", "add", "dev", "mvmine0", "mode", "tap", "user", "0")
    assert unprivileged(netns, "mvmine0") == "opened"  # its owner needs no privilege


# -- real packets --------------------------------------------------------------------------------------
GUEST_MAC = bytes.fromhex("525400123456")
BROADCAST = b"\xff" * 6
TAP_IP, GUEST_IP = socket.inet_aton("192.0.2.1"), socket.inet_aton("192.0.2.2")
ETH_P_ARP = 0x0806
ETH_P_ALL = 0x0003


def arp(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes, dst: bytes) -> bytes:
    return dst + sha + struct.pack("!H", ETH_P_ARP) + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, spa, tha, tpa)


def parse_arp(frame_: bytes) -> tuple | None:
    if len(frame_) < 42 or frame_[12:14] != b"\x08\x06":
        return None
    return struct.unpack("!HHBBH6s4s6s4s", frame_[14:42])


def ip_checksum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(dst_mac: bytes, payload: bytes, sport: int, dport: int, udp_csum: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), udp_csum) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0, GUEST_IP, TAP_IP)
    ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
    return dst_mac + GUEST_MAC + b"\x08\x00" + ip + udp


@pytest.fixture
def tap_up(netns):
    """A tap with 192.0.2.1/24, up, a 12-byte vnet header, no offloads."""
    tap = Tap.open("mvnet0")
    tap.set_vnet_hdr_size(12)
    netns.ip("addr", "add", "192.0.2.1/24", "dev", "mvnet0")
    netns.ip("link", "set", "mvnet0", "up")
    tap.mac = bytes.fromhex(netns.link("mvnet0")["address"].replace(":", ""))
    yield tap
    tap.close()


def read_tap_until(fd: int, want, timeout: float = 5.0) -> bytes:
    """Frames from the tap (vnet header first) until ``want(frame)``; IPv6 chatter skipped."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not select.select([fd], [], [], max(0.0, end - time.monotonic()))[0]:
            break
        try:
            data = os.read(fd, 65562)
        except BlockingIOError:
            continue
        if want(data[12:]):
            return data
    raise AssertionError("the frame never came")


def test_kernel_arp_request_is_read_from_the_tap(tap_up):
    """Sending to 192.0.2.2 makes the kernel ask for its MAC on the tap: the ARP request
    comes out of the tap fd behind a 12-byte vnet header."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"hello", ("192.0.2.2", 9))
    data = read_tap_until(tap_up.fileno(), lambda f: (a := parse_arp(f)) is not None and a[4] == 1 and a[8] == GUEST_IP)
    hdr, eth = data[:12], data[12:]
    assert hdr[1] == N.VIRTIO_NET_HDR_GSO_NONE  # no offloads: an ordinary header
    assert eth[:6] == BROADCAST and eth[6:12] == tap_up.mac
    assert parse_arp(eth)[6] == TAP_IP


def test_frame_written_to_the_tap_reaches_the_host(tap_up):
    """An ARP request written with a vnet header arrives on the interface (a packet socket
    sees it) and the kernel answers it through the tap."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as ps:
        ps.bind(("mvnet0", ETH_P_ARP))
        ps.settimeout(5)
        request = arp(1, GUEST_MAC, GUEST_IP, bytes(6), TAP_IP, BROADCAST)
        assert os.write(tap_up.fileno(), vnet_hdr() + request) == 12 + len(request)
        seen = ps.recv(2048)
        assert seen[:42] == request
    reply = read_tap_until(tap_up.fileno(), lambda f: (a := parse_arp(f)) is not None and a[4] == 2)[12:]
    assert reply[:6] == GUEST_MAC and parse_arp(reply)[5:9] == (tap_up.mac, TAP_IP, GUEST_MAC, GUEST_IP)


def test_partial_checksum_passes_through_the_vnet_header(tap_up):
    """A UDP datagram whose checksum the 'guest' left to the host (NEEDS_CSUM): the vnet
    header reaches the kernel as such, which delivers the datagram; the same bytes without
    the flag carry a wrong checksum and are dropped."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as us:
        us.bind(("192.0.2.1", 4242))
        us.settimeout(2)
        bad = udp_frame(tap_up.mac, b"unchecked", 5555, 4242, udp_csum=0x1234)
        os.write(tap_up.fileno(), vnet_hdr() + bad)
        os.write(tap_up.fileno(), vnet_hdr(flags=N.VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=34, csum_offset=6) + bad.replace(b"unchecked", b"partial!!"))
        assert us.recv(100) == b"partial!!"


def test_device_on_a_real_tap(netns, mem):
    """The whole device on a tap: the guest's ARP request goes out, the kernel's reply comes
    back into the guest's receive buffer with num_buffers = 1."""
    tap = Tap.open("mvdev0")
    netns.ip("addr", "add", "192.0.2.1/24", "dev", "mvdev0")
    netns.ip("link", "set", "mvdev0", "up")
    up = NetEnv(mem, tap=tap).probe()
    assert tap.vnet_hdr_size == 12
    assert tap.offload == CSUM | TSO4 | TSO6 | ECN | (UFO if tap.has_ufo else 0)
    heads = [up.post([2048], notify=False) for _ in range(8)]
    up.drv.notify(N.RX_QUEUE)
    up.send(vnet_hdr() + arp(1, GUEST_MAC, GUEST_IP, bytes(6), TAP_IP, BROADCAST))
    deadline = time.monotonic() + 5
    reply = None
    used_all = []
    while reply is None and time.monotonic() < deadline:
        up.net.run_once(0.1)
        used_all += up.rxq.get_used()
        for head, n in used_all:
            bufs = next(b for h, b in heads if h == head)
            data = up.read_bufs(bufs, n)
            a = parse_arp(data[12:])
            if a is not None and a[4] == 2:
                reply = data
    assert reply is not None, "no ARP reply reached the guest"
    assert struct.unpack("<H", reply[10:12])[0] == 1  # num_buffers
    assert reply[12:18] == GUEST_MAC and parse_arp(reply[12:])[8] == GUEST_IP
    assert up.net.tx_packets == 1 and up.net.rx_packets >= 1 and up.net.bad_chains == 0
    up.close()
    assert tap.closed and not netns.exists("mvdev0")


def test_device_on_a_tap_that_goes_down_then_away(netns, mem, caplog):
    """The device's worker thread on a real tap. The interface down: writes fail with EIO,
    each such frame is dropped and counted and the link stays up; up again: frames flow.
    The interface deleted: the tap answers EBADFD and POLLERR; one error line, the link goes
    down, the worker stops polling the tap (it sleeps, it does not spin) and keeps returning
    the guest's transmit buffers; nothing needs a reset."""
    import logging

    from virtio_net_testlib import blocked_in_poll, wait_for

    caplog.set_level(logging.DEBUG)
    tap = Tap.open("mvgone0")
    up = NetEnv(mem, tap=tap, threaded=True, name="virtio-net:gone-real").probe()
    (worker,) = [t for t in threading.enumerate() if t.name == "virtio-net:gone-real-worker"]
    request = arp(1, GUEST_MAC, GUEST_IP, bytes(6), TAP_IP, BROADCAST)
    up.send(vnet_hdr() + request)  # the interface is down
    wait_for(lambda: up.net.tx_dropped == 1, "the frame's drop")
    assert up.net.link_up and up.net.tx_packets == 0
    netns.ip("link", "set", "mvgone0", "up")
    up.send(vnet_hdr() + request)
    wait_for(lambda: up.net.tx_packets == 1, "the frame on the tap once it is up")
    up.post([2048])
    netns.ip("link", "del", "mvgone0")
    wait_for(lambda: not up.net.link_up, "the link going down")
    assert up.drv.read_config(6, 2) == 0 and up.drv.read(C.VIRTIO_MMIO_INTERRUPT_STATUS) & C.VIRTIO_MMIO_INT_CONFIG
    used = up.txq.get_used()
    head = up.send(vnet_hdr() + request)
    wait_for(lambda: up.net.tx_dropped == 2, "the frame's drop")
    assert used + up.txq.get_used() == [(h, 0) for h in (0, 1, head)]  # every buffer came back
    assert up.net.running and not up.transport.needs_reset
    assert worker.is_alive()
    wait_for(lambda: blocked_in_poll(worker), "the worker sleeping in poll()")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "tap mvgone0 is gone" in errors[0] and "link down" in errors[0], errors
    up.close()
    assert not worker.is_alive()
