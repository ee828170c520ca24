"""virtio-serial-device with Linux's virtio_console driver replayed on both transports: the
control handshake, console and serial port data, host open/close, throttling, back
pressure, a driver without MULTIPORT, emergency write, and QEMU's port numbering rules."""
from __future__ import annotations

import pytest

from microvm.api import ConfigError
from console_testlib import FakeChardev, LinuxConsoleDriver, control_events
from microvm_virtio_console.constants import (
    CONFIG,
    VIRTIO_CONSOLE_CONSOLE_PORT,
    VIRTIO_CONSOLE_F_EMERG_WRITE,
    VIRTIO_CONSOLE_F_MULTIPORT,
    VIRTIO_CONSOLE_F_SIZE,
    VIRTIO_CONSOLE_PORT_ADD,
    VIRTIO_CONSOLE_PORT_NAME,
    VIRTIO_CONSOLE_PORT_OPEN,
    VIRTIO_CONSOLE_RESIZE,
    queue_port,
    rx_queue,
)
from microvm_virtio_console.device import PORT_INPUT, VirtioSerial

TRANSPORTS = [pytest.param(True, id="legacy"), pytest.param(False, id="modern")]
NAME = "org.microvm.test"


def machine(legacy: bool, serial_open: bool = False, room: int = 1 << 20):
    """A device with a console (port 0) and a named serial port (port 1), and the driver."""
    dev = VirtioSerial(max_ports=4)
    con = FakeChardev(size=(80, 24))
    ser = FakeChardev(is_open=serial_open, room=room)
    dev.add_port(None, None, True, con, "virtconsole")
    dev.add_port(None, NAME, False, ser, "virtserialport")
    drv = LinuxConsoleDriver(dev, legacy)
    return dev, con, ser, drv


def counter(dev: VirtioSerial, name: str) -> int:
    return dev.counters[name]


def test_queue_numbering_is_linux_init_vqs():
    assert [rx_queue(n) for n in range(4)] == [0, 4, 6, 8]
    assert [queue_port(q) for q in range(10)] == [0, 0, None, None, 1, 1, 2, 2, 3, 3]
    dev = VirtioSerial(max_ports=31)
    assert dev.num_queues == 64  # QEMU's default max_ports: (31 + 1) * 2 queues


@pytest.mark.parametrize("legacy", TRANSPORTS)
def test_control_handshake_as_linux_runs_it(legacy):
    dev, con, ser, drv = machine(legacy)
    features = drv.mmio.device_features()
    assert features & (1 << VIRTIO_CONSOLE_F_MULTIPORT) and features & (1 << VIRTIO_CONSOLE_F_EMERG_WRITE)
    # QEMU 7.2 offers no F_SIZE: the console's terminal size (80x24 here) is never sent
    assert not features & (1 << VIRTIO_CONSOLE_F_SIZE)
    drv.handshake()
    events = control_events(drv.received)
    # DEVICE_READY -> PORT_ADD for each port; PORT_READY -> CONSOLE_PORT, PORT_OPEN (a
    # console is open on the host side) / PORT_NAME (the serial port's host side is closed)
    assert events[:2] == [(0, VIRTIO_CONSOLE_PORT_ADD, 1), (1, VIRTIO_CONSOLE_PORT_ADD, 1)]
    assert sorted(events[2:]) == sorted([
        (0, VIRTIO_CONSOLE_CONSOLE_PORT, 1), (0, VIRTIO_CONSOLE_PORT_OPEN, 1), (1, VIRTIO_CONSOLE_PORT_NAME, 1),
    ])
    assert not any(ev == VIRTIO_CONSOLE_RESIZE for _, ev, _ in events)
    p0, p1 = drv.ports[0], drv.ports[1]
    assert p0["console"] and p0["host_connected"] and "size" not in p0
    assert not p1["console"] and p1["name"] == NAME and not p1["host_connected"]
    # the device's side of it
    assert counter(dev, "port1.ready") == 1 and counter(dev, "port1.name_sent") == 1
    assert counter(dev, "control_bad") == 0
    assert con.fe_open is True and ser.fe_open is False  # the hvc console opened port 0
    assert drv.mmio.read_config(4, 4) == 4  # max_nr_ports
    drv.close()


@pytest.mark.parametrize("legacy", TRANSPORTS)
def test_console_output_and_input(legacy):
    dev, con, ser, drv = machine(legacy)
    drv.handshake()
    head = drv.write_port(0, b"Linux version 6.1\n")
    assert drv.used_tx(0) == [(head, 0)]
    assert con.out == b"Linux version 6.1\n"
    assert con.host_types(b"\x0fh") == 2  # Ctrl-O h: hvc's Magic SysRq
    assert drv.read_port(0) == b"\x0fh"
    assert drv.irq.level
    drv.close()


@pytest.mark.parametrize("legacy", TRANSPORTS)
def test_host_open_and_close_reach_the_guest_as_port_open(legacy):
    dev, con, ser, drv = machine(legacy)
    drv.handshake()
    drv.open_port(1)
    assert ser.fe_open is True
    drv.write_port(1, b"nobody listens")  # host side closed: dropped and counted
    assert len(drv.used_tx(1)) == 1 and ser.out == b""
    assert counter(dev, "port1.dropped") == 14
    ser.host_opens(True)  # a client connects to the socket
    drv.run_control()
    assert drv.ports[1]["host_connected"]
    drv.write_port(1, b"hello")
    assert ser.out == b"hello"
    ser.host_opens(False)  # ... and goes away
    drv.run_control()
    assert not drv.ports[1]["host_connected"]
    assert control_events(drv.received)[-2:] == [(1, VIRTIO_CONSOLE_PORT_OPEN, 1), (1, VIRTIO_CONSOLE_PORT_OPEN, 0)]
    drv.close_port(1)
    assert ser.fe_open is False
    drv.close()


@pytest.mark.parametrize("legacy", TRANSPORTS)
def test_serial_port_input_waits_until_the_guest_opens_it(legacy):
    dev, con, ser, drv = machine(legacy, serial_open=True)
    drv.handshake()
    assert ser.host_types(b"early") == 0  # Linux discards data for a port nobody opened
    drv.open_port(1)
    assert ser.accepts >= 1  # the chardev is told to read again
    assert ser.host_types(b"now") == 3
    assert drv.read_port(1) == b"now"
    drv.close()


@pytest.mark.parametrize("legacy", TRANSPORTS)
def test_input_pushes_back_when_the_guest_does_not_read(legacy):
    dev, con, ser, drv = machine(legacy, serial_open=True)
    drv.handshake()
    drv.open_port(1)
    taken = 0
    while (n := ser.host_types(b"x" * 10000)):
        taken += n
    # the guest's 8 page-sized buffers, plus what the port holds: then the chardev must wait
    assert taken == 8 * 4096 + PORT_INPUT
    accepts = ser.accepts
    assert len(drv.read_port(1)) == 8 * 4096  # the guest reads and gives its buffers back
    assert ser.accepts > accepts and ser.can_receive() == PORT_INPUT
    assert len(drv.read_port(1)) == PORT_INPUT  # what the port held went into the new buffers
    drv.close()


@pytest.mark.parametrize("legacy", TRANSPORTS)
def test_a_slow_serial_port_is_throttled_without_stalling_the_console(legacy):
    dev, con, ser, drv = machine(legacy, serial_open=True, room=3)
    drv.handshake()
    drv.open_port(1)
    h1 = drv.write_port(1, b"abcdef")
    h2 = drv.write_port(1, b"gh")
    assert ser.out == b"abc" and drv.used_tx(1) == []  # the chain stays with the device
    drv.write_port(0, b"console goes on")
    assert con.out == b"console goes on"
    ser.room = 0
    ser.drain(3)
    assert ser.out == b"abcdef"
    ser.drain(10)
    assert ser.out == b"abcdefgh" and drv.used_tx(1) == [(h1, 0), (h2, 0)]
    assert counter(dev, "port1.throttled") >= 1
    drv.close()


@pytest.mark.parametrize("legacy", TRANSPORTS)
def test_a_throttled_chain_goes_back_when_the_host_side_closes(legacy):
    dev, con, ser, drv = machine(legacy, serial_open=True, room=2)
    drv.handshake()
    drv.open_port(1)
    h = drv.write_port(1, b"abcdef")
    assert drv.used_tx(1) == []
    ser.host_opens(False)
    assert drv.used_tx(1) == [(h, 0)]
    assert counter(dev, "port1.dropped") == 4
    drv.close()


@pytest.mark.parametrize("legacy", TRANSPORTS)
def test_a_driver_without_multiport_gets_port_0_as_its_console(legacy):
    dev, con, ser, drv = machine(legacy)
    drv.probe(features=(1 << VIRTIO_CONSOLE_F_SIZE) | ((1 << 32) if not legacy else 0))
    assert not drv.multiport and len(drv.queues) == 2
    drv.write_port(0, b"old guest")
    assert con.out == b"old guest"
    assert con.host_types(b"in") == 2 and drv.read_port(0) == b"in"
    drv.close()


@pytest.mark.parametrize("legacy", TRANSPORTS)
def test_emergency_write_and_config_space(legacy):
    dev, con, ser, drv = machine(legacy)
    drv.handshake()
    cols, rows, max_nr, emerg = CONFIG.unpack(bytes(drv.mmio.read_config(o, 1) for o in range(CONFIG.size)))
    assert (cols, rows, max_nr, emerg) == (0, 0, 4, 0)  # no F_SIZE: no size, whatever the terminal's
    drv.mmio.write(0x100 + 8, ord("!"), 4)
    assert con.out == b"!"
    drv.close()


@pytest.mark.parametrize("legacy", TRANSPORTS)
def test_max_ports_1_offers_no_multiport_and_keeps_qemus_four_queues(legacy):
    """QEMU's get_features adds MULTIPORT only for max_nr_ports > 1; its realize adds the
    control queues regardless, so the transport has 4 queues (QueueNumMax > 0 for 0..3)."""
    dev = VirtioSerial(max_ports=1)
    con = FakeChardev()
    dev.add_port(None, None, True, con, "virtconsole")
    with pytest.raises(ConfigError, match="Out-of-range port id specified, max. allowed: 0"):
        dev.add_port(None, None, False, None, "virtserialport")
    drv = LinuxConsoleDriver(dev, legacy)
    features = drv.mmio.device_features()
    assert not features & (1 << VIRTIO_CONSOLE_F_MULTIPORT) and features & (1 << VIRTIO_CONSOLE_F_EMERG_WRITE)
    num_max = []
    for q in range(6):
        drv.mmio.write(0x030, q)  # QueueSel
        num_max.append(drv.mmio.read(0x034))  # QueueNumMax
    assert [n > 0 for n in num_max] == [True] * 4 + [False] * 2
    drv.probe()  # Linux's features: it asks for MULTIPORT and does not get it
    assert not drv.multiport and len(drv.queues) == 2
    assert CONFIG.unpack(bytes(drv.mmio.read_config(o, 1) for o in range(CONFIG.size)))[2] == 1
    drv.write_port(0, b"one port")
    assert con.out == b"one port"
    assert con.host_types(b"in") == 2 and drv.read_port(0) == b"in"
    drv.close()


def test_free_port_numbers_are_searched_as_qemu_does():
    """QEMU's find_free_port_id scans whole 32-bit words of its map: a full device smaller
    than 32 ports yields an id beyond max_ports (out of range), one of 32 ports none at all."""
    dev = VirtioSerial(max_ports=2)
    assert dev.add_port(None, None, False, None, "sp").id == 1
    with pytest.raises(ConfigError, match="Out-of-range port id specified, max. allowed: 1"):
        dev.add_port(None, None, False, None, "sp")
    dev = VirtioSerial(max_ports=32)
    dev.add_port(None, None, True, None, "vc")
    for i in range(1, 32):
        assert dev.add_port(None, None, False, None, "sp").id == i
    with pytest.raises(ConfigError, match="Maximum port limit for this device reached"):
        dev.add_port(None, None, False, None, "sp")


def test_port_numbers_and_names_follow_qemu():
    dev = VirtioSerial(max_ports=3)
    assert dev.add_port(None, None, False, None, "sp").id == 1  # 0 stays for a console
    assert dev.add_port(None, None, True, None, "vc").id == 0  # the first console is port 0
    assert dev.add_port(None, None, True, None, "vc2").id == 2  # a second console: the next free
    with pytest.raises(ConfigError, match="Out-of-range port id specified, max. allowed: 2"):
        dev.add_port(None, None, False, None, "sp")
    dev = VirtioSerial(max_ports=3)
    with pytest.raises(ConfigError, match="Port number 0 on virtio-serial devices reserved for virtconsole"):
        dev.add_port(0, None, False, None, "sp")
    with pytest.raises(ConfigError, match="Out-of-range port id specified, max. allowed: 2"):
        dev.add_port(3, None, False, None, "sp")
    dev.add_port(2, "a", False, None, "sp")
    with pytest.raises(ConfigError, match="A port already exists at id 2"):
        dev.add_port(2, None, False, None, "sp")
    with pytest.raises(ConfigError, match="A port already exists by name a"):
        dev.add_port(1, "a", False, None, "sp")
    with pytest.raises(ConfigError, match="maximum ports supported: 511"):
        VirtioSerial(max_ports=512)
    with pytest.raises(ConfigError, match="Maximum number of serial ports not specified"):
        VirtioSerial(max_ports=0)


@pytest.mark.parametrize("legacy", TRANSPORTS)
def test_reset_and_probe_again(legacy):
    dev, con, ser, drv = machine(legacy, serial_open=True)
    drv.handshake()
    drv.open_port(1)
    assert ser.host_types(b"x") == 1
    drv.mmio.write(0x070, 0)  # the driver resets the device (module reload, kexec)
    assert ser.can_receive() == 0 and con.fe_open is False
    drv2 = LinuxConsoleDriver.__new__(LinuxConsoleDriver)
    drv2.__dict__.update(drv.__dict__)
    drv2.ports, drv2.received, drv2.inbufs = {}, [], {}
    drv2.handshake()
    assert drv2.ports[1]["name"] == NAME and drv2.ports[1]["host_connected"]
    drv.close()
