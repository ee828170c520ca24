"""Emulation assist: step over instructions an emulating host hypervisor cannot execute.

On hosts where the guest's kernel code is emulated instruction by instruction (nested,
page-table based hypervisors such as ``kvm_pvm``; see docs/emulating-hosts.md), some instructions come back as
``KVM_EXIT_INTERNAL_ERROR`` / ``KVM_INTERNAL_ERROR_EMULATION``. Linux executes INT3 in its
``int3_selftest()`` and FWAIT in FPU code on every boot, so without help a stock kernel stops.
Handled here, as a real CPU would execute them:

* ``INT3`` (CC): RIP += 1, then inject #BP (vector 3) through ``KVM_SET_VCPU_EVENTS``;
* ``FWAIT`` (9B): RIP += 1 (no pending x87 exception can exist at that point here);
* ``CLAC``/``STAC`` (0F 01 CA/CB): clear/set RFLAGS.AC;
* ``POPCNT r, r`` (F3 [REX] 0F B8 /r, register form);
* ``UD2`` (0F 0B): inject #UD, as the CPU raises it (firmware and Linux's BUG/WARN use it;
  the host fails to emulate it in real mode);
* ``IRET`` in 32-bit protected mode to the same code segment (seen failing here in 32-bit
  guests; 64-bit ``IRETQ`` is emulated by the host).

Anything else returns False and the caller reports the failure with a register dump.
QEMU has no such assist, which is why it stops on these hosts.
"""
from __future__ import annotations

from typing import Any

from .errors import GuestMemoryError
from .log import get_logger

log = get_logger("microvm.emulation")
_seen: set[str] = set()
RFLAGS_AC = 1 << 18
RFLAGS_IF = 1 << 9
RFLAGS_IOPL = 3 << 12
RFLAGS_NT = 1 << 14
RFLAGS_VM = 1 << 17
_GPR = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]


def _walk(memory: Any, cr3: int, cr4: int, efer: int, linear: int) -> int | None:
    """Translate with the guest's 4-level (or 32-bit non-PAE) page tables, in software."""
    if cr4 & (1 << 12):  # LA57: 5-level paging is not walked; the assist then declines
        return None
    try:
        if efer & (1 << 10):  # IA-32e: 4-level paging
            table = cr3 & 0x000FFFFFFFFFF000
            for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
                e = memory.read_u64(table + ((linear >> shift) & 0x1FF) * 8)
                if not e & 1:
                    return None
                if level in (3, 2) and e & 0x80:  # 1 GiB / 2 MiB page
                    mask = (1 << shift) - 1
                    return (e & 0x000FFFFFFFFFF000 & ~mask) | (linear & mask)
                table = e & 0x000FFFFFFFFFF000
            return table | (linear & 0xFFF)
        if cr4 & (1 << 5):  # PAE 32-bit
            pdpte = memory.read_u64((cr3 & 0xFFFFFFE0) + ((linear >> 30) & 3) * 8)
            if not pdpte & 1:
                return None
            pde = memory.read_u64((pdpte & 0x000FFFFFFFFFF000) + ((linear >> 21) & 0x1FF) * 8)
            if not pde & 1:
                return None
            if pde & 0x80:
                return (pde & 0x000FFFFFFFE00000) | (linear & 0x1FFFFF)
            pte = memory.read_u64((pde & 0x000FFFFFFFFFF000) + ((linear >> 12) & 0x1FF) * 8)
            return None if not pte & 1 else (pte & 0x000FFFFFFFFFF000) | (linear & 0xFFF)
        pde = memory.read_u32((cr3 & 0xFFFFF000) + ((linear >> 22) & 0x3FF) * 4)
        if not pde & 1:
            return None
        if pde & 0x80 and cr4 & (1 << 4):
            return (pde & 0xFFC00000) | (linear & 0x3FFFFF)
        pte = memory.read_u32((pde & 0xFFFFF000) + ((linear >> 12) & 0x3FF) * 4)
        return None if not pte & 1 else (pte & 0xFFFFF000) | (linear & 0xFFF)
    except GuestMemoryError:
        return None


def linear_to_phys(vcpu: Any, memory: Any, sregs: Any, linear: int) -> int | None:
    if not sregs.cr0 & (1 << 31):  # paging off
        return linear
    return _walk(memory, sregs.cr3, sregs.cr4, sregs.efer, linear)


def fetch_code(vcpu: Any, memory: Any, regs: Any, sregs: Any, n: int = 15) -> bytes | None:
    """Up to ``n`` bytes at CS:RIP (stopping at an unmapped page)."""
    linear = (sregs.cs.base + regs.rip) & 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while len(out) < n:
        pa = linear_to_phys(vcpu, memory, sregs, linear + len(out))
        if pa is None:
            break
        chunk = min(n - len(out), 0x1000 - (pa & 0xFFF))
        try:
            out += memory.read(pa, chunk)
        except GuestMemoryError:
            break
    return bytes(out) or None


def _note(kind: str, rip: int) -> None:
    if kind not in _seen:
        _seen.add(kind)
        log.info("emulation assist: stepped over %s at %#x (the host cannot emulate it)", kind, rip)
    else:
        log.debug("emulation assist: %s at %#x", kind, rip)


def _inject(vcpu: Any, vector: int) -> None:
    """Queue exception ``vector`` (no error code) for the next entry (KVM_SET_VCPU_EVENTS)."""
    ev = vcpu.get_vcpu_events()
    ev.exception.injected = 1
    ev.exception.nr = vector
    ev.exception.has_error_code = 0
    ev.exception.error_code = 0
    ev.flags = 0
    vcpu.set_vcpu_events(ev)


def _read_linear_u32(vcpu: Any, memory: Any, sregs: Any, linear: int) -> int | None:
    pa = linear_to_phys(vcpu, memory, sregs, linear)
    if pa is None or (pa & 0xFFF) > 0xFFC:  # unmapped, or split across pages: not assisted
        return None
    try:
        return memory.read_u32(pa)
    except GuestMemoryError:
        return None


def assist(vcpu: Any, memory: Any, run: Any) -> bool:
    """Try to complete the instruction that failed emulation. True when the guest can go on."""
    from .kvm import lib

    if run.internal.suberror != lib.KVM_INTERNAL_ERROR_EMULATION:
        return False
    regs = vcpu.get_regs()
    sregs = vcpu.get_sregs()
    code = fetch_code(vcpu, memory, regs, sregs)
    if not code:
        return False
    long_mode = bool(sregs.cs.l)
    i = 0
    rex = 0
    rep = False
    while i < len(code) and code[i] in (0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0xF0):
        rep = rep or code[i] == 0xF3
        i += 1
    if long_mode and i < len(code) and 0x40 <= code[i] <= 0x4F:
        rex = code[i]
        i += 1
    op = code[i:]
    if op[:1] == b"\xcc":
        regs.rip += i + 1  # #BP is a trap: the handler returns after the INT3
        vcpu.set_regs(regs)
        _inject(vcpu, 3)
        _note("INT3", regs.rip - i - 1)
        return True
    if op[:2] == b"\x0f\x0b":
        _inject(vcpu, 6)  # UD2 raises #UD, a fault: RIP stays on the instruction
        _note("UD2 (#UD)", regs.rip)
        return True
    if op[:1] == b"\x9b":
        if sregs.cr0 & 0xA == 0xA:  # CR0.TS and CR0.MP: FWAIT raises #NM (a fault, RIP stays)
            _inject(vcpu, 7)
            _note("FWAIT (#NM)", regs.rip)
            return True
        if vcpu.get_fpu().fsw & 0x80:  # FSW.ES: an unmasked x87 exception is pending: #MF
            _inject(vcpu, 16)
            _note("FWAIT (#MF)", regs.rip)
            return True
        regs.rip += i + 1
        vcpu.set_regs(regs)
        _note("FWAIT", regs.rip - i - 1)
        return True
    if op[:3] in (b"\x0f\x01\xca", b"\x0f\x01\xcb"):
        if op[2] == 0xCA:
            regs.rflags &= ~RFLAGS_AC
        else:
            regs.rflags |= RFLAGS_AC
        regs.rip += i + 3
        vcpu.set_regs(regs)
        _note("CLAC/STAC", regs.rip - i - 3)
        return True
    if op[:1] == b"\xcf" and not long_mode and sregs.cr0 & 1 and sregs.cs.db and i == 0:
        if regs.rflags & (RFLAGS_VM | RFLAGS_NT):
            return False  # virtual-8086 or nested-task return: not assisted
        esp = regs.rsp & 0xFFFFFFFF
        frame = [_read_linear_u32(vcpu, memory, sregs, (sregs.ss.base + esp + 4 * k) & 0xFFFFFFFF) for k in range(3)]
        if None in frame:
            return False
        eip, cs, eflags = frame  # type: ignore[misc]
        if (cs & 0xFFFF) != sregs.cs.selector or eflags & RFLAGS_VM:
            return False  # another segment, privilege level or mode: not assisted
        eflags = (eflags & 0x3F7FD7) | 0x2
        cpl = sregs.cs.selector & 3
        if cpl > 0:  # as the SDM's IRET: IOPL only changes at CPL 0, IF only at CPL <= IOPL
            keep = RFLAGS_IOPL | (0 if cpl <= (regs.rflags & RFLAGS_IOPL) >> 12 else RFLAGS_IF)
            eflags = (eflags & ~keep) | (regs.rflags & keep)
        regs.rip = eip
        regs.rflags = eflags
        regs.rsp = (regs.rsp & ~0xFFFFFFFF) | ((esp + 12) & 0xFFFFFFFF)
        vcpu.set_regs(regs)
        _note("IRET (32-bit)", eip)
        return True
    if rep and op[:2] == b"\x0f\xb8" and len(op) >= 3 and op[2] >> 6 == 3:
        modrm = op[2]
        dst = ((modrm >> 3) & 7) | (8 if rex & 4 else 0)
        src = (modrm & 7) | (8 if rex & 1 else 0)
        width = 64 if rex & 8 else (16 if 0x66 in code[:i] else 32)
        value = getattr(regs, _GPR[src]) & ((1 << width) - 1)
        count = bin(value).count("1")
        if width == 16:
            count |= getattr(regs, _GPR[dst]) & ~0xFFFF
        setattr(regs, _GPR[dst], count)
        # POPCNT: ZF = (source == 0), OF SF AF CF PF cleared
        regs.rflags = (regs.rflags & ~0x8D5) | (0x40 if value == 0 else 0)
        regs.rip += i + 3
        vcpu.set_regs(regs)
        _note("POPCNT", regs.rip - i - 3)
        return True
    return False
