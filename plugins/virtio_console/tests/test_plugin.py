"""The hook glue on microvm.testing.TestMachine: QEMU's device spellings, ports attached to
the serial device before them, real chardevs (a socket server, a pipe) behind the ports,
and the command line's errors."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable

import pytest

from microvm.api import ConfigError
from microvm.testing import TestMachine
from console_testlib import BusWindow, LinuxConsoleDriver
from microvm_virtio_console import plugin
from microvm_virtio_console.device import VirtioSerial

WAIT = 10.0


def until(cond: Callable[[], object], what: str, step: Callable[[], None] | None = None) -> None:
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        if step is not None:
            step()
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"{what} did not happen within {WAIT} s")


def serial_devices(m: TestMachine) -> list[VirtioSerial]:
    return [dev for _, dev in m.ctx.devices.get(plugin.BUSES, [])]


def test_types_and_help():
    with pytest.raises(ConfigError, match=r"virtconsole properties: .*bus=.*chardev=.*name=.*nr="):
        TestMachine(devices=["virtconsole,help"])
    with pytest.raises(ConfigError, match=r"virtio-serial-device properties: .*emergency-write.*max_ports"):
        TestMachine(devices=["virtio-serial-device,help"])


def test_ports_attach_to_the_serial_device_before_them(tmp_path: Path):
    devices = ["virtio-serial-device,id=vs0,max_ports=4", "virtconsole,chardev=c0",
               "virtio-serial-device,id=vs1", "virtserialport,chardev=c1,name=a",
               "virtserialport,chardev=c2,name=b,bus=vs0.0,nr=3"]
    chardevs = ["null,id=c0", "null,id=c1", f"file,id=c2,path={tmp_path / 'log'}"]
    with TestMachine(devices=devices, chardevs=chardevs) as m:
        m.create_devices()
        vs0, vs1 = serial_devices(m)
        assert sorted(vs0.ports) == [0, 3] and vs0.ports[0].console and vs0.ports[3].name == "b"
        assert sorted(vs1.ports) == [1] and vs1.ports[1].name == "a"
        assert [s.name for s in m.ctx.virtio_devices] == ["vs0", "vs1"]
        assert [s.device_id for s in m.ctx.virtio_devices] == [3, 3]
        assert m.ctx.virtio_devices[0].base == 0xFEB00E00


@pytest.mark.parametrize("devices,chardevs,msg", [
    (["virtconsole,chardev=c0"], ["null,id=c0"], "No 'virtio-serial-bus' bus found for device 'virtconsole'"),
    (["virtio-serial-device", "virtconsole,chardev=c0,bus=nope"], ["null,id=c0"], "Bus 'nope' not found"),
    (["virtio-serial-device", "virtconsole,chardev=missing"], ["null,id=c0"],
     r"--device virtconsole: chardev 'missing' not found \(defined chardevs: c0\)"),
    (["virtio-serial-device", "virtconsole,chardev=c0", "virtserialport,chardev=c0"], ["null,id=c0"],
     "--device virtserialport: chardev 'c0' is already in use by --device virtconsole"),
    (["virtio-serial-device", "virtserialport,chardev=c0,nr=0"], ["null,id=c0"], "Port number 0 .* reserved"),
    (["virtio-serial-device,max_ports=600"], [], "maximum ports supported: 511"),
    (["virtio-serial-device,max_ports=1", "virtserialport,chardev=c0"], ["null,id=c0"],
     r"--device virtserialport: virtio-serial-bus: Out-of-range port id specified, max. allowed: 0"),
])
def test_command_line_errors(devices, chardevs, msg):
    with TestMachine(devices=devices, chardevs=chardevs) as m:
        with pytest.raises(ConfigError, match=msg):
            m.create_devices()


def test_a_mux_chardev_is_shared_by_the_16550_and_a_console():
    with TestMachine("microvm,isa-serial=on", devices=["virtio-serial-device", "virtconsole,chardev=c0"],
                     chardevs=["null,id=c0,mux=on"], serial=["chardev:c0"]) as m:
        m.create_devices()
        assert "serial0" in m.ctx.devices and serial_devices(m)[0].ports[0].console


def test_a_socket_port_reaches_the_guest_end_to_end(tmp_path: Path):
    """A virtserialport on a unix socket server: the guest sees the client come and go
    (PORT_OPEN), and bytes flow both ways through the machine's worker and chardev threads."""
    path = str(tmp_path / "port.sock")
    with TestMachine(devices=["virtio-serial-device,max_ports=2", "virtserialport,chardev=s0,name=org.microvm.test"],
                     chardevs=[f"socket,id=s0,path={path},server=on,wait=off"]) as m:
        m.create_devices()
        m.start()
        dev = serial_devices(m)[0]
        drv = LinuxConsoleDriver(dev, transport=BusWindow(m))
        drv.probe()
        until(lambda: 1 in drv.ports and drv.ports[1]["name"] == "org.microvm.test", "the handshake",
              step=drv.run_control)
        assert not drv.ports[1]["host_connected"]
        drv.open_port(1)

        c = socket.socket(socket.AF_UNIX)
        c.connect(path)
        c.settimeout(WAIT)
        until(lambda: drv.ports[1]["host_connected"], "PORT_OPEN(1) for the client", step=drv.run_control)
        c.sendall(b"from the host")
        got = bytearray()
        until(lambda: got == b"from the host", "host input in the guest's buffers",
              step=lambda: got.extend(drv.read_port(1)))
        drv.write_port(1, b"from the guest")
        assert c.recv(100) == b"from the guest"
        c.close()
        until(lambda: not drv.ports[1]["host_connected"], "PORT_OPEN(0) when the client left", step=drv.run_control)
        drv.write_port(1, b"dropped")
        until(lambda: dev.counters["port1.dropped"] == 7, "dropping output for a closed host side")
        assert dev.counters["port1.name_sent"] == 1
    assert not os.path.exists(path)


def test_hooks_match_the_specs():
    from microvm.testing import plugin_hooks

    assert plugin_hooks(plugin) == {"register_device_types"}
