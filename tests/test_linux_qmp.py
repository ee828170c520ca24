"""QMP with the default Linux guest: stop in the middle of the boot, wait, cont, and the
kernel goes on booting; the guest's own reset (init dies here, panic=1 reboot=t) with
-no-shutdown reboots and QMP keeps serving (QEMU 7.2); system_reset reboots; quit ends.
Slow (two Linux boots to /init on an emulating host and the start of two more)."""
from __future__ import annotations

import time

import pytest

from kvm_helpers import requires_kvm
from qmp_vm import Line, Vm, wait_until

pytestmark = [pytest.mark.kvm, pytest.mark.linux, requires_kvm]


def test_linux_guest_stop_cont_guest_reset_and_system_reset(default_guest, tmp_path):
    with Vm(str(tmp_path), "--no-shutdown", "-v") as vm:
        q = Line(vm.sock)
        wait_until(lambda: b"Linux version" in vm.out, "the kernel's banner", 300, vm.tail)
        # stop in the middle of the boot: the kernel prints nothing more while paused
        assert q.cmd("stop") == {}
        assert q.event("STOP") and q.cmd("query-status")["status"] == "paused"
        printed = len(vm.out)
        for _ in range(10):
            time.sleep(0.3)
            assert len(vm.out) == printed
        assert b"Run /init" not in vm.out
        assert q.cmd("cont") == {}
        assert q.event("RESUME") and q.cmd("query-status")["status"] == "running"
        # the kernel goes on booting from where it stopped
        wait_until(lambda: b"Run /init as init process" in vm.out, "the kernel to reach /init", 900, vm.tail)
        # then the guest resets itself (init exits or dies, panic=1 reboot=t): -no-shutdown
        # does not turn a reset into a shutdown (QEMU 7.2), so it reboots, still served
        assert q.event("RESET", timeout=600)["data"] == {"guest": True, "reason": "guest-reset"}
        assert q.cmd("query-status")["status"] == "running"
        wait_until(lambda: vm.out.count(b"Linux version") == 2, "the second boot", 300, vm.tail)
        assert q.cmd("system_reset") == {}
        assert q.event("RESET")["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
        wait_until(lambda: vm.out.count(b"Linux version") == 3, "the boot after system_reset", 300, vm.tail)
        cpus = q.cmd("query-cpus-fast")
        assert len(cpus) == 1 and cpus[0]["thread-id"] > 0
        assert q.cmd("quit") == {}
        assert q.event("SHUTDOWN")["data"] == {"guest": False, "reason": "host-qmp-quit"}
        assert vm.wait(60) == 0
