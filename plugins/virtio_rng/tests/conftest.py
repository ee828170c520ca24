"""Guest RAM for the device tests: real memory without a VM (microvm.api.GuestMemory), one
per test module, sized by the module's ``MEM_SIZE``. Kept here so that these tests run
from the plugin's own directory, next to an installed core, and nowhere else."""
from __future__ import annotations

from typing import Iterator

import pytest

from microvm.api import GuestMemory


@pytest.fixture(scope="module")
def mem(request) -> Iterator[GuestMemory]:
    m = GuestMemory(request.module.MEM_SIZE)
    yield m
    m.close()
