"""What the QMP server needs from the machine: the :class:`MachineControl` protocol.

The server and its commands never touch :class:`microvm.machine.Machine` directly; the
machine side implements this small protocol (an adapter object is enough), so the protocol
half is testable with a fake and survives the Machine being rebuilt after a guest reset
(the adapter points at whichever Machine is current).

Threading contract: each QMP server calls these methods from its own thread, one call at
a time; with several monitors (``-qmp`` twice, ``-mon``) several servers call at once, so the
machine side serialises its run-state transitions itself (microvm.lifecycle: one lock).
Each must return promptly (it may wait briefly, e.g. for vCPUs to leave KVM_RUN, as QEMU's
``pause_all_vcpus`` blocks its main loop, or for a reset to rebuild the machine) and must
never wait for a QMP client. State changes are reported back through
``QmpServer.emit_event`` (safe from any thread; an event emitted before a command returns,
on whichever thread, is sent before the command's reply, the order QEMU's clients see).
"""
from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence, runtime_checkable

# QEMU's RunState values (qapi/run-state.json) that microvm can be in
RUNNING = "running"
PAUSED = "paused"
PRELAUNCH = "prelaunch"
SHUTDOWN = "shutdown"
GUEST_PANICKED = "guest-panicked"
INTERNAL_ERROR = "internal-error"
RUN_STATES = (RUNNING, PAUSED, PRELAUNCH, SHUTDOWN, GUEST_PANICKED, INTERNAL_ERROR)
#: states that ``cont`` refuses ("Resetting the Virtual Machine is required"), as QEMU's
#: runstate_needs_reset()
NEEDS_RESET = (SHUTDOWN, INTERNAL_ERROR)


class VcpuInfo(NamedTuple):
    """One vCPU for ``query-cpus-fast``."""

    index: int
    #: host thread id (``threading.get_native_id()`` of the vCPU thread), 0 if not started
    thread_id: int
    #: topology; None means QEMU's default for ``-smp N``: one socket, N cores, 1 thread
    socket_id: int = 0
    core_id: int | None = None
    thread_in_core: int = 0
    #: None: ``/machine/unattached/device[INDEX]`` (where QEMU puts microvm's CPUs)
    qom_path: str | None = None


class ChardevInfo(NamedTuple):
    """One character device for ``query-chardev`` (QEMU: label ``serial0``, filename ``stdio``)."""

    label: str
    filename: str
    frontend_open: bool = True


class BlockInfo(NamedTuple):
    """One drive for ``query-block``: a raw (or other format) file behind a device."""

    device: str  # the drive id (``-drive id=...``)
    filename: str
    read_only: bool = False
    driver: str = "raw"  # the format driver name QEMU reports as ``drv``
    virtual_size: int = 0  # bytes the guest sees
    actual_size: int | None = None  # bytes allocated on the host (st_blocks * 512)
    qdev: str | None = None  # QOM path of the device using the drive, None if unattached
    node_name: str | None = None  # None: an automatic "#blockNNN" name, as QEMU's
    removable: bool = False
    locked: bool = False
    io_status: str | None = "ok"  # virtio-blk reports "ok"; None omits the member
    cache_writeback: bool = True
    cache_direct: bool = False
    cache_no_flush: bool = False
    detect_zeroes: str = "off"


@runtime_checkable
class MachineControl(Protocol):
    """The machine side of QMP. See the module docstring for the threading contract."""

    def run_state(self) -> str:
        """The current QEMU RunState: one of :data:`RUN_STATES`."""
        ...

    def stop(self) -> None:
        """Pause the vCPUs (``stop``). Called only while running; a no-op if the machine
        stopped in between. On the transition, emit ``STOP`` and report ``paused``."""
        ...

    def cont(self) -> None:
        """Resume the vCPUs (``cont``). Called in paused, prelaunch or guest-panicked state;
        the command refuses :data:`NEEDS_RESET` states, and a machine that entered one since
        raises :class:`~microvm.qmp.errors.QmpError` itself. On the transition, emit
        ``RESUME`` and report ``running``."""
        ...

    def system_reset(self) -> None:
        """Reset (``system_reset``): return once the reset is done and ``RESET {"guest":
        false, "reason": "host-qmp-system-reset"}`` emitted, one event per call. A machine
        that was not running comes back in ``prelaunch``, its vCPUs stopped (QEMU 7.2)."""
        ...

    def quit(self) -> None:
        """Request termination (``quit``), asynchronously: return at once, then emit
        ``SHUTDOWN {"guest": false, "reason": "host-qmp-quit"}`` and stop the process."""
        ...

    def name(self) -> str | None:
        """The VM name (``-name``), None if none was given."""
        ...

    def vcpus(self) -> Sequence[VcpuInfo]:
        """The vCPUs in index order."""
        ...

    def kvm(self) -> tuple[bool, bool]:
        """(present, enabled) for ``query-kvm``: microvm always runs on KVM, so (True, True)."""
        ...

    def chardevs(self) -> Sequence[ChardevInfo]:
        """Host character devices (serial ports, consoles, the QMP socket itself)."""
        ...

    def blocks(self) -> Sequence[BlockInfo]:
        """Drives (``-drive``), attached or not."""
        ...
