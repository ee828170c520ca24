"""Fixtures shared by the core's tests (tests/) and the plugins' tests (plugins/*/tests)."""
from __future__ import annotations

from typing import Iterator

import pytest


@pytest.fixture(scope="module")
def mem(request) -> Iterator["object"]:
    """Guest RAM for device tests without KVM, sized by the test module's ``MEM_SIZE``,
    one per module (tests clear what they use)."""
    from microvm.memory import GuestMemory

    m = GuestMemory(request.module.MEM_SIZE)
    yield m
    m.close()
