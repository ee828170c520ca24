"""The host side of character devices: output, input on a reader thread, QEMU's C-a escapes."""
from __future__ import annotations

import os
import threading

from microvm.chardev import FdChardev, NullChardev


class Sink:
    def __init__(self) -> None:
        self.events: list = []
        self.done = threading.Event()

    def data(self, b: bytes) -> None:
        self.events.append(b)

    def brk(self) -> None:
        self.events.append("BREAK")

    def quit(self) -> None:
        self.events.append("QUIT")
        self.done.set()


def run_input(raw: bytes, escapes: bool) -> list:
    r, w = os.pipe()
    out_r, out_w = os.pipe()
    sink = Sink()
    ch = FdChardev(out_w, r, on_quit=sink.quit, escapes=escapes)
    ch.set_receiver(sink.data, sink.brk)
    ch.start()
    os.write(w, raw)
    os.close(w)  # EOF ends the reader thread
    ch._thread.join(timeout=5)
    ch.close()
    ch.close()  # idempotent
    for fd in (r, out_r, out_w):
        os.close(fd)
    # the reader may hand over the bytes in any chunking: join adjacent data
    merged: list = []
    for e in sink.events:
        if isinstance(e, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += e
        else:
            merged.append(e)
    return merged


def test_escapes_as_in_qemus_mux():
    """C-a b: BREAK (Magic SysRq on a 16550), C-a C-a: one C-a, C-a x: quit."""
    assert run_input(b"ab\x01bc\x01\x01d\x01xz", escapes=True) == [b"ab", "BREAK", b"c\x01d", "QUIT", b"z"]


def test_other_escaped_keys_pass_through_with_the_escape():
    assert run_input(b"\x01q", escapes=True) == [b"\x01q"]


def test_plain_byte_stream_without_escapes():
    raw = b"ab\x01bc\x01x"
    assert run_input(raw, escapes=False) == [raw]


def test_output_goes_to_the_fd_whole():
    r, w = os.pipe()
    ch = FdChardev(w, None)
    ch.write(b"x" * 10000)
    ch.close()
    os.close(w)
    got = b""
    while chunk := os.read(r, 65536):
        got += chunk
    os.close(r)
    assert got == b"x" * 10000


def test_output_to_a_closed_reader_is_dropped_not_raised():
    r, w = os.pipe()
    os.close(r)
    ch = FdChardev(w, None)
    ch.write(b"lost")  # EPIPE: logged at debug, the guest keeps running
    ch.close()
    os.close(w)


def test_null_chardev():
    n = NullChardev()
    n.write(b"x")
    n.set_receiver(lambda b: None)
    n.start()
    n.close()


def test_c_a_h_prints_qemus_mux_help_and_c_a_x_says_terminated():
    """C-a h answers on the output in QEMU's layout (the commands microvm has); nothing
    reaches the guest. C-a x says "Terminated" as QEMU's mux does, then quits."""
    from microvm.chardev import MUX_HELP

    r, w = os.pipe()
    out_r, out_w = os.pipe()
    sink = Sink()
    ch = FdChardev(out_w, r, on_quit=sink.quit, escapes=True)
    ch.set_receiver(sink.data, sink.brk)
    ch.start()
    os.write(w, b"a\x01hb\x01x")
    assert sink.done.wait(5)
    os.close(w)
    ch.close()
    os.close(out_w)
    out = b""
    while chunk := os.read(out_r, 65536):
        out += chunk
    for fd in (r, out_r):
        os.close(fd)
    assert b"".join(e for e in sink.events if isinstance(e, bytes)) == b"ab" and sink.events[-1] == "QUIT"
    assert out == MUX_HELP + b"microvm: Terminated\n\r"
    assert MUX_HELP == (b"\n\rC-a h    print this help\n\rC-a x    exit emulator\n\r"
                        b"C-a b    send break (magic sysrq)\n\rC-a C-a  sends C-a\n\r")


def test_a_terminal_keeps_isig_only_with_signals():
    """QEMU's stdio signal=on (the default) leaves Ctrl-C to the terminal's line discipline,
    which signals the VMM; signal=off (the mux of -nographic) passes it to the guest."""
    import pty
    import termios

    for signals in (True, False):
        master, slave = pty.openpty()
        ch = FdChardev(slave, slave, escapes=not signals, signals=signals)
        try:
            ch.start()
            lflag = termios.tcgetattr(slave)[3]
            assert bool(lflag & termios.ISIG) == signals
            assert not lflag & termios.ICANON and not lflag & termios.ECHO   # raw otherwise
        finally:
            ch.close()
            os.close(master)
            os.close(slave)
