"""Hook glue: advertise kvmclock to the guest.

The core hides KVM's clock feature bits; this plugin offers back those KVM supports, so a
machine has kvmclock exactly when this plugin is installed (QEMU microvm: "kvmclock (if
using KVM)"). The guest then finds its clock through MSR_KVM_SYSTEM_TIME_NEW, which KVM
services itself: nothing runs in the VMM.
"""
from __future__ import annotations

from typing import Any

from microvm.api import KVM_CLOCK_FEATURES, KVM_CPUID_FEATURES, hookimpl


def supported_clock_bits(supported: list[dict[str, int]]) -> int:
    for e in supported:
        if e["function"] == KVM_CPUID_FEATURES:
            return e["eax"] & KVM_CLOCK_FEATURES
    return 0


@hookimpl
def cpuid(ctx: Any, vcpu_id: int, entries: list[dict[str, int]]) -> None:
    bits = supported_clock_bits(ctx.supported_cpuid)
    for e in entries:
        if e["function"] == KVM_CPUID_FEATURES:
            e["eax"] |= bits
