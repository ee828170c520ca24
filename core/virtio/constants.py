"""Names and numbers from the virtio 1.2 specification (OASIS, 2022).

Section numbers refer to that document. Device-specific numbers (a block device's request
types, a network device's header flags) belong to the device's own plugin; this module holds
what the transport and the virtqueue need, plus the device IDs (§5) for everyone.
"""
from __future__ import annotations

# ---- Device status field (§2.1) -----------------------------------------------------------
VIRTIO_CONFIG_S_ACKNOWLEDGE = 1
VIRTIO_CONFIG_S_DRIVER = 2
VIRTIO_CONFIG_S_DRIVER_OK = 4
VIRTIO_CONFIG_S_FEATURES_OK = 8
VIRTIO_CONFIG_S_DEVICE_NEEDS_RESET = 0x40
VIRTIO_CONFIG_S_FAILED = 0x80

# ---- Reserved (device-independent) feature bits (§6) --------------------------------------
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_RING_EVENT_IDX = 29
VIRTIO_F_EVENT_IDX = VIRTIO_F_RING_EVENT_IDX  # the name §2.7.7 uses
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_ACCESS_PLATFORM = 33
VIRTIO_F_RING_PACKED = 34
VIRTIO_F_IN_ORDER = 35
VIRTIO_F_ORDER_PLATFORM = 36
VIRTIO_F_SR_IOV = 37
VIRTIO_F_NOTIFICATION_DATA = 38
VIRTIO_F_NOTIF_CONFIG_DATA = 39
VIRTIO_F_RING_RESET = 40

# ---- Split virtqueue (§2.7) ---------------------------------------------------------------
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1
#: Size of one ``struct virtq_desc`` (le64 addr, le32 len, le16 flags, le16 next).
VIRTQ_DESC_SIZE = 16
#: Size of one ``struct virtq_used_elem`` (le32 id, le32 len).
VIRTQ_USED_ELEM_SIZE = 8
#: Largest queue size a split virtqueue can have (§2.7: "Queue Size ... maximum 32768").
VIRTQ_MAX_SIZE = 32768
#: Alignment of the three parts of a split virtqueue (§2.7, table "Virtqueue Part Alignment").
VIRTQ_DESC_ALIGN = 16
VIRTQ_AVAIL_ALIGN = 2
VIRTQ_USED_ALIGN = 4

# ---- virtio-mmio register layout (§4.2.2; legacy registers §4.2.4) ------------------------
VIRTIO_MMIO_MAGIC_VALUE = 0x000
VIRTIO_MMIO_VERSION = 0x004
VIRTIO_MMIO_DEVICE_ID = 0x008
VIRTIO_MMIO_VENDOR_ID = 0x00C
VIRTIO_MMIO_DEVICE_FEATURES = 0x010
VIRTIO_MMIO_DEVICE_FEATURES_SEL = 0x014
VIRTIO_MMIO_DRIVER_FEATURES = 0x020
VIRTIO_MMIO_DRIVER_FEATURES_SEL = 0x024
VIRTIO_MMIO_GUEST_PAGE_SIZE = 0x028  # legacy only
VIRTIO_MMIO_QUEUE_SEL = 0x030
VIRTIO_MMIO_QUEUE_NUM_MAX = 0x034
VIRTIO_MMIO_QUEUE_NUM = 0x038
VIRTIO_MMIO_QUEUE_ALIGN = 0x03C  # legacy only
VIRTIO_MMIO_QUEUE_PFN = 0x040  # legacy only
VIRTIO_MMIO_QUEUE_READY = 0x044
VIRTIO_MMIO_QUEUE_NOTIFY = 0x050
VIRTIO_MMIO_INTERRUPT_STATUS = 0x060
VIRTIO_MMIO_INTERRUPT_ACK = 0x064
VIRTIO_MMIO_STATUS = 0x070
VIRTIO_MMIO_QUEUE_DESC_LOW = 0x080
VIRTIO_MMIO_QUEUE_DESC_HIGH = 0x084
VIRTIO_MMIO_QUEUE_DRIVER_LOW = 0x090  # "QueueAvail" in Linux
VIRTIO_MMIO_QUEUE_DRIVER_HIGH = 0x094
VIRTIO_MMIO_QUEUE_DEVICE_LOW = 0x0A0  # "QueueUsed" in Linux
VIRTIO_MMIO_QUEUE_DEVICE_HIGH = 0x0A4
VIRTIO_MMIO_SHM_SEL = 0x0AC
VIRTIO_MMIO_SHM_LEN_LOW = 0x0B0
VIRTIO_MMIO_SHM_LEN_HIGH = 0x0B4
VIRTIO_MMIO_SHM_BASE_LOW = 0x0B8
VIRTIO_MMIO_SHM_BASE_HIGH = 0x0BC
VIRTIO_MMIO_QUEUE_RESET = 0x0C0
VIRTIO_MMIO_CONFIG_GENERATION = 0x0FC
VIRTIO_MMIO_CONFIG = 0x100

#: "virt" in little endian (§4.2.2).
VIRTIO_MMIO_MAGIC = 0x74726976
VIRTIO_MMIO_VERSION_MODERN = 2
VIRTIO_MMIO_VERSION_LEGACY = 1
#: VendorID QEMU reports (``VIRT_VENDOR`` in ``hw/virtio/virtio-mmio.c``: "QEMU").
VIRTIO_MMIO_VENDOR_QEMU = 0x554D4551
#: Interrupt status bits (§4.2.2, InterruptStatus).
VIRTIO_MMIO_INT_VRING = 1 << 0
VIRTIO_MMIO_INT_CONFIG = 1 << 1
#: Size of one transport's window in QEMU's microvm (see :mod:`microvm.layout`).
VIRTIO_MMIO_WINDOW = 0x200

# ---- Device IDs (§5) -----------------------------------------------------------------------
VIRTIO_ID_NET = 1
VIRTIO_ID_BLOCK = 2
VIRTIO_ID_CONSOLE = 3
VIRTIO_ID_RNG = 4
VIRTIO_ID_BALLOON = 5
VIRTIO_ID_SCSI = 8
VIRTIO_ID_9P = 9
VIRTIO_ID_GPU = 16
VIRTIO_ID_INPUT = 18
VIRTIO_ID_VSOCK = 19
VIRTIO_ID_CRYPTO = 20
VIRTIO_ID_IOMMU = 23
VIRTIO_ID_MEM = 24
VIRTIO_ID_SOUND = 25
VIRTIO_ID_FS = 26
VIRTIO_ID_PMEM = 27
