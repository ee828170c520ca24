"""The core on /dev/kvm, in-process: GIL release in KVM_RUN, stopping a spinning vCPU,
ioctl errors, and the machine-time hooks called during a real boot."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import microvm
from kvm_helpers import build_guest, requires_kvm
from microvm.errors import BootError
from microvm.kvm import Kvm, KvmError
from microvm.machine import Machine
from microvm.spec import MachineSpec

pytestmark = [pytest.mark.kvm, requires_kvm]


@pytest.fixture(scope="module")
def guest_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("guests-core")


def test_an_ioctl_interrupted_by_a_signal_is_retried(monkeypatch):
    """EINTR from an ioctl other than KVM_RUN is retried (a SIGTERM landing in KVM_CREATE_VM
    during a reboot loop ended the run with 'Interrupted system call')."""
    import errno

    import microvm.kvm as kvm_mod

    real = kvm_mod.lib
    interrupted: list[int] = []

    class Interrupting:
        def __getattr__(self, name: str):
            return getattr(real, name)

        def microvm_ioctl_int(self, fd: int, req: int, arg: int) -> int:
            if req == real.KVM_CREATE_VM and len(interrupted) < 2:
                interrupted.append(req)
                kvm_mod.ffi.errno = errno.EINTR
                return -1
            return real.microvm_ioctl_int(fd, req, arg)

    monkeypatch.setattr(kvm_mod, "lib", Interrupting())
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.close()
    kvm.close()
    assert interrupted == [real.KVM_CREATE_VM] * 2


def test_kvm_error_names_the_ioctl_and_errno():
    kvm = Kvm()
    vm = kvm.create_vm()
    try:
        with pytest.raises(KvmError) as ei:
            # a memory slot at an unaligned guest address is refused with EINVAL
            vm.set_user_memory_region(0, 0x123, 0x1000, 0x1000)
        assert ei.value.ioctl == "KVM_SET_USER_MEMORY_REGION"
        assert ei.value.errno == 22
        assert "KVM_SET_USER_MEMORY_REGION failed: [Errno 22]" in str(ei.value)
    finally:
        vm.close()
        kvm.close()


def vcpu_exits(m: Machine) -> int:
    """All exits of all vCPUs so far (the machine's metrics)."""
    return sum(sum(v.values()) for v in m.metrics.snapshot().get("vcpus", {}).values())


def test_kvm_run_releases_the_gil_and_stop_kicks_a_spinning_vcpu(guest_cache, capfd):
    """While the vCPU spins inside KVM_RUN, another Python thread keeps running (the GIL is
    released); request_stop then interrupts KVM_RUN (signal + immediate_exit).

    Once the guest has printed SPIN it spins without exits: the vCPU thread stays in one
    KVM_RUN ioctl. The watcher then runs a hundred rounds of Python (each sleeping, so each
    takes the GIL again) while the exit count does not move: had KVM_RUN kept the GIL, the
    watcher could not get it back while the vCPU sat in that ioctl."""
    elf = build_guest("spin", guest_cache)
    m = Machine(MachineSpec(kernel=str(elf), serial=["stdio"], no_reboot=True))
    quiet_rounds = []

    def watcher():
        n, last = 0, -1
        deadline = time.monotonic() + 60  # a hang guard, not a measurement
        while n < 100 and time.monotonic() < deadline:
            exits = vcpu_exits(m)
            if exits < 5 or exits != last:  # not yet SPIN\n (one OUT a byte), or still printing
                n, last = 0, exits
            else:
                n += 1
            time.sleep(0.001)
        quiet_rounds.append(n)
        m.request_stop(0, "test done")

    t = threading.Thread(target=watcher)
    t.start()
    status = m.run()
    t.join()
    assert status == 0
    assert m.stop_reason == "test done"
    assert quiet_rounds == [100], f"only {quiet_rounds} rounds of the watcher while the vCPU stayed in KVM_RUN"
    assert "SPIN" in capfd.readouterr().out
    assert all(not th.is_alive() for th in m.threads)


class Recorder:
    """A plugin that records every machine-time hook call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @microvm.hookimpl
    def create_devices(self, ctx):
        self.calls.append("create_devices")

    @microvm.hookimpl
    def cpuid(self, ctx, vcpu_id, entries):
        self.calls.append(f"cpuid:{vcpu_id}")
        assert any(e["function"] == 1 for e in entries)

    @microvm.hookimpl
    def configure_vcpu(self, ctx, vcpu):
        self.calls.append(f"configure_vcpu:{vcpu.id}")

    @microvm.hookimpl
    def kernel_cmdline(self, ctx):
        self.calls.append("kernel_cmdline")
        return ["recorder.flag=1"]

    @microvm.hookimpl
    def mptable_entries(self, ctx):
        from microvm.boot.mptable import IoInterrupt

        self.calls.append("mptable_entries")
        return [IoInterrupt(src_irq=7, dst_ioapic=ctx.irqchip.ioapic_id, dst_pin=7)]

    @microvm.hookimpl
    def machine_start(self, ctx):
        self.calls.append("machine_start")

    @microvm.hookimpl
    def machine_stop(self, ctx):
        self.calls.append("machine_stop")

    @microvm.hookimpl
    def handle_exit(self, ctx, vcpu, exit_reason):
        self.calls.append(f"handle_exit:{exit_reason}")
        return exit_reason == 4242


def test_machine_hooks_are_called_in_order_during_a_boot(guest_cache):
    from microvm.boot import mptable
    from microvm import layout

    elf = build_guest("hello-pvh", guest_cache)
    rec = Recorder()
    m = Machine(MachineSpec(kernel=str(elf), append="console=ttyS0", smp=2, no_reboot=True,
                            serial=["null"], extra_plugins=[rec]))
    m.build()
    # the contributions reached the guest: command line in memory, MP table entry present
    raw = m.memory.read(layout.CMDLINE_ADDR, 200).split(b"\0")[0].decode()
    assert raw.startswith("console=ttyS0 ") and "recorder.flag=1" in raw.split()
    entries = mptable.parse(m.memory.read(layout.MPTABLE_ADDR, 1024), layout.MPTABLE_ADDR)
    assert mptable.IoInterrupt(src_irq=7, dst_ioapic=m.irqchip.ioapic_id, dst_pin=7) in entries
    assert sum(isinstance(e, mptable.Processor) for e in entries) == 2
    # an exit the core does not know goes to handle_exit; True means handled
    from microvm.vcpu import VcpuThread

    VcpuThread(m, m.vcpus[0])._other_exit(4242)
    assert not m.stopping
    # a registered exit handler is called directly, without the hook
    seen = []
    m.add_exit_handler(4244, seen.append)
    VcpuThread(m, m.vcpus[0])._other_exit(4244)
    assert [v.id for v in seen] == [0] and seen[0] is m.vcpu_views[0] and not m.stopping
    VcpuThread(m, m.vcpus[0])._other_exit(4243)  # nobody handles it: the machine stops
    assert m.stopping and m.exit_status == 1 and "unhandled KVM exit" in m.stop_reason
    m.stopping = False
    assert m.run() == 0
    # a Machine runs once (its devices and KVM objects are gone): a second run says so
    from microvm.errors import MicrovmError

    with pytest.raises(MicrovmError, match="already run; build a new Machine"):
        m.run()
    assert rec.calls == [
        "create_devices",
        "cpuid:0", "configure_vcpu:0", "cpuid:1", "configure_vcpu:1",
        "kernel_cmdline", "mptable_entries",
        "handle_exit:4242", "handle_exit:4243",
        "machine_start", "machine_stop",
    ]


def test_bad_kernel_is_a_boot_error_before_any_kvm_object(tmp_path):
    bad = tmp_path / "vmlinux"
    bad.write_bytes(b"\x7fELF" + b"\x02\x01" + bytes(100))
    with pytest.raises(BootError, match="ELF kernel"):
        Machine(MachineSpec(kernel=str(bad), serial=["null"]))


def test_guest_ram_is_registered_in_two_slots_above_3g(guest_cache):
    """-m 3200M: 3 GiB below the hole, the rest from 4 GiB, a KVM slot each (mmap is lazy,
    so this costs no host memory)."""
    elf = build_guest("hello-pvh", guest_cache)
    m = Machine(MachineSpec(kernel=str(elf), mem_size=3200 << 20, serial=["null"], no_reboot=True))
    assert m.run() == 0
    assert [(r.gpa, r.size) for r in m.memory.regions] == [(0, 3 << 30), (4 << 30, 128 << 20)]


def test_machine_run_in_another_thread_still_stops_promptly(guest_cache):
    """The embedding case: run() on a worker thread, stop from the main thread. The kick
    signal's handler was installed when microvm.machine was imported here, in the main thread."""
    elf = build_guest("spin", guest_cache)
    m = Machine(MachineSpec(kernel=str(elf), serial=["null"], no_reboot=True))
    result = []
    t = threading.Thread(target=lambda: result.append(m.run()))
    t.start()
    deadline = time.monotonic() + 20
    while not m.threads and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # the vCPU is now spinning inside KVM_RUN
    m.request_stop(0, "stop from main")
    t.join(timeout=30)
    assert not t.is_alive() and result == [0]
    # without the kick signal the vCPU would still be inside KVM_RUN: run() gives up on it
    # after its join timeout and returns with the thread alive
    assert all(not th.is_alive() for th in m.threads)


def test_netdev_without_a_backend_plugin_is_a_config_error(guest_cache):
    """A QEMU command line's -netdev TYPE,... must not be silently dropped when no installed
    plugin provides that backend (virtio_net provides tap; nothing provides QEMU's user)."""
    from microvm.errors import ConfigError

    elf = build_guest("hello-pvh", guest_cache)
    with pytest.raises(ConfigError, match=r"--netdev user,id=n0: no plugin provides this network backend"):
        Machine(MachineSpec(kernel=str(elf), serial=["null"], netdevs=["user,id=n0"]))


def test_lapic_register_page_round_trip():
    """get_lapic_regs/set_lapic_regs (what the lapic plugin uses for LINT0/LINT1): the page
    read is KVM's (the version register says an integrated LAPIC), it survives the owner's
    lifetime (cffi: a field view does not keep its struct alive), and what is written is what
    KVM holds afterwards."""
    import gc
    import struct

    kvm = Kvm()
    vm = kvm.create_vm()
    try:
        vm.enable_cap("KVM_CAP_SPLIT_IRQCHIP", 24)
        vcpu = vm.create_vcpu(0)
        try:
            pages = []
            for _ in range(50):
                pages.append(vcpu.get_lapic_regs())
                gc.collect()
                bytearray(4096)  # reuse freed memory, as a later allocation would
            assert all(p == pages[0] for p in pages) and len(pages[0]) == 1024
            version = struct.unpack_from("<I", pages[0], 0x30)[0]
            assert version & 0xFF == 0x14, hex(version)        # KVM's APIC_VERSION
            regs = bytearray(pages[0])
            struct.pack_into("<I", regs, 0x350, 0x700)          # LVT0: ExtINT
            struct.pack_into("<I", regs, 0x360, 0x400)          # LVT1: NMI
            vcpu.set_lapic_regs(regs)
            back = vcpu.get_lapic_regs()
            assert struct.unpack_from("<II", back, 0x350)[0] & 0x700 == 0x700
            assert struct.unpack_from("<I", back, 0x360)[0] & 0x700 == 0x400
            with pytest.raises(ValueError, match="1024 bytes"):
                vcpu.set_lapic_regs(b"\0" * 10)
        finally:
            vcpu.close()
    finally:
        vm.close()
        kvm.close()


@requires_kvm
@pytest.mark.kvm
def test_sigterm_at_any_moment_of_a_reboot_loop_ends_cleanly(guest_cache, tmp_path):
    """hello-pvh triple-faults after each HELLO and, without --no-reboot, the machine is
    rebuilt again and again: SIGTERM lands in a boot, in a teardown or between two machines.
    Each time the process must end by itself with status 0 and write its metrics (it used to
    deadlock in the handler, or lose the signal between two machines and run on)."""
    import json
    import random
    import signal
    import subprocess

    from kvm_helpers import microvm_cmd

    elf = build_guest("hello-pvh", guest_cache)
    for i in range(8):
        metrics = tmp_path / f"m{i}.json"
        p = subprocess.Popen(microvm_cmd("run", "--kernel", str(elf), "--serial", "stdio", "--metrics", str(metrics)),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            seen = b""
            while seen.count(b"HELLO") < random.randint(1, 6):
                chunk = p.stdout.read1(4096)
                assert chunk, p.stderr.read()
                seen += chunk
            time.sleep(random.uniform(0, 0.02))
            p.send_signal(signal.SIGTERM)
            p.communicate(timeout=20)  # raises if the process does not end by itself
        finally:
            p.kill()
            p.wait()
        assert p.returncode == 0, (i, p.returncode)
        assert json.loads(metrics.read_text())["vcpus"]["vcpu0"]["KVM_EXIT_SHUTDOWN"] >= 1
