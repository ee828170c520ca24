"""QEMU's ISA ``pvpanic`` device for microvm: a guest reports a panic through one I/O port."""
