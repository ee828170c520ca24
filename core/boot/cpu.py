"""Initial vCPU state: segments, control registers, page tables, MSRs, FPU, CPUID topology.

What a real BIOS (or qboot) leaves behind before jumping to the kernel, reduced to what
Linux's PVH and 64-bit entry points document they rely on.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from .. import layout
from ..memory import GuestMemory

if TYPE_CHECKING:
    from ..topology import CpuTopology

# Control register and EFER bits (Intel SDM vol. 3, 2.5)
CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

# GDT descriptors: null, (unused), 64-bit code 0x10, data 0x18, 32-bit code 0x08 for PVH
GDT_ENTRIES = [
    0x0000000000000000,  # 0x00 null
    0x00CF9B000000FFFF,  # 0x08 32-bit code, flat (PVH entry)
    0x00AF9B000000FFFF,  # 0x10 64-bit code (L=1)
    0x00CF93000000FFFF,  # 0x18 data, flat
    0x008B00000000FFFF,  # 0x20 TSS (busy), base 0: only to satisfy VMX checks
]

# MSRs (Intel SDM vol. 4)
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_SYSCALL_MASK = 0xC0000084
MSR_KERNEL_GS_BASE = 0xC0000102
MSR_IA32_TSC = 0x10
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_IA32_MISC_ENABLE_FAST_STRING = 1 << 0
MSR_MTRR_DEF_TYPE = 0x2FF
MTRR_ENABLE = 1 << 11
MTRR_TYPE_WRBACK = 6


def write_gdt_and_page_tables(memory: GuestMemory) -> None:
    memory.write(layout.BOOT_GDT_ADDR, b"".join(struct.pack("<Q", e) for e in GDT_ENTRIES))
    memory.write(layout.BOOT_IDT_ADDR, bytes(8))
    # identity map 0-4 GiB with 2 MiB pages: PML4[0] -> PDPT, PDPT[0..3] -> 4 PDs
    memory.write_u64(layout.PML4_ADDR, layout.PDPT_ADDR | 0x3)
    memory.write(layout.PML4_ADDR + 8, bytes(4096 - 8))
    pdpt = bytearray(4096)
    for i in range(4):
        struct.pack_into("<Q", pdpt, 8 * i, (layout.PD_ADDR + i * 0x1000) | 0x3)
    memory.write(layout.PDPT_ADDR, bytes(pdpt))
    # present, writable, 2 MiB page; packed in one call (a Python loop costs a millisecond)
    memory.write(layout.PD_ADDR, struct.pack("<2048Q", *range(0x83, 2048 << 21, 1 << 21)))


def _segment(seg: Any, selector: int, type_: int, code64: bool = False, db: bool = True) -> None:
    seg.base = 0
    seg.limit = 0xFFFFFFFF
    seg.selector = selector
    seg.type = type_
    seg.present = 1
    seg.dpl = 0
    seg.db = 0 if code64 else int(db)
    seg.s = 1
    seg.l = int(code64)
    seg.g = 1
    seg.avl = 0
    seg.unusable = 0


def setup_sregs(sregs: Any, mode: str) -> None:
    """Flat segments; ``pvh``: 32-bit protected mode, paging off; ``linux64``: long mode."""
    code_sel = 0x08 if mode == "pvh" else 0x10
    _segment(sregs.cs, code_sel, 0xB, code64=(mode != "pvh"))
    for s in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _segment(s, 0x18, 0x3)
    sregs.tr.base = 0
    sregs.tr.limit = 0x67
    sregs.tr.selector = 0x20
    sregs.tr.type = 0xB
    sregs.tr.present = 1
    sregs.tr.s = 0
    sregs.gdt.base = layout.BOOT_GDT_ADDR
    sregs.gdt.limit = 8 * len(GDT_ENTRIES) - 1
    sregs.idt.base = layout.BOOT_IDT_ADDR
    sregs.idt.limit = 7
    if mode == "pvh":
        sregs.cr0 = CR0_PE | CR0_ET
        sregs.cr4 = 0
        sregs.efer = 0
        sregs.cr3 = 0
    else:
        sregs.cr3 = layout.PML4_ADDR
        sregs.cr4 = CR4_PAE
        sregs.cr0 = CR0_PE | CR0_ET | CR0_PG
        sregs.efer = EFER_LME | EFER_LMA


def setup_regs(regs: Any, mode: str, rip: int, boot_info: int) -> None:
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"):
        setattr(regs, name, 0)
    regs.rflags = 0x2
    regs.rip = rip
    regs.rsp = layout.BOOT_STACK_ADDR
    regs.rbp = layout.BOOT_STACK_ADDR
    if mode == "pvh":
        regs.rbx = boot_info
    else:
        regs.rsi = boot_info


def boot_msrs() -> dict[int, int]:
    """MSR values a BIOS leaves: syscall MSRs clear, fast strings on, MTRRs enabled write-back."""
    return {
        MSR_IA32_SYSENTER_CS: 0,
        MSR_IA32_SYSENTER_ESP: 0,
        MSR_IA32_SYSENTER_EIP: 0,
        MSR_STAR: 0,
        MSR_CSTAR: 0,
        MSR_KERNEL_GS_BASE: 0,
        MSR_SYSCALL_MASK: 0,
        MSR_LSTAR: 0,
        MSR_IA32_TSC: 0,
        MSR_IA32_MISC_ENABLE: MSR_IA32_MISC_ENABLE_FAST_STRING,
        MSR_MTRR_DEF_TYPE: MTRR_ENABLE | MTRR_TYPE_WRBACK,
    }


def setup_fpu(fpu: Any) -> None:
    """FNINIT state plus the default MXCSR, as after a BIOS."""
    fpu.fcw = 0x37F
    fpu.mxcsr = 0x1F80


# ---- CPUID ------------------------------------------------------------------------------
CPUID_1_ECX_TSC_DEADLINE = 1 << 24
CPUID_1_ECX_HYPERVISOR = 1 << 31
CPUID_1_EDX_HTT = 1 << 28
CPUID_80000001_ECX_CMP_LEGACY = 1 << 1
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1  # (sic) linux/kvm.h: the entry depends on the subleaf
KVM_CPUID_FEATURES = 0x40000001
#: kvmclock's bits in KVM_CPUID_FEATURES.eax (Documentation/virt/kvm/x86/cpuid.rst):
#: CLOCKSOURCE (0), CLOCKSOURCE2 (3), CLOCKSOURCE_STABLE_BIT (24). The core offers none of
#: them; the kvmclock plugin turns them on, so kvmclock exists only where it is installed.
KVM_CLOCK_FEATURES = (1 << 0) | (1 << 3) | (1 << 24)


def edit_cpuid(entries: list[dict[str, int]], vcpu_id: int, nr_vcpus: int, tsc_deadline: bool,
               topology: "CpuTopology | None" = None) -> list[dict[str, int]]:
    """Per-vCPU topology and the hypervisor bit; TSC-deadline is offered when KVM can emulate
    it (the seed's second example relies on it when the PIT is off).

    ``vcpu_id`` is the vCPU's APIC ID. Without ``topology``: one package of ``nr_vcpus``
    single-thread cores (APIC IDs 0 .. n-1). With it (``-smp ...,sockets=,cores=,threads=``),
    the counts and bit widths QEMU 7.2 puts in leaves 1, 4, 0xB, 0x80000001, 0x80000008 and
    0x8000001E (``target/i386/cpu.c``, ``cpu_x86_cpuid``), so Linux sees the same packages,
    cores and threads as under QEMU.
    """
    from ..topology import CpuTopology

    topo = topology or CpuTopology.flat(nr_vcpus)
    per_pkg = topo.cores * topo.threads          # logical processors in a package
    amd = any(e["function"] == 0 and e["ebx"] == 0x68747541 for e in entries)  # "Auth"enticAMD
    out = []
    for e in entries:
        e = dict(e)
        fn, idx = e["function"], e["index"]
        if fn in (0xB, 0x1F):
            continue  # rebuilt below: KVM reports only subleaf 0 (no topology)
        if fn == 1:
            e["ebx"] = (e["ebx"] & 0x0000FFFF) | ((vcpu_id & 0xFF) << 24) | (min(per_pkg, 255) << 16)
            e["ecx"] |= CPUID_1_ECX_HYPERVISOR
            if tsc_deadline:
                e["ecx"] |= CPUID_1_ECX_TSC_DEADLINE
            if per_pkg > 1:
                e["edx"] |= CPUID_1_EDX_HTT
        elif fn == KVM_CPUID_FEATURES:
            e["eax"] &= ~KVM_CLOCK_FEATURES
        elif fn == 4:
            # cores per package - 1 in eax[31:26] (6 bits); no thread sharing
            e["eax"] = (e["eax"] & 0x3FFF) | ((min(topo.cores, 64) - 1) << 26)
            if topo.threads > 1:  # L1/L2 caches are shared by a core's threads
                e["eax"] = (e["eax"] & ~(0xFFF << 14)) | ((topo.threads - 1) << 14)
        elif fn == 0x80000001 and amd and per_pkg > 1:
            e["ecx"] |= CPUID_80000001_ECX_CMP_LEGACY
        elif fn == 0x80000008:
            # NC: logical processors per package - 1 (AMD; reserved and 0 on Intel)
            e["ecx"] = (e["ecx"] & ~0xFF) | ((per_pkg - 1) & 0xFF if per_pkg > 1 else 0)
        elif fn == 0x8000001E:
            # AMD extended APIC ID, threads per core and core ID; one node per package
            core = (vcpu_id >> topo.thread_bits) & ((1 << topo.core_bits) - 1)
            e["eax"], e["ebx"], e["ecx"], e["edx"] = vcpu_id, ((topo.threads - 1) << 8) | (core & 0xFF), 0, 0
        out.append(e)
    if any(e["function"] == 0 and e["eax"] >= 0xB for e in entries):
        # x2APIC topology (SDM vol. 2, CPUID.0BH): level 1 SMT, level 2 core, then invalid
        flag = KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        out += [
            {"function": 0xB, "index": 0, "flags": flag, "eax": topo.thread_bits, "ebx": topo.threads,
             "ecx": (1 << 8) | 0, "edx": vcpu_id},
            {"function": 0xB, "index": 1, "flags": flag, "eax": topo.pkg_shift, "ebx": per_pkg,
             "ecx": (2 << 8) | 1, "edx": vcpu_id},
            {"function": 0xB, "index": 2, "flags": flag, "eax": 0, "ebx": 0, "ecx": 2, "edx": vcpu_id},
        ]
    return out
