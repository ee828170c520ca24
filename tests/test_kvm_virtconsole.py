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


def test_a_one_port_device_carries_the_console_end_to_end(guest, tmp_path):
    """max_ports=1, end to end: the console on port 0 carries every byte. The tiny guest
    negotiates no MULTIPORT whatever is offered, so this cannot tell whether the feature is
    offered; that is the plugin's unit test
    (test_max_ports_1_offers_no_multiport_and_keeps_qemus_four_queues)."""
    m = tmp_path / "m.json"
    r = run_microvm("run", "--kernel", str(guest), "--no-reboot", "-M", MACHINE, *NO_SERIAL, "--chardev", "stdio,id=c0",
                    "--device", "virtio-serial-device,max_ports=1", "--device", "virtconsole,chardev=c0",
                    "--metrics", str(m))
    assert r.returncode == 0, r.stderr
    assert r.stdout == LINE * (TOTAL // len(LINE))
    assert counters(m)["virtio-serial-device"]["port0.bytes_out"] == TOTAL


def _drain(fd: int) -> bytes:
    """Everything left in a pipe or socket whose writer is gone."""
    os.set_blocking(fd, True)
    got = bytearray()
    while chunk := os.read(fd, 1 << 16):
        got += chunk
    return bytes(got)


def test_output_stuck_in_a_stalled_stdout_at_exit_is_counted_as_dropped(guest, tmp_path):
    """stdout is a 4 KiB pipe nobody reads while the VM runs: the guest's mebibyte fits the
    chardev's buffer (OUTPUT_BUFFER), so nothing is dropped for want of room; what is left
    in it at exit is given half a second and then dropped. The metrics written at exit
    count it: bytes_written is exactly what the pipe holds, and written + dropped is all
    the guest wrote."""
    m = tmp_path / "m.json"
    r_fd, w_fd = os.pipe()
    fcntl.fcntl(w_fd, fcntl.F_SETPIPE_SZ, 4096)
    try:
        p = subprocess.run(microvm_cmd("run", "--kernel", str(guest), "--no-reboot", "-M", MACHINE, *NO_SERIAL,
                                       "--chardev", "stdio,id=c0", *CONSOLE, "--metrics", str(m)),
                           stdin=subprocess.DEVNULL, stdout=w_fd, stderr=subprocess.PIPE, timeout=60)
        os.close(w_fd)
        w_fd = -1
        held = _drain(r_fd)
    finally:
        os.close(r_fd)
        if w_fd >= 0:
            os.close(w_fd)
    assert p.returncode == 0, p.stderr
    c = counters(m)
    assert c["virtio-serial-device"]["port0.bytes_out"] == TOTAL
    assert c["chardev.c0"]["bytes_written"] == len(held) and held == (LINE * (TOTAL // len(LINE)))[:len(held)]
    assert c["chardev.c0"]["bytes_dropped"] == TOTAL - len(held) > 0


def test_output_stuck_in_a_socket_client_that_does_not_read_is_counted_as_dropped(guest, tmp_path):
    """The same through a socket server whose client connects and never reads until
    microvm has exited: what the client finally reads is bytes_written, and the rest of the
    mebibyte, stuck at exit, is bytes_dropped."""
    import socket
    import time

    sock, m = tmp_path / "con.sock", tmp_path / "m.json"
    p = subprocess.Popen(microvm_cmd("run", "--kernel", str(guest), "--no-reboot", "-M", MACHINE,
                                     "--chardev", f"socket,id=c0,path={sock},server=on", *CONSOLE,
                                     "--metrics", str(m)),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = socket.socket(socket.AF_UNIX)
    try:
        # no buffer size to set here: what a unix stream holds for a reader that does not
        # read is governed by the sender's SO_SNDBUF (microvm's accepted socket, the
        # default net.core.wmem_default, about 200 KiB), not the receiver's SO_RCVBUF; a
        # mebibyte does not fit in it, so some output is still in microvm at exit
        end = time.monotonic() + 30
        while True:  # wait=on: microvm waits for us
            try:
                client.connect(str(sock))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                assert time.monotonic() < end and p.poll() is None, "microvm never listened"
                time.sleep(0.05)
        _, err = p.communicate(timeout=60)
        held = _drain(client.fileno())
    finally:
        client.close()
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    c = counters(m)
    assert c["virtio-serial-device"]["port0.bytes_out"] == TOTAL
    assert c["chardev.c0"]["bytes_written"] == len(held) and held == (LINE * (TOTAL // len(LINE)))[:len(held)]
    assert c["chardev.c0"]["bytes_dropped"] == TOTAL - len(held) > 0
