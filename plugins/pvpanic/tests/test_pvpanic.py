"""pvpanic: the device alone, its glue through the core, and a real guest reporting a panic
to a QMP client (the events as QEMU 7.2 sends them for the same guest with -device pvpanic)."""
from __future__ import annotations

import pytest

from microvm.api import ConfigError
from microvm.testing import TestMachine
from microvm_pvpanic.device import PvPanic


def test_read_offers_the_events_and_writes_report_them():
    calls: list[str] = []
    dev = PvPanic(3, lambda detail: calls.append(f"panic:{detail}"), lambda: calls.append("loaded"))
    buf = bytearray(2)
    dev.read(0, memoryview(buf))
    assert buf == b"\x03\x00"
    dev.write(0, b"\x02")
    dev.write(0, b"\x03")  # both bits: PANICKED wins, as in QEMU
    dev.write(0, b"\x04")  # unknown: logged, nothing else
    dev.write(0, b"\x01")
    assert calls == ["loaded", "panic:pvpanic", "panic:pvpanic"]


def test_glue_places_the_port_and_reports_through_the_machine():
    with TestMachine(devices=["pvpanic"]) as m:
        m.create_devices()
        (mapping,) = [x for x in m.pio_bus.mappings() if x.name == "pvpanic"]
        assert (mapping.base, mapping.length) == (0x505, 1)
        buf = bytearray(1)
        m.pio_bus.read(0x505, memoryview(buf))
        assert buf == b"\x03"
        m.pio_bus.write(0x505, b"\x01")
        # the default panic action: guest-panicked, then the machine ends (status 0)
        assert m.lifecycle.state == "guest-panicked" and m.stopping and m.exit_status == 0
    with TestMachine(devices=["pvpanic,ioport=0x600,events=1"]) as m:
        m.create_devices()
        buf = bytearray(1)
        m.pio_bus.read(0x600, memoryview(buf))
        assert buf == b"\x01"
    for text, match in [
        ("pvpanic,colour=red", "unknown property colour"),
        ("pvpanic,events=4", "only bits 0"),
        ("pvpanic,ioport=0x10000", "not an I/O port"),
    ]:
        with pytest.raises(ConfigError, match=match), TestMachine(devices=[text]) as m:
            m.create_devices()


def test_a_guest_repeating_crash_loaded_gets_one_log_line(caplog):
    """CRASH_LOADED leaves the guest running, so a guest can write it in a loop: one line
    (then summaries), as a QEMU user sees it only under -d guest_errors; every event still
    goes to the QMP clients."""
    caplog.set_level("WARNING")
    with TestMachine(devices=["pvpanic"]) as m:
        m.create_devices()
        events: list[str] = []
        m.lifecycle.emit = lambda name, data=None: events.append(name)  # what the monitors would get
        for _ in range(500):
            m.pio_bus.write(0x505, b"\x02")
        assert m.lifecycle.state != "guest-panicked" and not m.stopping
        assert events == ["GUEST_CRASHLOADED"] * 500
    lines = [r for r in caplog.records if "crash kernel" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines][:5]


@pytest.mark.kvm
def test_guest_panic_reaches_a_qmp_client(tmp_path):
    from kvm_helpers import build_guest, kvm_reason
    from qmp_vm import Line, Vm, wait_until

    if kvm_reason():
        pytest.skip(f"needs KVM: {kvm_reason()}")
    elf = build_guest("pvpanic", tmp_path)
    # -no-shutdown: GUEST_PANICKED {action: pause}, STOP, state guest-panicked; cont resumes
    with Vm(str(tmp_path), "--kernel", str(elf), "--device", "pvpanic", "--no-shutdown", "-S") as vm:
        q = Line(vm.sock)
        q.cmd("cont")
        assert q.event("GUEST_PANICKED")["data"] == {"action": "pause"}
        assert q.event("STOP")
        assert q.cmd("query-status")["status"] == "guest-panicked"
        wait_until(lambda: vm.out == b"EVENTS=3\nPANIC\n", "the output up to the panic")
        q.cmd("cont")
        assert q.event("RESUME")
        assert q.event("GUEST_CRASHLOADED")["data"] == {"action": "run"}
        wait_until(lambda: vm.out.endswith(b"AFTER\nLOADED\n"), "the guest to run on")
        assert q.cmd("query-status")["status"] == "running"
        q.cmd("quit")
        assert vm.wait() == 0
    # the default: GUEST_PANICKED {action: poweroff}, SHUTDOWN guest-panic, exit 0
    with Vm(str(tmp_path), "--kernel", str(elf), "--device", "pvpanic", "-S") as vm:
        q = Line(vm.sock)
        q.cmd("cont")
        assert q.event("RESUME")
        assert q.event("GUEST_PANICKED")["data"] == {"action": "poweroff"}
        assert q.event("SHUTDOWN")["data"] == {"guest": True, "reason": "guest-panic"}
        assert q.events == [] and b"STOP" not in q.f.read()  # to the end: no STOP, as QEMU
        assert vm.wait() == 0
        wait_until(lambda: vm.out == b"EVENTS=3\nPANIC\n", "the output up to the panic")
