"""Reading a file the user named (a kernel, an initrd, a ``-bios`` image, a ``-fw_cfg``
file) whole, safely and with one wording for every refusal.

What the file is and how big it is come from ``fstat`` on the opened descriptor (not from
the path, which can be swapped in between), before a byte is read: ``/dev/zero`` or
``/dev/urandom`` would otherwise be read until memory runs out, and a FIFO could block
forever. The open is non-blocking (a FIFO cannot hang it waiting for a writer) and never
makes a terminal the controlling one. At most the size fstat gave is read; a file that is
shorter by then changed while it was read and is refused: it is taken whole or not at all.

The messages, after the caller's ``what`` (``kernel FILE``, ``could not load PC BIOS
'NAME'``, ``-fw_cfg ...: can't load FILE``): ``no such file``, ``is a directory``, ``not a
regular file (a FIFO)``, ``file is empty``, ``N bytes, larger than LIMIT``, ``the file
changed while it was read``, or the system's words for any other error (``Permission
denied``).
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
                      error: Callable[[str], Exception] = BootError) -> bytes:
    """The whole of the regular file ``path``, of at most ``max_size`` bytes (``limit`` says
    what that bound is, after ``larger than``; default: the size in MiB or KiB). A refusal
    is ``error(f"{what}: WHY")`` (a :class:`BootError` unless the caller says otherwise)."""
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
        if st.st_size == 0 and not empty_ok:
            raise error(f"{what}: file is empty")
        if max_size is not None and st.st_size > max_size:
            raise error(f"{what}: {st.st_size} bytes, larger than {limit or size_text(max_size)}")
        data = _read_exactly(fd, st.st_size)
        if data is None:
            raise error(f"{what}: the file changed while it was read")
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


def _read_exactly(fd: int, size: int) -> bytes | None:
    """The ``size`` bytes fstat promised, or None when the file is shorter by now. One
    ``read`` returns a regular file whole up to 2 GiB, and ``os.read`` makes the bytes object
    in place: the usual case makes no second copy."""
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
