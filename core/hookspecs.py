"""Hook specifications: the whole contract between the microvm core and its plugins.

Plugins are found through the ``microvm`` entry-point group and implement these hooks with
``@microvm.hookimpl``. Hooks are for composition and lifecycle only; a guest's register
access goes straight from the bus to the device object and never through pluggy.

Registration hooks hand the plugin a ``register`` callback (as in llm's ``register_models``):
the core validates names and refuses duplicates, so plugins stay declarative.

Machine-time hooks receive ``ctx``, a :class:`microvm.context.MachineContext`: the small,
typed part of the machine a plugin may use (``docs/plugins.md`` lists it member by member).

Order of calls for one boot (``docs/hooks.md`` has the same list, checked by a test):

1. ``register_machine_options``, ``register_irqchips``, ``register_device_types``,
   ``register_backends`` once per process, when the command line is parsed;
2. ``create_devices(ctx)`` after guest memory, buses and the irqchip exist;
3. ``cpuid(ctx, vcpu_id, entries)`` and ``configure_vcpu(ctx, vcpu)`` per vCPU;
4. ``kernel_cmdline(ctx)`` and ``mptable_entries(ctx)`` while the kernel is loaded;
5. ``machine_start(ctx)`` just before the vCPU threads run;
6. ``handle_exit(ctx, vcpu, exit_reason)`` for each exit the core does not handle itself;
7. ``machine_stop(ctx)`` when the machine stops or is reset (once per boot).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from .config import MachineOption
    from .context import MachineContext
    from .context import VcpuView as Vcpu

hookspec = pluggy.HookspecMarker("microvm")


@hookspec
def register_machine_options(register: Callable[["MachineOption"], None]) -> None:
    """Declare ``-M microvm,KEY=VALUE`` options this plugin understands.

    :param register: call with a :class:`microvm.api.MachineOption` (name, kind such as
        ``OnOffAuto``/``bool``/``str``/``int``/``choice``, default, help; ``auto_value`` says
        what ``auto`` resolves to). A name declared twice is a
        :class:`~microvm.errors.PluginError`.

    Called once per process, before the command line's machine options are parsed; an option
    no installed plugin declares is an error listing the known ones.

    .. versionadded:: 0.1
    """


@hookspec
def register_irqchips(register: Callable[[str, Callable[["MachineContext"], Any], str], None]) -> None:
    """Offer an interrupt-controller model for ``-M microvm,kernel-irqchip=NAME``.

    :param register: ``register(name, factory, help)``; ``factory(ctx)`` returns the irqchip,
        an object implementing all of :class:`microvm.api.IrqChip`, after guest memory
        exists and before any vCPU is created (KVM requires ``KVM_CREATE_IRQCHIP`` and the
        split-irqchip capability to precede ``KVM_CREATE_VCPU``).

    .. versionadded:: 0.1
    """


@hookspec
def register_device_types(register: Callable[..., None]) -> None:
    """Declare ``--device TYPE,prop=value`` types (e.g. ``virtio-blk-device``).

    :param register: ``register(name, factory, help, properties=(), virtio=False)``:
        ``properties`` declares each key the device takes (:class:`microvm.api.Property`:
        name, kind, default, help, required); the core refuses unknown keys with the list of
        valid ones and prints the list for ``--device NAME,help``. ``factory(ctx, props)`` is
        called after ``create_devices`` for each ``--device`` of that type, with ``props``
        the converted values (:class:`microvm.api.Properties`). With ``virtio=True`` the
        factory returns a :class:`microvm.api.VirtioBackend` and the core places it on a
        virtio-mmio transport, adding the transport's properties (``force-legacy``).
        Every device type also takes ``id=`` (QEMU's). Duplicate names are refused.

    .. versionadded:: 0.1
    """


@hookspec
def register_backends(register: Callable[..., None]) -> None:
    """Declare host-side backends: ``register(kind, name, factory, help, properties=())``
    where ``kind`` is ``"chardev"`` or ``"netdev"`` and ``name`` the type as the user writes
    it (``--chardev socket,...``, ``--netdev tap,...``). ``properties`` declares the keys
    besides ``id`` (:class:`microvm.api.Property`); ``factory(ctx, id, props)`` makes the
    backend the first time a device asks for it (``ctx.chardev(id)``, ``ctx.netdev(id)``).
    Duplicate (kind, name) pairs are refused.

    .. versionadded:: 0.1
    """


@hookspec
def create_devices(ctx: "MachineContext") -> None:
    """Create this plugin's devices and place them with ``ctx.add_pio_device``,
    ``ctx.add_mmio_device`` or ``ctx.add_virtio_device``.

    Called once per boot after guest memory, both buses and the irqchip exist, before the
    vCPUs are configured. Read machine options with ``ctx.option(name)`` / ``ctx.switch(name)``
    and which legacy devices the machine has with ``ctx.legacy``.

    .. versionadded:: 0.1
    """


@hookspec
def cpuid(ctx: "MachineContext", vcpu_id: int, entries: list[dict[str, int]]) -> None:
    """Edit the CPUID table of one vCPU in place before ``KVM_SET_CPUID2``.

    ``entries`` starts as ``KVM_GET_SUPPORTED_CPUID`` with the core's topology edits (APIC
    ID, hypervisor bit). A plugin sets or clears the feature bits of the device it models,
    e.g. kvmclock's ``KVM_FEATURE_CLOCKSOURCE2`` in leaf 0x40000001.

    .. versionadded:: 0.1
    """


@hookspec
def configure_vcpu(ctx: "MachineContext", vcpu: "Vcpu") -> None:
    """Set up per-vCPU state that belongs to a device model (LAPIC LINT0/LINT1, MSRs), once
    per vCPU after ``KVM_SET_CPUID2`` and before it first runs. ``vcpu`` is a
    :class:`microvm.api.Vcpu` (``id``, ``get_lapic_regs``/``set_lapic_regs``,
    ``set_msrs``).

    .. versionadded:: 0.1
    """


@hookspec
def kernel_cmdline(ctx: "MachineContext") -> list[str] | None:
    """Return words to append to the guest kernel command line (e.g. the
    ``virtio_mmio.device=`` entries), or None. Called after ``create_devices``.

    .. versionadded:: 0.1
    """


@hookspec
def mptable_entries(ctx: "MachineContext") -> list[Any] | None:
    """Return MP table entries (:mod:`microvm.api`'s ``Processor``, ``Bus``, ``IoApic``,
    ``IoInterrupt``, ``LocalInterrupt``) this plugin's devices need the guest to know about,
    or None. A device that is switched off returns none, so the guest does not probe it.
    The irqchip's own entries come from :meth:`microvm.api.IrqChip.mptable_entries`.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def handle_exit(ctx: "MachineContext", vcpu: "Vcpu", exit_reason: int) -> bool | None:
    """Handle a rare ``KVM_RUN`` exit the core does not know (e.g. ``KVM_EXIT_DEBUG`` for a
    debugger plugin). Return True when handled; the first True wins (``firstresult``).
    Exits that come often (a userspace IOAPIC's ``KVM_EXIT_IOAPIC_EOI``) belong in
    ``ctx.add_exit_handler``, which the vCPU loop calls directly, without pluggy.
    An exit nobody handles stops the machine with a register dump. Called on the vCPU's
    own thread; ``vcpu.run`` is the ``struct kvm_run``.

    .. versionadded:: 0.1
    """


@hookspec
def machine_start(ctx: "MachineContext") -> None:
    """The machine is built and the kernel loaded; the vCPU threads start right after.
    Start device worker threads and host I/O here.

    .. versionadded:: 0.1
    """


@hookspec
def machine_stop(ctx: "MachineContext") -> None:
    """The vCPUs have stopped (guest shutdown, reset or error). Stop worker threads, flush
    and close host resources. Called once per boot, also on reset before the next boot.

    .. versionadded:: 0.1
    """
