"""The fw_cfg device filled the way QEMU 7.2's microvm fills it, for the glue to call.

The order of events in QEMU, and what each adds:

1. ``kvm_arch_init`` (accelerator start): e820 reservation of KVM's identity map.
2. ``fw_cfg_common_realize``: SIGNATURE, ID, UUID, NOGRAPHIC, BOOT_MENU,
   ``etc/boot-fail-wait`` (and ``etc/boot-menu-wait`` with a splash time) -- done by
   :class:`~.device.FwCfg` itself.
3. ``microvm_memory_init``: NB_CPUS, MAX_CPUS, RAM_SIZE, IRQ0_OVERRIDE (arch key 0x8002,
   value 1: the firmware should route the PIT's IRQ 0 to IOAPIC pin 2), ``etc/e820``, the
   kernel items (``x86_load_linux``) and, with ``x-option-roms=on``, the option ROMs as
   ``genroms/NAME`` files with a ``/rom@genroms/NAME`` boot entry.
4. ``microvm_machine_done``: ``etc/acpi/*`` + ``etc/table-loader`` (only with ACPI, which
   this VMM does not have) and ``etc/fdt`` (a device tree for EDK2; not built yet -- pass it
   in ``extra_files`` when there is a builder).
5. first reset (``fw_cfg_machine_reset``): ``bootorder`` and ``bios-geometry``, both present
   even when empty.

The directory is sorted by name, so the order of the ``add_file`` calls changes nothing.

The glue (:mod:`.plugin`) builds the device in two steps, as QEMU itself does (it adds the
kernel items in ``microvm_memory_init`` and fixes the command line up at machine-done):
:func:`microvm_fw_cfg` without a kernel when the devices are created, then
:func:`add_linux` once the command line is final. :func:`microvm_fw_cfg` with
``cfg.linux`` does both at once.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .device import FwCfg, FwCfgError, log
from .items import bios_geometry, bootorder, e820_table, microvm_e820, rom_devpath, sort_boot_devices
from .keys import FW_CFG_IRQ0_OVERRIDE, FW_CFG_MAX_CPUS, FW_CFG_NB_CPUS, FW_CFG_RAM_SIZE

if TYPE_CHECKING:
    from typing import Callable, Sequence

    from microvm.api import GuestMemory

    from .linux import LinuxBoot


class MicrovmFwCfgConfig:
    """Everything microvm's fw_cfg content depends on (a plain class: ``dataclasses``
    costs start-up time, and every machine has a fw_cfg).

    ``ram_regions`` are the RAM ranges ``(gpa, size)`` (below 4 GiB, then from 4 GiB).
    ``linux`` comes from :func:`~.linux.load_linux` or :func:`~.linux.load_pvh` when a
    kernel is given; its option ROM is added only with ``option_roms`` (``x-option-roms``),
    its bytes from ``rom_loader(name)`` (e.g. reading ``/usr/share/qemu/NAME``).
    ``boot_devices`` are ``(bootindex, firmware path)`` of other bootable devices;
    ``extra_files`` are ``-fw_cfg name=...`` items (and ``etc/fdt`` once built).
    """

    def __init__(
        self,
        ram_size: int,
        ram_regions: Sequence[tuple[int, int]],
        cpus: int = 1,
        max_cpus: int | None = None,
        kvm: bool = True,
        linux: "LinuxBoot | None" = None,
        option_roms: bool = True,
        rom_loader: Callable[[str], bytes] | None = None,
        boot_devices: Sequence[tuple[int, str]] = (),
        boot_strict: bool = False,
        extra_files: Sequence[tuple[str, bytes]] = (),
        uuid: bytes = bytes(16),
        nographic: bool = True,
        boot_menu: bool = False,
        splash_time: int | None = None,
        reboot_timeout: int = -1,
        dma_enabled: bool = True,
        file_slots: int = 0x20,
        lchs: Sequence[tuple[str, int, int, int]] = (),
    ) -> None:
        self.ram_size = ram_size
        self.ram_regions = ram_regions
        self.cpus = cpus
        self.max_cpus = max_cpus
        self.kvm = kvm
        self.linux = linux
        self.option_roms = option_roms
        self.rom_loader = rom_loader
        self.boot_devices = boot_devices
        self.boot_strict = boot_strict
        self.extra_files = extra_files
        self.uuid = uuid
        self.nographic = nographic
        self.boot_menu = boot_menu
        self.splash_time = splash_time
        self.reboot_timeout = reboot_timeout
        self.dma_enabled = dma_enabled
        self.file_slots = file_slots
        self.lchs = lchs


def microvm_fw_cfg(memory: GuestMemory | None, cfg: MicrovmFwCfgConfig) -> FwCfg:
    """A ready fw_cfg device with microvm's items; map :meth:`FwCfg.port_ranges` on the PIO bus."""
    fw = FwCfg(
        memory,
        dma_enabled=cfg.dma_enabled,
        file_slots=cfg.file_slots,
        uuid=cfg.uuid,
        nographic=cfg.nographic,
        boot_menu=cfg.boot_menu,
        splash_time=cfg.splash_time,
        reboot_timeout=cfg.reboot_timeout,
    )
    fw.add_i16(FW_CFG_NB_CPUS, cfg.cpus)
    fw.add_i16(FW_CFG_MAX_CPUS, cfg.max_cpus if cfg.max_cpus is not None else cfg.cpus)
    fw.add_i64(FW_CFG_RAM_SIZE, cfg.ram_size)
    fw.add_i32(FW_CFG_IRQ0_OVERRIDE, 1)
    fw.add_file("etc/e820", e820_table(microvm_e820(cfg.ram_regions, kvm=cfg.kvm)))

    # after the machine's own, as QEMU adds -fw_cfg's; bootorder and bios-geometry come at
    # the first reset in QEMU (replacing a file of that name), so their slots stay free
    later = {"bootorder", "bios-geometry"} - {name for name, _ in cfg.extra_files}
    for name, data in cfg.extra_files:
        try:
            if len(fw.files()) + len(later) >= fw.file_slots:
                raise FwCfgError(f"fw_cfg: no file slot left for {name} ({fw.file_slots} slots)")
            fw.add_file(name, data)
        except FwCfgError as e:
            raise FwCfgError(f"{name}: {e}") from None
    fw.modify_file("bootorder", bootorder(sort_boot_devices(cfg.boot_devices), strict=cfg.boot_strict))
    fw.modify_file("bios-geometry", bios_geometry(cfg.lchs))
    if cfg.linux is not None:
        add_linux(fw, cfg.linux, option_roms=cfg.option_roms, rom_loader=cfg.rom_loader,
                  boot_devices=cfg.boot_devices, boot_strict=cfg.boot_strict)
    return fw


def add_linux(
    fw: FwCfg,
    linux: "LinuxBoot",
    *,
    option_roms: bool,
    rom_loader: Callable[[str], bytes] | None,
    boot_devices: Sequence[tuple[int, str]] = (),
    boot_strict: bool = False,
) -> None:
    """The kernel items of ``x86_load_linux`` and, with ``option_roms``, the ROM that boots
    them (``genroms/linuxboot_dma.bin`` or ``genroms/pvh.bin``) first in ``bootorder``
    (``option_rom[].bootindex = 0``)."""
    for key, data in linux.items.items():
        fw.add_bytes(key, data)
    boot = list(boot_devices)
    if option_roms:
        if rom_loader is None:
            raise ValueError("fw_cfg: x-option-roms=on with a kernel needs a rom_loader")
        name = f"genroms/{linux.option_rom}"
        fw.add_file(name, rom_loader(linux.option_rom), on_select=_log_first_select(name))
        boot.append((0, rom_devpath(linux.option_rom)))
    fw.modify_file("bootorder", bootorder(sort_boot_devices(boot), strict=boot_strict))


def _log_first_select(name: str) -> Callable[[], None]:
    """An ``on_select`` that says once (with ``-v``) that the firmware took the file: the
    host-side sign that the firmware runs the option ROM (SeaBIOS's own "Booting from ROM..."
    was missing from its console once here while the kernel booted; cause not pinned down)."""
    said = False

    def on_select() -> None:
        nonlocal said
        if not said:
            said = True
            log.info("fw_cfg: the firmware selected %s", name)
    return on_select
