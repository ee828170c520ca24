"""The serial_16550 hook glue against a small fake machine (no KVM, no core Machine)."""
from __future__ import annotations

from typing import Any, Callable

import pluggy
import pytest
from microvm.api import LegacyDevices, MachineOption, RecordingIrqLine

from microvm_serial_16550 import plugin
from microvm_serial_16550.device import Serial16550


class FakeChardev:
    """The frontend protocol (microvm.api.Chardev) as the plugin uses it."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.receiver: Callable[[bytes], None] | None = None
        self.can_receive: Callable[[], int] | None = None
        self.on_break: Callable[[], None] | None = None
        self.started = 0
        self.accepts = 0

    def write(self, data: bytes) -> None:
        self.written += data

    def set_handlers(self, receive=None, can_receive=None, on_break=None, on_event=None, on_writable=None) -> None:
        self.receiver, self.can_receive, self.on_break = receive, can_receive, on_break

    def accept_input(self) -> None:
        self.accepts += 1

    def start(self) -> None:
        self.started += 1

    def close(self) -> None:
        pass


class FakeMachine:
    """Exactly the members of the machine context (microvm.api.MachineContext) the plugin uses."""

    def __init__(self, isa_serial: bool = True, chardev: FakeChardev | None = None) -> None:
        self.legacy = LegacyDevices(isa_serial=isa_serial)
        self.chardev = chardev
        self.lines: dict[int, RecordingIrqLine] = {}
        self.pio: list[tuple[Any, int, int, str]] = []
        self.devices: dict[str, Any] = {}

    def serial_chardev(self, index: int) -> FakeChardev | None:
        return self.chardev if index == 0 else None

    def irq(self, gsi: int) -> RecordingIrqLine:
        return self.lines.setdefault(gsi, RecordingIrqLine(gsi))

    def add_pio_device(self, dev: Any, base: int, length: int, name: str) -> None:
        self.pio.append((dev, base, length, name))

    def isa_irq_entry(self, irq: int) -> tuple[str, int]:
        return ("io-interrupt", irq)


def test_option_declared() -> None:
    got: list[MachineOption] = []
    plugin.register_machine_options(got.append)
    assert len(got) == 1
    opt = got[0]
    assert (opt.name, opt.kind, opt.default) == ("isa-serial", "bool", True)
    assert opt.plugin == "serial_16550"
    assert opt.parse("off") is False


def test_isa_serial_off_creates_nothing() -> None:
    m = FakeMachine(isa_serial=False, chardev=FakeChardev())
    plugin.create_devices(m)
    assert m.pio == [] and m.devices == {}
    assert m.chardev is not None and m.chardev.receiver is None
    assert plugin.mptable_entries(m) is None
    plugin.machine_start(m)
    assert m.chardev.started == 0


def test_no_chardev_creates_nothing() -> None:
    m = FakeMachine(chardev=None)
    plugin.create_devices(m)
    assert m.pio == [] and plugin.mptable_entries(m) is None


def test_on_places_com1_and_wires_the_chardev() -> None:
    chardev = FakeChardev()
    m = FakeMachine(chardev=chardev)
    plugin.create_devices(m)
    [(dev, base, length, name)] = m.pio
    assert isinstance(dev, Serial16550)
    assert (base, length, name) == (0x3F8, 8, "serial0")
    assert m.devices["serial0"] is dev
    assert plugin.mptable_entries(m) == [("io-interrupt", 4)]

    dev.write(0, b"A")  # THR goes to the chardev
    assert chardev.written == b"A"
    dev.write(4, b"\x08")  # OUT2
    dev.write(1, b"\x01")  # ERBFI
    assert chardev.receiver is not None and chardev.on_break is not None
    chardev.receiver(b"k")  # host input reaches RBR and raises IRQ 4
    assert m.lines[4].level
    buf = bytearray(1)
    dev.read(0, memoryview(buf))
    assert buf == b"k" and not m.lines[4].level
    chardev.on_break()
    dev.read(5, memoryview(buf))
    assert buf[0] & 0x10

    # input is flow-controlled: the chardev never gives more than fits, and hears when the
    # guest made room again
    assert chardev.can_receive is not None
    room = chardev.can_receive()
    assert room > 0
    chardev.receiver(b"x" * room)
    assert chardev.can_receive() == 0
    before = chardev.accepts
    dev.read(0, memoryview(buf))  # the guest reads: the FIFO refills from the host queue
    assert chardev.accepts > before and chardev.can_receive() > 0

    plugin.machine_start(m)
    assert chardev.started == 1
    plugin.machine_stop(m)
    assert "serial0" not in m.devices


def test_hooks_match_the_specs() -> None:
    from microvm.testing import plugin_hooks

    names = plugin_hooks(plugin)  # validates every hookimpl name and argument against the specs
    assert names == {"register_machine_options", "create_devices", "mptable_entries", "machine_start", "machine_stop"}


def test_entry_point_installed() -> None:
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="microvm")}
    if "serial_16550" not in eps:
        pytest.skip("plugin not installed into this environment")
    assert eps["serial_16550"] == "microvm_serial_16550.plugin"
