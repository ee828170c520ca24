"""Where things sit in the microvm machine. Every constant names its source.

Sources: QEMU ``hw/i386/microvm.c`` and ``include/hw/i386/microvm.h`` (7.2), the 8250/16550A,
8259A, 8254, MC146818 and 82093AA datasheets, the Linux x86 boot protocol
(``Documentation/x86/boot.rst``), the PVH ABI (``xen/include/public/arch-x86/hvm/start_info.h``)
and the Intel MultiProcessor Specification 1.4.
"""
from __future__ import annotations

# ---- ISA I/O ports (PC/AT conventions, as QEMU's microvm places them) -------------------
PIC_MASTER_PORT = 0x20        # 8259A master, ports 0x20-0x21
PIC_SLAVE_PORT = 0xA0         # 8259A slave, ports 0xa0-0xa1
PIC_ELCR_PORT = 0x4D0         # edge/level control registers, 0x4d0-0x4d1
PIT_PORT = 0x40               # 8254, ports 0x40-0x43
PORT_61 = 0x61                # NMI status and control (PIT channel 2 gate, speaker)
RTC_PORT = 0x70               # MC146818 index/data, 0x70-0x71
COM1_PORT = 0x3F8             # 16550A, 8 registers
COM1_IRQ = 4

# ---- ISA IRQs -----------------------------------------------------------------------------
PIT_IRQ = 0
RTC_IRQ = 8
ISA_IRQS = 16

# ---- 32-bit MMIO hole (hw/i386/microvm.h) ------------------------------------------------
IOAPIC_ADDR = 0xFEC00000      # 82093AA, one 4 KiB page (MICROVM_IOAPIC? IO_APIC_DEFAULT_ADDRESS)
IOAPIC_SIZE = 0x1000
IOAPIC_PINS = 24
LAPIC_ADDR = 0xFEE00000       # APIC_DEFAULT_ADDRESS
VIRTIO_MMIO_BASE = 0xFEB00000  # VIRTIO_MMIO_BASE in microvm.h
VIRTIO_MMIO_SIZE = 0x200       # 512 bytes per transport
VIRTIO_MMIO_SLOTS = 8          # "up to eight virtio-mmio devices"
VIRTIO_IRQ_BASE = 5            # microvm.c: x-virtio-irq base on the first IOAPIC (GSI 5-12)

# ---- KVM housekeeping (VMX needs these pages reserved below 4 GiB; QEMU uses the same) ----
KVM_IDENTITY_MAP_ADDR = 0xFEFFC000
KVM_TSS_ADDR = 0xFEFFD000

# ---- Low memory used by direct boot (below the 640 KiB EBDA, as firmware would) ----------
BOOT_GDT_ADDR = 0x500
BOOT_IDT_ADDR = 0x530       # after the 5-entry GDT (0x500-0x527)
PVH_START_INFO_ADDR = 0x6000
PVH_MODLIST_ADDR = 0x6040
PVH_MEMMAP_ADDR = 0x7000      # hvm_memmap_table_entry[]
ZERO_PAGE_ADDR = 0x7000       # boot_params for the bzImage path (PVH and bzImage never both)
BOOT_STACK_ADDR = 0x8FF0
PML4_ADDR = 0x9000            # identity page tables for 64-bit entry: PML4, PDPT, 4 PDs
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000              # 4 pages: 0xB000-0xEFFF map the first 4 GiB with 2 MiB pages
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000         # 64 KiB of room; the protocol limit is the kernel's own
MPTABLE_ADDR = 0xF0000        # BIOS area, one of the three places Linux's MP scan looks; 64 KiB
                              # of room (255 CPUs need ~5 KiB), inside the e820 hole 0xa0000-1 MiB
EBDA_START = 0x9FC00
HIMEM_START = 0x100000        # 1 MiB: kernels load here
BZIMAGE_LOAD_ADDR = 0x100000
INITRD_ALIGN = 0x1000
