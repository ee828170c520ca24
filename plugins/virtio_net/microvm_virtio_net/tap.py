"""The tap backend: one queue of a Linux tap interface, opened through ``/dev/net/tun``.

What QEMU's ``-netdev tap`` does (``net/tap-linux.c``), minus the helper scripts:

* :meth:`Tap.open` opens ``/dev/net/tun`` and ``TUNSETIFF``\\ s it with
  ``IFF_TAP | IFF_NO_PI | IFF_VNET_HDR``: the kernel creates the interface when ``ifname``
  does not exist (it needs CAP_NET_ADMIN) or attaches to the existing one (a persistent tap
  made by ``ip tuntap add ... user U`` may be attached to by U without privileges).
  ``TUNSETPERSIST`` is never used, so an interface this process created disappears when its
  file descriptor is closed: a failed open closes it and leaves nothing behind.
* :meth:`Tap.from_fd` takes a descriptor inherited from a parent (libvirt's ``fd=N``) and
  checks with ``TUNGETIFF`` that it is a tap queue.

With ``IFF_VNET_HDR`` every frame read or written is preceded by a ``struct virtio_net_hdr``
of ``TUNSETVNETHDRSZ`` bytes: exactly virtio-net's own header, so the device hands the
guest's buffers to the kernel unchanged. ``TUNSETOFFLOAD`` says which offloads the reader
(the guest) can take: partially checksummed packets, TSO, UFO; it follows the features the
guest acknowledged (:func:`tun_offload_flags`).

The descriptor is nonblocking (the device polls it) and close-on-exec.

Errors a user can act on are :class:`~microvm.api.ConfigError`\\ s of one line that name the
interface (``tap tap0: ...`` or ``tap fd=5: ...``).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from microvm.api import ConfigError, get_logger

from .constants import (
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO,
)

log = get_logger("microvm.virtio_net.tap")

TUN_DEVICE = "/dev/net/tun"
#: ``IFNAMSIZ`` includes the terminating NUL: names have at most 15 characters.
IFNAMSIZ = 16

# ---- linux/if_tun.h ----------------------------------------------------------------------------
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_PERSIST = 0x0800
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10


def _ioc(direction: int, nr: int, size: int) -> int:
    """``_IOC(dir, 'T', nr, size)`` of asm-generic/ioctl.h (x86, arm64, riscv)."""
    return (direction << 30) | (size << 16) | (ord("T") << 8) | nr


_IOW, _IOR = 1, 2
TUNSETIFF = _ioc(_IOW, 202, 4)
TUNSETPERSIST = _ioc(_IOW, 203, 4)
TUNGETFEATURES = _ioc(_IOR, 207, 4)
TUNSETOFFLOAD = _ioc(_IOW, 208, 4)
TUNGETIFF = _ioc(_IOR, 210, 4)
TUNGETVNETHDRSZ = _ioc(_IOR, 215, 4)
TUNSETVNETHDRSZ = _ioc(_IOW, 216, 4)

#: ``struct ifreq``: ``char ifr_name[IFNAMSIZ]`` then a 24-byte union of which TUNSETIFF
#: uses ``short ifr_flags`` (40 bytes on 64-bit hosts).
IFREQ = struct.Struct("16sH22x")
_INT = struct.Struct("i")

#: (virtio-net guest feature, TUN_F flag) pairs for TUNSETOFFLOAD.
_OFFLOAD_MAP = (
    (VIRTIO_NET_F_GUEST_TSO4, TUN_F_TSO4),
    (VIRTIO_NET_F_GUEST_TSO6, TUN_F_TSO6),
    (VIRTIO_NET_F_GUEST_UFO, TUN_F_UFO),
)


def tun_offload_flags(features: int) -> int:
    """The ``TUNSETOFFLOAD`` argument for the virtio-net features a guest acknowledged.

    TUN_F_* say what the *reader* of the tap (the guest) accepts: GUEST_CSUM lets the host
    stack send partially checksummed packets (TUN_F_CSUM), GUEST_TSO4/6/UFO lets it send
    unsegmented ones, GUEST_ECN TSO packets with CWR set. As in QEMU (``tap_fd_set_offload``)
    and the kernel's ``set_offload``, segmentation offloads exist only together with
    checksum offload (the spec's feature dependencies, §5.1.3.1; the kernel refuses TSO
    without CSUM), and ECN only with TSO: a driver that acked them inconsistently gets
    the consistent subset.
    """
    if not features & (1 << VIRTIO_NET_F_GUEST_CSUM):
        return 0
    flags = TUN_F_CSUM
    for bit, tun_flag in _OFFLOAD_MAP:
        if features & (1 << bit):
            flags |= tun_flag
    if features & (1 << VIRTIO_NET_F_GUEST_ECN) and flags & (TUN_F_TSO4 | TUN_F_TSO6):
        flags |= TUN_F_TSO_ECN
    return flags


def _label(ifname: str | None = None, fd: int | None = None) -> str:
    if fd is not None:
        return f"tap fd={fd}"
    return f"tap {ifname}" if ifname else "tap"


def check_ifname(ifname: str) -> None:
    """Refuse a name the kernel would refuse (``dev_valid_name``), with a clear message."""
    label = _label(ifname)
    if len(ifname.encode()) > IFNAMSIZ - 1:
        raise ConfigError(f"{label}: interface name is longer than {IFNAMSIZ - 1} characters")
    if not ifname or ifname in (".", "..") or any(c in ifname for c in "/:") or any(c.isspace() for c in ifname):
        raise ConfigError(f"{label}: not a valid interface name (no '/', ':', blanks, '.' or '..')")


def _interface_exists(ifname: str) -> bool:
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


class Tap:
    """One open tap queue (the "tap object" :class:`~microvm_virtio_net.device.VirtioNet`
    expects): ``fileno()``, ``vnet_hdr``, ``has_ufo``, ``set_vnet_hdr_size(n)``,
    ``set_offload(features)``, ``close()``.

    Use :meth:`open` or :meth:`from_fd`; the constructor only wraps an already checked fd.
    """

    def __init__(self, fd: int, ifname: str, vnet_hdr: bool, created: bool = False, has_ufo: bool = True) -> None:
        self.fd = fd
        #: the interface's name (what the kernel chose for a name like ``tap%d``)
        self.ifname = ifname
        #: frames carry a virtio-net header (IFF_VNET_HDR)
        self.vnet_hdr = vnet_hdr
        #: this process created the interface (it goes away on close)
        self.created = created
        #: the kernel takes TUN_F_UFO (QEMU's ``tap_probe_has_ufo``)
        self.has_ufo = has_ufo
        #: the last values set, for logs and tests
        self.vnet_hdr_size = 10 if vnet_hdr else 0
        self.offload = 0

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, ifname: str | None = None, vnet_hdr: bool | None = None, tun_device: str = TUN_DEVICE) -> "Tap":
        """Create the tap ``ifname`` or attach to it if it exists; ``None`` lets the kernel
        pick ``tapN``. ``vnet_hdr`` as QEMU's: None = with a virtio-net header when the
        kernel has IFF_VNET_HDR, True = required, False = without. Raises ConfigError
        naming the interface."""
        label = _label(ifname)
        if ifname is not None:
            check_ifname(ifname)
        existed = ifname is not None and "%" not in ifname and _interface_exists(ifname)
        try:
            fd = os.open(tun_device, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise ConfigError(f"{label}: {tun_device} does not exist (is the tun module loaded?)") from None
        except PermissionError:
            raise ConfigError(f"{label}: cannot open {tun_device}: permission denied") from None
        except OSError as e:
            raise ConfigError(f"{label}: cannot open {tun_device}: {e.strerror}") from None
        try:
            features = cls._features(fd)
            has_vnet_hdr = features is None or bool(features & IFF_VNET_HDR)
            if vnet_hdr and not has_vnet_hdr:
                raise ConfigError(f"{label}: the kernel's tun driver has no IFF_VNET_HDR (vnet_hdr=on asked for it)")
            if vnet_hdr is None:
                vnet_hdr = has_vnet_hdr
            flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
            ifr = bytearray(IFREQ.pack((ifname or "tap%d").encode(), flags))
            try:
                fcntl.ioctl(fd, TUNSETIFF, ifr, True)
            except OSError as e:
                raise ConfigError(f"{label}: {cls._setiff_error(e, existed)}") from None
            name = IFREQ.unpack(ifr)[0].split(b"\0", 1)[0].decode()
            tap = cls(fd, name, vnet_hdr, created=not existed)
            tap._probe_ufo()
            try:
                tap.set_offload(0)  # nothing GSO queues up before a guest says it can take it
            except OSError as e:
                raise ConfigError(f"tap {name}: TUNSETOFFLOAD refused: {e.strerror}") from None
        except BaseException:
            os.close(fd)  # a tap we created goes away with its last descriptor
            raise
        log.info("tap %s: %s (vnet_hdr=%s)", name, "created" if tap.created else "attached", "on" if vnet_hdr else "off")
        return tap

    @classmethod
    def from_fd(cls, fd: int, vnet_hdr: bool | None = None) -> "Tap":
        """Take an inherited descriptor ``fd`` that must be an attached tap queue opened
        with IFF_NO_PI. ``vnet_hdr=None`` follows the descriptor's IFF_VNET_HDR; True
        requires it; False requires it to be off (a queue's header can't be switched off).
        On success the Tap owns ``fd`` (closes it); on failure it is left open.

        IFF_NO_PI can't be checked: TUNGETIFF reports bit 0x1000 for every tap (it is also
        the kernel's internal IFF_NOFILTER), so a descriptor opened with packet information
        would go unnoticed, as it does in QEMU."""
        label = _label(fd=fd)
        ifr = bytearray(IFREQ.size)
        try:
            fcntl.ioctl(fd, TUNGETIFF, ifr, True)
        except OSError as e:
            why = "not open" if e.errno == errno.EBADF else "not a tap device" if e.errno != errno.EBADFD else "a /dev/net/tun descriptor not attached to an interface"
            raise ConfigError(f"{label}: {why} (TUNGETIFF: {e.strerror})") from None
        raw_name, flags = IFREQ.unpack(ifr)
        name = raw_name.split(b"\0", 1)[0].decode(errors="replace")
        label = f"tap {name} (fd={fd})"
        if not flags & IFF_TAP:
            raise ConfigError(f"{label}: is a tun (layer 3) device, not a tap")
        has = bool(flags & IFF_VNET_HDR)
        if vnet_hdr is not None and vnet_hdr != has:
            raise ConfigError(f"{label}: vnet_hdr={'on' if vnet_hdr else 'off'} asked for, but the descriptor has IFF_VNET_HDR {'on' if has else 'off'}")
        try:
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        except OSError as e:
            raise ConfigError(f"{label}: {e.strerror}") from None
        tap = cls(fd, name, has)
        if has:
            try:
                tap.vnet_hdr_size = _INT.unpack(fcntl.ioctl(fd, TUNGETVNETHDRSZ, bytes(_INT.size)))[0]
            except OSError:
                pass
        tap._probe_ufo()
        try:
            tap.set_offload(0)
        except OSError as e:
            raise ConfigError(f"{label}: TUNSETOFFLOAD refused: {e.strerror}") from None
        log.info("tap %s: inherited fd %d (vnet_hdr=%s)", name, fd, "on" if has else "off")
        return tap

    @staticmethod
    def _features(fd: int) -> int | None:
        buf = bytearray(_INT.size)
        try:
            fcntl.ioctl(fd, TUNGETFEATURES, buf, True)
        except OSError:
            return None
        return _INT.unpack(buf)[0]

    @staticmethod
    def _setiff_error(e: OSError, existed: bool) -> str:
        if e.errno == errno.EPERM:
            if existed:
                return "permission denied attaching to the interface (it belongs to another user; needs CAP_NET_ADMIN)"
            return "permission denied creating the interface (needs CAP_NET_ADMIN; or create it first: ip tuntap add dev NAME mode tap user $USER)"
        if e.errno == errno.EBUSY:
            return "the interface is busy (another process has it open)"
        if e.errno == errno.EINVAL:
            if existed:
                return "the interface exists but is not a single-queue tap (a tun, multi_queue tap, or another kind of link)"
            return "the kernel refused the interface name or flags"
        return f"TUNSETIFF failed: {e.strerror}"

    def _probe_ufo(self) -> None:
        """QEMU's ``tap_probe_has_ufo``: does the kernel take TUN_F_UFO?"""
        if not self.vnet_hdr:
            self.has_ufo = False
            return
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_UFO)
        except OSError:
            self.has_ufo = False

    # -- the device's interface ------------------------------------------------------------------
    def fileno(self) -> int:
        return self.fd

    def set_vnet_hdr_size(self, size: int) -> None:
        """``TUNSETVNETHDRSZ``: 12 with VERSION_1 or MRG_RXBUF, 10 for a legacy driver
        without mergeable buffers (§5.1.6). Nothing to do without IFF_VNET_HDR."""
        if not self.vnet_hdr:
            return
        fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, _INT.pack(size))
        self.vnet_hdr_size = size

    def set_offload(self, features: int) -> None:
        """``TUNSETOFFLOAD`` for the virtio-net ``features`` the guest acknowledged (see
        :func:`tun_offload_flags`). Raises OSError if the kernel refuses."""
        if not self.vnet_hdr:
            return
        flags = tun_offload_flags(features)
        if not self.has_ufo:
            flags &= ~TUN_F_UFO
        fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
        self.offload = flags

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def __enter__(self) -> "Tap":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Tap({self.ifname!r}, fd={self.fd}, vnet_hdr={self.vnet_hdr})"


def open_tap(ifname: str | None = None, fd: int | None = None, vnet_hdr: bool | None = None) -> Tap:
    """``-netdev tap`` without scripts: ``fd=`` takes an inherited descriptor, else ``ifname``
    is created or attached to. ``vnet_hdr`` as QEMU: None = use it (follow the descriptor
    for ``fd=``), True = require it, False = don't use it."""
    if fd is not None:
        if ifname is not None:
            raise ConfigError(f"{_label(ifname, fd)}: ifname= and fd= can't be used together")
        return Tap.from_fd(fd, vnet_hdr)
    return Tap.open(ifname, vnet_hdr=vnet_hdr)
