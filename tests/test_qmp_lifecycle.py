"""The run-state lock never waits on stderr: with ``-v`` and a stderr pipe nobody reads, a
log line written inside a transition used to hold ``Lifecycle._lock`` while blocked in the
write, so a second monitor's ``stop``/query and the main thread's SIGTERM handling waited
for the pipe. The lines are now held and written after the release (microvm.log.hold_logs).
A real pipe, filled to the brim, is the stalled stderr. No timing assertions: waits are
bounded polls whose timeouts only stop a broken test from hanging."""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pytest

from microvm.lifecycle import PAUSED, Lifecycle
from microvm.log import get_logger, hold_logs, release_logs

log = get_logger("microvm.machine")


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class LoggingMachine:
    """What the Lifecycle calls on a Machine, logging where the real one does (request_stop's
    "stopping: ..."; pause stands for the devices' lines on the way)."""

    def __init__(self) -> None:
        self.stopping = self.reset_requested = self.paused = False
        self.host_signal = 0
        self.threads: list[Any] = []
        self.vcpus: list[Any] = []
        self.loop_running = True

    def mark_running(self) -> None:
        pass

    def pause(self, wait: bool = True) -> None:
        self.paused = True
        log.info("pausing the machine")

    def resume(self) -> None:
        self.paused = False

    def request_stop(self, status: int, reason: str, cause: str | None = None) -> None:
        self.stopping = True
        log.info("stopping: %s", reason)


@pytest.fixture
def stalled_stderr() -> Iterator[tuple[int, Callable[[], bytes]]]:
    """A ``-v`` log handler writing into a full pipe (blocking writes), and a function that
    starts reading it (the stall ends) and returns all that was written once nothing more
    comes."""
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, os.O_NONBLOCK)
    try:
        while True:
            os.write(w, b"." * 65536)
    except BlockingIOError:
        pass
    fcntl.fcntl(w, fcntl.F_SETFL, 0)
    stream = os.fdopen(w, "w")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("microvm")
    old = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    got = bytearray()

    def drain() -> bytes:
        os.set_blocking(r, False)
        idle = 0
        while idle < 50:
            try:
                chunk = os.read(r, 1 << 20)
            except BlockingIOError:
                idle += 1
                time.sleep(0.01)
                continue
            got.extend(chunk)
            idle = 0
        return bytes(got).lstrip(b".")

    try:
        yield r, drain
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
        drain()
        stream.close()
        os.close(r)


def test_a_stalled_stderr_blocks_no_transition_no_sigterm_and_no_other_monitor(stalled_stderr):
    _, drain = stalled_stderr
    lc = Lifecycle(SimpleNamespace(no_reboot=False))
    m = LoggingMachine()
    lc.machine_starting(m)

    stopped = threading.Event()
    a = threading.Thread(target=lambda: (lc.stop(), stopped.set()), daemon=True)  # QMP stop: logs, stalls
    a.start()
    wait_until(lambda: m.paused, "the stop to pause the machine")
    answered = threading.Event()
    b = threading.Thread(target=lambda: (lc.vcpus(), answered.set()), daemon=True)  # another monitor's query
    b.start()
    c = threading.Thread(target=lc.host_signal, args=(m, 15), daemon=True)  # the main thread's SIGTERM
    c.start()
    try:
        wait_until(answered.is_set, "another monitor's command while stderr is stalled")
        wait_until(lambda: m.host_signal == 15 and m.stopping, "the SIGTERM's transition while stderr is stalled")
        assert lc.state == PAUSED and lc._ending
        assert not stopped.is_set()  # the thread that logs waits for the pipe, after the lock
    finally:
        out = drain()  # the reader comes back: every held line is written, in order
    for t in (a, c):
        t.join(15)
        assert not t.is_alive()
    assert out == b"pausing the machine\nstopping: terminated by signal 15\n", out


def test_held_lines_are_written_after_release_in_order_with_their_exception(caplog):
    caplog.set_level(logging.INFO, logger="microvm")
    lg = get_logger("microvm.test")
    assert hold_logs()
    assert not hold_logs()  # nested: the outer section releases
    lg.info("one %d", 1)
    try:
        raise ValueError("boom")
    except ValueError:
        lg.exception("two")
    assert caplog.records == []
    release_logs()
    assert [r.getMessage() for r in caplog.records] == ["one 1", "two"]
    assert caplog.records[1].exc_info[1].args == ("boom",)
    lg.info("three")  # not held any more
    assert caplog.records[-1].getMessage() == "three"
