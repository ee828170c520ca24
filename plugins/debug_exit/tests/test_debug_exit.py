"""The template plugin's tests: the device alone, its glue, and a real guest using it."""
from __future__ import annotations

import pytest

from microvm.api import ConfigError
from microvm.testing import TestMachine
from microvm_debug_exit.device import DebugExit


def test_write_stops_with_odd_status():
    calls = []
    dev = DebugExit(lambda status, why, cause: calls.append((status, why, cause)))
    dev.write(0, b"\x2a")
    # the guest's own doing: QMP clients get SHUTDOWN guest-shutdown
    assert calls == [(0x55, "isa-debug-exit: guest wrote 0x2a", "guest-shutdown")]
    buf = bytearray(2)
    dev.read(0, memoryview(buf))
    assert buf == b"\xff\xff"


def test_glue_places_the_port_and_checks_properties():
    """Through the core, as a user's --device reaches it (microvm.testing: no KVM)."""
    with TestMachine(devices=["isa-debug-exit,iobase=0xf4,iosize=0x04"]) as m:
        m.create_devices()
        (mapping,) = [x for x in m.pio_bus.mappings() if x.name == "isa-debug-exit"]
        assert (mapping.base, mapping.length) == (0xF4, 4)
        m.pio_bus.write(0xF5, b"\x01")
        assert (m.exit_status, m.stopping, m.stop_cause) == (3, True, "guest-shutdown")
    for text, match in [
        ("isa-debug-exit,colour=red", "unknown property colour"),
        ("isa-debug-exit,iobase=port", "iobase=port: expected a number"),
        ("isa-debug-exit,iobase=0xffff,iosize=4", "not a valid port range"),
    ]:
        with pytest.raises(ConfigError, match=match), TestMachine(devices=[text]) as m:
            m.create_devices()


@pytest.mark.kvm
def test_guest_sets_the_exit_status(tmp_path):
    from kvm_helpers import build_guest, kvm_reason, run_microvm

    if kvm_reason():
        pytest.skip(f"needs KVM: {kvm_reason()}")
    elf = build_guest("debug-exit", tmp_path)
    r = run_microvm("run", "--kernel", str(elf), "--device", "isa-debug-exit,iobase=0xf4,iosize=0x04")
    assert r.stdout == b"EXIT\n"
    assert r.returncode == (0x2A << 1) | 1, r.stderr
