"""The few HMP commands ``human-monitor-command`` understands, with QEMU 7.2's output text.

HMP output goes through QEMU's monitor, which turns every ``\\n`` into ``\\r\\n``; the
returned string keeps those CR LFs (``"VM status: running\\r\\n"``), as QEMU's does. A failing
command prints ``Error: <desc>`` and still returns normally, as HMP does.
"""
from __future__ import annotations

from typing import Callable

from . import commands
from .control import PAUSED, MachineControl
from .errors import QmpError


def _info_status(control: MachineControl, cpu: int) -> str:
    info = commands.status_info(control)
    text = "VM status: " + ("running" if info["running"] else "paused")
    if not info["running"] and info["status"] != PAUSED:
        text += f" ({info['status']})"
    return text + "\n"


def _info_name(control: MachineControl, cpu: int) -> str:
    name = control.name()
    return f"{name}\n" if name is not None else ""


def _info_version(control: MachineControl, cpu: int) -> str:
    v = commands.QEMU_VERSION
    return f"{v['major']}.{v['minor']}.{v['micro']}{commands.package_string()}\n"


def _info_kvm(control: MachineControl, cpu: int) -> str:
    present, enabled = control.kvm()
    return "kvm support: " + (("enabled" if enabled else "disabled") if present else "not compiled") + "\n"


def _info_cpus(control: MachineControl, cpu: int) -> str:
    lines = []
    for c in commands.cpus_fast(control):
        mark = "*" if c["cpu-index"] == cpu else " "
        lines.append(f"{mark} CPU #{c['cpu-index']}: thread_id={c['thread-id']}\n")
    return "".join(lines)


def _info_chardev(control: MachineControl, cpu: int) -> str:
    return "".join(f"{c.label}: filename={c.filename}\n" for c in control.chardevs())


INFO: dict[str, Callable[[MachineControl, int], str]] = {
    "status": _info_status,
    "name": _info_name,
    "version": _info_version,
    "kvm": _info_kvm,
    "cpus": _info_cpus,
    "chardev": _info_chardev,
}


def _quiet(fn: Callable[[MachineControl], None]) -> Callable[[MachineControl], str]:
    def run(control: MachineControl) -> str:
        fn(control)
        return ""

    return run


ACTIONS: dict[str, Callable[[MachineControl], str]] = {
    "stop": _quiet(commands.do_stop),
    "cont": _quiet(commands.do_cont),
    "c": _quiet(commands.do_cont),
    "system_reset": _quiet(lambda c: c.system_reset()),
    "quit": _quiet(lambda c: c.quit()),
    "q": _quiet(lambda c: c.quit()),
}


def run_hmp(control: MachineControl, line: str, cpu: int = 0) -> str:
    words = line.split()
    if not words:
        return ""
    try:
        if words[0] == "info":
            if len(words) < 2:
                text = "".join(f"info {name}\n" for name in INFO)
            else:
                fn = INFO.get(words[1])
                text = fn(control, cpu) if fn else f"unknown command: 'info {words[1]}'\n"
        else:
            action = ACTIONS.get(words[0])
            text = action(control) if action else f"unknown command: '{words[0]}'\n"
    except QmpError as e:
        text = f"Error: {e.desc}\n"
    return text.replace("\n", "\r\n")
