"""Reading a file the user named (a kernel, an initrd, a ``-bios`` image, a ``-fw_cfg``
file) whole, safely and with one wording for every refusal.

What the file is and how big it is come from ``fstat`` on the opened descriptor (not from
the path, which can be swapped in between), before a byte is read: ``/dev/zero`` or
``/dev/urandom`` would otherwise be read until memory runs out, and a FIFO could block
forever. The open is non-blocking (a FIFO cannot hang it waiting for a writer) and never
makes a terminal the controlling one. At most the size fstat gave is read, into one buffer
allocated at that size (no second copy, whatever the size: a 3 GiB initrd needs 3 GiB).

The size of a /proc or /sys file says nothing of its content (0 for ``/proc/cpuinfo``, 4096
for most sysfs attributes): a file whose fstat size is 0, or one on procfs/sysfs that ends
early, is read to its end, up to the caller's bound, as QEMU's ``g_file_get_contents``
reads it. A file elsewhere that ends before its size is refused, worded for what happened:
its size or modification time changed meanwhile (``the file changed while it was read``), or
not (``shorter than its size``: a file system that reports a size it does not deliver).

The messages, after the caller's ``what`` (``kernel FILE``, ``could not load PC BIOS
'NAME'``, ``-fw_cfg ...: can't load FILE``): ``no such file``, ``is a directory``, ``not a
regular file (a FIFO)``, ``file is empty``, ``N bytes, larger than LIMIT``, ``the file
changed while it was read``, ``shorter than its size (N of M bytes read)``, or the system's
words for any other error (``Permission denied``).
"""
from __future__ import annotations

import os
import stat
from typing import Callable

from ..errors import BootError

_FILE_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def read_regular_file(path: str | os.PathLike[str], what: str, max_size: int | None = None, *,
                      limit: str = "", empty_ok: bool = False,
                      error: Callable[[str], Exception] = BootError) -> bytearray:
    """The whole of the regular file ``path``, of at most ``max_size`` bytes (``limit`` says
    what that bound is, after ``larger than``; default: the size in MiB or KiB). A refusal
    is ``error(f"{what}: WHY")`` (a :class:`BootError` unless the caller says otherwise).
    A ``bytearray`` (the buffer it was read into), which callers use as bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise error(f"{what}: no such file") from None
    except OSError as e:
        raise error(f"{what}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{what}: is a directory")
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "a special file")
            raise error(f"{what}: not a regular file ({kind})")
        too_big = f"larger than {limit or size_text(max_size)}" if max_size is not None else ""
        if max_size is not None and st.st_size > max_size:
            raise error(f"{what}: {st.st_size} bytes, {too_big}")
        data = _read_upto(fd, st.st_size)
        if len(data) < st.st_size or st.st_size == 0:
            pseudo = st.st_size == 0 or _on_pseudo_fs(st)
            if not pseudo:
                now = os.fstat(fd)
                if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                    raise error(f"{what}: the file changed while it was read")
                raise error(f"{what}: shorter than its size ({len(data)} of {st.st_size} bytes read)")
            if len(data) == st.st_size:  # st_size 0: the content is what a read gives
                data += _read_to_end(fd, None if max_size is None else max_size + 1)
            if max_size is not None and len(data) > max_size:
                raise error(f"{what}: more than {max_size} bytes, {too_big}")
        if not data and not empty_ok:
            raise error(f"{what}: file is empty")
        return data
    except OSError as e:
        raise error(f"{what}: {e.strerror}") from None
    finally:
        os.close(fd)


def size_text(size: int) -> str:
    """``16 MiB``, ``64 KiB``, else bytes."""
    if size and not size & 0xFFFFF:
        return f"{size >> 20} MiB"
    if size and not size & 0x3FF:
        return f"{size >> 10} KiB"
    return f"{size} bytes"


def _read_upto(fd: int, size: int) -> bytearray:
    """Up to ``size`` bytes (what fstat gave), fewer at an early end of file, read into one
    buffer of that size (``os.readv``: no bytes object per chunk, no join)."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = os.readv(fd, [view[got:]])
        if n == 0:
            break
        got += n
    view.release()
    if got < size:
        del buf[got:]
    return buf


def _read_to_end(fd: int, cap: int | None) -> bytearray:
    """The rest of a pseudo-file, up to ``cap`` bytes (None: to its end)."""
    out = bytearray()
    while cap is None or len(out) < cap:
        chunk = os.read(fd, 1 << 16 if cap is None else min(1 << 16, cap - len(out)))
        if not chunk:
            break
        out += chunk
    return out


def _on_pseudo_fs(st: os.stat_result) -> bool:
    """The file is on the procfs or sysfs mounted at /proc or /sys (same device number),
    whose sizes are not their content's."""
    for mount in ("/proc", "/sys"):
        try:
            if os.stat(mount).st_dev == st.st_dev:
                return True
        except OSError:
            pass
    return False
