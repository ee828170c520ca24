"""The virtio console's numbers (virtio 1.2 §5.3, Linux ``include/uapi/linux/virtio_console.h``)."""
from __future__ import annotations

import struct

# feature bits (§5.3.3)
VIRTIO_CONSOLE_F_SIZE = 0         # cols/rows in the configuration space, and RESIZE: not offered (QEMU 7.2 neither)
VIRTIO_CONSOLE_F_MULTIPORT = 1    # several ports and the control queues
VIRTIO_CONSOLE_F_EMERG_WRITE = 2  # emerg_wr: one byte of output without any queue

#: the port id Linux puts in DEVICE_READY (no port)
VIRTIO_CONSOLE_BAD_ID = 0xFFFFFFFF

# control events (§5.3.6.2)
VIRTIO_CONSOLE_DEVICE_READY = 0
VIRTIO_CONSOLE_PORT_ADD = 1
VIRTIO_CONSOLE_PORT_REMOVE = 2
VIRTIO_CONSOLE_PORT_READY = 3
VIRTIO_CONSOLE_CONSOLE_PORT = 4
VIRTIO_CONSOLE_RESIZE = 5
VIRTIO_CONSOLE_PORT_OPEN = 6
VIRTIO_CONSOLE_PORT_NAME = 7

EVENT_NAMES = {
    VIRTIO_CONSOLE_DEVICE_READY: "DEVICE_READY",
    VIRTIO_CONSOLE_PORT_ADD: "PORT_ADD",
    VIRTIO_CONSOLE_PORT_REMOVE: "PORT_REMOVE",
    VIRTIO_CONSOLE_PORT_READY: "PORT_READY",
    VIRTIO_CONSOLE_CONSOLE_PORT: "CONSOLE_PORT",
    VIRTIO_CONSOLE_RESIZE: "RESIZE",
    VIRTIO_CONSOLE_PORT_OPEN: "PORT_OPEN",
    VIRTIO_CONSOLE_PORT_NAME: "PORT_NAME",
}

#: struct virtio_console_control: le32 id, le16 event, le16 value
CONTROL = struct.Struct("<IHH")
#: what RESIZE carries after the header, in the spec's order: le16 cols, le16 rows. Older
#: Linux kernels read rows first and recent ones cols first, so no size reaches every guest
#: the right way round: microvm never sends RESIZE (no F_SIZE, as QEMU 7.2); the layout is
#: here for the tests' driver, which decodes what a device might send
RESIZE = struct.Struct("<HH")
#: struct virtio_console_config: le16 cols, le16 rows, le32 max_nr_ports, le32 emerg_wr
CONFIG = struct.Struct("<HHII")
EMERG_WR_OFFSET = 8

# queues: port 0's receive/transmit are 0 and 1, the control queues 2 and 3 (receiveq is
# device -> driver), then port N's at 2N+2 and 2N+3 (§5.3.2, Linux init_vqs)
CONTROL_RX = 2
CONTROL_TX = 3

#: QEMU's default for max_ports, and its limit (VIRTIO_QUEUE_MAX / 2 - 1)
DEFAULT_MAX_PORTS = 31
MAX_PORTS = 511
#: QEMU's size for every queue of this device (its control queues have 32; one size here)
QUEUE_SIZE = 128


def rx_queue(port: int) -> int:
    """The receiveq (host -> guest) of ``port``."""
    return 0 if port == 0 else 2 * port + 2


def queue_port(index: int) -> int | None:
    """The port a queue belongs to, None for the control queues."""
    if index < 2:
        return 0
    if index < 4:
        return None
    return (index - 2) // 2
