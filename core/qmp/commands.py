"""The QMP commands microvm answers, their arguments, and what each asks of the machine.

Arguments are checked the way QEMU's QObject input visitor checks them, in schema order and
with its messages: a missing member is ``Parameter 'x' is missing``, a wrong JSON type is
``Invalid parameter type for 'x', expected: string`` (QEMU 7.2's QERR_INVALID_PARAMETER_TYPE),
a bad enum value is ``Parameter 'null' does not accept value 'v'`` for a list element (QEMU
names list elements NULL there) and an unknown member, checked last, is
``Parameter 'x' is unexpected``. Result objects are built in schema order; the writer
reorders members as QEMU's QDict does.

Run-state rules follow QEMU 7.2 (softmmu/cpus.c, monitor/qmp-cmds.c): ``stop`` when not
running and ``cont`` when running succeed without doing anything (and without an event);
``cont`` after a shutdown or an internal error fails with "Resetting the Virtual Machine is
required".
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from .control import NEEDS_RESET, RUNNING, MachineControl
from .errors import COMMAND_NOT_FOUND, QmpError
from .qjson import qdict_order

if TYPE_CHECKING:
    from .protocol import QmpSession

#: what microvm claims to be: QEMU 7.2.0's QMP, as the issue asks
QEMU_VERSION = {"major": 7, "minor": 2, "micro": 0}
#: qapi/control.json QMPCapability: what a client may name in qmp_capabilities
QMP_CAPABILITIES = ("oob",)
#: offered in the greeting: none (no out-of-band execution)
OFFERED_CAPABILITIES: tuple[str, ...] = ()

# QObject input visitor's names for the JSON types it expected
_TYPE_NAMES = {"str": "string", "int": "integer", "bool": "boolean", "number": "number", "list": "array"}


class Arg(NamedTuple):
    name: str
    kind: str  # "str", "int", "bool", "number", "enum-list" (a list of enum values)
    optional: bool = False
    enum: tuple[str, ...] = ()


Handler = Callable[["QmpSession", dict[str, Any]], Any]


class Command(NamedTuple):
    name: str
    handler: Handler
    args: tuple[Arg, ...] = ()


def package_string() -> str:
    from .. import __version__

    return f"microvm {__version__}"


def version_info() -> dict[str, Any]:
    return {"qemu": dict(QEMU_VERSION), "package": package_string()}


# ------------------------------------------------------------------ argument checking
def _type_ok(kind: str, v: Any) -> bool:
    t = type(v)
    if kind == "str":
        return t is str
    if kind == "bool":
        return t is bool
    if kind == "int":  # qnum_get_try_int: an integer that fits int64
        return t is int and -(1 << 63) <= v < (1 << 63)
    if kind == "number":
        return t is int or t is float
    return True


def check_arguments(spec: tuple[Arg, ...], args: dict[str, Any]) -> None:
    for a in spec:
        if a.name not in args:
            if a.optional:
                continue
            raise QmpError(f"Parameter '{a.name}' is missing")
        v = args[a.name]
        if a.kind == "enum-list":
            if type(v) is not list:
                raise QmpError(f"Invalid parameter type for '{a.name}', expected: array")
            for i, item in enumerate(v):
                if type(item) is not str:
                    raise QmpError(f"Invalid parameter type for '{a.name}[{i}]', expected: string")
                if item not in a.enum:
                    raise QmpError(f"Parameter 'null' does not accept value '{item}'")
        elif not _type_ok(a.kind, v):
            raise QmpError(f"Invalid parameter type for '{a.name}', expected: {_TYPE_NAMES[a.kind]}")
    known = {a.name for a in spec}
    for key in qdict_order(args):
        if key not in known:
            raise QmpError(f"Parameter '{key}' is unexpected")


# ------------------------------------------------------------------ handlers
def _qmp_capabilities(s: QmpSession, args: dict[str, Any]) -> dict[str, Any]:
    if s.negotiated:
        raise QmpError("Capabilities negotiation is already complete, command ignored", COMMAND_NOT_FOUND)
    unavailable: list[str] = []
    for cap in args.get("enable", ()):
        if cap not in OFFERED_CAPABILITIES and cap not in unavailable:
            unavailable.append(cap)
    if unavailable:
        raise QmpError(f"Capability {', '.join(unavailable)} not available")
    s.negotiated = True
    return {}


def _query_version(s: QmpSession, args: dict[str, Any]) -> dict[str, Any]:
    return version_info()


def _query_commands(s: QmpSession, args: dict[str, Any]) -> list[dict[str, str]]:
    return [{"name": name} for name in COMMANDS]


def _query_name(s: QmpSession, args: dict[str, Any]) -> dict[str, Any]:
    name = s.control.name()
    return {"name": name} if name is not None else {}


def status_info(control: MachineControl) -> dict[str, Any]:
    state = control.run_state()
    return {"running": state == RUNNING, "singlestep": False, "status": state}


def _query_status(s: QmpSession, args: dict[str, Any]) -> dict[str, Any]:
    return status_info(s.control)


def do_stop(control: MachineControl) -> None:
    if control.run_state() == RUNNING:  # do_vm_stop: only a running VM changes state
        control.stop()


def do_cont(control: MachineControl) -> None:
    state = control.run_state()
    if state in NEEDS_RESET:
        raise QmpError("Resetting the Virtual Machine is required")
    if state != RUNNING:  # vm_prepare_start: already running is a silent success
        control.cont()


def _stop(s: QmpSession, args: dict[str, Any]) -> None:
    do_stop(s.control)


def _cont(s: QmpSession, args: dict[str, Any]) -> None:
    do_cont(s.control)


def _system_reset(s: QmpSession, args: dict[str, Any]) -> None:
    s.control.system_reset()


def _quit(s: QmpSession, args: dict[str, Any]) -> None:
    s.control.quit()


def cpus_fast(control: MachineControl) -> list[dict[str, Any]]:
    out = []
    for v in control.vcpus():
        out.append({
            "cpu-index": v.index,
            "qom-path": v.qom_path or f"/machine/unattached/device[{v.index}]",
            "thread-id": v.thread_id,
            "props": {"socket-id": v.socket_id,
                      "core-id": v.index if v.core_id is None else v.core_id,
                      "thread-id": v.thread_in_core},
            "target": "x86_64",
        })
    return out


def _query_cpus_fast(s: QmpSession, args: dict[str, Any]) -> list[dict[str, Any]]:
    return cpus_fast(s.control)


def _query_kvm(s: QmpSession, args: dict[str, Any]) -> dict[str, bool]:
    present, enabled = s.control.kvm()
    return {"enabled": bool(enabled), "present": bool(present)}


#: QEMU 7.2's MachineInfo for microvm (hw/i386/microvm.c: max_cpus 288, "microvm.ram")
MICROVM_MACHINE_INFO = {
    "name": "microvm",
    "cpu-max": 288,
    "hotpluggable-cpus": False,
    "numa-mem-supported": False,
    "deprecated": False,
    "default-cpu-type": "qemu64-x86_64-cpu",
    "default-ram-id": "microvm.ram",
}


def _query_machines(s: QmpSession, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(MICROVM_MACHINE_INFO)]


def _query_chardev(s: QmpSession, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"label": c.label, "filename": c.filename, "frontend-open": bool(c.frontend_open)}
            for c in s.control.chardevs()]


def block_info(control: MachineControl) -> list[dict[str, Any]]:
    out = []
    for i, b in enumerate(control.blocks()):
        info: dict[str, Any] = {"device": b.device}
        if b.qdev is not None:
            info["qdev"] = b.qdev
        info["type"] = "unknown"
        info["removable"] = b.removable
        info["locked"] = b.locked
        image: dict[str, Any] = {"filename": b.filename, "format": b.driver}
        if b.actual_size is not None:
            image["actual-size"] = b.actual_size
        image["virtual-size"] = b.virtual_size
        image["dirty-flag"] = False  # QEMU 7.2 reports it for raw images too
        info["inserted"] = {
            "file": b.filename,
            "node-name": b.node_name or f"#block{100 + 2 * i:03d}",
            "ro": b.read_only,
            "drv": b.driver,
            "backing_file_depth": 0,
            "encrypted": False,
            "detect_zeroes": b.detect_zeroes,
            "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
            "image": image,
            "cache": {"writeback": b.cache_writeback, "direct": b.cache_direct, "no-flush": b.cache_no_flush},
            "write_threshold": 0,
        }
        if b.io_status is not None:
            info["io-status"] = b.io_status
        out.append(info)
    return out


def _query_block(s: QmpSession, args: dict[str, Any]) -> list[dict[str, Any]]:
    return block_info(s.control)


def _human_monitor_command(s: QmpSession, args: dict[str, Any]) -> str:
    from .hmp import run_hmp

    if "cpu-index" in args and not 0 <= args["cpu-index"] < len(s.control.vcpus()):
        raise QmpError("Parameter 'cpu-index' expects a CPU number")
    return run_hmp(s.control, args["command-line"], args.get("cpu-index", 0))


_TABLE = (
    Command("qmp_capabilities", _qmp_capabilities, (Arg("enable", "enum-list", True, QMP_CAPABILITIES),)),
    Command("query-version", _query_version),
    Command("query-commands", _query_commands),
    Command("query-name", _query_name),
    Command("query-status", _query_status),
    Command("stop", _stop),
    Command("cont", _cont),
    Command("system_reset", _system_reset),
    Command("quit", _quit),
    Command("query-cpus-fast", _query_cpus_fast),
    Command("query-kvm", _query_kvm),
    Command("query-machines", _query_machines),
    Command("query-chardev", _query_chardev),
    Command("query-block", _query_block),
    Command("human-monitor-command", _human_monitor_command,
            (Arg("command-line", "str"), Arg("cpu-index", "int", True))),
)
#: every command after negotiation, by name
COMMANDS: dict[str, Command] = {c.name: c for c in _TABLE}
#: the only command before negotiation (QEMU's qmp_cap_negotiation_commands)
NEGOTIATION_COMMANDS: dict[str, Command] = {"qmp_capabilities": COMMANDS["qmp_capabilities"]}
