"""Synthetic kernel images for the fw_cfg tests (imported by name: conftest puts this
directory on sys.path, under a name no other test directory uses)."""
from __future__ import annotations

import struct


def bzimage(
    *,
    protocol: int = 0x20F,
    setup_sects: int = 4,
    loadflags: int = 0x01,
    xloadflags: int = 0,
    initrd_addr_max: int = 0x7FFFFFFF,
    payload: bytes = b"",
    hdrs: bool = True,
) -> bytes:
    """A boot sector + setup of ``setup_sects`` sectors with a real-mode header, then a
    protected-mode payload. Every byte not in the header is a pattern, to see it carried."""
    setup_size = ((setup_sects or 4) + 1) * 512
    img = bytearray((i * 7 + 3) & 0xFF for i in range(setup_size))
    img[0x1F1] = setup_sects
    img[0x1FE:0x200] = b"\x55\xaa"
    if hdrs:
        img[0x202:0x206] = b"HdrS"
        struct.pack_into("<H", img, 0x206, protocol)
    img[0x210] = 0            # type_of_loader
    img[0x211] = loadflags
    struct.pack_into("<I", img, 0x218, 0)
    struct.pack_into("<I", img, 0x21C, 0)
    struct.pack_into("<H", img, 0x224, 0)
    struct.pack_into("<I", img, 0x228, 0)
    struct.pack_into("<I", img, 0x22C, initrd_addr_max)
    struct.pack_into("<H", img, 0x236, xloadflags)
    struct.pack_into("<Q", img, 0x250, 0)
    return bytes(img) + (payload or bytes((i * 13) & 0xFF for i in range(5000)))
