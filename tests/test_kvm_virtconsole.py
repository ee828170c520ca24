"""virtconsole on /dev/kvm with a tiny guest that drives the virtio console itself
(tests/guests/virtcon-write.S: legacy virtio-mmio, no MULTIPORT, 1 MiB in 4 KiB chunks):
every byte arrives in order on stdio; a socket server without a client drops the output
and the guest finishes all the same; so does a guest whose stdout nobody reads."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
from pathlib import Path

import pytest

from kvm_helpers import build_guest, microvm_cmd, requires_kvm, run_microvm

pytestmark = [pytest.mark.kvm, requires_kvm]

TOTAL = 1 << 20
LINE = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+\n"
MACHINE = "microvm,pit=off,pic=off,rtc=off,isa-serial=off"
#: the default --serial is mon:stdio, so a --chardev stdio needs the serial port's chardev
#: gone (QEMU: -nodefaults), as QEMU refuses two stdio chardevs
NO_SERIAL = ("--serial", "none")
CONSOLE = ["--device", "virtio-serial-device", "--device", "virtconsole,chardev=c0"]


@pytest.fixture(scope="module")
def guest(tmp_path_factory) -> Path:
    return build_guest("virtcon-write", tmp_path_factory.mktemp("guests"))


def counters(path: Path) -> dict:
    return json.loads(path.read_text())["devices"]


@pytest.mark.parametrize("legacy", ["on", "off"])
def test_a_mebibyte_through_virtconsole_on_stdio(guest, tmp_path, legacy):
    """force-legacy=off: the guest finds Version 2 and says NO-VIRTCON... on a COM1 that is
    off here, so only the legacy run carries data; the modern one must still end cleanly."""
    m = tmp_path / "m.json"
    r = run_microvm("run", "--kernel", str(guest), "--no-reboot", "-M", MACHINE, *NO_SERIAL, "--chardev", "stdio,id=c0",
                    "--device", "virtio-serial-device,force-legacy=" + legacy, "--device", "virtconsole,chardev=c0",
                    "--metrics", str(m))
    assert r.returncode == 0, r.stderr
    if legacy == "on":
        assert r.stdout == LINE * (TOTAL // len(LINE))
        dev = counters(m)["virtio-serial-device"]
        assert dev["port0.bytes_out"] == TOTAL and dev["needs_reset"] == 0
    else:
        assert r.stdout == b""


def test_a_socket_server_without_a_client_drops_and_the_guest_runs_on(guest, tmp_path):
    sock, m = tmp_path / "con.sock", tmp_path / "m.json"
    r = run_microvm("run", "--kernel", str(guest), "--no-reboot", "-M", MACHINE,
                    "--chardev", f"socket,id=c0,path={sock},server=on,wait=off", *CONSOLE, "--metrics", str(m))
    assert r.returncode == 0, r.stderr
    c = counters(m)
    assert c["chardev.c0"]["bytes_dropped"] == TOTAL and c["chardev.c0"]["bytes_written"] == 0
    assert c["virtio-serial-device"]["port0.bytes_out"] == TOTAL
    assert not sock.exists()


def test_a_stdout_nobody_reads_does_not_hold_the_guest(guest, tmp_path):
    """virtconsole output is dropped when the sink stalls (as QEMU drops console data):
    the guest, which waits for every chunk to be used, finishes."""
    m = tmp_path / "m.json"
    r_fd, w_fd = os.pipe()
    fcntl.fcntl(w_fd, fcntl.F_SETPIPE_SZ, 4096)
    try:
        p = subprocess.run(microvm_cmd("run", "--kernel", str(guest), "--no-reboot", "-M", MACHINE, *NO_SERIAL,
                                       "--chardev", "stdio,id=c0", *CONSOLE, "--metrics", str(m)),
                           stdin=subprocess.DEVNULL, stdout=w_fd, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(r_fd)
        os.close(w_fd)
    assert p.returncode == 0, p.stderr
    c = counters(m)["chardev.c0"]
    assert c["bytes_written"] + c["bytes_dropped"] == TOTAL and c["bytes_dropped"] > 0


def test_a_serial_port_on_a_one_port_device_is_refused_as_qemu_refuses_it(guest):
    """max_ports=1: no MULTIPORT, only port 0, which is a console's; QEMU 7.2 says
    "virtio-serial-bus: Out-of-range port id specified, max. allowed: 0" and exits with 1
    (QEMU's command line, the program name changed; ``microvm run`` exits with 2)."""
    qemu_line = ("-M", "microvm", "-nodefaults", "-display", "none", "-kernel", str(guest), "-chardev", "null,id=c0",
                 "-device", "virtio-serial-device,max_ports=1", "-device", "virtserialport,chardev=c0")
    r = run_microvm(*qemu_line)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(
        "-device virtserialport: virtio-serial-bus: Out-of-range port id specified, max. allowed: 0"), r.stderr


def test_a_one_port_device_carries_the_console_without_multiport(guest, tmp_path):
    """max_ports=1 with the tiny guest (which negotiates no MULTIPORT either): the console
    on port 0 carries every byte."""
    m = tmp_path / "m.json"
    r = run_microvm("run", "--kernel", str(guest), "--no-reboot", "-M", MACHINE, *NO_SERIAL, "--chardev", "stdio,id=c0",
                    "--device", "virtio-serial-device,max_ports=1", "--device", "virtconsole,chardev=c0",
                    "--metrics", str(m))
    assert r.returncode == 0, r.stderr
    assert r.stdout == LINE * (TOTAL // len(LINE))
    assert counters(m)["virtio-serial-device"]["port0.bytes_out"] == TOTAL
