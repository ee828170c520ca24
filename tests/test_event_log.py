"""Issue 12, item 1: guest-triggered and per-request events are counted, not logged per
event. A guest looping on an ignored register write used to write one warning line per
write (60,000 writes, 60,000 lines; 1.4 GB of stderr in ten minutes)."""
from __future__ import annotations

import logging

import pytest

from kvm_helpers import build_guest, requires_kvm, run_microvm
from microvm import log as mlog
from microvm.irq import RecordingIrqLine
from microvm.log import EventLog, get_logger
from microvm.memory import GuestMemory
from microvm.virtio import constants as C
from microvm.virtio.mmio import VirtioMmioTransport


@pytest.fixture
def transport():
    from microvm.virtio.backend import VirtioBackend

    class Rng(VirtioBackend):
        device_id = 4

        def device_features(self) -> int:
            return 0

        def activate(self, queues, interrupt, memory) -> None:
            pass

        def process_queue(self, index: int) -> None:
            pass

    mlog.log_every_event(False)
    mem = GuestMemory(1 << 20)
    t = VirtioMmioTransport(Rng(), mem, RecordingIrqLine(5), name="virtio-test")
    yield t
    mem.close()
    mlog.log_every_event(False)


def write(t, offset: int, value: int) -> None:
    t.write(offset, value.to_bytes(4, "little"))


def test_60000_ignored_writes_give_fewer_than_100_lines(transport, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    for i in range(60000):
        write(transport, C.VIRTIO_MMIO_DEVICE_ID, i)           # read-only: ignored
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(lines) < 100, len(lines)
    assert "write of 0x0 to read-only or unknown register 0x8 ignored" in lines[0].getMessage()
    assert "repeats are counted" in lines[0].getMessage()
    assert transport.counters["guest_errors"] == 60000


def test_every_event_with_guest_errors_on(transport, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    mlog.log_every_event(True)
    for i in range(2000):
        write(transport, C.VIRTIO_MMIO_DEVICE_ID, i)
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 2000


def test_summaries_come_at_most_once_per_interval(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    clock = [0.0]
    import time

    ev = EventLog(get_logger("microvm.test"), interval=10)
    real = time.monotonic
    time.monotonic = lambda: clock[0]  # type: ignore[assignment]
    try:
        for step in range(1000):
            clock[0] = step * 0.1                      # 100 s of events, ten a second
            ev("dev: thing", logging.WARNING, "dev: thing %d happened", step)
        ev("dev: other", logging.WARNING, "dev: other")
    finally:
        time.monotonic = real  # type: ignore[assignment]
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0].startswith("dev: thing 0 happened")
    summaries = [m for m in msgs if "more in the last 10 s" in m]
    assert 9 <= len(summaries) <= 10 and summaries[0].startswith("dev: thing: 100 more")
    assert msgs[-1].startswith("dev: other")                      # another kind: logged at once


def test_kinds_are_bounded(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    ev = EventLog(get_logger("microvm.test"))
    for i in range(EventLog.MAX_KINDS * 3):
        ev(f"dev: register {i}", logging.WARNING, "dev: register %d", i)
    assert len(caplog.records) == EventLog.MAX_KINDS + 1   # then "(other events)" once


@requires_kvm
@pytest.mark.kvm
@pytest.mark.parametrize("flags, lines", [((), (1, 100)), (("-d", "guest_errors"), (60000, 60001))])
def test_a_guest_looping_on_an_ignored_write_cannot_flood_the_log(tmp_path, flags, lines) -> None:
    """tests/guests/flood.S writes 60,000 times to a read-only virtio register: fewer than 100
    lines by default, every one with -d guest_errors; the count is in --metrics either way."""
    import json

    elf = build_guest("flood", tmp_path)
    metrics = tmp_path / "m.json"
    r = run_microvm("run", "--kernel", str(elf), "--no-reboot", *flags, "--device", "virtio-rng-device,id=rng",
                    "--metrics", str(metrics), timeout=600)
    err = r.stderr.decode(errors="replace").splitlines()
    assert r.returncode == 0 and r.stdout.endswith(b"\nDONE\n"), err[-20:]
    assert lines[0] <= len(err) < lines[1], len(err)
    assert json.loads(metrics.read_text())["devices"]["rng"]["guest_errors"] == 60000


def test_unknown_log_item_is_one_line(tmp_path) -> None:
    r = run_microvm("run", "--kernel", str(tmp_path / "k"), "-d", "in_asm")
    assert r.returncode == 2
    assert r.stderr.decode() == ("microvm: error: -d in_asm: unsupported on microvm (QEMU's TCG tracing; "
                                 "microvm has guest_errors; -d help lists them)\n")
    r = run_microvm("run", "--kernel", str(tmp_path / "k"), "-d", "guest_errors,bogus")
    assert (r.returncode, r.stderr.decode()) == (
        2, "microvm: error: -d bogus: unknown log item (supported: guest_errors; -d help lists them)\n")
    r = run_microvm("-kernel", str(tmp_path / "k"), "-d", "bogus")
    assert (r.returncode, r.stderr.decode()) == (
        1, "microvm: -d bogus: unknown log item (supported: guest_errors; -d help lists them)\n")


@pytest.mark.parametrize("argv, status", [(["-d", "help"], 1), (["-d", "guest_errors,help"], 1),
                                          (["run", "-d", "help"], 0)])
def test_log_items_help(argv: list[str], status: int) -> None:
    """-d help lists the items in QEMU's layout on stdout; QEMU 7.2 exits 1 after it (measured
    with Debian's qemu-system-x86_64), microvm run's spelling 0 as its other help answers."""
    r = run_microvm(*argv)
    out = r.stdout.decode()
    assert (r.returncode, r.stderr) == (status, b"")
    assert out.startswith("Log items (comma separated):\nguest_errors    log when the guest OS does something invalid")
    assert "in_asm" in out and "not in microvm" in out
