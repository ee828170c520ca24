"""Hook glue: ``-M microvm,rtc=on|off|auto,rtc-base=utc|localtime|DATE`` and the MC146818.

As in QEMU 7.2's microvm, ``auto`` means off under KVM (the guest relies on kvmclock), so
the RTC appears only with ``rtc=on``. It works with either irqchip: IRQ 8 goes through the
machine's interrupt interface. The CMOS memory-size bytes are filled as QEMU's
``microvm_set_rtc`` fills them, for firmware.
"""
from __future__ import annotations


from typing import TYPE_CHECKING, Any, Callable

from microvm.api import ConfigError, MachineOption, hookimpl, layout


if TYPE_CHECKING:
    import datetime as _dt


def parse_base(text: str, now: "_dt.datetime | None" = None) -> "_dt.datetime":
    """``utc`` (default), ``localtime`` (the host's wall clock, as QEMU's -rtc base=localtime),
    or a date in QEMU's formats ``2006-06-17T16:01:21`` / ``2006-06-17``, taken as UTC."""
    import datetime as _dt  # only when the RTC is on: start-up stays cheap without it

    now = now or _dt.datetime.now(_dt.timezone.utc)
    if text in ("", "utc"):
        return now
    if text == "localtime":
        return now.astimezone().replace(tzinfo=_dt.timezone.utc)  # local wall clock, labelled UTC
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            return _dt.datetime.strptime(text, fmt).replace(tzinfo=_dt.timezone.utc)
        except ValueError:
            pass
    raise ConfigError(f"rtc-base={text}: expected utc, localtime, or a date like 2006-06-17T16:01:21")


@hookimpl
def register_machine_options(register: Callable[..., None]) -> None:
    register(MachineOption("rtc", "OnOffAuto", "auto", "Enable MC146818 RTC",
                           auto_means="off with KVM (QEMU 7.2 microvm: on only without KVM)", auto_value=False, plugin="rtc_mc146818"))
    # checked when -M is parsed, whether the RTC is on or not (a bad value is a bad command line)
    register(MachineOption("rtc-base", "str", "utc", "RTC start time: utc, localtime or YYYY-MM-DD[THH:MM:SS]",
                           plugin="rtc_mc146818", check=parse_base))


@hookimpl
def create_devices(ctx: Any) -> None:
    if not ctx.legacy.rtc:
        return
    from .device import MC146818, cmos_memory_bytes

    base = parse_base(ctx.option("rtc-base") or "utc")
    timers = ctx.timers
    rtc = MC146818(irq=ctx.irq(layout.RTC_IRQ), base=base, on_timer_change=timers.wake)
    regions = ctx.memory.regions
    below = regions[0].size
    above = sum(r.size for r in regions[1:])
    for index, value in cmos_memory_bytes(below, above).items():
        rtc.set_memory(index, value)
    ctx.add_pio_device(rtc, layout.RTC_PORT, 2, "rtc")
    timers.add(rtc)
    ctx.devices["rtc"] = rtc


@hookimpl
def mptable_entries(ctx: Any) -> list[Any] | None:
    if "rtc" not in ctx.devices:
        return None
    return [ctx.isa_irq_entry(layout.RTC_IRQ)]
