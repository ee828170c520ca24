"""kvmclock for microvm."""
