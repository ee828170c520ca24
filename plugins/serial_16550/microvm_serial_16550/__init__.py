"""microvm plugin: the PC's first serial port, a 16550A UART at COM1 (0x3f8, IRQ 4).

:mod:`.device` is the UART itself (no pluggy, no KVM, testable alone); :mod:`.plugin` is the
hook glue that places it on the machine and connects it to the ``-serial`` chardev.
"""
