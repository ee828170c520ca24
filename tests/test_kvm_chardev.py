"""The character devices on /dev/kvm with tiny guests, through the command line: a pty and
unix/tcp sockets as the 16550's host side, a socket server that waits for its client,
chardevs that outlive guest resets, C-a x, and the bad input of issue 8 (one line, status
2, nothing left behind)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from kvm_helpers import build_guest, microvm_cmd, requires_kvm, run_microvm

pytestmark = [pytest.mark.kvm, requires_kvm]

WAIT = 30.0


@pytest.fixture(scope="module")
def guests(tmp_path_factory) -> dict[str, Path]:
    cache = tmp_path_factory.mktemp("guests")
    return {name: build_guest(name, cache) for name in ("serial-echo", "hello-pvh", "spin", "print-loop")}


def spawn(*args: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(microvm_cmd("run", *args), stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=subprocess.PIPE, start_new_session=True)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def recv_until(sock: socket.socket, marker: bytes, got: bytearray | None = None) -> bytes:
    got = bytearray() if got is None else got
    sock.settimeout(WAIT)
    while marker not in got:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def test_serial_on_a_pty(guests):
    """-serial pty: QEMU 7.2's announcement on stdout (qemu_printf); output and input
    through /dev/pts/N."""
    p = spawn("--kernel", str(guests["serial-echo"]), "--no-reboot", "--serial", "pty", stdout=subprocess.PIPE)
    try:
        line = p.stdout.readline().decode()
        m = re.fullmatch(r"char device redirected to (/dev/pts/\d+) \(label serial0\)\n", line)
        assert m, line
        fd = os.open(m.group(1), os.O_RDWR | os.O_NOCTTY)
        try:
            # READY may have gone out before the pty was opened (dropped, as in QEMU): the
            # echo of what we type is what proves the path both ways
            os.write(fd, b"z")
            got = bytearray()
            deadline = time.monotonic() + WAIT
            while b"[z]" not in got and time.monotonic() < deadline:
                got += os.read(fd, 4096)
            assert b"[z]" in got
            os.write(fd, b"q")
            assert p.wait(timeout=WAIT) == 0
        finally:
            os.close(fd)
    finally:
        stop(p)


def test_serial_unix_server_waits_for_its_client(guests, tmp_path):
    """-serial unix:PATH,server=on: the VM starts once a client connects (so it misses
    nothing), the client talks to the guest, and the socket file is gone after the run."""
    path = tmp_path / "com1.sock"
    p = spawn("--kernel", str(guests["serial-echo"]), "--no-reboot", "--serial", f"unix:{path},server=on")
    try:
        line = p.stderr.readline().decode()
        assert line == f"microvm: waiting for connection on: disconnected:unix:{path},server=on\n"
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(path))
        assert recv_until(c, b"READY\n") == b"READY\n"
        c.sendall(b"a")
        assert recv_until(c, b"[a]").endswith(b"[a]")
        c.sendall(b"q")
        assert recv_until(c, b"BYE\n").endswith(b"BYE\n")
        assert p.wait(timeout=WAIT) == 0
        c.close()
    finally:
        stop(p)
    assert not path.exists()


def test_sigterm_while_waiting_for_a_client(guests, tmp_path):
    path = tmp_path / "w.sock"
    p = spawn("--kernel", str(guests["spin"]), "--serial", f"unix:{path},server=on")
    try:
        assert b"waiting for connection" in p.stderr.readline()
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=WAIT) == 0
    finally:
        stop(p)
    assert not path.exists()


def test_a_second_vm_on_the_same_socket_path_leaves_the_first_one_waiting(guests, tmp_path):
    """VM A serves unix:P and waits (wait=on) for its client; VM B asks for the same path
    and is refused (status 2). Finding A's server must not connect to it: A's guest stays
    held back until A's real client comes, which then gets HELLO."""
    path = tmp_path / "com1.sock"
    a = spawn("-v", "--kernel", str(guests["hello-pvh"]), "--no-reboot", "--serial", f"unix:{path},server=on")
    try:
        while b"waiting for connection on" not in a.stderr.readline():
            assert a.poll() is None
        r = run_microvm("run", "--kernel", str(guests["hello-pvh"]), "--no-reboot", "--serial",
                        f"unix:{path},server=on,wait=off")
        assert r.returncode == 2 and b"Address already in use" in r.stderr, r.stderr
        assert r.stderr.count(b"\n") == 1, r.stderr
        time.sleep(0.5)  # pacing only: give a wrongly released A time to run its guest and exit
        assert a.poll() is None, a.stderr.read()
        c = socket.socket(socket.AF_UNIX)
        c.connect(str(path))
        try:
            assert b"HELLO\n" in recv_until(c, b"HELLO\n")
        finally:
            c.close()
        assert a.wait(timeout=WAIT) == 0
        err = a.stderr.read().decode(errors="replace")
    finally:
        stop(a)
    # -v logs each client: only the real one came (a probe would be a connect and a close,
    # often too quick for the wait to notice, but never unseen by the accepting thread)
    assert err.count("chardev serial0: connected") == 1, err
    assert not path.exists()


def test_tcp_server_without_wait_and_chardevs_outliving_guest_resets(guests):
    """-serial tcp:...,server=on,wait=off: the guest runs at once (output dropped until a
    client comes); a guest that resets again and again keeps the same connection, since
    chardevs live as long as the process (QEMU's too)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = spawn("--kernel", str(guests["hello-pvh"]), "--serial", f"tcp:127.0.0.1:{port},server=on,wait=off")
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                c = socket.create_connection(("127.0.0.1", port))
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the server never listened"
                time.sleep(0.05)
        got = bytearray()
        c.settimeout(WAIT)
        while got.count(b"HELLO\n") < 3:
            chunk = c.recv(4096)
            assert chunk, f"connection closed after {bytes(got)!r}"
            got += chunk
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=WAIT) == 0
        c.close()
    finally:
        stop(p)


def test_c_a_x_quits_with_a_stalled_stdout(guests):
    """C-a x ends the VMM though nobody reads its stdout (issue 12: shutdown never waits on
    a sink); the guest resets in a loop meanwhile."""
    r_fd, w_fd = os.pipe()
    import fcntl

    fcntl.fcntl(w_fd, fcntl.F_SETPIPE_SZ, 4096)
    p = subprocess.Popen(microvm_cmd("run", "--kernel", str(guests["print-loop"]), "-v"), stdin=subprocess.PIPE,
                         stdout=w_fd, stderr=subprocess.PIPE, start_new_session=True)
    try:
        time.sleep(1.5)  # pacing: the pipe fills
        p.stdin.write(b"\x01x")
        p.stdin.flush()
        assert p.wait(timeout=10) == 0
        assert b"stopping: terminated by C-a x" in p.stderr.read()
    finally:
        stop(p)
        os.close(r_fd)
        os.close(w_fd)


@pytest.mark.parametrize("after", [0.3, 0.8, 2.0])
def test_a_guest_resetting_in_a_loop_into_a_stalled_stdout_stops_on_sigterm(guests, after):
    """Also: a SIGTERM that lands while a reset rebuilds the machine ends the process (it
    used to kick the old machine's closed vCPUs: a segfault, or a lost signal and a hang)."""
    r_fd, w_fd = os.pipe()
    import fcntl

    fcntl.fcntl(w_fd, fcntl.F_SETPIPE_SZ, 4096)
    p = subprocess.Popen(microvm_cmd("run", "--kernel", str(guests["hello-pvh"])), stdin=subprocess.DEVNULL,
                         stdout=w_fd, stderr=subprocess.PIPE, start_new_session=True)
    try:
        time.sleep(after)  # pacing: while starting, or after many resets with the pipe full
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 0
    finally:
        stop(p)
        os.close(r_fd)
        os.close(w_fd)


def test_a_second_serial_makes_its_chardev_and_a_warning_as_qemus_microvm_has_one_port(guests):
    """QEMU 7.2 with -M microvm -serial null -serial pty makes the chardev serial1 (it
    announces the pty) and no second 16550; microvm does the same, and says so once (the
    second -serial was silently ignored)."""
    r = run_microvm("run", "--kernel", str(guests["hello-pvh"]), "--no-reboot", "--serial", "null", "--serial", "pty")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(rb"char device redirected to /dev/pts/\d+ \(label serial1\)\n", r.stdout), r.stdout
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "--serial pty: microvm has one serial port (COM1)" in err, err


# ---------------------------------------------------------------------------------- file on a FIFO
def test_serial_file_on_a_fifo_without_a_reader_stops_on_sigterm(guests, tmp_path):
    """--serial file:FIFO with nobody reading: opening it never blocks (it used to block in
    open(O_WRONLY), restarted after every signal, so SIGTERM did nothing), the VM runs, and
    SIGTERM ends it with status 0, as for any other sink."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    p = spawn("--kernel", str(guests["spin"]), "--serial", f"file:{fifo}")
    try:
        time.sleep(1)  # pacing only: let it get as far as it gets
        assert p.poll() is None, p.stderr.read()
        p.send_signal(signal.SIGTERM)
        # generous: tells "stops" from "ignores SIGTERM"; not a timing assertion
        assert p.wait(timeout=WAIT) == 0, p.stderr.read()
    finally:
        stop(p)


def test_serial_file_on_a_fifo_keeps_output_for_a_reader_that_comes_later(guests, tmp_path):
    """The FIFO is held read-write (as the pipe backend holds it): what the guest wrote
    before anyone read waits in it, and a reader that opens it later gets it."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    p = spawn("--kernel", str(guests["spin"]), "--serial", f"file:{fifo}")
    try:
        time.sleep(1)  # pacing only: the guest prints SPIN at once and then spins
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            got = bytearray()
            deadline = time.monotonic() + WAIT
            while b"SPIN\n" not in got and time.monotonic() < deadline:
                try:
                    got += os.read(fd, 4096)
                except BlockingIOError:
                    time.sleep(0.05)
            assert b"SPIN\n" in got, (bytes(got), p.poll())
        finally:
            os.close(fd)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=WAIT) == 0, p.stderr.read()
    finally:
        stop(p)


# ---------------------------------------------------------------------------------- bad input
def _bad(args: list[str], msg: str) -> None:
    r = run_microvm("run", *args)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert err.count("\n") == 1 and msg in err, err


def test_bad_input_is_one_line_status_2_and_leaves_no_socket_file(guests, tmp_path):
    k = ["--kernel", str(guests["hello-pvh"]), "--no-reboot"]
    ok_sock = tmp_path / "ok.sock"
    first = f"socket,id=a,path={ok_sock},server=on,wait=off"
    _bad([*k, "--chardev", "null,id=c0", "--chardev", "null,id=c0"], "duplicate id 'c0'")
    _bad([*k, "--device", "virtio-serial-device", "--device", "virtconsole,chardev=nope"], "chardev 'nope' not found")
    _bad([*k, "--chardev", "stdio,id=c0", "--serial", "chardev:c0", "--device", "virtio-serial-device",
          "--device", "virtconsole,chardev=c0"], "chardev 'c0' is already in use by serial port 0")
    _bad([*k, "--chardev", "stdio,id=c0", "--device", "virtio-serial-device", "--device", "virtconsole,chardev=c0"],
         "cannot use stdio by multiple character devices")
    _bad([*k, "--chardev", first, "--chardev", f"socket,id=b,path={tmp_path}/no/such/dir/s.sock,server=on"],
         "Failed to bind socket to")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        _bad([*k, "--chardev", first, "--chardev", f"socket,id=b,host=127.0.0.1,port={port},server=on,wait=off"],
             "Address already in use")
        _bad([*k, "--serial", f"tcp:127.0.0.1:{port},server=on,wait=off"], "Address already in use")
    finally:
        s.close()
    assert list(tmp_path.iterdir()) == [], "a run that failed to start left a file behind"


def test_mux_shares_stdio_between_the_16550_and_a_virtconsole(guests):
    r = run_microvm("run", "--kernel", str(guests["hello-pvh"]), "--no-reboot", "--chardev", "stdio,id=c0,mux=on",
                    "--serial", "chardev:c0", "--device", "virtio-serial-device", "--device", "virtconsole,chardev=c0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"HELLO\n"
