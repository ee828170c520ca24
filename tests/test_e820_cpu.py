"""microvm.boot.e820 and microvm.boot.cpu: the memory map, CPUID edits, the boot GDT and
the identity page tables (no KVM: fake register structures and a GuestMemory)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from microvm import layout
from microvm.boot import cpu
from microvm.boot.e820 import E820_RAM, E820_RESERVED, E820Entry, e820_map
from microvm.memory import ram_layout

MiB, GiB = 1 << 20, 1 << 30


# ---- e820 ---------------------------------------------------------------------------------------
def test_e820_types_are_the_bios_values() -> None:
    assert (E820_RAM, E820_RESERVED) == (1, 2)


def test_e820_small_guest() -> None:
    assert e820_map(ram_layout(128 * MiB)) == [
        E820Entry(0, 0x9FC00, E820_RAM),                   # base memory up to the EBDA
        E820Entry(0x9FC00, 0x400, E820_RESERVED),          # EBDA KiB with the MP table
        E820Entry(0x100000, 127 * MiB, E820_RAM),          # from 1 MiB; 0xa0000-0xfffff absent
    ]


def test_e820_above_4g() -> None:
    assert e820_map(ram_layout(3 * GiB + 16 * MiB)) == [
        E820Entry(0, 0x9FC00, E820_RAM),
        E820Entry(0x9FC00, 0x400, E820_RESERVED),
        E820Entry(0x100000, 3 * GiB - MiB, E820_RAM),
        E820Entry(4 * GiB, 16 * MiB, E820_RAM),
    ]


def test_e820_never_covers_the_hole_or_legacy_area() -> None:
    for e in e820_map(ram_layout(8 * GiB)):
        assert not (e.addr < 4 * GiB and e.addr + e.size > 3 * GiB)
        assert not (e.addr < 0x100000 and e.addr + e.size > 0xA0000)


def test_e820_tiny_low_region() -> None:
    assert e820_map([(0, 0x80000)]) == [E820Entry(0, 0x80000, E820_RAM)]


# ---- CPUID --------------------------------------------------------------------------------------
def host_cpuid() -> list[dict[str, int]]:
    """A KVM_GET_SUPPORTED_CPUID-like table (values from a common Intel host)."""
    def leaf(fn: int, idx: int = 0, eax: int = 0, ebx: int = 0, ecx: int = 0, edx: int = 0, flags: int = 0):
        return {"function": fn, "index": idx, "flags": flags, "eax": eax, "ebx": ebx, "ecx": ecx, "edx": edx}

    return [
        leaf(0, eax=0xD, ebx=0x756E6547, ecx=0x6C65746E, edx=0x49656E69),
        leaf(1, eax=0x906EA, ebx=0x00100800, ecx=0x77FAFBFF & ~(1 << 24) & ~(1 << 31), edx=0x0FABFBFF & ~(1 << 28)),
        leaf(4, 0, eax=0x1C004121, flags=1),
        leaf(4, 1, eax=0x1C004122, flags=1),
        leaf(0xB, 0, flags=1),
        leaf(0xB, 1, flags=1),
        leaf(0xB, 2, flags=1),
        leaf(0x40000000, eax=0x40000001, ebx=0x4B4D564B, ecx=0x564B4D56, edx=0x4D),
        leaf(0x40000001, eax=0x01007AFB),
        leaf(0x80000001, ecx=0x121, edx=0x2C100800),
    ]


def find(entries, fn: int, idx: int = 0) -> dict[str, int]:
    (e,) = [e for e in entries if e["function"] == fn and e["index"] == idx]
    return e


@pytest.mark.parametrize("vcpu_id, nr", [(0, 1), (0, 4), (3, 4), (7, 8)])
def test_cpuid_leaf1_apic_id_and_count(vcpu_id: int, nr: int) -> None:
    out = cpu.edit_cpuid(host_cpuid(), vcpu_id, nr, tsc_deadline=False)
    ebx = find(out, 1)["ebx"]
    assert ebx >> 24 == vcpu_id                   # initial APIC ID
    assert (ebx >> 16) & 0xFF == nr               # logical processors per package
    assert ebx & 0xFFFF == 0x0800                 # CLFLUSH size and brand index kept
    edx = find(out, 1)["edx"]
    assert bool(edx & cpu.CPUID_1_EDX_HTT) == (nr > 1)


def test_cpuid_logical_count_saturates() -> None:
    ebx = find(cpu.edit_cpuid(host_cpuid(), 254, 255, False), 1)["ebx"]
    assert ebx >> 24 == 254 and (ebx >> 16) & 0xFF == 255


def test_cpuid_hypervisor_bit_and_tsc_deadline() -> None:
    host = host_cpuid()
    plain = find(cpu.edit_cpuid(host, 0, 1, tsc_deadline=False), 1)["ecx"]
    deadline = find(cpu.edit_cpuid(host, 0, 1, tsc_deadline=True), 1)["ecx"]
    assert plain & (1 << 31)                       # hypervisor present
    assert not plain & (1 << 24)
    assert deadline & (1 << 24)                    # TSC-deadline timer offered
    assert plain | (1 << 24) == deadline
    assert plain & ~(1 << 31) == find(host, 1)["ecx"]   # nothing else changed


def test_cpuid_kvmclock_bits_are_hidden() -> None:
    out = cpu.edit_cpuid(host_cpuid(), 0, 1, False)
    eax = find(out, 0x40000001)["eax"]
    for bit in (0, 3, 24):                         # CLOCKSOURCE, CLOCKSOURCE2, STABLE_BIT
        assert not eax & (1 << bit)
    assert eax == 0x01007AFB & ~((1 << 0) | (1 << 3) | (1 << 24))
    assert cpu.KVM_CLOCK_FEATURES == 0x01000009


def test_cpuid_leaf_0xb_topology() -> None:
    out = cpu.edit_cpuid(host_cpuid(), 2, 4, False)
    smt, core, end = find(out, 0xB, 0), find(out, 0xB, 1), find(out, 0xB, 2)
    assert (smt["eax"], smt["ebx"], smt["ecx"], smt["edx"]) == (0, 1, 0x100, 2)
    assert (core["eax"], core["ebx"], core["ecx"], core["edx"]) == (2, 4, 0x201, 2)
    assert (end["eax"], end["ebx"], end["ecx"] & 0xFF00, end["edx"]) == (0, 0, 0, 2)


@pytest.mark.parametrize("nr, shift", [(1, 0), (2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 4), (255, 8)])
def test_cpuid_leaf_0xb_shift_covers_every_apic_id(nr: int, shift: int) -> None:
    core = find(cpu.edit_cpuid(host_cpuid(), 0, nr, False), 0xB, 1)
    assert core["eax"] == shift
    assert (nr - 1) >> core["eax"] == 0


def test_cpuid_leaf4_cores_per_package() -> None:
    out = cpu.edit_cpuid(host_cpuid(), 0, 6, False)
    for idx, host_eax in ((0, 0x1C004121), (1, 0x1C004122)):
        eax = find(out, 4, idx)["eax"]
        assert eax >> 26 == 5
        assert eax & 0x3FF == host_eax & 0x3FF       # cache type and level kept


def test_cpuid_other_leaves_untouched_and_input_not_modified() -> None:
    host = host_cpuid()
    snapshot = [dict(e) for e in host]
    out = cpu.edit_cpuid(host, 1, 2, True)
    assert host == snapshot
    assert len(out) == len(host)
    for fn in (0, 0x40000000, 0x80000001):
        assert find(out, fn) == find(host, fn)


# ---- GDT and identity page tables -------------------------------------------------------------
PRESENT, WRITABLE, PS = 1 << 0, 1 << 1, 1 << 7
ADDR_MASK = 0x000FFFFFFFFFF000


def translate(mem, cr3: int, va: int) -> int | None:
    """Walk 4-level x86-64 page tables in guest memory; None where not present."""
    pml4e = mem.read_u64((cr3 & ADDR_MASK) + 8 * ((va >> 39) & 511))
    if not pml4e & PRESENT:
        return None
    pdpte = mem.read_u64((pml4e & ADDR_MASK) + 8 * ((va >> 30) & 511))
    if not pdpte & PRESENT:
        return None
    if pdpte & PS:
        return (pdpte & 0x000FFFFFC0000000) | (va & (GiB - 1))
    pde = mem.read_u64((pdpte & ADDR_MASK) + 8 * ((va >> 21) & 511))
    if not pde & PRESENT:
        return None
    assert pde & WRITABLE
    if pde & PS:
        return (pde & 0x000FFFFFFFE00000) | (va & (2 * MiB - 1))
    pte = mem.read_u64((pde & ADDR_MASK) + 8 * ((va >> 12) & 511))
    return (pte & ADDR_MASK) | (va & 0xFFF) if pte & PRESENT else None


@pytest.fixture
def tables(guest_memory):
    mem = guest_memory(8 * MiB)
    mem.fill(0, 0x10000, 0xCC)   # stale junk: the tables must not depend on zeroed memory
    cpu.write_gdt_and_page_tables(mem)
    return mem


@pytest.mark.parametrize(
    "va", [0, 0x7000, 0x100200, 0x1FFFFF, 0x200000, 0x12345678, 0xBFFFFFFF, 0xFEC00000, 0xFEE00300, 0xFFFFFFFF]
)
def test_identity_map_below_4g(tables, va: int) -> None:
    assert translate(tables, layout.PML4_ADDR, va) == va


@pytest.mark.parametrize("va", [4 * GiB, 1 << 39, 0xFFFFFFFF81000000])
def test_nothing_mapped_above_4g(tables, va: int) -> None:
    assert translate(tables, layout.PML4_ADDR, va) is None


def test_gdt_descriptors(tables) -> None:
    gdt = [tables.read_u64(layout.BOOT_GDT_ADDR + 8 * i) for i in range(4)]
    assert gdt == cpu.GDT_ENTRIES[:4]
    assert gdt[0] == 0
    L, D, P, G = 1 << 53, 1 << 54, 1 << 47, 1 << 55
    code32, code64, data = gdt[1], gdt[2], gdt[3]
    assert code32 & (P | D | G) == P | D | G and not code32 & L
    assert code64 & (P | L | G) == P | L | G and not code64 & D
    assert (data >> 40) & 0xFF == 0x93                 # present, writable data
    assert tables.read_u64(layout.BOOT_IDT_ADDR) == 0  # empty IDT


def test_idt_does_not_overwrite_the_gdt(tables) -> None:
    gdt_end = layout.BOOT_GDT_ADDR + 8 * len(cpu.GDT_ENTRIES)
    assert layout.BOOT_IDT_ADDR >= gdt_end or layout.BOOT_IDT_ADDR + 8 <= layout.BOOT_GDT_ADDR
    assert tables.read_u64(layout.BOOT_GDT_ADDR + 0x20) == cpu.GDT_ENTRIES[4]   # TSS (busy)


def segments() -> SimpleNamespace:
    seg = lambda: SimpleNamespace()  # noqa: E731
    return SimpleNamespace(cs=seg(), ds=seg(), es=seg(), fs=seg(), gs=seg(), ss=seg(), tr=seg(),
                           gdt=seg(), idt=seg(), cr0=0, cr3=0, cr4=0, efer=0)


def test_sregs_for_64bit_entry_use_the_page_tables() -> None:
    s = segments()
    cpu.setup_sregs(s, "linux64")
    assert s.cr3 == layout.PML4_ADDR
    assert s.cr0 & (cpu.CR0_PE | cpu.CR0_PG) == cpu.CR0_PE | cpu.CR0_PG
    assert s.cr4 & cpu.CR4_PAE
    assert s.efer == cpu.EFER_LME | cpu.EFER_LMA
    assert (s.cs.selector, s.cs.l, s.cs.db) == (0x10, 1, 0)
    assert s.ds.selector == s.ss.selector == 0x18
    assert (s.gdt.base, s.gdt.limit) == (layout.BOOT_GDT_ADDR, 8 * len(cpu.GDT_ENTRIES) - 1)


def test_sregs_for_pvh_entry_have_paging_off() -> None:
    s = segments()
    cpu.setup_sregs(s, "pvh")
    assert s.cr0 & cpu.CR0_PE and not s.cr0 & cpu.CR0_PG
    assert (s.cr3, s.cr4, s.efer) == (0, 0, 0)
    assert (s.cs.selector, s.cs.l, s.cs.db) == (0x08, 0, 1)


@pytest.mark.parametrize("mode, reg", [("pvh", "rbx"), ("linux64", "rsi")])
def test_regs_carry_the_boot_info_pointer(mode: str, reg: str) -> None:
    names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
    r = SimpleNamespace(**{n: 0xDEAD for n in names}, rflags=0, rip=0, rsp=0, rbp=0)
    cpu.setup_regs(r, mode, 0x100200, 0x7000)
    assert (r.rip, r.rflags, r.rsp) == (0x100200, 0x2, layout.BOOT_STACK_ADDR)
    assert getattr(r, reg) == 0x7000
    assert all(getattr(r, n) == 0 for n in names if n != reg)


def test_cpuid_for_many_vcpus_and_the_x2apic_topology() -> None:
    """65+ vCPUs used to overflow CPUID.4:EAX[31:26]; leaf 0xB is built here (KVM reports only
    subleaf 0), one package of N cores, and 0x1F is dropped so Linux reads 0xB."""
    base = [
        {"function": 0, "index": 0, "flags": 0, "eax": 0x1F, "ebx": 0, "ecx": 0, "edx": 0},
        {"function": 4, "index": 0, "flags": 1, "eax": 0xFFFFFFFF, "ebx": 0, "ecx": 0, "edx": 0},
        {"function": 0xB, "index": 0, "flags": 1, "eax": 0, "ebx": 0, "ecx": 0, "edx": 0},
        {"function": 0x1F, "index": 0, "flags": 1, "eax": 0, "ebx": 0, "ecx": 0, "edx": 0},
    ]
    out = cpu.edit_cpuid(base, vcpu_id=70, nr_vcpus=100, tsc_deadline=False)
    leaf4 = next(e for e in out if e["function"] == 4)
    assert leaf4["eax"] >> 26 == 63 and leaf4["eax"] <= 0xFFFFFFFF
    b = {e["index"]: e for e in out if e["function"] == 0xB}
    assert sorted(b) == [0, 1, 2] and all(e["edx"] == 70 for e in b.values())
    assert (b[1]["eax"], b[1]["ebx"], b[1]["ecx"] >> 8) == (7, 100, 2)   # 7 bits of core ID, core level
    assert not any(e["function"] == 0x1F for e in out)
