"""Pause and resume for real, in-process on /dev/kvm: QMP ``stop`` through a real socket
parks the vCPUs and quiesces the virtio worker while a guest keeps a disk busy, so guest RAM
does not change at all while paused; ``cont`` resumes the guest and the disk. Also the
kvmclock is stopped across the pause (KVM_GET_CLOCK/KVM_SET_CLOCK), and the timer service
and notify worker pause on their own. No timing assertions: waits are bounded polls."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from kvm_helpers import build_guest, requires_kvm
from microvm.lifecycle import Lifecycle
from microvm.machine import Machine
from microvm.spec import MachineSpec

DONE, SPINS = 0x206000, 0x206008
AVAIL, USED = 0x201000, 0x202000


@pytest.fixture(scope="module")
def guest_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("guests-pause")


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Qmp:
    """A minimal line client (negotiated), to drive the machine as a management layer would."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        deadline = time.monotonic() + 30
        while True:  # the socket file appears at bind(), a moment before listen()
            try:
                self.sock.connect(path)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.sock.settimeout(30)
        self.f = self.sock.makefile("rwb")
        self.events: list[dict[str, Any]] = []
        assert b'"QMP"' in self.f.readline()
        assert self.cmd("qmp_capabilities") == {}

    def cmd(self, name: str, **args: Any) -> Any:
        msg: dict[str, Any] = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            reply = json.loads(self.f.readline())
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise RuntimeError(reply["error"])
            return reply["return"]

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def ram_hash(m: Machine) -> str:
    h = hashlib.sha256()
    for r in m.memory.regions:
        h.update(m.memory.view(r.gpa, r.size))
    return h.hexdigest()


@pytest.fixture
def busy_machine(guest_cache, tmp_path):
    """A machine whose guest keeps a virtio-blk disk busy, run by a Lifecycle with a QMP
    monitor, on a thread of this process (so the test can read guest RAM)."""
    elf = build_guest("blk-busy", guest_cache)
    disk = tmp_path / "disk.img"
    disk.write_bytes(os.urandom(256 << 10))
    sock = str(tmp_path / "qmp.sock")
    spec = MachineSpec(kernel=str(elf), serial=["null"], no_reboot=True, qmp=[f"unix:{sock},server=on,wait=off"],
                       drives=[f"id=d0,file={disk}"], devices=["virtio-blk-device,drive=d0,force-legacy=off"])
    spec.validate()
    lc = Lifecycle(spec)
    m = Machine(spec, lifecycle=lc)
    lc.start_monitors()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(m.run()), daemon=True)
    t.start()
    client = Qmp(sock)
    try:
        wait_until(lambda: m.memory is not None and m.memory.read_u32(DONE) > 20, "the guest's disk requests")
        yield m, lc, client, disk
    finally:
        client.close()
        m.request_stop(0, "test done")
        t.join(30)
        lc.close_monitors()
    assert not t.is_alive() and result == [0]


@requires_kvm
def test_stop_freezes_guest_ram_while_the_disk_was_busy_and_cont_resumes(busy_machine):
    m, lc, q, disk = busy_machine
    # running: RAM changes between two looks (the positive control of the check below)
    h1 = ram_hash(m)
    done = m.memory.read_u32(DONE)
    wait_until(lambda: m.memory.read_u32(DONE) > done + 5, "more requests")
    assert ram_hash(m) != h1
    assert q.cmd("stop") == {}
    assert q.events[-1]["event"] == "STOP" and q.cmd("query-status")["status"] == "paused"
    assert m.parked == m.vcpus_active == 1
    # a notification arrives while paused, as a driver would send one: publish chain 0
    # again and kick the queue's eventfd; a worker that is not quiesced would serve it
    avail = m.memory.read_u16(AVAIL + 2)
    m.memory.write_u16(AVAIL + 4 + 2 * (avail % 8), 0)
    m.memory.write_u16(AVAIL + 2, (avail + 1) & 0xFFFF)
    m.virtio_transports[0].kick(0)
    paused_hash = ram_hash(m)
    paused_done = m.memory.read_u32(DONE)
    disk_before = disk.read_bytes()
    # while paused: the guest had a request in flight and keeps none back; wait as long as
    # the guest needed for 20 requests while running, several times over
    for _ in range(5):
        time.sleep(0.2)
        assert ram_hash(m) == paused_hash
    assert m.memory.read_u32(DONE) == paused_done
    assert disk.read_bytes() == disk_before
    assert q.cmd("cont") == {}
    assert q.events[-1]["event"] == "RESUME" and q.cmd("query-status")["status"] == "running"
    # served after cont (the used index reaches it; the guest goes on at once, so "at least")
    wait_until(lambda: (m.memory.read_u16(USED + 2) - (avail + 1)) & 0xFFFF < 0x8000, "the request published while paused")
    wait_until(lambda: m.memory.read_u32(DONE) > paused_done + 20, "requests after cont")
    assert ram_hash(m) != paused_hash


@contextlib.contextmanager
def network_namespace() -> Iterator[Any]:
    """A network namespace of the test's own (linux_images.NetNamespace: deleted after,
    whatever happened): the tap lives there."""
    import shutil

    from linux_images import NetNamespace

    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun") or shutil.which("ip") is None:
        pytest.skip("needs root, /dev/net/tun and ip(8) for a tap in a network namespace")
    with NetNamespace("microvm-pausetest") as ns:
        yield ns


RXDONE, TXDONE = 0x206000, 0x206010


@requires_kvm
def test_stop_freezes_guest_ram_while_virtio_net_has_frames_queued(guest_cache, tmp_path):
    """net-busy keeps a virtio-net device busy both ways (receive buffers recycled, a frame
    transmitted after each other) while the host side of its tap sends it frames all along.
    During a stop the host goes on sending, so the device has input waiting in the tap, yet
    guest RAM does not change at all; after cont the waiting frames arrive."""
    import subprocess

    elf = build_guest("net-busy", guest_cache)
    sock = str(tmp_path / "qmp.sock")
    spec = MachineSpec(kernel=str(elf), serial=["null"], no_reboot=True, qmp=[f"unix:{sock},server=on,wait=off"],
                       netdevs=["tap,id=n0,ifname=mvpause0,script=no,downscript=no"],
                       devices=["virtio-net-device,netdev=n0,force-legacy=off"])
    spec.validate()
    with network_namespace() as ns:
        lc = Lifecycle(spec)
        m = Machine(spec, lifecycle=lc)
        with ns.entered():
            m.build()  # the tap appears in the namespace
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        ns.ip("link", "set", "mvpause0", "up")
        tx.bind(("mvpause0", 0))
        frame = b"\xff" * 6 + bytes.fromhex("02000000aa01") + b"\x88\xb5" + bytes(46)
        lc.start_monitors()
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(m.run()), daemon=True)
        t.start()
        sent = [0]
        sending = threading.Event()
        sending.set()

        def send() -> None:
            while sending.is_set():
                try:
                    tx.send(frame)
                    sent[0] += 1
                except OSError:
                    pass  # (the tap's queue full while paused: the kernel drops)
                time.sleep(0.002)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        q = Qmp(sock)
        try:
            wait_until(lambda: m.memory is not None and m.memory.read_u32(RXDONE) > 20 and m.memory.read_u32(TXDONE) > 20,
                       "frames both ways")
            h1 = ram_hash(m)
            rx = m.memory.read_u32(RXDONE)
            wait_until(lambda: m.memory.read_u32(RXDONE) > rx + 5, "more frames")
            assert ram_hash(m) != h1  # running: RAM changes (the control of the check below)
            assert q.cmd("stop") == {}
            assert q.events[-1]["event"] == "STOP" and m.parked == m.vcpus_active == 1
            paused_hash = ram_hash(m)
            rx, txd = m.memory.read_u32(RXDONE), m.memory.read_u32(TXDONE)
            before = sent[0]
            for _ in range(5):
                time.sleep(0.2)
                assert ram_hash(m) == paused_hash
            assert sent[0] > before  # the host kept sending: input was waiting in the tap
            assert (m.memory.read_u32(RXDONE), m.memory.read_u32(TXDONE)) == (rx, txd)
            assert q.cmd("cont") == {}
            wait_until(lambda: m.memory.read_u32(RXDONE) > rx + 20, "frames after cont")
            wait_until(lambda: m.memory.read_u32(TXDONE) > txd + 20, "transmissions after cont")
            assert ram_hash(m) != paused_hash
        finally:
            sending.clear()
            sender.join(10)
            q.close()
            m.request_stop(0, "test done")
            t.join(30)
            lc.close_monitors()
            tx.close()
    assert not t.is_alive() and result == [0]


@requires_kvm
def test_kvmclock_does_not_advance_while_paused(busy_machine):
    m, lc, q, _ = busy_machine
    q.cmd("stop")
    saved = m._saved_clock
    assert saved is not None  # the clock was read when the guest stopped
    time.sleep(0.5)  # guest time must not include this
    t0 = time.monotonic_ns()
    q.cmd("cont")
    after, _ = m.vm.get_clock()
    bound = time.monotonic_ns() - t0  # host time from before cont to the read above
    # restored: the guest's clock went on from where it stopped, not from host time
    assert saved <= after <= saved + bound


@requires_kvm
def test_stop_then_quit_and_system_reset_while_paused(guest_cache, tmp_path):
    """A reset of a paused VM comes back in prelaunch (QEMU 7.2); quit ends the run."""
    from microvm.machine import run_spec

    elf = build_guest("blk-busy", guest_cache)
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(256 << 10))
    sock = str(tmp_path / "qmp.sock")
    spec = MachineSpec(kernel=str(elf), serial=["null"], qmp=[f"unix:{sock},server=on,wait=off"],
                       drives=[f"id=d0,file={disk}"], devices=["virtio-blk-device,drive=d0,force-legacy=off"])
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(run_spec(spec)), daemon=True)
    t.start()
    wait_until(lambda: os.path.exists(sock), "the QMP socket")
    q = Qmp(sock)
    try:
        q.cmd("stop")
        q.cmd("system_reset")
        wait_until(lambda: q.cmd("query-status")["status"] == "prelaunch", "prelaunch after the reset")
        assert [e["event"] for e in q.events] == ["STOP", "RESET"]
        assert q.events[-1]["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
        q.cmd("cont")
        assert q.cmd("query-status")["status"] == "running"
        q.cmd("quit")
    finally:
        q.close()
    t.join(30)
    assert result == [0]
    assert not os.path.exists(sock)


def test_timer_service_does_not_tick_while_paused():
    from microvm.timers import TimerService

    class Dev:
        def __init__(self) -> None:
            self.ticks = 0
            self.deadline = 0

        def next_deadline(self) -> int:
            return self.deadline

        def tick(self, now: int) -> None:
            self.ticks += 1
            self.deadline = now + 1_000_000  # every millisecond

    svc = TimerService()
    dev = Dev()
    svc.add(dev)
    svc.start()
    try:
        wait_until(lambda: dev.ticks > 3, "ticks")
        svc.pause()
        n = dev.ticks
        time.sleep(0.05)  # 50 periods
        assert dev.ticks == n
        svc.resume()
        wait_until(lambda: dev.ticks > n, "ticks after resume")
    finally:
        svc.stop()


def test_notify_worker_leaves_notifications_counted_while_paused(guest_memory):
    """A notification that arrives while the worker is paused is processed on resume, not
    before; pause() waits for the one being processed."""
    from microvm.virtio.slots import NotifyWorker, VirtioSlot

    calls: list[int] = []
    gate = threading.Event()

    class Transport:
        def notify(self, q: int) -> None:
            calls.append(q)
            gate.wait(10)

        def close(self) -> None:
            pass

    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    slot = VirtioSlot(7, 0, 12, "test", Transport(), [efd])  # type: ignore[arg-type]
    w = NotifyWorker(slot)
    w.start()
    try:
        slot.kick(0)
        wait_until(lambda: calls == [0], "the first notification")
        paused = threading.Thread(target=w.pause)
        paused.start()
        paused.join(0.2)
        assert paused.is_alive()  # waits for notify() in progress
        gate.set()
        paused.join(10)
        assert not paused.is_alive()
        slot.kick(0)
        time.sleep(0.1)
        assert calls == [0]  # counted in the eventfd, not processed
        w.resume()
        wait_until(lambda: calls == [0, 0], "the notification after resume")
    finally:
        w.stop()
        os.close(efd)


def test_pvclock_now_reads_the_guests_clock_page(guest_memory):
    """Without a stable master clock the saved clock comes from vCPU 0's pvclock page at its
    TSC (QEMU's kvmclock_current_nsec): system_time + ((tsc - tsc_timestamp) << shift) * mul / 2^32."""
    from microvm import guestclock

    mem = guest_memory(2 << 20)
    page = 0x10000
    mem.write(page, guestclock.PVCLOCK.pack(4, 0, 1_000_000, 5_000_000_000, 0x80000000, 1, 0))

    class Vcpu:
        def __init__(self, msr: int) -> None:
            self.msr = msr

        def get_msrs(self, indices):
            return {guestclock.MSR_KVM_SYSTEM_TIME_NEW: self.msr, guestclock.MSR_IA32_TSC: 1_000_000 + 3000}

    # 3000 TSC ticks << 1 = 6000, * 0.5 = 3000 ns after system_time
    assert guestclock.pvclock_now([Vcpu(page | 1)], mem) == 5_000_003_000
    assert guestclock.pvclock_now([Vcpu(page)], mem) == 0  # the guest has not enabled kvmclock
    assert guestclock.pvclock_now([], mem) == 0


@requires_kvm
def test_pause_and_resume_racing_the_machines_close(guest_cache, tmp_path):
    """Machine.pause/resume (what stop and cont do) in a loop on one thread while the machine
    stops and is torn down on another: they are serialised with close() by the machine's
    _run_lock (the documented order: Lifecycle._lock, _run_lock, pause_cond, kick_lock), so
    none raises, none waits on a vCPU that is gone, and once closed both are no-ops."""
    elf = build_guest("blk-busy", guest_cache)
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(256 << 10))
    spec = MachineSpec(kernel=str(elf), serial=["null"], no_reboot=True, drives=[f"id=d0,file={disk}"],
                       devices=["virtio-blk-device,drive=d0,force-legacy=off"])
    for _ in range(3):
        m = Machine(spec)
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(m.run()), daemon=True)
        t.start()
        wait_until(lambda: m.memory is not None and m.memory.read_u32(DONE) > 5, "the guest's disk requests")
        errors: list[BaseException] = []
        cycles = [0]

        def toggle() -> None:
            try:
                while t.is_alive():
                    m.pause()
                    m.resume()
                    cycles[0] += 1
                m.pause()  # after close: nothing to do, nothing raised
                m.resume()
            except BaseException as e:
                errors.append(e)

        racer = threading.Thread(target=toggle)
        racer.start()
        wait_until(lambda: cycles[0] > 3, "a few pause/resume cycles")
        m.request_stop(0, "test done")
        t.join(30)
        racer.join(30)
        assert not t.is_alive() and not racer.is_alive()
        assert result == [0] and not errors, errors
        assert m._closed and m.torn_down
