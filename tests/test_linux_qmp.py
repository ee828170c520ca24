"""QMP with the default Linux guest, driven by the real ``qemu.qmp`` client (PyPI, installed
by ./bootstrap): stop in the middle of the boot, wait, cont, and the kernel goes on booting;
the guest's own reset (init dies here, panic=1 reboot=t) with -no-shutdown reboots and QMP
keeps serving (QEMU 7.2); system_reset reboots; quit ends. A raw line client (what socat
does) watches the same events alongside. Slow (two Linux boots to /init on an emulating
host and the start of two more)."""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kvm_helpers import requires_kvm
from qmp_vm import Line, Vm, disconnect_after_quit, wait_until

pytestmark = [pytest.mark.kvm, pytest.mark.linux, requires_kvm]


def test_linux_guest_stop_cont_guest_reset_and_system_reset(default_guest, tmp_path):
    qmp_mod = pytest.importorskip("qemu.qmp", reason="the qemu.qmp package (PyPI; ./bootstrap installs it) is missing")
    with Vm(str(tmp_path), "--no-shutdown", "-v") as vm:
        raw = Line(vm.sock)  # a second client: events reach every negotiated client

        async def until(what: str, cond: Any, timeout: float) -> None:
            await asyncio.to_thread(wait_until, cond, what, timeout, vm.tail)

        async def session() -> None:
            qmp = qmp_mod.QMPClient("microvm-linux-test")
            await qmp.connect(vm.sock)
            assert qmp.greeting._raw["QMP"]["version"]["qemu"] == {"micro": 0, "minor": 2, "major": 7}
            with qmp.listener() as listener:

                async def event(name: str, timeout: float = 120) -> dict[str, Any]:
                    while True:
                        ev = await asyncio.wait_for(listener.get(), timeout)
                        if ev["event"] == name:
                            return dict(ev)

                await until("the kernel's banner", lambda: b"Linux version" in vm.out, 300)
                # stop in the middle of the boot: the kernel prints nothing more while paused
                assert await qmp.execute("stop") == {}
                await event("STOP")
                assert (await qmp.execute("query-status"))["status"] == "paused"
                printed = len(vm.out)
                for _ in range(10):
                    await asyncio.sleep(0.3)
                    assert len(vm.out) == printed
                assert b"Run /init" not in vm.out
                assert await qmp.execute("cont") == {}
                await event("RESUME")
                assert (await qmp.execute("query-status"))["status"] == "running"
                # the kernel goes on booting from where it stopped
                await until("the kernel to reach /init", lambda: b"Run /init as init process" in vm.out, 900)
                # then the guest resets itself (init exits or dies, panic=1 reboot=t): -no-shutdown
                # does not turn a reset into a shutdown (QEMU 7.2), so it reboots, still served
                ev = await event("RESET", 600)
                assert ev["data"] == {"guest": True, "reason": "guest-reset"}
                assert (await qmp.execute("query-status"))["status"] == "running"
                await until("the second boot", lambda: vm.out.count(b"Linux version") == 2, 300)
                assert await qmp.execute("system_reset") == {}
                ev = await event("RESET")
                assert ev["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
                await until("the boot after system_reset", lambda: vm.out.count(b"Linux version") == 3, 300)
                cpus = await qmp.execute("query-cpus-fast")
                assert len(cpus) == 1 and cpus[0]["thread-id"] > 0
                assert await qmp.execute("quit") == {}
                ev = await event("SHUTDOWN")
                assert ev["data"] == {"guest": False, "reason": "host-qmp-quit"}
            await disconnect_after_quit(qmp)

        asyncio.run(asyncio.wait_for(session(), 2400))
        assert vm.wait(60) == 0
        # the raw client saw the same run: its events, in order
        seen = []
        while line := raw.f.readline():
            seen.append(json.loads(line)["event"])
        assert seen[:2] == ["STOP", "RESUME"] and seen[-1] == "SHUTDOWN"
        assert seen.count("RESET") == 2
