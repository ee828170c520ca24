"""QMP error replies: QEMU's error classes and the exception that carries one.

A command handler (or a :class:`~microvm.qmp.control.MachineControl` method) raises
:class:`QmpError`; the dispatcher turns it into ``{"error": {"class": ..., "desc": ...}}``.
The classes are QEMU's ``QapiErrorClass`` (qapi/error.json): clients such as libvirt switch
on them, so no new ones are invented here.
"""
from __future__ import annotations

GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"
DEVICE_NOT_ACTIVE = "DeviceNotActive"
DEVICE_NOT_FOUND = "DeviceNotFound"
KVM_MISSING_CAP = "KVMMissingCap"

ERROR_CLASSES = (GENERIC_ERROR, COMMAND_NOT_FOUND, DEVICE_NOT_ACTIVE, DEVICE_NOT_FOUND, KVM_MISSING_CAP)


class QmpError(Exception):
    """A QMP command failed: ``desc`` is the human-readable text QEMU would send."""

    def __init__(self, desc: str, error_class: str = GENERIC_ERROR) -> None:
        if error_class not in ERROR_CLASSES:
            raise ValueError(f"not a QEMU error class: {error_class!r}")
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class

    def to_qobject(self) -> dict[str, str]:
        return {"class": self.error_class, "desc": self.desc}
