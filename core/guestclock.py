"""The guest's kvmclock across a pause, as QEMU's kvmclock device keeps it
(``hw/i386/kvm/clock.c``, ``kvmclock_vm_state_change``): read when the VM stops, set again
when it continues, so guest time does not include the paused interval.

``KVM_GET_CLOCK`` gives the VM's kvmclock now. Without a stable master clock
(``KVM_CLOCK_TSC_STABLE`` unset, as on nested and emulating hosts) that value may lag what a
vCPU's pvclock page already showed the guest, and restoring it would move guest time back;
then, as QEMU's ``kvmclock_current_nsec``, the clock is computed from vCPU 0's pvclock page
(``MSR_KVM_SYSTEM_TIME_NEW``) at vCPU 0's TSC. On resume, ``KVM_SET_CLOCK`` sets it and
``KVM_KVMCLOCK_CTRL`` on each vCPU raises PVCLOCK_GUEST_STOPPED, so the guest's soft-lockup
watchdog forgives the gap.
"""
from __future__ import annotations

import struct
from typing import Any, Sequence

from .log import get_logger

log = get_logger("microvm.guestclock")

MSR_IA32_TSC = 0x10
MSR_KVM_SYSTEM_TIME_NEW = 0x4B564D01
#: struct pvclock_vcpu_time_info: version, pad, tsc_timestamp, system_time, tsc_to_system_mul,
#: tsc_shift, flags
PVCLOCK = struct.Struct("<IIQQIbB")


def save(vm: Any, vcpus: Sequence[Any], memory: Any) -> int | None:
    """The guest's kvmclock (nanoseconds) now, or None if KVM cannot say."""
    from .kvm import KvmError, lib

    try:
        clock, flags = vm.get_clock()
    except KvmError as e:
        log.debug("kvmclock not saved: %s", e)
        return None
    if not flags & lib.KVM_CLOCK_TSC_STABLE:
        clock = pvclock_now(vcpus, memory) or clock
    return clock


def pvclock_now(vcpus: Sequence[Any], memory: Any) -> int:
    """kvmclock as vCPU 0's pvclock page shows it at vCPU 0's TSC; 0 when the guest enabled
    no kvmclock (or its page cannot be read)."""
    if not vcpus or memory is None:
        return 0
    try:
        msrs = vcpus[0].get_msrs([MSR_KVM_SYSTEM_TIME_NEW, MSR_IA32_TSC])
    except OSError:
        return 0
    system_time_msr = msrs.get(MSR_KVM_SYSTEM_TIME_NEW, 0)
    if not system_time_msr & 1 or MSR_IA32_TSC not in msrs:
        return 0
    try:
        raw = memory.read(system_time_msr & ~1, PVCLOCK.size)
    except Exception:  # outside RAM, or the memory is gone
        return 0
    _version, _pad, tsc_timestamp, system_time, mul, shift, _flags = PVCLOCK.unpack(raw)
    delta = max(msrs[MSR_IA32_TSC] - tsc_timestamp, 0)
    delta = delta >> -shift if shift < 0 else delta << shift
    return system_time + ((delta * mul) >> 32)


def restore(vm: Any, vcpus: Sequence[Any], clock: int) -> None:
    from .kvm import KvmError

    try:
        vm.set_clock(clock)
    except KvmError as e:
        log.warning("kvmclock not restored: %s", e)
    for v in vcpus:
        v.kvmclock_ctrl()
