"""The virtio block device backend (virtio 1.2 §5.2) on a raw image file. No pluggy here.

Requests (§5.2.6) are a device-readable header ``{le32 type; le32 reserved; le64 sector}``,
data, and a device-writable status byte at the very end. The descriptor layout is not
assumed (VIRTIO_F_ANY_LAYOUT is implied by VERSION_1): the readable buffers are treated as
one byte stream and the writable ones as another, so a header split over two descriptors or
sharing one with data works. Data moves with ``os.preadv``/``os.pwritev`` straight between
the file and guest memory.

A malformed request (short header, unaligned length, sector beyond the capacity) gets
VIRTIO_BLK_S_IOERR, an unknown type VIRTIO_BLK_S_UNSUPP; neither stops the device. Only a
broken ring (:class:`~microvm.virtio.QueueError`) does, through the transport.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
from typing import TYPE_CHECKING, Callable

from microvm.api import VIRTIO_ID_BLOCK, ConfigError, EventLog, VirtioBackend, get_logger

if TYPE_CHECKING:
    from microvm.api import DescriptorChain, GuestMemory, Virtqueue

log = get_logger("microvm.virtio_blk")
#: per-request trouble (a malformed request, a host I/O error): a guest or a failing disk can
#: repeat it for every request, so the first of each kind is logged and the rest counted
request_error = EventLog(log)
WARNING, ERROR = 30, 40


def _nothing(*_: object) -> None:
    pass

# ---- §5.2.3 feature bits -------------------------------------------------------------------
VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_GEOMETRY = 4
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_TOPOLOGY = 10
VIRTIO_BLK_F_CONFIG_WCE = 11
VIRTIO_BLK_F_MQ = 12
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14
VIRTIO_BLK_F_LIFETIME = 15
VIRTIO_BLK_F_SECURE_ERASE = 16

# ---- §5.2.6 request types and status -------------------------------------------------------
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_GET_LIFETIME = 10
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13
VIRTIO_BLK_T_SECURE_ERASE = 14
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2
VIRTIO_BLK_ID_BYTES = 20
VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1

SECTOR_SIZE = 512
#: ``struct virtio_blk_outhdr``: type, reserved, sector.
REQ_HEADER = struct.Struct("<IIQ")
#: ``struct virtio_blk_discard_write_zeroes``: sector, num_sectors, flags.
DISCARD_SEGMENT = struct.Struct("<QII")
#: ``struct virtio_blk_config`` (§5.2.4) up to the secure-erase fields, 72 bytes.
CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3xIII")
#: Largest discard / write-zeroes request, as QEMU (``BDRV_REQUEST_MAX_SECTORS``).
MAX_DISCARD_SECTORS = 0x3FFFFF
MAX_DISCARD_SEG = 1

# fallocate(2) modes, <linux/falloc.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# ---- image locking as QEMU 7.2 does it (block/file-posix.c, util/osdep.c) ------------------
# Open file description locks (<fcntl.h>, Linux 3.15+): owned by the open file, not by the
# process, so two opens of one image in one process conflict as two processes do. Python
# 3.11's fcntl module does not name them.
F_OFD_GETLK = 36
F_OFD_SETLK = 37
F_OFD_SETLKW = 38
#: ``struct flock`` on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t
#: l_pid, padded to 8 bytes (32 on every 64-bit ABI). l_pid must be 0 for OFD requests.
FLOCK = struct.Struct("@hhqqi4x")
#: QEMU locks one byte per block-layer permission at RAW_LOCK_PERM_BASE + bit while it holds
#: the permission, and one at RAW_LOCK_SHARED_BASE + bit while it does not share it.
RAW_LOCK_PERM_BASE = 100
RAW_LOCK_SHARED_BASE = 200
#: BLK_PERM_* bits (include/block/block-common.h), with bdrv_perm_names()'s words.
BLK_PERM_CONSISTENT_READ = 0x01
BLK_PERM_WRITE = 0x02
BLK_PERM_WRITE_UNCHANGED = 0x04
BLK_PERM_RESIZE = 0x08
BLK_PERM_ALL = 0x0F
BLK_PERM_NAMES = {
    BLK_PERM_CONSISTENT_READ: "consistent read",
    BLK_PERM_WRITE: "write",
    BLK_PERM_WRITE_UNCHANGED: "write unchanged",
    BLK_PERM_RESIZE: "resize",
}


def qemu_image_permissions(readonly: bool) -> tuple[int, int]:
    """(permissions taken, permissions shared) on the image file of a QEMU 7.2 virtio-blk
    device on a raw drive without ``share-rw``: the device takes consistent read, and write
    unless read-only, and shares everything but write (``blkconf_apply_backend_options``; the
    raw format passes them through to the file). Seen in /proc/locks under QEMU 7.2: bytes
    100, 101 and 201 read-write; 100 and 201 read-only."""
    perm = BLK_PERM_CONSISTENT_READ | (0 if readonly else BLK_PERM_WRITE)
    return perm, BLK_PERM_ALL & ~BLK_PERM_WRITE


class _Ofd:
    """Does the kernel have OFD locks? Probed once as QEMU's qemu_probe_lock_ops does
    (F_OFD_GETLK on /dev/null). Without them QEMU's default ``locking=auto`` takes no image
    locks at all (POSIX process locks vanish when any descriptor of the file is closed), and
    neither does microvm."""

    available: bool | None = None

    @classmethod
    def probe(cls) -> bool:
        if cls.available is None:
            try:
                fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                cls.available = False
            else:
                try:
                    fcntl.fcntl(fd, F_OFD_GETLK, FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
                    cls.available = True
                except OSError:
                    cls.available = False
                finally:
                    os.close(fd)
            if not cls.available:
                log.warning("virtio-blk: the kernel has no OFD locks; images are not locked (as QEMU's locking=auto)")
        return cls.available


def _lock_byte(fd: int, offset: int, lock_type: int) -> None:
    """qemu_lock_fd / qemu_unlock_fd: a shared (read) lock, or an unlock, on one byte."""
    while True:
        try:
            fcntl.fcntl(fd, F_OFD_SETLK, FLOCK.pack(lock_type, os.SEEK_SET, offset, 1, 0))
            return
        except InterruptedError:
            continue


def _byte_is_locked(fd: int, offset: int) -> bool:
    """qemu_lock_fd_test(exclusive): would a write lock on the byte conflict with a lock some
    other open file holds?"""
    got = fcntl.fcntl(fd, F_OFD_GETLK, FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))
    return FLOCK.unpack(got)[0] != fcntl.F_UNLCK


def lock_image(fd: int, readonly: bool) -> str | None:
    """Take the locks QEMU 7.2 takes on a raw image for a virtio-blk device, then check that
    no other user conflicts (file-posix.c's raw_apply_lock_bytes, then raw_check_lock_bytes).
    Returns None, or QEMU's words for the conflict (``Failed to get "write" lock``); raises
    OSError when the file system refuses locks. Closing ``fd`` drops every lock."""
    if not _Ofd.probe():
        return None
    perm, shared = qemu_image_permissions(readonly)
    for bit in BLK_PERM_NAMES:
        if perm & bit:
            _lock_byte(fd, RAW_LOCK_PERM_BASE + bit.bit_length() - 1, fcntl.F_RDLCK)
    for bit in BLK_PERM_NAMES:
        if not shared & bit:
            _lock_byte(fd, RAW_LOCK_SHARED_BASE + bit.bit_length() - 1, fcntl.F_RDLCK)
    for bit, name in BLK_PERM_NAMES.items():   # someone who does not share what we take
        if perm & bit and _byte_is_locked(fd, RAW_LOCK_SHARED_BASE + bit.bit_length() - 1):
            return f'Failed to get "{name}" lock'
    for bit, name in BLK_PERM_NAMES.items():   # someone who holds what we do not share
        if not shared & bit and _byte_is_locked(fd, RAW_LOCK_PERM_BASE + bit.bit_length() - 1):
            return f'Failed to get shared "{name}" lock'
    return None


try:
    _IOV_MAX = os.sysconf("SC_IOV_MAX")
except (ValueError, OSError):
    _IOV_MAX = 1024

try:
    _libc_fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    _libc_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _libc_fallocate.restype = ctypes.c_int
except (AttributeError, OSError):  # a libc without fallocate(2): no discard/write-zeroes offload
    _libc_fallocate = None


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """``fallocate(2)`` with a mode (``os.posix_fallocate`` takes none); raises OSError."""
    if _libc_fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate is not available")
    if _libc_fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _total(views: list[memoryview]) -> int:
    return sum(len(v) for v in views)


def _split(views: list[memoryview], n: int) -> tuple[list[memoryview], list[memoryview]]:
    """The first ``n`` bytes of a scatter list and the rest, as views (no copies)."""
    head: list[memoryview] = []
    rest: list[memoryview] = []
    for v in views:
        if n >= len(v):
            head.append(v)
            n -= len(v)
        elif n > 0:
            head.append(v[:n])
            rest.append(v[n:])
            n = 0
        else:
            rest.append(v)
    return head, rest


class VirtioBlk(VirtioBackend):
    """A virtio-blk device on the raw image at ``path``.

    The file is opened read-write (``O_RDONLY`` when ``readonly``) and locked as QEMU 7.2
    locks it (:func:`lock_image`: OFD byte-range locks at QEMU's permission bytes), so a
    second writer is refused whether it is microvm or QEMU, and readers share; a conflict is
    a one-line :class:`~microvm.errors.ConfigError` naming the file.
    """

    device_id = VIRTIO_ID_BLOCK
    num_queues = 1

    def __init__(self, path: str | os.PathLike[str], readonly: bool = False, serial: str = "", queue_size: int = 256) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly
        self.queue_max_size = queue_size
        sbytes = serial.encode()
        if len(sbytes) > VIRTIO_BLK_ID_BYTES:
            log.warning("virtio-blk %s: serial %r is longer than %d bytes; truncated", self.path, serial, VIRTIO_BLK_ID_BYTES)
        self.serial = sbytes[:VIRTIO_BLK_ID_BYTES].ljust(VIRTIO_BLK_ID_BYTES, b"\0")
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
        try:
            self.fd = os.open(self.path, flags)
        except OSError as e:
            raise ConfigError(f"drive file {self.path}: cannot open {'read-only' if readonly else 'read-write'}: {e.strerror}") from None
        try:
            conflict = lock_image(self.fd, readonly)
        except OSError as e:
            os.close(self.fd)
            raise ConfigError(f"drive file {self.path}: cannot lock: {e.strerror}") from None
        if conflict is not None:
            os.close(self.fd)
            raise ConfigError(
                f"drive file {self.path} is locked by another process: {conflict} (is another VM, microvm "
                "or QEMU, using the image? stop it, use a copy, or give readonly=on to every user)"
            )
        size = os.lseek(self.fd, 0, os.SEEK_END)
        if size % SECTOR_SIZE:
            log.warning("virtio-blk %s: size %d is not a multiple of %d; the last partial sector is hidden", self.path, size, SECTOR_SIZE)
        self.capacity = size // SECTOR_SIZE
        self.can_punch, self.can_zero = self._probe_fallocate(size)
        self._queues: list[Virtqueue] = []
        self._interrupt: Callable[[], None] = lambda: None
        # counters (bound in activate, to the group the transport shares with this device)
        self._count_request: Callable[[], object] = _nothing
        self._count_failed: Callable[[], object] = _nothing
        self._count_read: Callable[[int], object] = _nothing
        self._count_written: Callable[[int], object] = _nothing

    # -- host capabilities -----------------------------------------------------------------
    def _probe_fallocate(self, size: int) -> tuple[bool, bool]:
        """Does the host file system take FALLOC_FL_PUNCH_HOLE / FALLOC_FL_ZERO_RANGE?

        Punching is tried on the image itself, one block past its end with KEEP_SIZE: that
        never allocates nor changes a byte. Zeroing a range past the end would allocate a
        block there, so it is tried on an anonymous ``O_TMPFILE`` in the image's directory
        (same file system); where that can't be created, zero-range counts as unsupported
        and write-zeroes falls back to punch + ``posix_fallocate``."""
        if self.readonly or not stat.S_ISREG(os.fstat(self.fd).st_mode):
            return False, False
        keep = FALLOC_FL_KEEP_SIZE
        try:
            fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | keep, (size + 4095) // 4096 * 4096, 4096)
            can_punch = True
        except OSError:
            can_punch = False
        can_zero = False
        try:
            tmp = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except (OSError, AttributeError):
            return can_punch, can_zero
        try:
            fallocate(tmp, FALLOC_FL_ZERO_RANGE | keep, 0, 4096)
            can_zero = True
        except OSError:
            pass
        finally:
            os.close(tmp)
        return can_punch, can_zero

    # -- VirtioBackend ---------------------------------------------------------------------
    def device_features(self) -> int:
        f = (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX) | (1 << VIRTIO_BLK_F_BLK_SIZE)
        if self.readonly:
            f |= 1 << VIRTIO_BLK_F_RO
        else:
            if self.can_punch:
                f |= 1 << VIRTIO_BLK_F_DISCARD
            if self.can_punch or self.can_zero:
                f |= 1 << VIRTIO_BLK_F_WRITE_ZEROES
        return f

    def _offers(self, bit: int) -> bool:
        return bool(self.device_features() & (1 << bit))

    def config_space(self) -> bytes:
        discard = self._offers(VIRTIO_BLK_F_DISCARD)
        wz = self._offers(VIRTIO_BLK_F_WRITE_ZEROES)
        return CONFIG.pack(
            self.capacity,
            0,  # size_max (VIRTIO_BLK_F_SIZE_MAX not offered)
            self.queue_max_size - 2,  # seg_max: leave room for header and status, as QEMU
            0, 0, 0,  # geometry
            SECTOR_SIZE,  # blk_size
            0, 0, 0, 0,  # topology
            0, 0,  # writeback, unused0
            1,  # num_queues
            MAX_DISCARD_SECTORS if discard else 0,
            MAX_DISCARD_SEG if discard else 0,
            1 if discard else 0,  # discard_sector_alignment, in sectors
            MAX_DISCARD_SECTORS if wz else 0,
            MAX_DISCARD_SEG if wz else 0,
            1 if wz and self.can_punch else 0,  # write_zeroes_may_unmap
            0, 0, 0,  # secure erase
        )

    def activate(self, queues: list["Virtqueue"], interrupt: Callable[[], None], memory: "GuestMemory") -> None:
        self._queues = queues
        self._interrupt = interrupt
        c = self.counters
        self._count_request = c.counter("requests").inc
        self._count_failed = c.counter("requests_failed").inc
        self._count_read = c.counter("bytes_read").add
        self._count_written = c.counter("bytes_written").add

    def reset(self) -> None:
        self._queues = []
        self._interrupt = lambda: None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # also drops the image locks (the last close of an OFD)
            self.fd = -1

    def process_queue(self, index: int) -> None:
        q = self._queues[index]
        used = False
        while (chain := q.pop()) is not None:
            q.push(chain.head, self.handle(chain))
            used = True
        if used:
            self._interrupt()

    # -- requests --------------------------------------------------------------------------
    def handle(self, chain: "DescriptorChain") -> int:
        """Serve one request; return the used length (bytes written into the chain's
        device-writable buffers, status byte included)."""
        out_views = [v for v in chain.readable_views() if len(v)]
        in_views = [v for v in chain.writable_views() if len(v)]
        in_total = _total(in_views)
        if in_total == 0:
            request_error(f"virtio-blk {self.path}: no status byte", WARNING,
                          "virtio-blk %s: request %d has no status byte; dropped", self.path, chain.head)
            return 0
        data_in, status_part = _split(in_views, in_total - 1)
        status_view = status_part[0]
        header_views, data_out = _split(out_views, REQ_HEADER.size)
        header = b"".join(bytes(v) for v in header_views)
        if len(header) < REQ_HEADER.size:
            request_error(f"virtio-blk {self.path}: short header", WARNING,
                          "virtio-blk %s: request %d has a %d-byte header", self.path, chain.head, len(header))
            status, written = VIRTIO_BLK_S_IOERR, 0
        else:
            rtype, _reserved, sector = REQ_HEADER.unpack(header)
            try:
                status, written = self._dispatch(rtype, sector, data_out, data_in)
            except OSError as e:
                request_error(f"virtio-blk {self.path}: host I/O error {e.errno}", ERROR,
                              "virtio-blk %s: request type %d at sector %d: %s", self.path, rtype, sector, e)
                status, written = VIRTIO_BLK_S_IOERR, getattr(e, "written", 0)
        status_view[0] = status
        self._count_request()
        if status != VIRTIO_BLK_S_OK:
            self._count_failed()
        return written + 1

    def _range_ok(self, sector: int, nbytes: int) -> bool:
        return sector <= self.capacity and nbytes // SECTOR_SIZE <= self.capacity - sector

    def _dispatch(self, rtype: int, sector: int, data_out: list[memoryview], data_in: list[memoryview]) -> tuple[int, int]:
        if rtype == VIRTIO_BLK_T_IN:
            length = _total(data_in)
            if length % SECTOR_SIZE or not self._range_ok(sector, length):
                return VIRTIO_BLK_S_IOERR, 0
            done = self._preadv(data_in, sector * SECTOR_SIZE)
            if done < length:
                request_error(f"virtio-blk {self.path}: short read", ERROR,
                              "virtio-blk %s: short read at sector %d (file shrank?)", self.path, sector)
                return VIRTIO_BLK_S_IOERR, done
            self._count_read(length)
            return VIRTIO_BLK_S_OK, length
        if rtype == VIRTIO_BLK_T_OUT:
            length = _total(data_out)
            if self.readonly or length % SECTOR_SIZE or not self._range_ok(sector, length):
                return VIRTIO_BLK_S_IOERR, 0
            self._pwritev(data_out, sector * SECTOR_SIZE)
            self._write_through()
            self._count_written(length)
            return VIRTIO_BLK_S_OK, 0
        if rtype == VIRTIO_BLK_T_FLUSH:
            os.fdatasync(self.fd)
            return VIRTIO_BLK_S_OK, 0
        if rtype == VIRTIO_BLK_T_GET_ID:
            n = min(VIRTIO_BLK_ID_BYTES, _total(data_in))
            ident, _ = _split(data_in, n)
            pos = 0
            for v in ident:
                v[:] = self.serial[pos : pos + len(v)]
                pos += len(v)
            return VIRTIO_BLK_S_OK, n
        if rtype in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
            status = self._discard_or_zero(rtype, data_out)
            self._write_through()
            return status, 0
        return VIRTIO_BLK_S_UNSUPP, 0

    def _write_through(self) -> None:
        """A driver that did not accept VIRTIO_BLK_F_FLUSH may assume a write-through cache
        (§5.2.6.1; Linux's virtblk_get_cache_mode, QEMU): each write is then durable before
        its status is written."""
        if not self.acked_features & (1 << VIRTIO_BLK_F_FLUSH):
            os.fdatasync(self.fd)

    def _discard_or_zero(self, rtype: int, data_out: list[memoryview]) -> int:
        discard = rtype == VIRTIO_BLK_T_DISCARD
        if self.readonly:
            return VIRTIO_BLK_S_IOERR
        if not self._offers(VIRTIO_BLK_F_DISCARD if discard else VIRTIO_BLK_F_WRITE_ZEROES):
            return VIRTIO_BLK_S_UNSUPP
        payload = b"".join(bytes(v) for v in data_out)
        if not payload or len(payload) % DISCARD_SEGMENT.size:
            return VIRTIO_BLK_S_IOERR
        if len(payload) // DISCARD_SEGMENT.size > MAX_DISCARD_SEG:
            return VIRTIO_BLK_S_UNSUPP
        segments = [DISCARD_SEGMENT.unpack_from(payload, i) for i in range(0, len(payload), DISCARD_SEGMENT.size)]
        allowed_flags = 0 if discard else VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        for sector, num, flags in segments:  # §5.2.6.2: unknown flags, unmap on discard -> UNSUPP
            if flags & ~allowed_flags:
                return VIRTIO_BLK_S_UNSUPP
            if num > MAX_DISCARD_SECTORS or not self._range_ok(sector, num * SECTOR_SIZE):
                return VIRTIO_BLK_S_IOERR
        for sector, num, flags in segments:
            offset, length = sector * SECTOR_SIZE, num * SECTOR_SIZE
            if length == 0:
                continue
            if discard:
                fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
            else:
                self._write_zeroes(offset, length, unmap=bool(flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP))
        return VIRTIO_BLK_S_OK

    def _write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        if unmap and self.can_punch:
            fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        elif self.can_zero:
            fallocate(self.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)
        else:  # punch (reads back as zeros), then allocate again: the range stays provisioned
            fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
            os.posix_fallocate(self.fd, offset, length)

    # -- scatter/gather I/O ------------------------------------------------------------------
    def _preadv(self, views: list[memoryview], offset: int) -> int:
        """Read into ``views`` from ``offset``; returns bytes read (short only at end of file)."""
        done = 0
        pending = list(views)
        while pending:
            try:
                n = os.preadv(self.fd, pending[:_IOV_MAX], offset + done)
            except OSError as e:
                e.written = done  # type: ignore[attr-defined]
                raise
            if n == 0:
                break
            done += n
            _, pending = _split(pending, n)
        return done

    def _pwritev(self, views: list[memoryview], offset: int) -> None:
        done = 0
        pending = list(views)
        while pending:
            n = os.pwritev(self.fd, pending[:_IOV_MAX], offset + done)
            if n == 0:
                raise OSError(errno.EIO, "pwritev wrote nothing")
            done += n
            _, pending = _split(pending, n)
