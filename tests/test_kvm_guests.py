"""The run loop, the 16550 and the emulation assist on /dev/kvm, with tiny purpose-built guests."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from kvm_helpers import build_guest, converse, microvm_cmd, read_until, requires_kvm, run_microvm

pytestmark = [pytest.mark.kvm, requires_kvm]


@pytest.fixture(scope="session")
def guest_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("guests")


def test_hello_prints_and_triple_fault_ends_with_no_reboot(guest_cache):
    elf = build_guest("hello-pvh", guest_cache)
    r = run_microvm("run", "--kernel", str(elf), "--no-reboot", "-v")
    assert r.stdout == b"HELLO\n"
    assert r.returncode == 0, r.stderr
    assert b"triple fault" in r.stderr


def test_triple_fault_without_no_reboot_resets_the_machine(guest_cache):
    """Without --no-reboot a triple fault reboots: the guest runs again from the start."""
    elf = build_guest("hello-pvh", guest_cache)
    p = subprocess.Popen(microvm_cmd("run", "--kernel", str(elf)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = bytearray()
    try:
        read_until(p, out, lambda o: o.count(b"HELLO\n") >= 3, time.monotonic() + 30)
    finally:
        p.kill()
        p.wait()
    assert out.count(b"HELLO\n") >= 3, out


def test_serial_input_reaches_guest_through_interrupts(guest_cache):
    """Host input → 16550 RX FIFO → IRQ 4 → IOAPIC → LAPIC → guest handler, which echoes."""
    elf = build_guest("serial-echo", guest_cache)
    out, rc = converse(
        microvm_cmd("run", "--kernel", str(elf), "--no-reboot"), [(b"READY\n", b"xy"), (b"[y]", b"q")]
    )
    assert out == b"READY\n[x][y]\nBYE\n"
    assert rc == 0


def test_serial_off_removes_the_port(guest_cache):
    """isa-serial=off: nothing answers at 0x3f8, so the guest's output goes nowhere (the LSR
    reads 0xff, THRE looks set, writes are dropped) and it still triple-faults cleanly."""
    elf = build_guest("hello-pvh", guest_cache)
    r = run_microvm("run", "--kernel", str(elf), "--no-reboot", "-M", "microvm,isa-serial=off")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b""


def test_emulation_assist_int3_fwait_popcnt(guest_cache):
    """INT3 reaches the guest's #BP handler and returns after the INT3; FWAIT and POPCNT
    complete. On this host they exit as emulation failures and microvm steps over them; on
    hardware virtualization the CPU runs them. The output is the same either way."""
    elf = build_guest("assist", guest_cache)
    r = run_microvm("run", "--kernel", str(elf), "--no-reboot")
    assert r.stdout == b"BP\nINT3-OK\nFWAIT-OK\nPOPCNT=Q\n", r.stderr
    assert r.returncode == 0


def test_emulation_assist_off_reports_registers(guest_cache):
    """With the assist off, an emulation failure is an error: registers and code bytes, status 1."""
    if not os.path.exists("/sys/module/kvm_pvm"):
        pytest.skip("INT3 only fails emulation on an emulating host (kvm_pvm)")
    elf = build_guest("assist", guest_cache)
    r = run_microvm("run", "--kernel", str(elf), "--no-reboot", "-M", "microvm,x-emulation-assist=off")
    assert r.returncode == 1
    assert b"KVM internal error" in r.stderr
    assert b"RIP=" in r.stderr and b"code at RIP: cc" in r.stderr


def test_smp_guest_boots_with_several_vcpus(guest_cache):
    """--smp 2 creates two vCPU threads; the AP waits for INIT/SIPI while the BSP runs."""
    elf = build_guest("hello-pvh", guest_cache)
    r = run_microvm("run", "--kernel", str(elf), "--no-reboot", "--smp", "2")
    assert r.stdout == b"HELLO\n" and r.returncode == 0, r.stderr


def test_sigterm_stops_the_machine_cleanly(guest_cache):
    """`kill` (SIGTERM) ends the VMM through the normal stop path, as QEMU does."""
    import signal

    elf = build_guest("spin", guest_cache)
    p = subprocess.Popen(microvm_cmd("run", "--kernel", str(elf), "-v"), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = bytearray()
    read_until(p, out, lambda o: b"SPIN" in o, time.monotonic() + 20)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert b"terminated by signal 15" in err


def test_serial_file_keeps_every_boot_across_resets(guest_cache, tmp_path):
    """-serial file: is truncated once per process; a guest reset appends (as QEMU)."""
    elf = build_guest("hello-pvh", guest_cache)
    log = tmp_path / "serial.log"
    p = subprocess.Popen(microvm_cmd("run", "--kernel", str(elf), "--serial", f"file:{log}"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not log.exists() or log.read_bytes().count(b"HELLO\n") < 3):
            time.sleep(0.05)
    finally:
        p.kill()
        p.wait()
    assert log.read_bytes().count(b"HELLO\n") >= 3
