"""-smp with sockets/cores/threads: QEMU 7.2's parsing rules and messages (each expected value
below was read from qemu-system-x86_64 7.2 -M microvm with the same -smp), the APIC IDs QEMU
lays out, and what reaches CPUID and the MP table of a machine built on /dev/kvm."""
from __future__ import annotations

import pytest

from kvm_helpers import requires_kvm
from microvm.boot import cpu
from microvm.errors import ConfigError
from microvm.topology import CpuTopology, parse_smp

# text -> (cpus, sockets, cores, threads, maxcpus)
ACCEPTED = {
    "2": (2, 1, 2, 1, 2),
    "+3": (3, 1, 3, 1, 3),
    "010": (8, 1, 8, 1, 8),             # C's strtoll base 0: octal (QEMU reports 8 CPUs)
    "0x3": (3, 1, 3, 1, 3),
    " 3": (3, 1, 3, 1, 3),
    "": (1, 1, 1, 1, 1),
    "0": (1, 1, 1, 1, 1),               # QEMU: a deprecation warning, then the default
    "cpus=2": (2, 1, 2, 1, 2),
    "sockets=2": (2, 2, 1, 1, 2),
    "2,sockets=2,cores=1": (2, 2, 1, 1, 2),
    "4,threads=2": (4, 1, 2, 2, 4),
    "cores=2,threads=2": (4, 1, 2, 2, 4),
    "2,maxcpus=4": (2, 1, 4, 1, 4),
    "maxcpus=4": (4, 1, 4, 1, 4),
    "2,dies=1": (2, 1, 2, 1, 2),
    "2,clusters=1": (2, 1, 2, 1, 2),
    "2,sockets=2,sockets=1": (2, 1, 2, 1, 2),   # the last value wins
    "8,sockets=2,cores=2,threads=2": (8, 2, 2, 2, 8),
    "6,sockets=2,cores=3": (6, 2, 3, 1, 6),
}
REFUSED = {
    "3,sockets=2": "Invalid CPU topology: product of the hierarchy must match maxcpus: "
                   "sockets (2) * cores (1) * threads (1) != maxcpus (3)",
    "4,cores=3": "Invalid CPU topology: product of the hierarchy must match maxcpus: "
                 "sockets (1) * cores (3) * threads (1) != maxcpus (4)",
    "3,cores=3,threads=2": "Invalid CPU topology: product of the hierarchy must match maxcpus: "
                           "sockets (0) * cores (3) * threads (2) != maxcpus (3)",
    "2,maxcpus=1": "Invalid CPU topology: maxcpus must be equal to or greater than smp: "
                   "sockets (1) * cores (1) * threads (1) == maxcpus (1) < smp_cpus (2)",
    "2,dies=2": "dies not supported by this machine's CPU topology",
    "2,clusters=2": "clusters not supported by this machine's CPU topology",
    "2,foo=1": "Parameter 'smp.foo' is unexpected",
    "abc": "Parameter 'smp.cpus' expects integer",
    "1.5": "Parameter 'smp.cpus' expects integer",
    "3 ": "Parameter 'smp.cpus' expects integer",
    "08": "Parameter 'smp.cpus' expects integer",
    "2,2": "Invalid parameter '2'",
    # QEMU's limit for microvm is 288; microvm's MP table holds 8-bit APIC IDs
    "300": "Invalid SMP CPUs 300. The max CPUs supported by machine 'microvm' is 255",
    "-1": "Invalid SMP CPUs -1. The max CPUs supported by machine 'microvm' is 255",
}


@pytest.mark.parametrize("text", list(ACCEPTED))
def test_accepted_topologies(text: str) -> None:
    assert tuple(parse_smp(text)) == ACCEPTED[text]


@pytest.mark.parametrize("text", list(REFUSED))
def test_refused_topologies_in_qemus_words(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_smp(text)
    assert str(info.value) == f"-smp {text}: {REFUSED[text]}"


def test_explicit_zero_warns_as_qemu() -> None:
    said: list[str] = []
    assert parse_smp("2,sockets=0", warn=said.append).cpus == 2
    assert said == ["Deprecated CPU topology (considered invalid): CPU topology parameters must be greater than zero"]


@pytest.mark.parametrize("text, ids", [
    ("4", [0, 1, 2, 3]),
    ("4,sockets=2,cores=2", [0, 1, 2, 3]),
    ("6,sockets=2,cores=3", [0, 1, 2, 4, 5, 6]),          # 2 core bits: package 1 starts at 4
    ("12,sockets=2,cores=3,threads=2", [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]),
    ("3,sockets=3", [0, 1, 2]),
    ("2,maxcpus=6,sockets=2,cores=3", [0, 1]),             # only the present vCPUs
])
def test_apic_ids_as_qemu_lays_them_out(text: str, ids: list[int]) -> None:
    assert parse_smp(text).apic_ids() == ids


def leaf(fn: int, idx: int = 0, **regs: int) -> dict[str, int]:
    return {"function": fn, "index": idx, "flags": 1 if fn in (4, 0xB) else 0,
            "eax": regs.get("eax", 0), "ebx": regs.get("ebx", 0), "ecx": regs.get("ecx", 0), "edx": regs.get("edx", 0)}


def find(entries, fn: int, idx: int = 0) -> dict[str, int]:
    (e,) = [e for e in entries if e["function"] == fn and e["index"] == idx]
    return e


AMD = [leaf(0, eax=0xD, ebx=0x68747541, ecx=0x444D4163, edx=0x69746E65),
       leaf(1, ebx=0x00000800), leaf(4, 0, eax=0x121), leaf(4, 1, eax=0x143), leaf(0xB, 0),
       leaf(0x80000001, ecx=0x4), leaf(0x80000008, ecx=0x3007), leaf(0x8000001E, eax=7, ebx=0x103, ecx=0x55)]


def test_cpuid_for_two_sockets_of_two_cores_of_two_threads() -> None:
    topo = parse_smp("8,sockets=2,cores=2,threads=2")
    apic = topo.apic_id(5)                                # package 1, core 0, thread 1
    assert apic == 5
    out = cpu.edit_cpuid(AMD, apic, topo.cpus, False, topo)
    assert find(out, 1)["ebx"] >> 24 == 5 and (find(out, 1)["ebx"] >> 16) & 0xFF == 4   # 4 logical per package
    assert find(out, 1)["edx"] & cpu.CPUID_1_EDX_HTT
    smt, core = find(out, 0xB, 0), find(out, 0xB, 1)
    assert (smt["eax"], smt["ebx"], smt["ecx"], smt["edx"]) == (1, 2, 0x100, 5)
    assert (core["eax"], core["ebx"], core["ecx"], core["edx"]) == (2, 4, 0x201, 5)
    assert find(out, 4, 0)["eax"] >> 26 == 1                   # 2 cores per package
    assert (find(out, 4, 0)["eax"] >> 14) & 0xFFF == 1          # an L1 shared by 2 threads
    assert find(out, 0x80000001)["ecx"] & cpu.CPUID_80000001_ECX_CMP_LEGACY
    assert find(out, 0x80000008)["ecx"] & 0xFF == 3             # NC: 4 logical processors - 1
    assert find(out, 0x8000001E)["eax"] == 5
    assert find(out, 0x8000001E)["ebx"] == (1 << 8) | 0         # 2 threads per core, core 0


def test_flat_topology_is_what_edit_cpuid_always_did() -> None:
    for n in (1, 2, 5, 100):
        for vcpu in (0, n - 1):
            assert cpu.edit_cpuid(AMD, vcpu, n, True) == cpu.edit_cpuid(AMD, vcpu, n, True, CpuTopology.flat(n))


@requires_kvm
def test_a_built_machine_has_the_topology_in_cpuid_and_the_mp_table() -> None:
    """Build (not run) a machine with -smp 6,sockets=2,cores=3: the KVM vCPUs get QEMU's APIC
    IDs, each vCPU's CPUID (as the cpuid hook sees it) says 3 cores of 1 thread per package
    in 2 bits, and the MP table lists the 6 processors with those IDs and the IOAPIC above them."""
    from microvm import api
    from microvm.boot import mptable
    from microvm.layout import MPTABLE_ADDR
    from microvm.machine import Machine
    from microvm.spec import MachineSpec

    from kvm_helpers import build_guest

    seen: dict[int, list] = {}

    class Capture:
        @api.hookimpl
        def cpuid(self, ctx, vcpu_id, entries):
            seen[vcpu_id] = [dict(e) for e in entries]

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        elf = build_guest("hello-pvh", Path(d))
        topo = parse_smp("6,sockets=2,cores=3")
        m = Machine(MachineSpec(kernel=str(elf), smp=6, topology=topo, serial=["null"], extra_plugins=[Capture()]))
        try:
            m.build()
            assert [v.id for v in m.vcpus] == [0, 1, 2, 4, 5, 6]
            assert m.ctx.apic_ids == [0, 1, 2, 4, 5, 6]
            assert sorted(seen) == [0, 1, 2, 4, 5, 6]
            for apic, entries in seen.items():
                assert find(entries, 1)["ebx"] >> 24 == apic
                assert (find(entries, 1)["ebx"] >> 16) & 0xFF == 3
                if any(e["function"] == 0xB for e in entries):
                    assert (find(entries, 0xB, 1)["eax"], find(entries, 0xB, 1)["ebx"]) == (2, 3)
            table = mptable.parse(m.memory.read(MPTABLE_ADDR, 1024), MPTABLE_ADDR)
            cpus = [e for e in table if isinstance(e, mptable.Processor)]
            assert [(p.apic_id, p.bsp) for p in cpus] == [(0, True), (1, False), (2, False), (4, False), (5, False), (6, False)]
            ioapics = [e for e in table if isinstance(e, mptable.IoApic)]
            assert [a.apic_id for a in ioapics] == [7]
        finally:
            m.close()
