"""Thin, typed wrappers over the KVM ioctls (``/dev/kvm``, VM and vCPU file descriptors).

Only what a VMM needs: every wrapper names its ioctl, so an error reads
``KVM_SET_CPUID2 failed: [Errno 22] Invalid argument`` instead of a bare errno.
The compiled cffi module is imported on first use, keeping ``import microvm`` cheap.
"""
from __future__ import annotations

import errno as _errno
import mmap
import os
from typing import Any, Iterable

from ._loader import ffi, lib

__all__ = ["KvmError", "Kvm", "Vm", "Vcpu", "ffi", "lib", "kvm_available"]

KVM_DEVICE = "/dev/kvm"


class KvmError(OSError):
    """An ioctl on a KVM file descriptor failed; carries the ioctl's name and errno."""

    def __init__(self, ioctl: str, err: int, detail: str = "") -> None:
        msg = f"{ioctl} failed: [Errno {err}] {os.strerror(err)}"
        if detail:
            msg += f" ({detail})"
        super().__init__(err, msg)
        self.ioctl = ioctl

    def __str__(self) -> str:  # OSError's default str repeats errno; keep ours
        return self.args[1]


def kvm_available() -> str | None:
    """Return None when /dev/kvm can be used, else a reason a test can skip with."""
    if not os.path.exists(KVM_DEVICE):
        return f"{KVM_DEVICE} is absent (no KVM on this host)"
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return f"{KVM_DEVICE} is not readable and writable by this user"
    return None


def _ioctl(call: Any, fd: int, name: str, arg: Any) -> int:
    """``call(fd, request, arg)`` (the cffi ioctl stub), retried on EINTR as PEP 475 retries
    the os module's calls (cffi calls are not): a SIGTERM landing in KVM_CREATE_VM while a
    rebooting guest's machine is rebuilt used to end the run with "KVM_CREATE_VM failed:
    Interrupted system call". KVM_RUN, where EINTR means something, has its own path
    (:meth:`Vcpu.run`)."""
    request = getattr(lib, name)
    while True:
        ret = call(fd, request, arg)
        if ret >= 0:
            return ret
        err = ffi.errno
        if err != _errno.EINTR:
            raise KvmError(name, err)


def _ioctl_ptr(fd: int, name: str, arg: Any) -> int:
    return _ioctl(lib.microvm_ioctl_ptr, fd, name, arg)


def _ioctl_int(fd: int, name: str, arg: int = 0) -> int:
    return _ioctl(lib.microvm_ioctl_int, fd, name, arg)


class _Fd:
    """A file descriptor owned by this object and closed with it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def ioctl_ptr(self, name: str, arg: Any) -> int:
        return _ioctl_ptr(self.fd, name, arg)

    def ioctl_int(self, name: str, arg: int = 0) -> int:
        return _ioctl_int(self.fd, name, arg)


class Kvm(_Fd):
    """The system file descriptor, ``/dev/kvm``."""

    def __init__(self, path: str = KVM_DEVICE) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmError("open(/dev/kvm)", e.errno or _errno.ENODEV, path) from None
        super().__init__(fd)
        version = self.ioctl_int("KVM_GET_API_VERSION")
        if version != lib.KVM_API_VERSION:
            raise KvmError("KVM_GET_API_VERSION", _errno.EINVAL, f"API version {version}, expected {lib.KVM_API_VERSION}")
        self.vcpu_mmap_size = self.ioctl_int("KVM_GET_VCPU_MMAP_SIZE")

    def check_extension(self, cap: str | int) -> int:
        """KVM_CHECK_EXTENSION; ``cap`` is a ``KVM_CAP_*`` name or number. 0 means absent."""
        num = getattr(lib, cap) if isinstance(cap, str) else cap
        ret = lib.microvm_ioctl_int(self.fd, lib.KVM_CHECK_EXTENSION, num)
        return max(ret, 0)

    def supported_cpuid(self) -> list[dict[str, int]]:
        """KVM_GET_SUPPORTED_CPUID as a list of plain dicts (function, index, flags, eax..edx)."""
        n = 256
        while True:
            buf = ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": n})
            ret = lib.microvm_ioctl_ptr(self.fd, lib.KVM_GET_SUPPORTED_CPUID, buf)
            if ret < 0 and ffi.errno == _errno.E2BIG and n < 4096:
                n *= 2
                continue
            if ret < 0:
                raise KvmError("KVM_GET_SUPPORTED_CPUID", ffi.errno)
            return [
                {k: getattr(e, k) for k in ("function", "index", "flags", "eax", "ebx", "ecx", "edx")}
                for e in buf.entries[0 : buf.nent]
            ]

    def create_vm(self) -> "Vm":
        return Vm(self, self.ioctl_int("KVM_CREATE_VM", 0))


class Vm(_Fd):
    """A VM file descriptor."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        super().__init__(fd)
        self.kvm = kvm

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, size: int, host_addr: int, flags: int = 0) -> None:
        region = ffi.new(
            "struct kvm_userspace_memory_region *",
            {"slot": slot, "flags": flags, "guest_phys_addr": guest_phys_addr, "memory_size": size, "userspace_addr": host_addr},
        )
        self.ioctl_ptr("KVM_SET_USER_MEMORY_REGION", region)

    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR: three pages VMX needs for real-mode emulation (not on AMD)."""
        self.ioctl_int("KVM_SET_TSS_ADDR", addr)

    def set_identity_map_addr(self, addr: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR: the page VMX needs for its identity page table."""
        self.ioctl_ptr("KVM_SET_IDENTITY_MAP_ADDR", ffi.new("uint64_t *", addr))

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: KVM's 8259 pair and IOAPIC (and in-kernel LAPICs); before any
        vCPU exists."""
        self.ioctl_int("KVM_CREATE_IRQCHIP")

    def create_pit2(self, speaker_dummy: bool = True) -> None:
        """KVM_CREATE_PIT2: KVM's 8254; ``speaker_dummy`` also answers port 0x61 (as QEMU)."""
        cfg = ffi.new("struct kvm_pit_config *", {"flags": lib.KVM_PIT_SPEAKER_DUMMY if speaker_dummy else 0})
        self.ioctl_ptr("KVM_CREATE_PIT2", cfg)

    def create_vcpu(self, vcpu_id: int) -> "Vcpu":
        return Vcpu(self, vcpu_id, self.ioctl_int("KVM_CREATE_VCPU", vcpu_id))

    def irq_line(self, irq: int, level: bool | int) -> None:
        self.ioctl_ptr("KVM_IRQ_LINE", ffi.new("struct kvm_irq_level *", {"irq": irq, "level": int(level)}))

    def enable_cap(self, cap: str | int, *args: int) -> None:
        num = getattr(lib, cap) if isinstance(cap, str) else cap
        ec = ffi.new("struct kvm_enable_cap *", {"cap": num, "args": list(args) + [0] * (4 - len(args))})
        self.ioctl_ptr("KVM_ENABLE_CAP", ec)

    def irqfd(self, fd: int, gsi: int, deassign: bool = False, resamplefd: int | None = None) -> None:
        flags = lib.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0
        if resamplefd is not None:
            flags |= lib.KVM_IRQFD_FLAG_RESAMPLE
        self.ioctl_ptr(
            "KVM_IRQFD",
            ffi.new("struct kvm_irqfd *", {"fd": fd, "gsi": gsi, "flags": flags, "resamplefd": resamplefd or 0}),
        )

    def ioeventfd(self, fd: int, addr: int, length: int, datamatch: int | None = None, pio: bool = False, deassign: bool = False) -> None:
        flags = 0
        if datamatch is not None:
            flags |= lib.KVM_IOEVENTFD_FLAG_DATAMATCH
        if pio:
            flags |= lib.KVM_IOEVENTFD_FLAG_PIO
        if deassign:
            flags |= lib.KVM_IOEVENTFD_FLAG_DEASSIGN
        ev = ffi.new("struct kvm_ioeventfd *", {"datamatch": datamatch or 0, "addr": addr, "len": length, "fd": fd, "flags": flags})
        self.ioctl_ptr("KVM_IOEVENTFD", ev)

    def signal_msi(self, address: int, data: int) -> int:
        msi = ffi.new("struct kvm_msi *", {"address_lo": address & 0xFFFFFFFF, "address_hi": address >> 32, "data": data})
        return self.ioctl_ptr("KVM_SIGNAL_MSI", msi)

    def get_clock(self) -> tuple[int, int]:
        """KVM_GET_CLOCK: (kvmclock nanoseconds now, flags). ``KVM_CLOCK_TSC_STABLE`` in the
        flags says the value is what every vCPU's pvclock shows (a master clock is in use)."""
        data = ffi.new("struct kvm_clock_data *")
        self.ioctl_ptr("KVM_GET_CLOCK", data)
        return data.clock, data.flags

    def set_clock(self, clock: int) -> None:
        """KVM_SET_CLOCK: make the guest's kvmclock read ``clock`` nanoseconds now (each vCPU's
        pvclock page is rewritten at its next entry)."""
        self.ioctl_ptr("KVM_SET_CLOCK", ffi.new("struct kvm_clock_data *", {"clock": clock}))

    def set_gsi_routing(self, entries: Iterable[dict[str, Any]]) -> None:
        """KVM_SET_GSI_ROUTING. Each entry: ``{"gsi", "type": "irqchip"|"msi", ...}``."""
        ents = list(entries)
        table = ffi.new("struct kvm_irq_routing *", {"nr": len(ents), "entries": max(len(ents), 1)})
        for i, e in enumerate(ents):
            t = table.entries[i]
            t.gsi = e["gsi"]
            if e["type"] == "irqchip":
                t.type = lib.KVM_IRQ_ROUTING_IRQCHIP
                t.u.irqchip.irqchip = e["irqchip"]
                t.u.irqchip.pin = e["pin"]
            else:
                t.type = lib.KVM_IRQ_ROUTING_MSI
                t.u.msi.address_lo = e["address"] & 0xFFFFFFFF
                t.u.msi.address_hi = e["address"] >> 32
                t.u.msi.data = e["data"]
        self.ioctl_ptr("KVM_SET_GSI_ROUTING", table)

class Vcpu(_Fd):
    """A vCPU file descriptor with its mmapped ``struct kvm_run``."""

    def __init__(self, vm: Vm, vcpu_id: int, fd: int) -> None:
        super().__init__(fd)
        self.vm = vm
        self.id = vcpu_id
        self._run_map = mmap.mmap(fd, vm.kvm.vcpu_mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_ptr = ffi.cast("struct kvm_run *", ffi.from_buffer(self._run_map))
        #: raw view of the kvm_run page, for PIO data at ``run.io.data_offset``
        self.run_buf = ffi.buffer(self.run_ptr, vm.kvm.vcpu_mmap_size)

    #: set first thing in close(): from then on run_ptr may point at unmapped memory
    closed = False

    def close(self) -> None:
        self.closed = True
        try:
            self._run_map.close()
        except BufferError:  # a cffi view still alive; the fd close below is what matters
            pass
        super().close()

    def run(self) -> int:
        """KVM_RUN (GIL released). Returns 0, or -errno for EINTR/EAGAIN so the caller can loop."""
        ret = lib.microvm_kvm_run(self.fd)
        if ret < 0:
            err = ffi.errno
            if err in (_errno.EINTR, _errno.EAGAIN):
                return -err
            raise KvmError("KVM_RUN", err)
        return 0

    def _get(self, ioctl: str, ctype: str) -> Any:
        obj = ffi.new(ctype)
        self.ioctl_ptr(ioctl, obj)
        return obj

    def get_regs(self) -> Any:
        return self._get("KVM_GET_REGS", "struct kvm_regs *")

    def set_regs(self, regs: Any) -> None:
        self.ioctl_ptr("KVM_SET_REGS", regs)

    def get_sregs(self) -> Any:
        return self._get("KVM_GET_SREGS", "struct kvm_sregs *")

    def set_sregs(self, sregs: Any) -> None:
        self.ioctl_ptr("KVM_SET_SREGS", sregs)

    def get_fpu(self) -> Any:
        return self._get("KVM_GET_FPU", "struct kvm_fpu *")

    def set_fpu(self, fpu: Any) -> None:
        self.ioctl_ptr("KVM_SET_FPU", fpu)

    def get_lapic(self) -> Any:
        return self._get("KVM_GET_LAPIC", "struct kvm_lapic_state *")

    def set_lapic(self, lapic: Any) -> None:
        self.ioctl_ptr("KVM_SET_LAPIC", lapic)

    def get_lapic_regs(self) -> bytearray:
        """The LAPIC register page (KVM_GET_LAPIC, 1 KiB, as laid out in guest memory)."""
        lapic = self.get_lapic()  # the owner: ``lapic.regs`` alone would not keep it alive
        return bytearray(ffi.buffer(lapic.regs))

    def set_lapic_regs(self, regs: bytes | bytearray) -> None:
        """KVM_SET_LAPIC with the register page ``regs`` (from :meth:`get_lapic_regs`)."""
        lapic = ffi.new("struct kvm_lapic_state *")
        buf = ffi.buffer(lapic.regs)
        if len(regs) != len(buf):
            raise ValueError(f"LAPIC register page is {len(buf)} bytes, got {len(regs)}")
        buf[:] = bytes(regs)
        self.set_lapic(lapic)

    def get_vcpu_events(self) -> Any:
        return self._get("KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events *")

    def set_vcpu_events(self, ev: Any) -> None:
        self.ioctl_ptr("KVM_SET_VCPU_EVENTS", ev)

    def set_cpuid(self, entries: list[dict[str, int]]) -> None:
        buf = ffi.new("struct kvm_cpuid2 *", {"nent": len(entries), "entries": len(entries)})
        for i, e in enumerate(entries):
            t = buf.entries[i]
            for k in ("function", "index", "flags", "eax", "ebx", "ecx", "edx"):
                setattr(t, k, e.get(k, 0))
        self.ioctl_ptr("KVM_SET_CPUID2", buf)

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """KVM_GET_MSRS for ``indices``; an MSR KVM does not know is left out of the result."""
        idx = list(indices)
        buf = ffi.new("struct kvm_msrs *", {"nmsrs": len(idx), "entries": len(idx)})
        for i, index in enumerate(idx):
            buf.entries[i].index = index
        n = self.ioctl_ptr("KVM_GET_MSRS", buf)
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}

    def set_msrs(self, msrs: dict[int, int]) -> None:
        buf = ffi.new("struct kvm_msrs *", {"nmsrs": len(msrs), "entries": len(msrs)})
        for i, (index, data) in enumerate(msrs.items()):
            buf.entries[i].index = index
            buf.entries[i].data = data
        n = self.ioctl_ptr("KVM_SET_MSRS", buf)
        if n != len(msrs):
            bad = list(msrs)[n]
            raise KvmError("KVM_SET_MSRS", _errno.EINVAL, f"MSR {bad:#x} was refused ({n} of {len(msrs)} set)")

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE: ``KVM_MP_STATE_*`` (RUNNABLE, UNINITIALIZED waiting for INIT/SIPI, ...)."""
        st = ffi.new("struct kvm_mp_state *")
        self.ioctl_ptr("KVM_GET_MP_STATE", st)
        return st.mp_state

    def set_mp_state(self, state: int) -> None:
        """KVM_SET_MP_STATE (needs the in-kernel LAPIC for anything but RUNNABLE)."""
        self.ioctl_ptr("KVM_SET_MP_STATE", ffi.new("struct kvm_mp_state *", {"mp_state": state}))

    def kvmclock_ctrl(self) -> bool:
        """KVM_KVMCLOCK_CTRL: tell the guest this vCPU was paused by the host (sets
        PVCLOCK_GUEST_STOPPED, which Linux's soft-lockup watchdog checks). False when the
        guest has no kvmclock page (EINVAL), as QEMU ignores that too."""
        ret = lib.microvm_ioctl_int(self.fd, lib.KVM_KVMCLOCK_CTRL, 0)
        return ret == 0

    def interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT: queue an external (ExtINT) interrupt vector for this vCPU."""
        self.ioctl_ptr("KVM_INTERRUPT", ffi.new("struct kvm_interrupt *", {"irq": vector}))
