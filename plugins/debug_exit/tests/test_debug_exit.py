"""The template plugin's tests: the device alone, its glue, and a real guest using it."""
from __future__ import annotations

import pytest

from microvm.api import ConfigError
from microvm.bus import Bus
from microvm_debug_exit.device import DebugExit
from microvm_debug_exit.plugin import create


def test_write_stops_with_odd_status():
    calls = []
    dev = DebugExit(lambda status, why: calls.append((status, why)))
    dev.write(0, b"\x2a")
    assert calls == [(0x55, "isa-debug-exit: guest wrote 0x2a")]
    buf = bytearray(2)
    dev.read(0, memoryview(buf))
    assert buf == b"\xff\xff"


class FakeMachine:
    def __init__(self) -> None:
        self.pio_bus = Bus("pio", limit=1 << 16)
        self.devices: dict = {}
        self.stops: list = []

    def request_stop(self, status, why):
        self.stops.append(status)

    def add_pio_device(self, dev, base, length, name):
        self.pio_bus.insert(dev, base, length, name)


def test_glue_places_the_port_and_checks_properties():
    m = FakeMachine()
    create(m, {"iobase": "0xf4", "iosize": "0x04"})
    (mapping,) = m.pio_bus.mappings()
    assert (mapping.base, mapping.length, mapping.name) == (0xF4, 4, "isa-debug-exit")
    m.pio_bus.write(0xF5, b"\x01")
    assert m.stops == [3]
    with pytest.raises(ConfigError, match="unknown property colour"):
        create(FakeMachine(), {"colour": "red"})
    with pytest.raises(ConfigError, match="not a number"):
        create(FakeMachine(), {"iobase": "port"})
    with pytest.raises(ConfigError, match="not a valid port range"):
        create(FakeMachine(), {"iobase": "0xffff", "iosize": "4"})


@pytest.mark.kvm
def test_guest_sets_the_exit_status(tmp_path):
    from kvm_helpers import build_guest, kvm_reason, run_microvm

    if kvm_reason():
        pytest.skip(f"needs KVM: {kvm_reason()}")
    elf = build_guest("debug-exit", tmp_path)
    r = run_microvm("run", "--kernel", str(elf), "--device", "isa-debug-exit,iobase=0xf4,iosize=0x04")
    assert r.stdout == b"EXIT\n"
    assert r.returncode == (0x2A << 1) | 1, r.stderr
