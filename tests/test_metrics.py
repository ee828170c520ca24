"""Counters (microvm.metrics): lock-free counting from many threads, the groups a machine
keeps (bus accesses per device, virtio notifications, interrupts per GSI, vCPU exits), and
``microvm run --metrics FILE``."""
from __future__ import annotations

import json
import threading

import pytest

from kvm_helpers import build_guest, requires_kvm, run_microvm
from microvm.metrics import Counter, CounterGroup, Metrics
from microvm.testing import TestMachine


def test_counter_loses_no_update_under_threads() -> None:
    c = Counter()

    def work() -> None:
        for _ in range(20000):
            c.inc()
            c.add(3)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.value == 8 * 20000 * 4


def test_counter_takes_no_lock() -> None:
    """inc is the C-level itertools.count step itself (no Python frame, no lock object)."""
    c = Counter()
    assert type(c.inc).__name__ == "method-wrapper"
    assert not any(isinstance(v, type(threading.Lock())) for v in (getattr(c, s) for s in c.__slots__))


def test_group_and_snapshot() -> None:
    g = CounterGroup("dev")
    assert g.counter("reads") is g.counter("reads")
    g.counter("reads").inc()
    g.counter("bytes").add(512)
    assert g["reads"] == 1 and g["never"] == 0
    assert g.snapshot() == {"bytes": 512, "reads": 1}
    m = Metrics()
    assert m.group("devices", "dev") is m.group("devices", "dev")
    m.group("devices", "dev").counter("x").inc()
    m.add_source("vcpus", "vcpu0", lambda: {"KVM_EXIT_IO": 2})
    assert m.snapshot() == {"devices": {"dev": {"x": 1}}, "vcpus": {"vcpu0": {"KVM_EXIT_IO": 2}}}


def test_a_rebooted_vcpu_adds_to_what_the_previous_boot_counted() -> None:
    m = Metrics()
    m.add_source("vcpus", "vcpu0", lambda: {"KVM_EXIT_IO": 5, "KVM_EXIT_SHUTDOWN": 1})
    m.add_source("vcpus", "vcpu0", lambda: {"KVM_EXIT_IO": 2})
    assert m.snapshot()["vcpus"]["vcpu0"] == {"KVM_EXIT_IO": 7, "KVM_EXIT_SHUTDOWN": 1}


def test_write_json(tmp_path) -> None:
    m = Metrics()
    m.group("irqs", "gsi4").counter("raised").inc()
    m.write_json(str(tmp_path / "m.json"))
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["irqs"] == {"gsi4": {"raised": 1}} and "microvm" in data


def test_bus_accesses_and_interrupts_are_counted_per_device() -> None:
    with TestMachine("microvm,pic=off,pit=off", serial=["null"]) as m:
        m.create_devices()
        m.pio_bus.write(0x3F8 + 4, b"\x08")                 # 16550 MCR: OUT2
        m.pio_bus.write(0x3F8 + 1, b"\x02")                 # IER: THRE interrupt -> IRQ 4 rises
        buf = bytearray(1)
        m.pio_bus.read(0x3F8 + 2, memoryview(buf))          # IIR
        m.pio_bus.read(0x80, memoryview(buf))               # nobody there: not a device's count
        snap = m.metrics.snapshot()
        assert snap["devices"]["serial0"] == {"pio_reads": 1, "pio_writes": 2}
        assert snap["irqs"]["gsi4"]["raised"] == 1


def test_virtio_counters_are_the_devices_group(tmp_path) -> None:
    from microvm.virtio.testing import MmioDriver

    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    with TestMachine(devices=["virtio-blk-device,drive=d,id=disk"], drives=[f"id=d,file={img}"]) as m:
        m.create_devices().start()                          # the notification worker runs
        [slot] = m.virtio_transports
        drv = MmioDriver(slot.transport)
        drv.probe()
        drv.notify(0)             # QueueNotify -> eventfd -> worker -> notify(0): nothing posted
        g = m.metrics.group("devices", "disk")
        assert g is slot.transport.counters is slot.transport.backend.counters
        for _ in range(200):
            if g["notifications"]:
                break
            threading.Event().wait(0.01)
        assert g["notifications"] == 1 and g["mmio_reads"] == 0  # the driver went straight to the transport
        assert g["requests"] == 0 and g["needs_reset"] == 0


@requires_kvm
@pytest.mark.kvm
def test_metrics_file_of_a_real_run(tmp_path) -> None:
    """hello-pvh writes HELLO\\n to COM1 one byte per OUT and triple-faults: six port writes,
    six KVM_EXIT_IO exits at least (the guest does no other I/O), one shutdown."""
    elf = build_guest("hello-pvh", tmp_path)
    out = tmp_path / "m.json"
    r = run_microvm("run", "--kernel", str(elf), "--no-reboot", "--metrics", str(out))
    assert r.returncode == 0 and r.stdout == b"HELLO\n", r.stderr
    data = json.loads(out.read_text())
    assert data["devices"]["serial0"]["pio_writes"] == 6
    exits = data["vcpus"]["vcpu0"]
    assert exits["KVM_EXIT_IO"] == 6 and exits["KVM_EXIT_SHUTDOWN"] == 1


@pytest.mark.parametrize("where, message", [
    ("{tmp}/no-dir/m.json", "no such directory"),
    ("{tmp}", "is a directory"),
    ("", "a file name is needed"),
])
def test_a_metrics_file_that_cannot_be_written_is_refused_before_the_vm_runs(tmp_path, where, message) -> None:
    """One line and status 2 before any KVM set-up (it used to run the whole VM, then fail)."""
    r = run_microvm("run", "--kernel", str(tmp_path / "k"), "--metrics", where.format(tmp=tmp_path))
    err = r.stderr.decode()
    assert r.returncode == 2 and err.count("\n") == 1 and message in err, err
    assert not list(tmp_path.glob("*.tmp"))


def test_two_virtio_devices_without_ids_count_apart(tmp_path) -> None:
    with TestMachine(devices=["virtio-rng-device", "virtio-rng-device", "virtio-rng-device,id=third"]) as m:
        m.create_devices()
        assert [s.name for s in m.virtio_transports] == ["virtio-rng", "virtio-rng.1", "third"]
        groups = [s.transport.counters for s in m.virtio_transports]
        assert len({id(g) for g in groups}) == 3
    with pytest.raises(Exception, match="another device is named serial0"):
        TestMachine(devices=["virtio-rng-device,id=serial0"]).create_devices()
