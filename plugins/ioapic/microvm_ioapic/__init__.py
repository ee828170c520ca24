"""microvm plugin: an 82093AA I/O APIC (0xfec00000, 24 pins) for ``kernel-irqchip=split``.

:mod:`.device` is the pure model (no pluggy, no KVM, testable alone); :mod:`.plugin` is the
hook glue that places it on the machine and turns its messages into KVM MSIs.
"""
