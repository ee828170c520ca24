"""microvm plugin: the PC's MC146818 real-time clock and CMOS RAM (0x70-0x71, IRQ 8).

:mod:`.device` is the pure model (no pluggy, no KVM, testable alone); :mod:`.plugin` is the
hook glue that places it on the machine, fills the memory-size bytes and runs its timer.
"""
