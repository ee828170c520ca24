"""The legacy-device plugins' hook glue, with a fake machine: which options exist, what each
setting puts on the buses and into the MP table (no KVM needed)."""
from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest

from microvm.boot.mptable import IoInterrupt, LocalInterrupt, MP_EXTINT
from microvm.errors import ConfigError
from microvm.plugins import PluginHost
from microvm.testing import TestMachine


def build(options: str, mode: str = "split") -> TestMachine:
    """The installed plugins' create_devices on a machine without KVM (microvm.testing)."""
    return TestMachine(options, irqchip=mode).create_devices()


def ports(m: TestMachine) -> dict[str, tuple[int, int]]:
    return {x.name: (x.base, x.length) for x in m.pio_bus.mappings()}


def test_options_are_declared_with_qemu_defaults():
    opts = PluginHost().options.options
    assert (opts["pic"].kind, opts["pic"].default) == ("OnOffAuto", "auto")
    assert (opts["pit"].kind, opts["pit"].default) == ("OnOffAuto", "auto")
    assert (opts["rtc"].kind, opts["rtc"].default) == ("OnOffAuto", "auto")
    assert "off with KVM" in opts["rtc"].auto_means and opts["pic"].auto_means == "on"


def test_defaults_in_split_mode_give_pic_and_pit_but_no_rtc():
    m = build("microvm")
    p = ports(m)
    assert p["pic-master"] == (0x20, 2) and p["pic-slave"] == (0xA0, 2) and p["pic-elcr"] == (0x4D0, 2)
    assert p["pit"] == (0x40, 4) and p["port61"] == (0x61, 1)
    assert "rtc" not in p
    assert m.fake_irqchip.pics == [m.devices["pic"]] and m.irqchip.extint_source() is m.devices["pic"]
    entries = m.mptable_entries()
    assert IoInterrupt(src_irq=0, dst_ioapic=1, dst_pin=2) in entries       # PIT: ISA override
    assert not any(isinstance(e, IoInterrupt) and e.src_irq == 8 for e in entries)


def test_everything_off_takes_devices_off_the_bus_and_out_of_the_mp_table():
    m = build("microvm,pic=off,pit=off,rtc=off,isa-serial=off")
    # only fw_cfg stays: QEMU's microvm always has it (no option turns it off)
    assert ports(m) == {"fw_cfg": (0x510, 2), "fw_cfg.dma": (0x514, 8)}
    entries = m.mptable_entries()
    assert not any(isinstance(e, IoInterrupt) for e in entries)
    assert not any(isinstance(e, LocalInterrupt) and e.irq_type == MP_EXTINT for e in entries)


def test_rtc_on_is_placed_with_irq8_and_cmos_memory_bytes():
    m = build("microvm,rtc=on")
    assert ports(m)["rtc"] == (0x70, 2)
    rtc = m.devices["rtc"]
    assert rtc.get_memory(0x15) | rtc.get_memory(0x16) << 8 == 640        # base memory, KiB
    assert rtc.get_memory(0x17) | rtc.get_memory(0x18) << 8 == (64 - 1) * 1024
    assert IoInterrupt(src_irq=8, dst_ioapic=1, dst_pin=8) in m.mptable_entries()


def test_rtc_base_date():
    m = build("microvm,rtc=on,rtc-base=2006-06-17T16:01:21")
    t = m.devices["rtc"].guest_time()
    assert (t.year, t.month, t.day, t.hour, t.minute) == (2006, 6, 17, 16, 1)


def test_rtc_base_bad_value_is_a_config_error():
    with pytest.raises(ConfigError, match="rtc-base"):
        build("microvm,rtc=on,rtc-base=yesterday")


def test_in_kernel_irqchip_mode_adds_no_userspace_pic_or_pit():
    """kernel-irqchip=on: KVM's own 8259s and PIT serve; the plugins stay out of the way."""
    m = build("microvm", mode="on")
    assert "pic-master" not in ports(m) and "pit" not in ports(m)


def test_rtc_base_localtime_is_the_hosts_wall_clock(monkeypatch):
    """QEMU's base=localtime: the RTC shows local wall time (once, not the offset twice)."""
    import time

    from microvm_rtc_mc146818.plugin import parse_base

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        now = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.timezone.utc)   # CET: UTC+1 in January
        assert parse_base("localtime", now).replace(tzinfo=None) == dt.datetime(2026, 1, 15, 13, 0)
        assert parse_base("utc", now) == now
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_ioapic_message_nobody_takes_is_dropped_not_raised():
    """KVM_SIGNAL_MSI fails when no LAPIC matches (a guest that disabled its LAPIC): the
    device register access that caused it must not raise into the vCPU thread."""
    from microvm_ioapic.chip import SplitIrqChip

    class Vm:
        def enable_cap(self, *a):
            pass

        def set_gsi_routing(self, entries):
            self.routes = entries

        def signal_msi(self, address, data):
            raise PermissionError(1, "KVM_SIGNAL_MSI failed")

    m = SimpleNamespace(vm=Vm(), smp=1, apic_ids=[0], add_mmio_device=lambda *a: None, extint_line=None)
    chip = SplitIrqChip(m)
    io = chip.ioapic
    io.write(0x00, (0x18).to_bytes(4, "little"))        # IOREGSEL: redirection entry 4 low
    io.write(0x10, (0x8024).to_bytes(4, "little"))      # vector 0x24, level, unmasked
    chip.line(4).set_level(True)                         # delivery fails inside: no exception
    assert len(m.vm.routes) == 24
