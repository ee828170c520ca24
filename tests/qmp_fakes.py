"""A fake :class:`microvm.qmp.control.MachineControl` for the QMP tests.

It keeps QEMU's run-state transitions and emits the events a real machine would, through
whatever ``emit`` it is given (a server's ``emit_event``, or a list for protocol tests).
"""
from __future__ import annotations

from typing import Any, Callable

from microvm.qmp import control
from microvm.qmp.control import BlockInfo, ChardevInfo, VcpuInfo


class FakeMachine:
    def __init__(self, state: str = control.RUNNING, name: str | None = "vm0", smp: int = 2) -> None:
        self.state = state
        self._name = name
        self.smp = smp
        self.calls: list[str] = []
        self.emitted: list[tuple[str, dict[str, Any] | None]] = []
        self.emit: Callable[[str, dict[str, Any] | None], None] = lambda name, data=None: self.emitted.append((name, data))

    # MachineControl
    def run_state(self) -> str:
        return self.state

    def stop(self) -> None:
        self.calls.append("stop")
        if self.state == control.RUNNING:
            self.state = control.PAUSED
            self.emit("STOP", None)

    def cont(self) -> None:
        self.calls.append("cont")
        if self.state != control.RUNNING:
            self.state = control.RUNNING
            self.emit("RESUME", None)

    def system_reset(self) -> None:
        self.calls.append("system_reset")
        if self.state != control.RUNNING:
            self.state = control.PRELAUNCH
        self.emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})

    def quit(self) -> None:
        self.calls.append("quit")
        self.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})

    def name(self) -> str | None:
        return self._name

    def vcpus(self) -> list[VcpuInfo]:
        return [VcpuInfo(i, 4000 + i) for i in range(self.smp)]

    def kvm(self) -> tuple[bool, bool]:
        return (True, True)

    def chardevs(self) -> list[ChardevInfo]:
        return [ChardevInfo("serial0", "stdio"), ChardevInfo("compat_monitor0", "unix:/tmp/q.sock,server=on")]

    def blocks(self) -> list[BlockInfo]:
        return [BlockInfo("drive0", "/var/lib/disk.img", virtual_size=64 << 20, actual_size=1 << 20,
                          qdev="/machine/peripheral-anon/device[0]/virtio-backend")]
