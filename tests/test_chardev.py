"""Character-device backends against real files, pipes, FIFOs, ptys and sockets: output that
never blocks (bounded, dropped and counted), flow-controlled input, QEMU's C-a escapes, mux,
host-side open/close events, and the configuration errors of issue 8's bad-input list."""
from __future__ import annotations

import fcntl
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from microvm.chardev import (
    CharBackend,
    FdBackend,
    FileBackend,
    NullBackend,
    PipeBackend,
    PtyBackend,
    SocketBackend,
)
from microvm.chardev.base import MUX_HELP, OUTPUT_BUFFER, TERMINATED
from microvm.chardev.fd import NONBLOCK
from microvm.config import SerialConfig
from microvm.errors import ConfigError

WAIT = 10.0  # generous bound for "it happened" (never a timing assertion)


def until(cond: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Wait for ``cond()`` to be true; fail saying ``what`` did not happen."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.01)
    raise AssertionError(f"{what} did not happen within {timeout} s")


class Sink:
    """A device's side: collects input, breaks and events; optional flow control."""

    def __init__(self, room: int | None = None) -> None:
        self.data = bytearray()
        self.events: list[Any] = []
        self.room = room
        self.lock = threading.Lock()

    def receive(self, b: bytes) -> None:
        with self.lock:
            if self.room is not None:
                assert len(b) <= self.room, "got more than can_receive allowed"
                self.room -= len(b)
            self.data += b
            self.events.append(bytes(b))

    def can_receive(self) -> int:
        return 1 << 20 if self.room is None else self.room

    def brk(self) -> None:
        self.events.append("BREAK")

    def event(self, opened: bool) -> None:
        self.events.append("OPEN" if opened else "CLOSED")

    def attach(self, fe: Any) -> None:
        fe.set_handlers(receive=self.receive, can_receive=self.can_receive, on_break=self.brk, on_event=self.event)


def pipe_backend(label: str = "c0", **kw: Any) -> tuple[FdBackend, int, int]:
    """A backend writing into a pipe (we read ``out_r``) and reading one (we write ``in_w``)."""
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    os.set_blocking(out_w, False)
    os.set_blocking(in_r, False)
    b = FdBackend(label, out_w, in_r, out_mode=NONBLOCK, owned=(out_w, in_r), **kw)
    return b, out_r, in_w


def read_all(fd: int, n: int) -> bytes:
    got = bytearray()
    end = time.monotonic() + WAIT
    while len(got) < n and time.monotonic() < end:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        got += chunk
    return bytes(got)


def merged(events: list[Any]) -> list[Any]:
    out: list[Any] = []
    for e in events:
        if isinstance(e, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += e
        else:
            out.append(e)
    return out


# ---------------------------------------------------------------------------------- escapes
def run_input(raw: bytes, escapes: bool, mux: bool = False) -> tuple[list[Any], list[str]]:
    quits: list[str] = []
    b, out_r, in_w = pipe_backend(escapes=escapes, mux=mux, on_quit=lambda: quits.append("QUIT"))
    sink = Sink()
    sink.attach(b.attach("dev"))
    b.start()
    os.write(in_w, raw)
    os.close(in_w)  # EOF: the backend stops reading, the guest would keep running
    until(lambda: b._input_eof and not b._pending, "reading the input to its end")
    b.close()
    b.close()  # idempotent
    os.close(out_r)
    return merged(sink.events), quits


def test_escapes_as_in_qemus_mux():
    """C-a b: BREAK (Magic SysRq on a 16550), C-a C-a: one C-a, C-a x: quit."""
    events, quits = run_input(b"ab\x01bc\x01\x01d\x01xz", escapes=True)
    assert events == [b"ab", "BREAK", b"c\x01dz"]
    assert quits == ["QUIT"]


def test_other_keys_after_c_a_are_dropped_with_it_as_in_qemus_mux():
    """QEMU 7.2's mux_proc_byte knows h ? x s b c t and the escape itself; anything else
    after C-a (a capital X or B too: commands are lower case) reaches nobody, and neither
    does the C-a. C-a s (QEMU: commit -snapshot disks) does nothing here."""
    events, quits = run_input(b"a\x01qb\x01Xc\x01Bd\x01se\x01\x00f", escapes=True)
    assert events == [b"abcdef"] and quits == []


def test_plain_byte_stream_without_escapes():
    raw = b"ab\x01bc\x01x"
    assert run_input(raw, escapes=False) == ([raw], [])


def test_c_a_h_prints_qemus_mux_help_and_c_a_x_says_terminated():
    """C-a h answers on the output in QEMU's layout (the commands microvm has); nothing
    reaches the guest. C-a x says "Terminated" as QEMU's mux does, then quits."""
    quits: list[str] = []
    b, out_r, in_w = pipe_backend(escapes=True, mux=True, on_quit=lambda: quits.append("QUIT"))
    sink = Sink()
    sink.attach(b.attach("dev"))
    b.start()
    os.write(in_w, b"a\x01hb\x01x")
    until(lambda: quits, "C-a x")
    out = read_all(out_r, len(MUX_HELP + TERMINATED))
    until(lambda: sink.data == b"ab", "the bytes around the escapes")
    b.close()
    os.close(in_w)
    os.close(out_r)
    assert out == MUX_HELP + TERMINATED
    assert MUX_HELP == (b"\n\rC-a h    print this help\n\rC-a x    exit emulator\n\r"
                        b"C-a s    save disk data back to file (if -snapshot)\n\r"
                        b"C-a t    toggle console timestamps\n\r"
                        b"C-a b    send break (magic sysrq)\n\rC-a c    switch between frontends\n\r"
                        b"C-a C-a  sends C-a\n\r")


def test_c_a_question_mark_prints_the_help_too():
    b, out_r, in_w = pipe_backend(escapes=True, mux=True)
    sink = Sink()
    sink.attach(b.attach("dev"))
    b.start()
    os.write(in_w, b"\x01?")
    assert read_all(out_r, len(MUX_HELP)) == MUX_HELP
    assert sink.data == b""
    b.close()
    os.close(in_w)
    os.close(out_r)


def test_c_a_t_toggles_timestamps_on_the_output_as_qemu():
    """After C-a t each line's first byte is preceded by [HH:MM:SS.mmm] (time since the
    first stamp), from the line after the toggle on, as QEMU's mux_chr_write; C-a t again
    ends it."""
    import re

    b, out_r, in_w = pipe_backend(escapes=True, mux=True)
    fe = b.attach("dev")
    Sink().attach(fe)
    b.start()
    os.write(in_w, b"\x01t")
    until(lambda: b._timestamps, "C-a t")
    fe.write(b"rest of the line\nsecond\n\nfourth")
    fe.write(b" line\nfifth\n")
    got = read_all(out_r, 17 + 4 * 15 + 7 + 1 + 12 + 6)  # the text and four stamps
    lines = got.split(b"\n")
    assert lines[0] == b"rest of the line"  # the line under way gets no stamp
    stamp = rb"\[(\d\d):(\d\d):(\d\d)\.(\d\d\d)\] "
    assert [re.fullmatch(stamp + rb"(.*)", x).group(5) for x in lines[1:5]] == [b"second", b"", b"fourth line", b"fifth"]
    assert re.fullmatch(stamp, lines[1][:15]).groups()[:3] == (b"00", b"00", b"00")  # the first is 0 s
    assert lines[5] == b""
    os.write(in_w, b"\x01t")
    until(lambda: not b._timestamps, "C-a t again")
    fe.write(b"plain\n")
    assert read_all(out_r, 6) == b"plain\n"
    b.close()
    os.close(in_w)
    os.close(out_r)


STAMP = rb"\[\d\d:\d\d:\d\d\.\d\d\d\] "


def test_timestamps_and_the_mux_messages_are_not_counted_as_device_output():
    """bytes_written counts what the devices wrote: C-a t's stamps and C-a h's help reach
    the sink but are not device bytes (bytes_written + bytes_dropped = what was written)."""
    import re

    b, out_r, in_w = pipe_backend(escapes=True, mux=True)
    fe = b.attach("dev")
    Sink().attach(fe)
    b.start()
    os.write(in_w, b"\x01t\x01h")
    until(lambda: b._timestamps, "C-a t")
    assert read_all(out_r, len(MUX_HELP)) == MUX_HELP
    text = b"first\nsecond\nthird\n"
    fe.write(text)
    got = read_all(out_r, len(text) + 2 * 15)
    assert len(re.findall(STAMP, got)) == 2 and re.sub(STAMP, b"", got) == text
    b.close()
    assert b.counters["bytes_written"] == len(text) and b.counters["bytes_dropped"] == 0
    os.close(in_w)
    os.close(out_r)


def test_timestamps_take_only_the_room_the_device_left():
    """A throttled frontend (a virtio serial port) writes no more than write_room(): the
    stamps must not push its bytes out of a full buffer. They go in while there is room
    beyond the device's bytes; the lines beyond that go unstamped, and nothing is dropped."""
    import re

    b, out_r, in_w = pipe_backend(escapes=True, mux=True, buffer_size=4096)
    fcntl.fcntl(out_r, fcntl.F_SETPIPE_SZ, 4096)
    prefill = 0
    while True:  # the sink is full: what is written waits in the backend's buffer
        try:
            prefill += os.write(b.out_fd, b"p" * 4096)
        except BlockingIOError:
            break
    fe = b.attach("dev")
    Sink().attach(fe)
    b.start()
    os.write(in_w, b"\x01t")
    until(lambda: b._timestamps, "C-a t")
    head = b"head\n"
    fe.write(head)
    room = fe.write_room()
    assert room == 4096 - len(head)
    line = b"x" * 9 + b"\n"
    data = line * ((room - 100) // len(line))  # leaves room for 6 stamps of 15 bytes
    fe.write(data)
    assert b.counters["bytes_dropped"] == 0
    rest = fe.write_room()
    assert rest == room - len(data) - 6 * 15  # the stamps took their room
    tail = b"y" * (rest - 1) + b"\n"  # fills the buffer exactly: no room for a stamp
    fe.write(tail)
    assert b.counters["bytes_dropped"] == 0 and fe.write_room() == 0
    total = len(head) + len(data) + len(tail)
    got = bytearray(read_all(out_r, prefill))
    end = time.monotonic() + WAIT
    while len(re.sub(STAMP, b"", bytes(got[prefill:]))) < total and time.monotonic() < end:
        got += os.read(out_r, 65536)
    assert bytes(got[:prefill]) == b"p" * prefill
    out = bytes(got[prefill:])
    assert re.sub(STAMP, b"", out) == head + data + tail
    # head's line was under way at the toggle; the first 6 lines of data are stamped
    assert [m.start() for m in re.finditer(STAMP, out)] == [len(head) + i * (15 + len(line)) for i in range(6)]
    b.close()
    assert b.counters["bytes_written"] == total and b.counters["bytes_dropped"] == 0
    os.close(in_w)
    os.close(out_r)


def test_a_terminal_keeps_isig_only_with_signals():
    """QEMU's stdio signal=on (the default) leaves Ctrl-C to the terminal's line discipline,
    which signals the VMM; signal=off (the mux of -nographic) passes it to the guest. The
    terminal is raw otherwise, and restored at close."""
    import pty
    import termios

    for signals in (True, False):
        master, slave = pty.openpty()
        before = termios.tcgetattr(slave)
        b = FdBackend("c0", None, None, tty_fd=slave, signals=signals)
        try:
            b.start()
            lflag = termios.tcgetattr(slave)[3]
            assert bool(lflag & termios.ISIG) == signals
            assert not lflag & termios.ICANON and not lflag & termios.ECHO  # raw otherwise
        finally:
            b.close()
            assert termios.tcgetattr(slave) == before
            os.close(master)
            os.close(slave)


def test_mux_shares_output_and_switches_input_focus():
    """mux=on: every frontend writes; input goes to the focused one; C-a c moves the focus."""
    b, out_r, in_w = pipe_backend(escapes=True, mux=True)
    serial, console = Sink(), Sink()
    fe1, fe2 = b.attach("serial port 0"), b.attach("virtconsole")
    serial.attach(fe1)
    console.attach(fe2)
    b.start()
    fe1.write(b"one ")
    fe2.write(b"two")
    assert read_all(out_r, 7) == b"one two"
    os.write(in_w, b"a\x01cb\x01cc")
    until(lambda: serial.data == b"ac" and console.data == b"b", "input following the focus")
    b.close()
    for fd in (in_w, out_r):
        os.close(fd)


def test_escape_commands_behind_stuck_input_count_toward_the_pending_bound():
    """A frontend that takes nothing, "x" at the head of the input, then C-a b 20,000
    times: each break waits behind the "x" and counts as pending input, so reading stops
    at INPUT_PENDING and the rest stays in the pipe (it used to be read without end: 25 MiB
    of C-a b made 13 million pending items). Once the frontend takes input, all of it
    arrives, in order."""
    from microvm.chardev.base import INPUT_PENDING

    b, out_r, in_w = pipe_backend(escapes=True, mux=True)
    sink = Sink(room=0)
    fe = b.attach("dev")
    sink.attach(fe)
    b.start()
    n = 20000
    raw = b"x" + b"\x01b" * n  # 40 KB: fits in the pipe, ten times INPUT_PENDING
    os.write(in_w, raw)
    until(lambda: b.counters["bytes_read"] > 0 and b._pending_len >= INPUT_PENDING - 1, "reading up to the bound")
    time.sleep(0.1)  # let a wrongly unbounded reader go on reading
    assert b._pending_len <= INPUT_PENDING and len(b._pending) <= INPUT_PENDING
    assert b.counters["bytes_read"] <= 2 * INPUT_PENDING < len(raw)
    with sink.lock:
        sink.room = 1
    fe.accept_input()
    until(lambda: sink.events.count("BREAK") == n, "every break once the frontend takes input")
    assert sink.events[0] == b"x" and sink.events[1:] == ["BREAK"] * n
    assert b.counters["bytes_read"] == len(raw)
    b.close()
    os.close(in_w)
    os.close(out_r)


def test_without_mux_a_second_frontend_is_refused():
    b = NullBackend("c0")
    b.attach("serial port 0")
    with pytest.raises(ConfigError, match=r"virtconsole: chardev 'c0' is already in use by serial port 0 .*mux=on"):
        b.attach("virtconsole")
    b.close()


# ---------------------------------------------------------------------------------- output
def test_output_reaches_the_pipe_whole_and_in_order():
    b, out_r, in_w = pipe_backend()
    b.attach("dev")
    b.start()
    data = bytes(range(256)) * 200
    for i in range(0, len(data), 1000):
        b.write(data[i : i + 1000])
    assert read_all(out_r, len(data)) == data
    assert b.counters["bytes_written"] == len(data) and b.counters["bytes_dropped"] == 0
    b.close()
    os.close(in_w)
    os.close(out_r)


def test_a_stalled_sink_never_blocks_the_writer_and_close_is_bounded():
    """The sink: a one-page pipe nobody reads. 4 MiB of writes all return; what did not fit
    (pipe + OUTPUT_BUFFER) is dropped and counted; close() returns though the sink is stuck."""
    out_r, out_w = os.pipe()
    fcntl.fcntl(out_w, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(out_w, False)
    b = FdBackend("c0", out_w, None, out_mode=NONBLOCK, owned=(out_w,))
    fe = b.attach("dev")
    b.start()
    total = 4 << 20

    def guest() -> None:
        for _ in range(total // 64):
            fe.write(b"x" * 64)

    t = threading.Thread(target=guest, daemon=True)
    t.start()
    t.join(WAIT)
    assert not t.is_alive(), "a write blocked"
    closer = threading.Thread(target=b.close, daemon=True)
    closer.start()
    closer.join(WAIT)
    assert not closer.is_alive(), "close() waited for the stalled sink"
    written, dropped = b.counters["bytes_written"], b.counters["bytes_dropped"]
    assert written + dropped == total
    assert 4096 <= written <= 4096 + OUTPUT_BUFFER
    os.close(out_r)


def test_output_stuck_in_a_blocking_write_at_exit_is_counted_as_dropped(tmp_path: Path):
    """A sink written by blocking writes (a regular file on a hung file system; here a FIFO
    opened blocking whose reader never reads) holds the I/O thread in the kernel: close()
    gives up on it at its deadline, and what the thread still held is in bytes_dropped (it
    was only in the log line), also in the run's --metrics."""
    from microvm.chardev.fd import BLOCKING
    from microvm.metrics import Metrics

    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    rd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader that never reads
    wr = os.open(fifo, os.O_WRONLY)  # blocking
    fcntl.fcntl(wr, fcntl.F_SETPIPE_SZ, 4096)
    metrics = Metrics()
    b = FdBackend("c0", wr, None, out_mode=BLOCKING, owned=(wr,), counters=metrics.group("devices", "chardev.c0"))
    fe = b.attach("dev")
    b.start()
    total = 256 << 10
    for _ in range(total // 4096):
        fe.write(b"s" * 4096)  # never blocks the writer: the I/O thread does the writing
    until(lambda: b._thread is not None and b._out and b._stalled is False, "the I/O thread writing")
    time.sleep(0.2)  # pacing only: the thread is now blocked in write()
    closer = threading.Thread(target=b.close, args=(time.monotonic() + 0.5,), daemon=True)
    closer.start()
    closer.join(WAIT)
    assert not closer.is_alive(), "close() waited for the stuck write"
    c = metrics.snapshot()["devices"]["chardev.c0"]
    assert c.get("bytes_dropped", 0) > 0, c
    assert c.get("bytes_written", 0) + c["bytes_dropped"] == total, c
    os.close(rd)  # the stuck write fails with EPIPE: the thread ends; nothing is counted twice
    until(lambda: not b._thread.is_alive(), "the I/O thread ending")
    c2 = metrics.snapshot()["devices"]["chardev.c0"]
    assert c2.get("bytes_written", 0) + c2["bytes_dropped"] == total, c2


def test_output_to_a_closed_reader_is_dropped_and_counted():
    out_r, out_w = os.pipe()
    os.close(out_r)
    os.set_blocking(out_w, False)
    b = FdBackend("c0", out_w, None, out_mode=NONBLOCK, owned=(out_w,))
    b.attach("dev")
    b.start()
    b.write(b"lost")  # EPIPE (SIGPIPE is ignored by Python): the guest keeps running
    until(lambda: b._sink_gone, "the backend noticing the broken pipe")
    b.write(b"more")
    assert b.counters["bytes_dropped"] == 8 and b.counters["bytes_written"] == 0
    b.close()


def test_null_backend_takes_everything():
    n = NullBackend("n0")
    fe = n.attach("dev")
    fe.write(b"x" * 10)
    fe.set_receiver(lambda b: None)
    fe.start()
    assert n.counters["bytes_written"] == 10 and fe.is_open
    fe.close()
    n.close()


# ---------------------------------------------------------------------------------- input
def test_input_respects_can_receive_and_resumes_on_accept_input():
    b, out_r, in_w = pipe_backend()
    sink = Sink(room=3)
    fe = b.attach("dev")
    sink.attach(fe)
    b.start()
    os.write(in_w, b"abcdefgh")
    until(lambda: sink.data == b"abc", "the first 3 bytes")
    time.sleep(0.05)
    assert sink.data == b"abc"  # no more than there was room for
    with sink.lock:
        sink.room = 100
    fe.accept_input()
    until(lambda: sink.data == b"abcdefgh", "the rest after accept_input")
    b.close()
    os.close(in_w)
    os.close(out_r)


def test_input_without_a_receiver_is_dropped_not_hoarded():
    b, out_r, in_w = pipe_backend()
    b.attach("dev")  # an output-only device
    b.start()
    os.write(in_w, b"x" * 10000)
    until(lambda: b.counters["input_dropped"] == 10000, "dropping input nobody takes")
    b.close()
    os.close(in_w)
    os.close(out_r)


# ---------------------------------------------------------------------------------- file
def test_file_backend_truncates_or_appends_and_reads_input_path(tmp_path: Path):
    path = tmp_path / "log"
    path.write_bytes(b"old\n")
    b = FileBackend("f0", str(path))
    b.attach("dev").write(b"new\n")
    b.start()
    b.close()
    assert path.read_bytes() == b"new\n"
    b = FileBackend("f0", str(path), append=True)
    b.attach("dev").write(b"more\n")
    b.close()  # never started: close hands the buffer over all the same
    inp = tmp_path / "in"
    inp.write_bytes(b"typed")
    b = FileBackend("f1", str(path), append=True, input_path=str(inp))
    sink = Sink()
    sink.attach(b.attach("dev"))
    b.start()
    b.write(b"after\n")
    until(lambda: sink.data == b"typed", "input from input-path")
    b.close()
    assert path.read_bytes() == b"new\nmore\nafter\n"
    assert b.filename() == "file"  # QEMU 7.2's query-chardev says no more


def test_file_backend_bad_path_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="Could not open .*No such file or directory"):
        FileBackend("f0", str(tmp_path / "no/such/dir/log"))


def test_file_backend_on_a_fifo_never_blocks_and_keeps_what_fits(tmp_path: Path):
    """A FIFO nobody reads: the open returns at once (O_WRONLY would wait for a reader),
    output fills the FIFO, the rest is dropped and counted; a reader that comes later gets
    what the FIFO held, and then new output."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    opened: list[FileBackend] = []
    t = threading.Thread(target=lambda: opened.append(FileBackend("f0", str(fifo))), daemon=True)
    t.start()
    t.join(WAIT)
    assert not t.is_alive(), "opening a FIFO without a reader blocked"
    b = opened[0]
    assert b.out_mode == NONBLOCK and b.direct_write
    fe = b.attach("dev")
    b.start()
    fe.write(b"early\n")
    rd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    until(lambda: _try_read(rd) == b"early\n", "the output written before the reader came")
    for _ in range(40):
        fe.write(b"z" * 65536)  # 2.5 MiB while the reader reads nothing: never blocks
    until(lambda: b.counters["bytes_dropped"] > 0, "dropping what the FIFO and the buffer cannot hold")
    closer = threading.Thread(target=b.close, daemon=True)
    closer.start()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert b.counters["bytes_written"] + b.counters["bytes_dropped"] == 6 + 40 * 65536
    os.close(rd)


def test_file_backend_on_a_fifo_that_has_a_reader(tmp_path: Path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    rd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    b = FileBackend("f0", str(fifo), append=True)
    fe = b.attach("dev")
    b.start()
    fe.write(b"hello")
    until(lambda: _try_read(rd) == b"hello", "output through the FIFO")
    b.close()
    os.close(rd)


# ---------------------------------------------------------------------------------- pipe
def test_pipe_backend_uses_path_in_and_out_fifos(tmp_path: Path):
    base = tmp_path / "p"
    os.mkfifo(f"{base}.in")
    os.mkfifo(f"{base}.out")
    b = PipeBackend("p0", str(base))
    sink = Sink()
    fe = b.attach("dev")
    sink.attach(fe)
    b.start()
    rd = os.open(f"{base}.out", os.O_RDONLY | os.O_NONBLOCK)
    wr = os.open(f"{base}.in", os.O_WRONLY)
    fe.write(b"to host")
    until(lambda: _try_read(rd) == b"to host", "output in path.out")
    os.write(wr, b"to guest")
    until(lambda: sink.data == b"to guest", "input from path.in")
    b.close()
    os.close(rd)
    os.close(wr)


def _try_read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""


def test_pipe_backend_with_nobody_reading_drops_instead_of_blocking(tmp_path: Path):
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    b = PipeBackend("p0", str(fifo))  # path itself, both ways (QEMU's fallback)
    fe = b.attach("dev")
    b.start()
    for _ in range(64):
        fe.write(b"y" * 65536)  # 4 MiB: more than the FIFO and the backend's buffer hold
    until(lambda: b.counters["bytes_dropped"] > 0, "dropping what the FIFO cannot hold")
    b.close()


def test_pipe_backend_missing_path_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="Could not open"):
        PipeBackend("p0", str(tmp_path / "nothing"))


# ---------------------------------------------------------------------------------- pty
def test_pty_announces_itself_and_is_open_only_while_someone_has_it(capfd):
    b = PtyBackend("con0")
    out = capfd.readouterr()
    assert out.out == f"char device redirected to {b.path} (label con0)\n" and out.err == ""  # stdout, as QEMU
    assert b.path.startswith("/dev/pts/") and b.filename() == f"pty:{b.path}"
    sink = Sink()
    fe = b.attach("dev")
    sink.attach(fe)
    b.start()
    assert not fe.is_open
    fe.write(b"nobody sees this")
    assert b.counters["bytes_dropped"] == 16
    slave = os.open(b.path, os.O_RDWR | os.O_NOCTTY)
    until(lambda: "OPEN" in sink.events, "the open event (checked once a second)")
    fe.write(b"hello")
    assert read_all(slave, 5) == b"hello"
    os.write(slave, b"typed")
    until(lambda: sink.data == b"typed", "input typed on the pty")
    os.close(slave)
    until(lambda: sink.events[-1] == "CLOSED", "the close event")
    fe.write(b"dropped again")
    b.close()


# ---------------------------------------------------------------------------------- sockets
def test_unix_server_without_a_client_drops_output_and_serves_late_clients(tmp_path: Path):
    path = str(tmp_path / "s.sock")
    b = SocketBackend("s0", path=path, server=True, wait=False)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert b.filename() == f"disconnected:unix:{path},server=on"
    sink = Sink()
    fe = b.attach("dev")
    sink.attach(fe)
    b.start()
    fe.write(b"before anyone listens")
    assert b.counters["bytes_dropped"] == 21 and not fe.is_open

    for round_ in range(2):  # a client that goes away ends nothing; the next one is served
        c = socket.socket(socket.AF_UNIX)
        c.connect(path)
        until(lambda: fe.is_open, "accepting the client")
        assert b.filename() == f"unix:{path},server=on"
        fe.write(b"hello %d" % round_)
        assert _recv(c, 7) == b"hello %d" % round_
        c.sendall(b"in%d" % round_)
        until(lambda: sink.data.endswith(b"in%d" % round_), "input from the client")
        c.close()
        until(lambda: not fe.is_open, "noticing the client went away")
        fe.write(b"x")  # dropped, the VM keeps running
    assert merged(sink.events).count("OPEN") == 2 and merged(sink.events).count("CLOSED") == 2
    b.close()
    assert not os.path.exists(path), "the socket file is removed at close"


def _recv(c: socket.socket, n: int) -> bytes:
    c.settimeout(WAIT)
    got = b""
    while len(got) < n:
        chunk = c.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def test_unix_server_wait_on_holds_until_a_client_connects(tmp_path: Path, capfd):
    path = str(tmp_path / "w.sock")
    b = SocketBackend("s0", path=path, server=True, wait=True)
    b.attach("dev")
    c = socket.socket(socket.AF_UNIX)
    threading.Timer(0.2, c.connect, args=(path,)).start()
    b.wait_connected(lambda: False)
    assert b.connected
    assert f"waiting for connection on: disconnected:unix:{path},server=on" in capfd.readouterr().err
    c.close()
    b.close()


def test_unix_server_wait_is_cut_short_by_a_stop(tmp_path: Path):
    b = SocketBackend("s0", path=str(tmp_path / "w.sock"), server=True, wait=True)
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    b.wait_connected(stop.is_set)  # returns: SIGTERM during the wait ends the VMM
    assert not b.connected
    b.close()


def test_unix_server_path_errors_leave_nothing_behind(tmp_path: Path):
    with pytest.raises(ConfigError, match="Failed to bind socket to .*No such file or directory"):
        SocketBackend("s0", path=str(tmp_path / "missing/dir/s.sock"), server=True, wait=False)
    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        SocketBackend("s0", path=str(regular), server=True, wait=False)
    assert regular.read_text() == "keep me"
    with pytest.raises(ConfigError, match="too long"):
        SocketBackend("s0", path="/tmp/" + "x" * 200, server=True, wait=False)
    live = SocketBackend("s1", path=str(tmp_path / "live.sock"), server=True, wait=False)
    with pytest.raises(ConfigError, match="Address already in use"):
        SocketBackend("s2", path=str(tmp_path / "live.sock"), server=True, wait=False)
    live.close()
    assert os.listdir(tmp_path) == ["file"]


def test_a_live_server_is_found_without_connecting_to_it(tmp_path: Path):
    """Another process's server on the path (here a plain listening socket): refused, and
    that server sees no connection (one would end its wait=on and start its guest without
    its real client)."""
    path = str(tmp_path / "other.sock")
    other = socket.socket(socket.AF_UNIX)
    other.bind(path)
    other.listen(1)
    other.setblocking(False)
    with pytest.raises(ConfigError, match="Address already in use"):
        SocketBackend("s0", path=path, server=True, wait=False)
    with pytest.raises(BlockingIOError):
        other.accept()  # nobody knocked
    assert stat.S_ISSOCK(os.lstat(path).st_mode), "the other server's file stays"
    other.close()


def test_a_bound_socket_on_a_relative_path_is_found(tmp_path: Path, monkeypatch):
    """The kernel is asked by the file's inode, so a server that bound a relative path (as
    /proc/net/unix shows it) is found too."""
    monkeypatch.chdir(tmp_path)
    other = socket.socket(socket.AF_UNIX)
    other.bind("rel.sock")
    other.listen(1)
    with pytest.raises(ConfigError, match="Address already in use"):
        SocketBackend("s0", path=str(tmp_path / "rel.sock"), server=True, wait=False)
    other.close()


def test_without_sock_diag_proc_net_unix_finds_the_listener(tmp_path: Path, monkeypatch):
    from microvm.chardev import socket as chardev_socket

    monkeypatch.setattr(chardev_socket, "_bound_by_sock_diag", lambda st: None)
    path = str(tmp_path / "other.sock")
    other = socket.socket(socket.AF_UNIX)
    other.bind(path)
    other.listen(1)
    other.setblocking(False)
    assert chardev_socket._listed_in_proc_net_unix(path) is True
    with pytest.raises(ConfigError, match="Address already in use"):
        SocketBackend("s0", path=path, server=True, wait=False)
    with pytest.raises(BlockingIOError):
        other.accept()
    other.close()
    assert chardev_socket._listed_in_proc_net_unix(path) is False  # stale now
    SocketBackend("s0", path=path, server=True, wait=False).close()


def test_unix_server_replaces_a_stale_socket_file(tmp_path: Path):
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # the file stays, nobody listens: what a killed VMM leaves
    b = SocketBackend("s0", path=path, server=True, wait=False)
    b.close()
    assert not os.path.exists(path)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_tcp_server_and_a_port_in_use():
    port = _free_port()
    b = SocketBackend("t0", host="127.0.0.1", port=str(port), server=True, wait=False, nodelay=True)
    assert b.filename() == f"disconnected:tcp:127.0.0.1:{port},server=on"
    with pytest.raises(ConfigError, match="Failed to bind socket to 127.0.0.1:%d: Address already in use" % port):
        SocketBackend("t1", host="127.0.0.1", port=str(port), server=True, wait=False)
    fe = b.attach("dev")
    sink = Sink()
    sink.attach(fe)
    b.start()
    c = socket.create_connection(("127.0.0.1", port))
    until(lambda: fe.is_open, "accepting the TCP client")
    assert b.filename().startswith(f"tcp:127.0.0.1:{port},server=on <-> 127.0.0.1:")
    fe.write(b"over tcp")
    assert _recv(c, 8) == b"over tcp"
    c.sendall(b"back")
    until(lambda: sink.data == b"back", "TCP input")
    c.close()
    b.close()


def test_client_connects_and_reconnects(tmp_path: Path):
    path = str(tmp_path / "srv.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    b = SocketBackend("c0", path=path, server=False, reconnect=1)
    fe = b.attach("dev")
    sink = Sink()
    sink.attach(fe)
    b.start()
    srv.settimeout(WAIT)
    conn, _ = srv.accept()  # reconnect=: the first connect too is made once the I/O thread runs
    until(lambda: fe.is_open, "the first connect")
    assert b.filename() == f"unix:{path}"
    fe.write(b"first")
    assert _recv(conn, 5) == b"first"
    conn.close()  # the server drops us: reconnect=1 connects again a second later
    until(lambda: not fe.is_open, "noticing the lost connection")
    conn, _ = srv.accept()
    until(lambda: fe.is_open, "reconnecting")
    fe.write(b"second")
    assert _recv(conn, 6) == b"second"
    assert merged(sink.events) == ["OPEN", "CLOSED", "OPEN"]
    conn.close()
    srv.close()
    b.close()


def test_client_without_a_server_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="Failed to connect to .*"):
        SocketBackend("c0", path=str(tmp_path / "nobody.sock"))
    # with reconnect= it is not: the backend keeps trying in the background
    b = SocketBackend("c1", path=str(tmp_path / "nobody.sock"), reconnect=5)
    assert not b.connected
    b.close()


class _Stderr:
    """What the backend wrote to fd 2 so far (pytest's capfd, read in pieces)."""

    def __init__(self, capfd: Any) -> None:
        self.capfd = capfd
        self.text = ""

    def __call__(self) -> str:
        self.text += self.capfd.readouterr().err
        return self.text

    def reports(self) -> list[str]:
        return [x for x in self().splitlines() if "Unable to connect character device" in x]


def test_with_reconnect_even_the_first_connect_waits_for_the_io_thread(tmp_path: Path):
    """QEMU's qmp_chardev_open_socket_client with reconnect>0 connects asynchronously: the
    constructor makes no connection (start-up is never held by it); starting the I/O
    thread makes the first attempt."""
    path = str(tmp_path / "srv.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    srv.setblocking(False)
    b = SocketBackend("c0", path=path, reconnect=1)
    fe = b.attach("dev")
    sink = Sink()
    sink.attach(fe)
    with pytest.raises(BlockingIOError):
        srv.accept()  # nothing connected while the backend was made
    assert not b.connected
    b.start()
    srv.settimeout(WAIT)
    conn, _ = srv.accept()
    until(lambda: fe.is_open, "the first connect")
    assert sink.events == ["OPEN"]
    conn.close()
    srv.close()
    b.close()


LONG_LABEL = "a" * 64  # one DNS label over 63 characters: Python's idna codec refuses it


def test_a_host_that_does_not_resolve_is_one_line_without_reconnect():
    """Without reconnect= the connect is synchronous and its failure a start-up error, QEMU's
    wording; a label too long for IDNA is a resolution failure like any other (it was a
    UnicodeError out of Python's idna codec: 'internal error')."""
    for host in ("nonexistent.invalid", LONG_LABEL):
        with pytest.raises(ConfigError, match=rf"^chardev c0: address resolution failed for {host}:1: \S"):
            SocketBackend("c0", host=host, port="1")


def test_a_host_that_does_not_resolve_with_reconnect_runs_and_is_reported_once(capfd):
    """With reconnect= an unresolvable host is no start-up error: the chardev runs, output is
    dropped and counted, and the failure is one line on stderr, QEMU's "Unable to connect
    character device ID: REASON", not repeated at each retry."""
    err = _Stderr(capfd)
    for host in ("nonexistent.invalid", LONG_LABEL):
        b = SocketBackend("c0", host=host, port="1", reconnect=1)
        attempts: list[int] = []
        real = b._start_attempt
        b._start_attempt = lambda: (attempts.append(1), real())[1]  # type: ignore[method-assign]
        fe = b.attach("dev")
        b.start()
        until(lambda: len(attempts) >= 2 and b._attempt is None, "a retry failing")
        fe.write(b"lost")
        assert b.counters["bytes_dropped"] == 4
        reports = err.reports()
        assert len(reports) == 1, err()
        assert reports[0].startswith(f"microvm: Unable to connect character device c0: "
                                     f"address resolution failed for {host}:1: "), reports
        assert b._thread is not None and b._thread.is_alive()
        b.close()
        err.text = ""


def test_a_connect_failure_is_reported_again_after_a_connection(tmp_path: Path, capfd):
    """QEMU resets its "reported" flag when a connect succeeds: each run of failures since
    the last connection gets its one line."""
    err = _Stderr(capfd)
    path = str(tmp_path / "srv.sock")
    b = SocketBackend("c0", path=path, reconnect=1)
    fe = b.attach("dev")
    b.start()
    until(lambda: len(err.reports()) == 1, "the first failure's report")
    assert err.reports() == [f"microvm: Unable to connect character device c0: Failed to connect to '{path}': "
                             "No such file or directory"]
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(WAIT)
    conn, _ = srv.accept()
    until(lambda: fe.is_open, "the connect")
    assert len(err.reports()) == 1
    srv.close()
    os.unlink(path)
    conn.close()  # lost; the next attempts fail again
    until(lambda: len(err.reports()) == 2, "the report after the connection")
    b.close()


_EMFILE_SCRIPT = r"""
import os, resource, socket, sys, time
from microvm.chardev.socket import SocketBackend
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)  # bound, not listening: connects are refused until listen()
b = SocketBackend("c0", path=path, reconnect=1)
attempts = []
real = b._start_attempt
b._start_attempt = lambda: (attempts.append(1), real())[1]
fe = b.attach("dev")
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
hog = []
try:
    while True:
        hog.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
b.start()  # the first attempt falls due while no fd is free
end = time.monotonic() + 10
while not attempts and time.monotonic() < end:
    time.sleep(0.01)
time.sleep(0.2)
for fd in hog:
    os.close(fd)
srv.listen(1)
srv.settimeout(10)
try:
    conn, _ = srv.accept()
except OSError as e:
    print("no connection:", e)
end = time.monotonic() + 10
while not b.connected and time.monotonic() < end:
    time.sleep(0.01)
print("alive", b._thread.is_alive(), "connected", b.connected, "attempt", b._attempt is not None, flush=True)
b.close()
"""


def test_a_reconnect_without_a_free_fd_fails_like_a_connect_and_is_retried(tmp_path: Path):
    """EMFILE when the attempt's pipe is made (fd exhaustion): it was an exception out of the
    I/O thread, which died (no reconnect ever, every later byte dropped). It is a failed
    attempt like any other: reported once, retried ``reconnect`` seconds later."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _EMFILE_SCRIPT, str(tmp_path / "s.sock")], capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.strip() == "alive True connected True attempt False", (r.stdout, r.stderr)
    assert "I/O thread failed" not in r.stderr, r.stderr
    assert "microvm: Unable to connect character device c0: Failed to connect to " in r.stderr, r.stderr
    assert "Too many open files" in r.stderr, r.stderr


def _is_pipe(fd: int) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def test_an_attempt_whose_thread_cannot_start_leaks_nothing_and_is_retried(tmp_path: Path, monkeypatch, capfd):
    """Thread.start failing (no thread to be had): the pipe made for the attempt is closed,
    no attempt is left pending, and the next one comes ``reconnect`` seconds later."""
    import types

    from microvm.chardev import socket as sockmod

    err = _Stderr(capfd)
    path = str(tmp_path / "srv.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    pipes: list[tuple[int, int]] = []
    real_pipe2 = os.pipe2

    def pipe2(flags: int) -> tuple[int, int]:
        fds = real_pipe2(flags)
        pipes.append(fds)
        return fds

    class Thread(threading.Thread):
        fails = [RuntimeError("can't start new thread")]

        def start(self) -> None:
            if Thread.fails:
                raise Thread.fails.pop()
            super().start()

    monkeypatch.setattr(sockmod, "threading", types.SimpleNamespace(Thread=Thread, Lock=threading.Lock))
    monkeypatch.setattr(sockmod, "os", types.SimpleNamespace(**{**vars(os), "pipe2": pipe2}))
    b = SocketBackend("c0", path=path, reconnect=1)
    fe = b.attach("dev")
    b.start()
    until(lambda: err.reports(), "the failed attempt's report")
    assert err.reports() == [f"microvm: Unable to connect character device c0: Failed to connect to '{path}': "
                             "can't start new thread"]
    assert b._attempt is None
    assert len(pipes) == 1 and not [fd for fd in pipes[0] if _is_pipe(fd)], "the pipe leaked"
    srv.settimeout(WAIT)
    conn, _ = srv.accept()  # the retry
    until(lambda: fe.is_open, "the retry's connect")
    conn.close()
    srv.close()
    b.close()


def test_an_attempt_that_fails_with_any_exception_is_a_failed_connect_and_retried(tmp_path: Path, capfd):
    """Anything the attempt's thread raises (a bug, a codec error) is handed back as a failed
    connect: before, the thread ended without a word, the I/O thread waited for it forever
    (no retry) and the pipe's write end leaked."""
    err = _Stderr(capfd)
    path = str(tmp_path / "srv.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    b = SocketBackend("c0", path=path, reconnect=1)
    real = b._open_client
    calls: list[int] = []

    def open_client() -> socket.socket:
        calls.append(1)
        if len(calls) == 1:
            raise UnicodeError("label too long")
        return real()

    b._open_client = open_client  # type: ignore[method-assign]
    fe = b.attach("dev")
    b.start()
    until(lambda: err.reports(), "the failed attempt's report")
    assert err.reports() == [f"microvm: Unable to connect character device c0: Failed to connect to '{path}': "
                             "UnicodeError: label too long"]
    srv.settimeout(WAIT)
    conn, _ = srv.accept()
    until(lambda: fe.is_open, "the retry's connect")
    assert len(calls) == 2
    conn.close()
    srv.close()
    b.close()


def test_a_far_reconnect_deadline_is_waited_for_in_pieces(tmp_path: Path, caplog):
    """reconnect=3000000 (35 days): the I/O thread's poll takes a C int of milliseconds,
    3e9 overflowed it (OverflowError in the thread). The wait is capped and repeated; after
    the first attempt (made when the I/O thread starts) no attempt is made before the
    deadline."""
    import logging

    from microvm.chardev import base

    caplog.set_level(logging.DEBUG)
    b = SocketBackend("c0", path=str(tmp_path / "nobody.sock"), reconnect=3000000)
    attempts: list[float] = []
    real = b._on_timeout
    b._on_timeout = lambda: (attempts.append(time.monotonic()), real())[1]  # type: ignore[method-assign]
    polls: list[Any] = []

    class Poll:  # the real poll, recording each timeout it is given
        def __init__(self) -> None:
            self.p = real_poll()

        def register(self, fd: int, ev: int) -> None:
            self.p.register(fd, ev)

        def poll(self, ms: Any = None) -> Any:
            polls.append((ms, b._attempt is not None))
            return self.p.poll(0 if ms is None else min(ms, 20))  # do not really wait 60 s

    real_poll = base.select.poll
    base.select.poll = Poll  # type: ignore[assignment]
    try:
        b.attach("dev")
        b.start()
        until(lambda: len([ms for ms, _ in polls if ms]) >= 3, "the I/O thread polling again after a capped wait")
    finally:
        base.select.poll = real_poll  # type: ignore[assignment]
    b.close()
    assert not [r for r in caplog.records if "I/O thread failed" in r.getMessage()]
    # while the first attempt is under way the thread waits for it (no deadline); after it,
    # every wait is bounded
    waits = [ms for ms, connecting in polls if not connecting]
    assert all(ms is not None and 0 <= ms <= base.MAX_POLL_SECONDS * 1000 for ms in waits), polls[:5]
    assert len(attempts) == 1, "a reconnect attempt before the deadline"


@pytest.mark.parametrize("value", [-1, (1 << 31), 10 ** 400])
def test_reconnect_out_of_range_is_a_config_error(tmp_path: Path, value: int):
    with pytest.raises(ConfigError, match=r"reconnect=.*: expected a number of seconds from 0 to 2147483647"):
        SocketBackend("c0", path=str(tmp_path / "nobody.sock"), reconnect=value)


def test_a_unix_client_never_blocks_on_a_server_that_does_not_accept(tmp_path: Path):
    """A server whose listen backlog is full: the connect fails at once (EAGAIN) instead of
    blocking start-up; with reconnect= the backend starts unconnected and retries."""
    path = str(tmp_path / "busy.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(0)
    fillers = []
    while True:  # fill the backlog
        c = socket.socket(socket.AF_UNIX)
        c.setblocking(False)
        try:
            c.connect(path)
        except BlockingIOError:
            c.close()
            break
        fillers.append(c)
        assert len(fillers) < 100
    outcome: list[Any] = []

    def attempt(**kw: Any) -> None:
        try:
            outcome.append(SocketBackend("c0", path=path, **kw))
        except ConfigError as e:
            outcome.append(e)

    for kw in ({}, {"reconnect": 1}):
        outcome.clear()
        t = threading.Thread(target=attempt, kwargs=kw, daemon=True)
        t.start()
        t.join(WAIT)
        assert not t.is_alive(), f"connect blocked ({kw})"
        if kw:
            assert isinstance(outcome[0], SocketBackend) and not outcome[0].connected
            outcome[0].close()
        else:
            assert isinstance(outcome[0], ConfigError) and "Failed to connect" in str(outcome[0])
    for c in fillers:
        c.close()
    srv.close()


def _closed_tcp_port() -> int:
    """A loopback port nothing listens on (connects are refused at once)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _stack_names(ident: int | None) -> set[str]:
    import sys

    frame = sys._current_frames().get(ident) if ident is not None else None
    names = set()
    while frame is not None:
        names.add(frame.f_code.co_name)
        frame = frame.f_back
    return names


def test_a_tcp_client_reconnects_to_a_listener_that_accepts_late():
    """reconnect=1 to a loopback port closed at first: output meanwhile is dropped and
    counted; once a listener is there the reconnect (made off the I/O thread) hands its
    socket over, and a listener that accepts only later gets what is written from then on."""
    port = _closed_tcp_port()
    b = SocketBackend("c0", host="127.0.0.1", port=str(port), reconnect=1)
    assert not b.connected
    fe = b.attach("dev")
    sink = Sink()
    sink.attach(fe)
    b.start()
    fe.write(b"lost")
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    until(lambda: fe.is_open, "the reconnect")  # in the backlog, not accepted yet
    fe.write(b"hello")
    srv.settimeout(WAIT)
    conn, _ = srv.accept()
    assert _recv(conn, 5) == b"hello"
    assert b.counters["bytes_dropped"] == 4 and b.counters["bytes_written"] == 5
    assert sink.events == ["OPEN"] and b.filename() == f"tcp:127.0.0.1:{port}"
    conn.close()
    until(lambda: not fe.is_open, "noticing the lost connection")
    srv.close()
    b.close()


def test_a_tcp_reconnect_to_a_server_that_never_answers_holds_nothing_up(caplog):
    """A loopback listener whose accept queue is full drops the SYNs: a connect to it hangs
    (up to its 5 s). That wait happens on the attempt's own thread: the I/O thread keeps
    polling, output is dropped and counted meanwhile, and closing the backend ends its I/O
    thread at once instead of giving up on it as stuck (the attempt's socket is closed by
    its thread when it ends)."""
    import logging

    caplog.set_level(logging.INFO)
    port = _closed_tcp_port()
    b = SocketBackend("c0", host="127.0.0.1", port=str(port), reconnect=1)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(0)
    filler = socket.create_connection(("127.0.0.1", port), timeout=WAIT)  # the accept queue is full now
    fe = b.attach("dev")
    b.start()
    io = b._thread
    assert io is not None

    def connecting() -> bool:
        import sys

        return any(_stack_names(t) & {"_open_client", "_connect"} for t in sys._current_frames())

    until(connecting, "a reconnect attempt under way")
    assert not _stack_names(io.ident) & {"_open_client", "_connect"}, "the I/O thread connects"
    fe.write(b"x" * 100)
    assert b.counters["bytes_dropped"] == 100 and not fe.is_open
    b.close()
    assert not io.is_alive(), "closing gave up on an I/O thread stuck in connect"
    assert not [r for r in caplog.records if "still blocked" in r.getMessage()]
    until(lambda: not [t for t in threading.enumerate() if t.name == "chardev-c0-connect"],
          "the attempt's thread ending")
    filler.close()
    srv.close()


def test_socket_option_conflicts():
    with pytest.raises(ConfigError, match="'reconnect' option is incompatible"):
        SocketBackend("s0", path="/tmp/x.sock", server=True, reconnect=1)
    with pytest.raises(ConfigError, match="needs path=PATH"):
        SocketBackend("s0")


# ---------------------------------------------------------------------------------- the run
def test_the_runs_backends_close_together_however_many_sinks_are_stalled():
    """HostBackends.close tells every chardev to stop first, so their final flushes overlap:
    each was told before any was waited for (and each still hands over what it can)."""
    from microvm.backends import HostBackends

    run = HostBackends()
    pipes = []
    for i in range(3):
        out_r, out_w = os.pipe()
        fcntl.fcntl(out_w, fcntl.F_SETPIPE_SZ, 4096)
        os.set_blocking(out_w, False)
        b = FdBackend(f"c{i}", out_w, None, out_mode=NONBLOCK, owned=(out_w,))
        b.attach("dev").write(b"x" * 65536)  # more than the pipe holds: the rest waits
        b.start()
        run.add("chardev", f"c{i}", b)
        pipes.append((b, out_r))
    told: list[str] = []
    for b, _ in pipes:  # record when each is told to close and when it is waited for
        begin, close = b.begin_close, b.close
        b.begin_close = lambda begin=begin, b=b: (told.append(f"begin {b.label}"), begin())[1]
        b.close = lambda deadline=None, close=close, b=b: (told.append(f"close {b.label}"), close(deadline))[1]
    run.start_chardevs()
    closer = threading.Thread(target=run.close, daemon=True)
    closer.start()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert told[:3] == ["begin c0", "begin c1", "begin c2"]  # all told before any is waited for
    assert sorted(t for t in told[3:] if t.startswith("close")) == ["close c0", "close c1", "close c2"]
    for b, out_r in pipes:
        assert b.closed and b.counters["bytes_written"] == 4096 and b.counters["bytes_dropped"] == 65536 - 4096
        os.close(out_r)


# ---------------------------------------------------------------------------------- -serial
@pytest.mark.parametrize("text,backend,props", [
    ("stdio", "stdio", {}),
    ("mon:stdio", "stdio", {"mux": "on", "signal": "off"}),
    ("null", "null", {}),
    ("pty", "pty", {}),
    ("file:/tmp/a,b", "file", {"path": "/tmp/a,b"}),
    ("pipe:/tmp/p", "pipe", {"path": "/tmp/p"}),
    ("unix:/tmp/s.sock", "socket", {"path": "/tmp/s.sock"}),
    ("unix:/tmp/s.sock,server=on,wait=off", "socket", {"path": "/tmp/s.sock", "server": "on", "wait": "off"}),
    ("unix:/tmp/s.sock,server,nowait", "socket", {"path": "/tmp/s.sock", "server": "on", "wait": "off"}),
    ("tcp:127.0.0.1:4444,server=on,wait=off", "socket",
     {"host": "127.0.0.1", "port": "4444", "server": "on", "wait": "off"}),
    ("tcp::4444,server", "socket", {"host": "", "port": "4444", "server": "on"}),
    ("tcp:[::1]:4444", "socket", {"host": "::1", "port": "4444"}),
    ("tcp:localhost:4444,reconnect=2", "socket", {"host": "localhost", "port": "4444", "reconnect": "2"}),
])
def test_serial_shorthands(text: str, backend: str, props: dict[str, str]):
    s = SerialConfig.parse(text, 1)
    assert s.chardev is not None and s.ref is None
    assert (s.chardev.backend, s.chardev.id, s.chardev.props) == (backend, "serial1", props)


def test_serial_none_and_chardev_reference():
    assert not SerialConfig.parse("none", 0).present
    assert SerialConfig.parse("chardev:con", 0).ref == "con"


@pytest.mark.parametrize("text,msg", [
    ("tcp:4444", "expected tcp:HOST:PORT"),
    ("unix:", "needs a path"),
    ("unix:/s,telnet", "unknown option 'telnet'"),
    ("unix:/s,colour=red", "unknown option 'colour'"),
    ("unix:/s,server,server=off", "server given twice"),
    ("file:", "needs a path"),
    ("vc", "expected stdio"),
])
def test_serial_shorthand_errors(text: str, msg: str):
    with pytest.raises(ConfigError, match=msg):
        SerialConfig.parse(text, 0)


def test_chardev_backend_is_a_public_base():
    from microvm import api

    assert api.CharBackend is CharBackend


def test_a_host_label_too_long_is_one_line_and_status_2_on_the_command_line(tmp_path: Path):
    """``--chardev socket,host=<64 characters>,port=1``: was "microvm: internal error:
    UnicodeError" and status 1; QEMU says "address resolution failed for ...: Name or service
    not known". One line, status 2 (refused before any KVM is opened)."""
    from kvm_helpers import build_guest, run_microvm

    hello = build_guest("hello-pvh", tmp_path)
    r = run_microvm("run", "--kernel", str(hello), "--chardev", f"socket,id=c0,host={LONG_LABEL},port=1",
                    "--serial", "chardev:c0", timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 2 and err.count("\n") == 1, (r.returncode, err)
    assert err.startswith(f"microvm: error: chardev c0: address resolution failed for {LONG_LABEL}:1: "), err
