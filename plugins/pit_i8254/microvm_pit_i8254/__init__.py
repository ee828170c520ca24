"""microvm plugin: the PC's 8254 interval timer (0x40-0x43, IRQ 0) and port 0x61.

:mod:`.device` is the pure model (no pluggy, no KVM, testable alone); :mod:`.plugin` is the
hook glue that places it on the machine and runs its timer.
"""
