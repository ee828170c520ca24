"""virtio-net numbers (virtio 1.2 §5.1), named as in the specification and
``linux/virtio_net.h``.

They live in the plugin, not in ``microvm.virtio.constants``: the core keeps only what the
transport and the virtqueue need. ``VIRTIO_F_ANY_LAYOUT`` (a legacy, device-independent bit,
§6.3) is here too because ``microvm.api`` does not export it.
"""
from __future__ import annotations

import struct

# ---- Feature bits (§5.1.3) -------------------------------------------------------------------
VIRTIO_NET_F_CSUM = 0  # device handles packets with partial checksum (driver -> device offload)
VIRTIO_NET_F_GUEST_CSUM = 1  # driver handles packets with partial checksum
VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2
VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_GUEST_UFO = 10
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_HOST_UFO = 14
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_F_CTRL_VQ = 17
VIRTIO_NET_F_CTRL_RX = 18
VIRTIO_NET_F_CTRL_VLAN = 19
VIRTIO_NET_F_GUEST_ANNOUNCE = 21
VIRTIO_NET_F_MQ = 22
VIRTIO_NET_F_CTRL_MAC_ADDR = 23
VIRTIO_NET_F_SPEED_DUPLEX = 63

#: "The device accepts arbitrary descriptor layouts" (§6.3, legacy; implied by VERSION_1).
VIRTIO_F_ANY_LAYOUT = 27

#: Guest receive offloads: the device may hand the driver packets needing these (§5.1.6.4).
GUEST_OFFLOAD_FEATURES = (
    (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_ECN)
    | (1 << VIRTIO_NET_F_GUEST_UFO)
)
#: Host transmit offloads: the driver may hand the device packets needing these (§5.1.6.2).
HOST_OFFLOAD_FEATURES = (
    (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_ECN)
    | (1 << VIRTIO_NET_F_HOST_UFO)
)
UFO_FEATURES = (1 << VIRTIO_NET_F_GUEST_UFO) | (1 << VIRTIO_NET_F_HOST_UFO)

# ---- Configuration space (§5.1.4) ------------------------------------------------------------
VIRTIO_NET_S_LINK_UP = 1
VIRTIO_NET_S_ANNOUNCE = 2
#: ``struct virtio_net_config`` up to ``mtu``: mac[6], status, max_virtqueue_pairs, mtu.
#: (speed/duplex and the RSS fields follow only with features this device does not offer.)
CONFIG = struct.Struct("<6sHHH")
CONFIG_MAC_OFFSET = 0
CONFIG_STATUS_OFFSET = 6

# ---- Packet header (§5.1.6) ------------------------------------------------------------------
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_F_RSC_INFO = 4
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_UDP_L4 = 5
VIRTIO_NET_HDR_GSO_ECN = 0x80
#: ``struct virtio_net_hdr`` without ``num_buffers``: what a legacy driver without
#: VIRTIO_NET_F_MRG_RXBUF uses (§5.1.6.1 "Legacy Interface").
HDR_LEN_LEGACY = 10
#: With VIRTIO_F_VERSION_1 or VIRTIO_NET_F_MRG_RXBUF the header carries ``le16 num_buffers``.
HDR_LEN = 12
#: Offset of ``flags`` and of ``num_buffers`` in the header.
HDR_FLAGS_OFFSET = 0
HDR_NUM_BUFFERS_OFFSET = 10

# ---- Sizes -----------------------------------------------------------------------------------
#: Largest Ethernet frame a driver may send or be sent, without the virtio-net header: the
#: spec's receive buffer for GSO packets without VIRTIO_NET_F_MRG_RXBUF ("at least 65562
#: bytes", §5.1.6.3.1) less the 12-byte header; Firecracker's bound too.
MAX_FRAME_LEN = 65550
#: An Ethernet header (destination, source, ethertype): the shortest frame a tap accepts.
ETH_HLEN = 14
#: Smallest MTU the device may offer (§5.1.4.1: "at least 68").
MIN_MTU = 68
MAX_MTU = 65535
#: Queue indexes (§5.1.2): no multiqueue, no control queue.
RX_QUEUE = 0
TX_QUEUE = 1
