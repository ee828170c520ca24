"""Hook glue: QEMU microvm's fw_cfg in every machine, and the kernel handed to a firmware.

QEMU's microvm always has fw_cfg (``fw_cfg_init_io_dma(0x510, 0x514, ...)``), so this plugin
creates it in every boot, fed from the machine: RAM size and regions (``etc/e820``), CPU
counts, ``bootorder``, ``bios-geometry``, ``etc/boot-fail-wait``. With ``--bios`` and
``--kernel`` it takes the boot over (``ctx.boot.hand_over``): the kernel, initrd and
command line go in as ``x86_load_linux`` puts them, plus ``genroms/linuxboot_dma.bin``
(``pvh.bin`` for an ELF kernel) when ``x-option-roms=on``.

Other plugins add files through the device itself, ``ctx.devices["fw_cfg"]`` (an
:class:`~microvm_fw_cfg.device.FwCfg`): ``add_file(name, data)``, ``modify_file``,
``file_data``. It exists from this plugin's ``create_devices`` on (which runs before the
other plugins' ``create_devices``: ``tryfirst``), so any later hook or ``--device``
factory may use it; ``docs/fw_cfg.md`` has the details.

The kernel items are added in ``machine_start``, when the command line is final (the
virtio-mmio words depend on devices placed after ``create_devices``); QEMU likewise fixes
its command line up at machine-done. A guest reset rebuilds the machine, and with it a
fresh device, so there is no reset hook to run.
"""
from __future__ import annotations

from typing import Any

from microvm.api import hookimpl

NAME = "fw_cfg"
#: the option ROMs QEMU ships are a few KiB; anything much larger is not one
OPTION_ROM_MAX = 1 << 20


@hookimpl(tryfirst=True)
def create_devices(ctx: Any) -> None:
    from .device import FwCfgError
    from .machine import MicrovmFwCfgConfig, microvm_fw_cfg

    boot = ctx.boot
    try:
        fw = microvm_fw_cfg(ctx.memory, MicrovmFwCfgConfig(
            ram_size=ctx.ram_size,
            ram_regions=[(r.gpa, r.size) for r in ctx.memory.regions],
            cpus=ctx.smp,
            max_cpus=ctx.max_cpus,   # QEMU's machine->smp.max_cpus: -smp 2,maxcpus=4 gives 4
            # QEMU's !machine->enable_graphics: 1 with -nographic or no display option (both
            # set -M graphics=off), 0 with -display none
            nographic=not ctx.switch("graphics"),
            # the user's --fw-cfg (QEMU's -fw_cfg) files, after the machine's own as in QEMU
            extra_files=boot.take_fw_cfg_files(NAME),
        ))
    except FwCfgError as e:  # a name the machine uses (etc/e820), or no slot left
        from microvm.api import ConfigError

        raise ConfigError(f"--fw-cfg {e}") from None
    for base, length, dev, name in fw.port_ranges():
        ctx.add_pio_device(dev, base, length, name)
    ctx.devices[NAME] = fw
    if boot.firmware is not None and boot.kernel is not None:
        boot.hand_over(NAME)


@hookimpl
def machine_start(ctx: Any) -> None:
    boot = ctx.boot
    if boot.firmware is None or boot.kernel is None or boot.handled_by != NAME:
        return
    from microvm.api import BootError, load_firmware_file

    from .linux import LinuxBootError, load_linux, load_pvh
    from .machine import add_linux

    cmdline = boot.cmdline if boot.cmdline is not None else boot.append
    try:
        if boot.kernel_kind == "elf":
            entry, low, high = boot.pvh
            linux = load_pvh(boot.kernel[:8192], entry=entry, load_low=low, load_high=high, cmdline=cmdline,
                             initrd=boot.initrd, below_4g_mem_size=boot.below_4g)
        else:
            linux = load_linux(boot.kernel, cmdline, boot.initrd, below_4g_mem_size=boot.below_4g)
    except LinuxBootError as e:
        raise BootError(f"firmware boot: {e}") from None
    from .device import FwCfgError

    try:
        add_linux(ctx.devices[NAME], linux, option_roms=ctx.switch("x-option-roms"),
                  rom_loader=lambda name: load_firmware_file(name, OPTION_ROM_MAX))
    except FwCfgError as e:  # --fw-cfg genroms/linuxboot_dma.bin took the option ROM's name
        raise BootError(f"firmware boot: --fw-cfg: {e}") from None
