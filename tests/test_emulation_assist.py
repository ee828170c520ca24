"""The emulation assist's decoding and its software page walk, with fake vCPUs (no KVM):
cases a real guest cannot reach on this host (32-bit paging triple-faults under kvm_pvm)."""
from __future__ import annotations

import types

import pytest

from microvm import emulation
from microvm.kvm import lib
from microvm.vcpu import VcpuThread

RUN = types.SimpleNamespace(internal=types.SimpleNamespace(suberror=lib.KVM_INTERNAL_ERROR_EMULATION))


class FakeVcpu:
    def __init__(self, regs, sregs, fsw: int = 0) -> None:
        self.regs, self.sregs, self.fsw = regs, sregs, fsw
        self.injected: list[int] = []

    def get_regs(self):
        return self.regs

    def set_regs(self, regs):
        self.regs = regs

    def get_sregs(self):
        return self.sregs

    def get_fpu(self):
        return types.SimpleNamespace(fsw=self.fsw)

    def get_vcpu_events(self):
        return types.SimpleNamespace(exception=types.SimpleNamespace(), flags=0)

    def set_vcpu_events(self, ev):
        self.injected.append(ev.exception.nr)


def seg(selector: int = 0x08):
    return types.SimpleNamespace(base=0, selector=selector, l=0, db=1)


@pytest.fixture
def pae_guest(guest_memory):
    """PAE paging: linear 0x400000 -> physical 0x800000 (2 MiB page), code identity-mapped."""
    mem = guest_memory(16 << 20)
    mem.write_u64(0x1000, 0x2000 | 1)                 # PDPT[0] -> PD
    mem.write_u64(0x2000 + 0 * 8, 0x000000 | 0x83)    # 0-2 MiB identity (code at 1 MiB)
    mem.write_u64(0x2000 + 2 * 8, 0x800000 | 0x83)    # 4-6 MiB -> 8-10 MiB
    mem.write_u8(0x100000, 0xCF)                      # iret
    sregs = types.SimpleNamespace(cr0=0x80000011, cr3=0x1000, cr4=0x20, efer=0, cs=seg(), ss=seg())
    return mem, sregs


def frame(eip: int, cs: int, eflags: int) -> bytes:
    return b"".join(v.to_bytes(4, "little") for v in (eip, cs, eflags))


def test_iret_reads_its_frame_through_the_guest_page_tables(pae_guest):
    mem, sregs = pae_guest
    mem.write(0x800100, frame(0x100123, 0x08, 0x202))   # the stack's physical home
    mem.write(0x400100, frame(0xBAD, 0x08, 0x2))        # what a linear-as-physical read would see
    v = FakeVcpu(types.SimpleNamespace(rip=0x100000, rsp=0x400100, rflags=2), sregs)
    assert emulation.assist(v, mem, RUN)
    assert (v.regs.rip, v.regs.rsp, v.regs.rflags) == (0x100123, 0x40010C, 0x202)


def test_iret_at_cpl3_cannot_raise_iopl_or_if(pae_guest):
    mem, sregs = pae_guest
    sregs.cs = seg(0x1B)                                  # ring 3
    mem.write(0x800100, frame(0x100123, 0x1B, 0x3202))   # asks for IOPL 3 and IF
    v = FakeVcpu(types.SimpleNamespace(rip=0x100000, rsp=0x400100, rflags=0x2), sregs)
    assert emulation.assist(v, mem, RUN)
    assert v.regs.rflags & (3 << 12) == 0 and not v.regs.rflags & (1 << 9)


def test_iret_to_another_segment_or_unmapped_stack_is_not_assisted(pae_guest):
    mem, sregs = pae_guest
    mem.write(0x800100, frame(0x100123, 0x10, 0x202))
    assert not emulation.assist(FakeVcpu(types.SimpleNamespace(rip=0x100000, rsp=0x400100, rflags=2), sregs), mem, RUN)
    assert not emulation.assist(FakeVcpu(types.SimpleNamespace(rip=0x100000, rsp=0x600000, rflags=2), sregs), mem, RUN)


def test_five_level_paging_is_not_walked(pae_guest):
    mem, _ = pae_guest
    assert emulation._walk(mem, 0x1000, (1 << 12) | 0x20, 1 << 10, 0x100000) is None


@pytest.mark.parametrize("cr0, fsw, injected, advanced", [
    (0x11, 0, [], True),             # plain FWAIT: stepped over
    (0x1B, 0, [7], False),           # CR0.TS and CR0.MP: #NM, RIP stays on the FWAIT
    (0x11, 0x80, [16], False),       # FSW.ES: a pending unmasked x87 exception: #MF
])
def test_fwait(guest_memory, cr0, fsw, injected, advanced):
    mem = guest_memory(2 << 20)
    mem.write_u8(0x100000, 0x9B)
    sregs = types.SimpleNamespace(cr0=cr0, cr3=0, cr4=0, efer=0, cs=seg(), ss=seg())
    v = FakeVcpu(types.SimpleNamespace(rip=0x100000, rsp=0x8000, rflags=2), sregs, fsw)
    assert emulation.assist(v, mem, RUN)
    assert v.injected == injected
    assert v.regs.rip == (0x100001 if advanced else 0x100000)


def test_extint_request_racing_with_the_vcpu_is_not_lost():
    """The 8259 raises INTR (request_extint sets the flag) right after the vCPU looked: the
    vCPU must keep the request, not overwrite it."""
    th = VcpuThread.__new__(VcpuThread)

    class Pic:
        level = False

        def has_interrupt(self):
            seen = self.level
            self.level = True           # INTR rises on another thread just after this read
            th.extint_pending = True
            return seen

        def acknowledge(self):
            return 0x20

    th.extint_source = Pic()
    th.run_ptr = types.SimpleNamespace(request_interrupt_window=0, ready_for_interrupt_injection=1, if_flag=1)
    th.extint_pending = True
    th._inject_extint()
    assert th.extint_pending


@pytest.mark.parametrize("cs_l, cr0", [(0, 0x60000010), (0, 0x11), (1, 0x80000011)])
def test_ud2_raises_ud_in_every_mode(guest_memory, cs_l, cr0):
    """UD2 fails emulation in real mode on this host; a CPU raises #UD (a fault: RIP stays)."""
    mem = guest_memory(2 << 20)
    mem.write(0xF000, b"\x0f\x0b")
    regs = types.SimpleNamespace(rip=0xF000, rflags=2)
    cs = types.SimpleNamespace(base=0, selector=0, l=cs_l, db=0)
    sregs = types.SimpleNamespace(cr0=cr0 & ~(1 << 31), cr3=0, cr4=0, efer=0, cs=cs, ss=cs)
    vcpu = FakeVcpu(regs, sregs)
    assert emulation.assist(vcpu, mem, RUN)
    assert vcpu.injected == [6] and vcpu.regs.rip == 0xF000
