"""microvm plugin: the PC's two cascaded 8259A interrupt controllers and the ELCR.

:mod:`.device` is the pure model (no pluggy, no KVM, testable alone); :mod:`.plugin` is the
hook glue that places it on the machine and wires it to the irqchip.
"""
