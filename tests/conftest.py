"""Shared fixtures for the core's unit tests (no KVM). KVM helpers live in kvm_helpers.py."""
from __future__ import annotations

from typing import Callable, Iterator

import pytest

from microvm.memory import GuestMemory


@pytest.fixture
def guest_memory() -> Iterator[Callable[[int], GuestMemory]]:
    """A factory of :class:`GuestMemory` (anonymous mmap, so large sizes stay lazy),
    closed at teardown."""
    made: list[GuestMemory] = []

    def make(size: int) -> GuestMemory:
        mem = GuestMemory(size)
        made.append(mem)
        return mem

    yield make
    for mem in made:
        mem.close()


@pytest.fixture
def plugin_cache(tmp_path, monkeypatch):
    """Point the plugin index cache at a private directory, with the cache enabled."""
    root = tmp_path / "microvm-cache"
    monkeypatch.setenv("MICROVM_CACHE", str(root))
    monkeypatch.delenv("MICROVM_NO_PLUGIN_CACHE", raising=False)
    return root


@pytest.fixture(scope="session")
def default_guest():
    """The project's default Linux guest (built on first use, cached in ~/.cache/microvm)."""
    from microvm.guest import default_guest as get

    return get(build=True, progress=lambda s: print(f"guest build: {s}"))
