"""Hook glue for ``--device virtio-rng-device[,max-bytes=N][,period=MS]`` (QEMU's spelling).

Written as an outside author would write it: :mod:`microvm.api` only. The properties are
declared once; the core converts and checks them, adds the transport's ``force-legacy``
and places the returned backend on a virtio-mmio transport (``virtio=True``). QEMU's
``rng=`` (an ``-object rng-random``/``rng-egd`` backend) is not offered: the entropy always
comes from the host kernel's ``getrandom()``, which is what QEMU's default backend reads.
"""
from __future__ import annotations

from typing import Any, Callable

from microvm.api import ConfigError, Property, hookimpl

PROPERTIES = (
    Property("max-bytes", "int", (1 << 63) - 1, "at most this many random bytes per period (QEMU's rate limit)"),
    Property("period", "int", 1 << 16, "the rate limit's period in milliseconds"),
)


def create(ctx: Any, props: Any) -> Any:
    """Factory for ``virtio-rng-device``: the backend, with its rate-limit timer."""
    max_bytes, period = props["max-bytes"], props["period"]
    # QEMU 7.2's checks and wording (virtio_rng_device_realize)
    if not 0 <= max_bytes < 1 << 63:
        raise ConfigError("virtio-rng-device: 'max-bytes' parameter must be non-negative, and less than 2^63")
    if not 0 < period < 1 << 32:
        raise ConfigError("virtio-rng-device: 'period' parameter expects a positive integer")
    from .device import VirtioRng  # lazily: loading the plugin stays cheap

    timers = ctx.timers
    rng = VirtioRng(max_bytes=max_bytes, period_ms=period, on_timer_change=timers.wake)
    timers.add(rng)
    return rng


@hookimpl
def register_device_types(register: Callable[..., None]) -> None:
    register("virtio-rng-device", create, "virtio entropy source (the guest's hwrng) fed by the host's getrandom()",
             properties=PROPERTIES, virtio=True)
