"""KVM in-kernel irqchip (kernel-irqchip=on) for microvm."""
