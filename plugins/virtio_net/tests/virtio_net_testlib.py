"""The guest's side of virtio-net for the tests, and a socketpair standing in for a tap.

:class:`NetDriver` is Linux's virtio_net probe over the virtio-mmio registers
(``microvm.virtio.testing.MmioDriver``) plus what its receive and transmit paths leave in
guest RAM. :class:`SocketTap` is the device's "tap": one end of an ``AF_UNIX``
``SOCK_SEQPACKET`` pair, which keeps frame boundaries as a tap does; the test holds the other
end (:attr:`SocketTap.peer`) and plays the host's network stack.

:class:`NetEnv` wires a :class:`~microvm_virtio_net.device.VirtioNet` to a transport. The
device tests run on both register layouts (``TRANSPORTS``): the legacy one (Version 1, QEMU
7.2's default and what Linux drives here) and the modern one.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
from typing import Callable, Iterator

import microvm.api as C
from microvm.api import RecordingIrqLine
from microvm.virtio.testing import DriverQueue, MmioDriver, VirtioMmioTransport
from microvm_virtio_net import constants as N
from microvm_virtio_net.device import VirtioNet

MEM_SIZE = 16 << 20
#: where the tests put transmit data and receive buffers
TX_AREA = 0x100000
RX_AREA = 0x800000
#: the transports the device tests run on
TRANSPORTS = ["legacy", "modern"]

HDR = struct.Struct("<BBHHHHH")  # struct virtio_net_hdr_v1 (with num_buffers)


def vnet_hdr(flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0, csum_start: int = 0, csum_offset: int = 0, num_buffers: int = 0, size: int = 12) -> bytes:
    return HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers)[:size]


def frame(n: int, seed: int = 0) -> bytes:
    """An n-byte Ethernet frame with a recognisable payload (to 52:54:00:12:34:56, from
    52:54:00:ab:cd:ef, ethertype 0x88b5 "local experimental")."""
    head = bytes.fromhex("525400123456" "525400abcdef" "88b5")
    body = bytes((seed + i * 7) & 0xFF for i in range(max(0, n - len(head))))
    return (head + body)[:n]


class SocketTap:
    """A tap stand-in (the device's tap protocol) on a SOCK_SEQPACKET socketpair."""

    def __init__(self, vnet_hdr: bool = True, has_ufo: bool = True) -> None:
        self.sock, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.setblocking(False)
        self.peer.settimeout(5)
        # room for the floods the tests send before the device reads
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.vnet_hdr = vnet_hdr
        self.has_ufo = has_ufo
        self.hdr_sizes: list[int] = []
        self.offloads: list[int] = []
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def set_vnet_hdr_size(self, size: int) -> None:
        self.hdr_sizes.append(size)

    def set_offload(self, features: int) -> None:
        self.offloads.append(features)

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        self.peer.close()

    # the host's side
    def send(self, data: bytes) -> None:
        self.peer.send(data)

    def recv(self) -> bytes:
        return self.peer.recv(1 << 17)

    def pending(self) -> list[bytes]:
        """Frames the device sent that the host has not read yet (without waiting)."""
        out = []
        self.peer.setblocking(False)
        try:
            while True:
                try:
                    out.append(self.peer.recv(1 << 17))
                except BlockingIOError:
                    return out
        finally:
            self.peer.settimeout(5)

    def unread_by_device(self) -> bool:
        """Whether frames wait in the device's receive queue (MSG_PEEK: nothing consumed)."""
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        return True


class NetDriver(MmioDriver):
    """virtnet_probe over the registers: config read before DRIVER_OK, receiveq1 and
    transmitq1 set up."""

    mac: bytes
    status: int
    mtu: int

    def driver_probe(self) -> None:
        assert self.read(C.VIRTIO_MMIO_DEVICE_ID) == C.VIRTIO_ID_NET
        self.mac = bytes(self.read_config(i, 1) for i in range(6))
        self.status = self.read_config(6, 2)
        self.mtu = self.read_config(10, 2)

    def probe(self, features: int | None = None, queues: int = 2, size: int = 16, base: int = 0x10000) -> list[DriverQueue]:
        dqs = super().probe(features, queues, size, base)
        assert dqs, "FEATURES_OK refused"
        self.rxq, self.txq = dqs
        return dqs


class NetEnv:
    """A VirtioNet on a SocketTap behind a transport, driven without threads by default."""

    def __init__(self, mem, *, legacy: bool = False, threaded: bool = False, vnet_hdr: bool = True, tap=None, clear: bool = True,
                 name: str = "virtio-net:test", **kw) -> None:
        if clear:
            mem.fill(0, mem.size)
        self.mem = mem
        self.tap = tap if tap is not None else SocketTap(vnet_hdr=vnet_hdr)
        self.net = VirtioNet(self.tap, threaded=threaded, name=name, **kw)
        self.irq = RecordingIrqLine(gsi=5)
        self.transport = VirtioMmioTransport(self.net, mem, self.irq, legacy=legacy, name=name)
        self.drv = NetDriver(self.transport)
        self.tx_next = TX_AREA
        self.rx_next = RX_AREA

    def probe(self, features: int | None = None, size: int = 16, clear: int = 0) -> "NetEnv":
        """Handshake with ``features`` (default: all offered, minus ``clear``)."""
        if features is None:
            features = self.transport.device_features & ~clear
        self.drv.probe(features, size=size)
        self.rxq, self.txq = self.drv.rxq, self.drv.txq
        return self

    @property
    def hdr_len(self) -> int:
        f = self.net.acked_features
        return 12 if f & ((1 << C.VIRTIO_F_VERSION_1) | (1 << N.VIRTIO_NET_F_MRG_RXBUF)) else 10

    def pump(self, rounds: int = 3) -> None:
        """Run the worker's loop by hand until it has nothing left to do."""
        for _ in range(1000):
            if not self.net.run_once(0):
                return
            if not (self.net._tx_more or self.net._rx_more):
                rounds -= 1
                if rounds <= 0:
                    return
        raise AssertionError("the device never became idle")

    # -- transmit --------------------------------------------------------------------------------
    def tx_chain(self, data: bytes, splits: list[int] | None = None, gap: int = 64) -> list[tuple[int, int, bool]]:
        """Write ``data`` into guest RAM as device-readable buffers cut at ``splits``."""
        cuts = [0, *(splits or []), len(data)]
        bufs = []
        for a, b in zip(cuts, cuts[1:]):
            self.mem.write(self.tx_next, data[a:b])
            bufs.append((self.tx_next, b - a, False))
            self.tx_next += b - a + gap
        return bufs

    def send(self, data: bytes, splits: list[int] | None = None, notify: bool = True) -> int:
        head = self.txq.add(self.tx_chain(data, splits))
        if notify:
            self.drv.notify(N.TX_QUEUE)
        return head

    # -- receive ---------------------------------------------------------------------------------
    def rx_bufs(self, sizes: list[int], fill: int = 0xEE, gap: int = 64) -> list[tuple[int, int, bool]]:
        bufs = []
        for n in sizes:
            self.mem.fill(self.rx_next, n, fill)
            bufs.append((self.rx_next, n, True))
            self.rx_next += n + gap
        return bufs

    def post(self, sizes: list[int], notify: bool = True) -> tuple[int, list[tuple[int, int, bool]]]:
        """Post one receive chain of buffers of ``sizes``; returns (head, buffers)."""
        bufs = self.rx_bufs(sizes)
        head = self.rxq.add(bufs)
        if notify:
            self.drv.notify(N.RX_QUEUE)
        return head, bufs

    def read_bufs(self, bufs: list[tuple[int, int, bool]], length: int) -> bytes:
        out = b""
        for addr, n, _ in bufs:
            take = min(n, length - len(out))
            out += self.mem.read(addr, take)
        return out

    def close(self) -> None:
        self.transport.close()


def wait_for(cond: Callable[[], object], what: str = "the condition", timeout: float = 30.0) -> object:
    """Poll ``cond`` until it is true and return its value. ``timeout`` is a hang guard, not a
    measurement: generous, and it fails naming ``what`` never happened."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"{what} never happened (gave up after {timeout:.0f} s)")
        time.sleep(0.002)


def worker_would_sleep(net: VirtioNet) -> bool:
    """The worker's next round would block in poll(): no work is left over from the last
    round and none of the descriptors it polls (the queues' eventfds, the stop eventfd and,
    if registered, the tap with its current mask) is ready. A functional check of "no busy
    loop" for a device run by hand (``threaded=False``)."""
    poller = net._poller
    return poller is not None and not (net._tx_more or net._rx_more) and poller.poll(0) == []


#: poll(2) and ppoll(2) by architecture (what a thread blocked in select.poll() shows)
_POLL_SYSCALLS = {"x86_64": {7, 271}, "aarch64": {73}}


def blocked_in_poll(thread) -> bool:
    """Whether ``thread`` (a threading.Thread of this process) sits in poll()/ppoll() now,
    from ``/proc/self/task/TID/syscall`` (its first field is the system call it is blocked
    in, or ``running``)."""
    import platform

    try:
        with open(f"/proc/self/task/{thread.native_id}/syscall") as f:
            first = f.read().split(maxsplit=1)[0]
    except (OSError, IndexError):
        return False
    return first.isdigit() and int(first) in _POLL_SYSCALLS.get(platform.machine(), set())


# -- a network namespace (root, /dev/net/tun, ip) --------------------------------------------------
CLONE_NEWNET = 0x40000000
TUN_DEVICE = "/dev/net/tun"
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def why_no_tap() -> str | None:
    """Why taps can't be made in a namespace here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to create taps in a network namespace"
    if not os.path.exists(TUN_DEVICE):
        return f"{TUN_DEVICE} does not exist"
    if shutil.which("ip") is None:
        return "needs iproute2's ip"
    return None


class NetNs:
    """A network namespace the test made (``ip netns add``), deleted by :meth:`delete`.

    Deleting does not depend on the test having gone well: processes still inside (a VMM
    the test started) are killed first, since they would keep the namespace and its taps
    alive, and :func:`close_leaked_taps` closes tap descriptors a failed test left open in
    this process. The kernel then destroys the namespace with every interface in it,
    persistent taps included. A namespace of this kind left by a killed test run (its
    creator's PID gone, no process in it) is deleted when the next one is made."""

    PREFIX = "microvm-net"

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def create(cls) -> "NetNs":
        """A new namespace with a unique name; raises RuntimeError if ``ip`` refuses."""
        _sweep_stale(cls.PREFIX)
        name = f"{cls.PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"cannot create a network namespace: {r.stderr.strip()}")
        return cls(name)

    def pids(self) -> list[int]:
        """The processes inside the namespace (``ip netns pids``), this one excluded."""
        return _netns_pids(self.name)

    def delete(self) -> None:
        """Kill what runs inside, delete the namespace; RuntimeError if it is still there."""
        for pid in self.pids():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        if os.path.exists(f"/run/netns/{self.name}"):
            raise RuntimeError(f"network namespace {self.name} could not be deleted")

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "-n", self.name, *args], capture_output=True, text=True, check=check)

    def exec_argv(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec``)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def exists(self, ifname: str) -> bool:
        return self.ip("link", "show", "dev", ifname, check=False).returncode == 0

    def link(self, ifname: str) -> dict:
        return json.loads(self.ip("-d", "-j", "link", "show", "dev", ifname).stdout)[0]

    def links(self) -> list[str]:
        return [l["ifname"] for l in json.loads(self.ip("-j", "link", "show").stdout)]

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move this thread into the namespace (taps and sockets are created in the
        namespace of the thread that opens them), and back."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)
            os.close(target)


def _netns_pids(name: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split() if x.isdigit() and int(x) != os.getpid()]


def _sweep_stale(prefix: str) -> None:
    """Delete namespaces named ``PREFIX-PID-HEX`` whose creator is gone and that no
    process uses (left by a killed test run); any other is left alone."""
    import re

    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        name = line.split(" ", 1)[0]
        m = re.fullmatch(re.escape(prefix) + r"-(\d+)-[0-9a-f]{6}", name)
        if m is None or os.path.exists(f"/proc/{m.group(1)}") or _netns_pids(name):
            continue
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def tun_fds() -> set[int]:
    """This process's descriptors open on /dev/net/tun."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == TUN_DEVICE:
                out.add(int(name))
        except OSError:
            pass
    return out


def close_leaked_taps(before: set[int]) -> list[int]:
    """Close the /dev/net/tun descriptors opened since ``before`` (:func:`tun_fds`) that are
    still open: taps a failed test did not close. Call it when the test is over (its own
    ``finally`` blocks have run), so that nothing closes them again. Returns them."""
    leaked = sorted(tun_fds() - before)
    for fd in leaked:
        os.close(fd)
    return leaked
