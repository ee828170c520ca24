"""The interface a bus device implements (kept apart: creating a runtime-checkable Protocol
class costs start-up time, and only type checkers and tests need it)."""
from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class BusDevice(Protocol):
    """What a bus calls. ``data`` is a writable memoryview for reads, bytes for writes."""

    def read(self, offset: int, data: memoryview) -> None: ...

    def write(self, offset: int, data: bytes) -> None: ...
