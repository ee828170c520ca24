"""The vCPU loop: one thread per vCPU, ``KVM_RUN`` with the GIL released, and dispatch of exits.

The loop stays dumb (Firecracker's rule): port I/O goes to the PIO bus, MMIO to the MMIO bus,
a triple fault resets the machine, and every other exit is handled explicitly or offered to
the ``handle_exit`` hook; an exit nobody handles is an internal error (with a register dump).
What a reset, a power-off, a panic or an internal error then does (reboot, exit, or stay in
a stopped run state for a QMP client) is the machine's :class:`~microvm.lifecycle.Lifecycle`.
:mod:`microvm.emulation` steps over the instructions an emulating host cannot execute.

Pausing (QMP ``stop``, ``-S``) and guest events: the machine sets its hold flag and kicks
every vCPU out of KVM_RUN; the loop checks that one flag before each entry and parks the
thread on the machine's pause condition until ``cont``, the main thread's handling of a
guest event, or a stop releases it.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .kvm import Vcpu, ffi, lib
from .log import get_logger

if TYPE_CHECKING:
    from .machine import Machine

log = get_logger("microvm.vcpu")

_EXIT_NAMES: dict[int, str] = {}
_MMIO_DATA_OFFSET = ffi.offsetof("struct kvm_run", "mmio") + 8


def exit_name(reason: int) -> str:
    if not _EXIT_NAMES:  # built on first use: dir() of the cffi lib is slow at start-up
        skip = ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")
        _EXIT_NAMES.update({getattr(lib, n): n for n in dir(lib) if n.startswith("KVM_EXIT_") and n not in skip})
    return _EXIT_NAMES.get(reason, f"exit {reason}")


def register_dump(vcpu: Vcpu, memory: Any = None) -> str:
    """Registers, control registers and the bytes at RIP, for an error report."""
    try:
        r = vcpu.get_regs()
        s = vcpu.get_sregs()
    except OSError as e:
        return f"(registers unavailable: {e})"
    lines = [
        f"vCPU {vcpu.id}:",
        f" RIP={r.rip:016x} RFLAGS={r.rflags:08x} RSP={r.rsp:016x} RBP={r.rbp:016x}",
        f" RAX={r.rax:016x} RBX={r.rbx:016x} RCX={r.rcx:016x} RDX={r.rdx:016x}",
        f" RSI={r.rsi:016x} RDI={r.rdi:016x} R8 ={r.r8:016x} R9 ={r.r9:016x}",
        f" R10={r.r10:016x} R11={r.r11:016x} R12={r.r12:016x} R13={r.r13:016x}",
        f" R14={r.r14:016x} R15={r.r15:016x}",
        f" CS={s.cs.selector:04x} (base {s.cs.base:x}, l={s.cs.l} db={s.cs.db}) SS={s.ss.selector:04x}",
        f" CR0={s.cr0:08x} CR2={s.cr2:016x} CR3={s.cr3:016x} CR4={s.cr4:08x} EFER={s.efer:x}",
    ]
    if memory is not None:
        from .emulation import fetch_code

        code = fetch_code(vcpu, memory, r, s, 16)
        lines.append(" code at RIP: " + (code.hex(" ") if code else "(not readable)"))
    return "\n".join(lines)


class VcpuThread(threading.Thread):
    """Runs one vCPU until the machine stops."""

    def __init__(self, machine: "Machine", vcpu: Vcpu) -> None:
        super().__init__(name=f"vcpu{vcpu.id}", daemon=True)
        self.machine = machine
        self.vcpu = vcpu
        self.run_ptr = vcpu.run_ptr
        self.run_view = memoryview(vcpu.run_buf)
        #: what exit handlers and the handle_exit hook get of this vCPU
        self.view = machine.vcpu_views[vcpu.id] if vcpu.id < len(machine.vcpu_views) else None
        chip = machine.irqchip
        #: the 8259 emulated in userspace that answers this vCPU's INTA cycles (boot vCPU only)
        self.extint_source = chip.extint_source() if chip is not None and vcpu.id == 0 else None
        #: set (with a kick) by Machine.request_extint when the 8259 has an interrupt for LINT0;
        #: the boot vCPU also looks once at start (the 8259 may have raised INTR before)
        self.extint_pending = self.extint_source is not None
        #: exits by KVM exit reason; this thread is the only writer (no lock needed)
        self.exits = [0] * 128

    def exit_counts(self) -> dict[str, int]:
        """Exits so far by reason name (``KVM_EXIT_IO``: ...), for the machine's counters."""
        return {exit_name(r): n for r, n in enumerate(self.exits) if n}

    def kick(self) -> None:
        """Make KVM_RUN return soon: immediate_exit for the next entry, a signal for this one.
        Any thread; a no-op once the machine tore its vCPUs down (their kvm_run pages are
        unmapped then: a QMP command or a device thread may still hold the machine)."""
        m = self.machine
        with m.kick_lock:
            if m.torn_down or self.vcpu.closed:
                return
            self.run_ptr.immediate_exit = 1
            m.signal_thread(self)

    def run(self) -> None:
        m = self.machine
        m.vcpu_started()
        try:
            self._loop()
        except Exception as e:  # a bug in a device must stop the VM cleanly, with a report
            log.exception("vCPU %d: unexpected error", self.vcpu.id)
            m.request_stop(1, f"vCPU {self.vcpu.id} failed: {e}", "host-error")
        finally:
            m.vcpu_finished()

    def _park(self) -> bool:
        """Wait, out of KVM_RUN, while the machine holds its vCPUs (paused, or a guest event
        waiting for the main thread; see Machine.pause). True when the machine is stopping:
        the loop ends. The flags are read under the machine's pause_cond."""
        m = self.machine
        cond = m.pause_cond
        with cond:
            if m.hold and not m.stopping:
                m.parked += 1
                cond.notify_all()
                try:
                    while m.hold and not m.stopping:
                        cond.wait()
                finally:
                    m.parked -= 1
            return m.stopping

    def _loop(self) -> None:
        m = self.machine
        vcpu = self.vcpu
        run = self.run_ptr
        view = self.run_view
        pio, mmio = m.pio_bus, m.mmio_bus
        EXIT_IO, EXIT_MMIO = lib.KVM_EXIT_IO, lib.KVM_EXIT_MMIO
        IO_OUT = lib.KVM_EXIT_IO_OUT
        exits = self.exits
        while True:
            # One unlocked look per entry at the one flag (stopping, paused, or a guest event
            # pending); a stop or pause sets it, then kicks (immediate_exit), so a look that
            # just missed it costs one KVM_RUN that returns at once. The decision is taken
            # under the lock, in _park.
            if m.hold:
                if self._park():
                    break
                continue
            if self.extint_pending:
                self._inject_extint()
            if vcpu.run() < 0:  # EINTR/EAGAIN: a kick; look at the stop flag
                run.immediate_exit = 0
                continue
            reason = run.exit_reason
            exits[reason & 127] += 1
            if reason == EXIT_IO:
                io = run.io
                size, port, off = io.size, io.port, io.data_offset
                if io.direction == IO_OUT:
                    for i in range(io.count):
                        pio.write(port, bytes(view[off + i * size : off + (i + 1) * size]))
                else:
                    for i in range(io.count):
                        pio.read(port, view[off + i * size : off + (i + 1) * size])
            elif reason == EXIT_MMIO:
                mm = run.mmio
                n = mm.len
                if mm.is_write:
                    mmio.write(mm.phys_addr, bytes(view[_MMIO_DATA_OFFSET : _MMIO_DATA_OFFSET + n]))
                else:
                    mmio.read(mm.phys_addr, view[_MMIO_DATA_OFFSET : _MMIO_DATA_OFFSET + n])
            else:
                self._other_exit(reason)

    def _inject_extint(self) -> None:
        """Deliver the 8259's interrupt when the vCPU can take one; else ask KVM for an
        interrupt-window exit (KVM_EXIT_IRQ_WINDOW_OPEN) and try again then, as QEMU does."""
        run = self.run_ptr
        src = self.extint_source
        # clear first, then look: a request_extint() racing with us sets the flag again
        self.extint_pending = False
        if src is None or not src.has_interrupt():
            run.request_interrupt_window = 0
            return
        if run.ready_for_interrupt_injection and run.if_flag:
            run.request_interrupt_window = 0
            self.vcpu.interrupt(src.acknowledge())
            if src.has_interrupt():  # the 8259 may have another request behind this one
                self.extint_pending = True
                run.request_interrupt_window = 1
        else:
            self.extint_pending = True
            run.request_interrupt_window = 1

    def _other_exit(self, reason: int) -> None:
        m = self.machine
        run = self.run_ptr
        if reason == lib.KVM_EXIT_SHUTDOWN:
            log.info("vCPU %d: triple fault (KVM_EXIT_SHUTDOWN)", self.vcpu.id)
            m.triple_fault(self.vcpu)
        elif reason == lib.KVM_EXIT_SYSTEM_EVENT:
            t = run.system_event.type
            if t == lib.KVM_SYSTEM_EVENT_RESET:
                m.guest_reset("system reset event")
            elif t == lib.KVM_SYSTEM_EVENT_SHUTDOWN:
                m.guest_shutdown()
            elif t == lib.KVM_SYSTEM_EVENT_CRASH:  # Hyper-V crash MSRs (HV_X64_MSR_CRASH_CTL)
                m.guest_panicked(f"system event {t} (crash) on vCPU {self.vcpu.id}")
            else:
                m.internal_error(f"unknown KVM system event {t} on vCPU {self.vcpu.id}")
        elif reason in (lib.KVM_EXIT_INTR, lib.KVM_EXIT_IRQ_WINDOW_OPEN):
            pass  # a kick, or the window requested by _inject_extint: the loop goes on
        elif reason == lib.KVM_EXIT_INTERNAL_ERROR:
            from .emulation import assist

            if not (m.emulation_assist and assist(self.vcpu, m.memory, run)):
                sub = run.internal.suberror
                m.internal_error(f"KVM internal error (suberror {sub}) on vCPU {self.vcpu.id}\n" + register_dump(self.vcpu, m.memory))
        elif reason in m.exit_handlers:
            m.exit_handlers[reason](self.view)
        elif reason == lib.KVM_EXIT_HLT:
            # with the in-kernel LAPIC KVM handles HLT itself; an exit means no irqchip woke it
            m.request_stop(0, f"vCPU {self.vcpu.id} halted", "guest-shutdown")
        elif not m.hook.handle_exit(ctx=m.ctx, vcpu=self.view, exit_reason=reason):
            m.internal_error(f"unhandled KVM exit {exit_name(reason)} on vCPU {self.vcpu.id}\n" + register_dump(self.vcpu, m.memory))
