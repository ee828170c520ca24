"""microvm plugin: QEMU's firmware configuration device (fw_cfg), as QEMU 7.2's microvm has it.

:mod:`.device` is the device (selector/data ports, DMA, the item table and file directory; no
pluggy, no KVM); :mod:`.keys` its selector keys and register bits; :mod:`.items` and
:mod:`.linux` build the content firmware reads (e820, bootorder, the split bzImage); and
:mod:`.machine` puts the items together the way ``hw/i386/microvm.c`` does; :mod:`.plugin` is
the hook glue (fw_cfg in every machine, the kernel handed to a ``--bios`` firmware, and
``ctx.devices["fw_cfg"]`` for other plugins' files).
"""
