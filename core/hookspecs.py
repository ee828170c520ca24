"""Hook specifications: the whole contract between the microvm core and its plugins.

Plugins are found through the ``microvm`` entry-point group and implement these hooks with
``@microvm.hookimpl``. Hooks are for composition and lifecycle only; a guest's register
access goes straight from the bus to the device object and never through pluggy.

Registration hooks hand the plugin a ``register`` callback (as in llm's ``register_models``):
the core validates names and refuses duplicates, so plugins stay declarative.

Order of calls for one boot (``docs/hooks.md`` has the same list, checked by a test):

1. ``register_machine_options``, ``register_irqchips``, ``register_device_types``,
   ``register_backends`` once per process, when the command line is parsed;
2. ``create_devices(machine)`` after guest memory, buses and the irqchip exist;
3. ``cpuid(machine, vcpu_id, entries)`` and ``configure_vcpu(machine, vcpu)`` per vCPU;
4. ``kernel_cmdline(machine)`` and ``mptable_entries(machine)`` while the kernel is loaded;
5. ``machine_start(machine)`` just before the vCPU threads run;
6. ``handle_exit(machine, vcpu, exit_reason)`` for each exit the core does not handle itself;
7. ``machine_stop(machine)`` when the machine stops or is reset (once per boot).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from .machine import Machine
    from .options import MachineOption

hookspec = pluggy.HookspecMarker("microvm")


@hookspec
def register_machine_options(register: Callable[["MachineOption"], None]) -> None:
    """Declare ``-M microvm,KEY=VALUE`` options this plugin understands.

    :param register: call with a :class:`microvm.options.MachineOption` (name, kind such as
        ``OnOffAuto``/``bool``/``str``/a choice list, default, help). A name declared twice
        is a :class:`~microvm.errors.PluginError`.

    Called once per process, before the command line's machine options are parsed; an option
    no installed plugin declares is an error listing the known ones.

    .. versionadded:: 0.1
    """


@hookspec
def register_irqchips(register: Callable[[str, Callable[["Machine"], Any], str], None]) -> None:
    """Offer an interrupt-controller model for ``-M microvm,kernel-irqchip=NAME``.

    :param register: ``register(name, factory, help)``; ``factory(machine)`` creates the
        irqchip (see :class:`microvm.irq.IrqChip`) after guest memory exists and before any
        vCPU is created (KVM requires ``KVM_CREATE_IRQCHIP`` and the split-irqchip capability
        to precede ``KVM_CREATE_VCPU``).

    .. versionadded:: 0.1
    """


@hookspec
def register_device_types(register: Callable[..., None]) -> None:
    """Declare ``--device TYPE,prop=value`` types (e.g. ``virtio-blk-device``).

    :param register: ``register(name, factory, help)``; ``factory(machine, props)`` is called
        during ``create_devices`` for each ``--device`` of that type, with ``props`` the
        parsed ``key=value`` dict, and must consume every key it accepts (unknown keys are
        reported to the user). Duplicate names are refused.

    .. versionadded:: 0.1
    """


@hookspec
def register_backends(register: Callable[..., None]) -> None:
    """Declare host-side backends: ``register(kind, name, factory, help)`` where ``kind`` is
    ``"chardev"``, ``"drive"`` or ``"netdev"`` and ``name`` is e.g. ``"stdio"``, ``"raw"`` or
    ``"tap"``. Duplicate (kind, name) pairs are refused.

    .. versionadded:: 0.1
    """


@hookspec
def create_devices(machine: "Machine") -> None:
    """Create this plugin's devices and place them with ``machine.add_pio_device``,
    ``machine.add_mmio_device`` or ``machine.add_virtio_device``.

    Called once per boot after guest memory, both buses and the irqchip exist, before the
    vCPUs are configured. Read resolved machine options with ``machine.option(name)``.

    .. versionadded:: 0.1
    """


@hookspec
def cpuid(machine: "Machine", vcpu_id: int, entries: list[dict[str, int]]) -> None:
    """Edit the CPUID table of one vCPU in place before ``KVM_SET_CPUID2``.

    ``entries`` starts as ``KVM_GET_SUPPORTED_CPUID`` with the core's topology edits (APIC
    ID, hypervisor bit). A plugin sets or clears the feature bits of the device it models,
    e.g. kvmclock's ``KVM_FEATURE_CLOCKSOURCE2`` in leaf 0x40000001.

    .. versionadded:: 0.1
    """


@hookspec
def configure_vcpu(machine: "Machine", vcpu: Any) -> None:
    """Set up per-vCPU state that belongs to a device model (LAPIC LINT0/LINT1, MSRs), once
    per vCPU after ``KVM_SET_CPUID2`` and before it first runs. ``vcpu`` is a
    :class:`microvm.kvm.Vcpu`.

    .. versionadded:: 0.1
    """


@hookspec
def kernel_cmdline(machine: "Machine") -> list[str] | None:
    """Return words to append to the guest kernel command line (e.g. the
    ``virtio_mmio.device=`` entries), or None. Called after ``create_devices``.

    .. versionadded:: 0.1
    """


@hookspec
def mptable_entries(machine: "Machine") -> list[Any] | None:
    """Return MP table entries (``microvm.boot.mptable.Processor``, ``Bus``, ``IoApic``,
    ``IoInterrupt``, ``LocalInterrupt``) this plugin's devices need the guest to know about,
    or None. A device that is switched off returns none, so the guest does not probe it.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def handle_exit(machine: "Machine", vcpu: Any, exit_reason: int) -> bool | None:
    """Handle a rare ``KVM_RUN`` exit the core does not know (e.g. ``KVM_EXIT_DEBUG`` for a
    debugger plugin). Return True when handled; the first True wins (``firstresult``).
    Exits that come often (a userspace IOAPIC's ``KVM_EXIT_IOAPIC_EOI``) belong in
    ``machine.add_exit_handler``, which the vCPU loop calls directly, without pluggy.
    An exit nobody handles stops the machine with a register dump. Called on the vCPU's
    own thread; ``vcpu.run_ptr`` is the ``struct kvm_run``.

    .. versionadded:: 0.1
    """


@hookspec
def machine_start(machine: "Machine") -> None:
    """The machine is built and the kernel loaded; the vCPU threads start right after.
    Start device worker threads and host I/O here.

    .. versionadded:: 0.1
    """


@hookspec
def machine_stop(machine: "Machine") -> None:
    """The vCPUs have stopped (guest shutdown, reset or error). Stop worker threads, flush
    and close host resources. Called once per boot, also on reset before the next boot.

    .. versionadded:: 0.1
    """
