"""Exception types a user can act on. The CLI turns :class:`UserError` into one line and status 2."""
from __future__ import annotations


class MicrovmError(Exception):
    """Base of every error microvm raises on purpose."""


class UserError(MicrovmError):
    """Bad input from the user (command line, kernel file, sizes): one line, exit status 2."""


class ConfigError(UserError):
    """An option, machine key or device description that cannot be honoured."""


class BootError(UserError):
    """The kernel, initrd or command line cannot be loaded into this machine."""


class GuestMemoryError(MicrovmError):
    """A guest physical address range that is not (entirely) backed by guest RAM.

    Raised to device code that follows a guest-provided address; a device must turn it into
    a device-level error (an I/O error status, DEVICE_NEEDS_RESET) and never let it escape
    into a vCPU thread.
    """

    def __init__(self, addr: int, length: int, why: str = "outside guest RAM") -> None:
        super().__init__(f"guest range [{addr:#x}, +{length:#x}) is {why}")
        self.addr = addr
        self.length = length


class BusError(MicrovmError):
    """A device range that cannot be placed on a bus (overlap, zero length)."""


class PluginError(MicrovmError):
    """A plugin broke the hook contract (duplicate name, bad return value)."""

