"""QEMU's ``isa-debug-exit`` for microvm, and the template for writing a device plugin."""
