"""The virtio-net tests share virtio_net_testlib (the driver side, a socketpair tap, network
namespaces)."""
from __future__ import annotations

import os
import sys
from typing import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from virtio_net_testlib import NetNs, close_leaked_taps, tun_fds, why_no_tap  # noqa: E402


@pytest.fixture
def netns() -> Iterator[NetNs]:
    """A network namespace of the test's own, entered by the test's thread, deleted after,
    also when the test failed: taps it left open are closed, processes left inside killed."""
    why = why_no_tap()
    if why:
        pytest.skip(why)
    try:
        ns = NetNs.create()
    except RuntimeError as e:
        pytest.skip(str(e))
    before = tun_fds()
    try:
        with ns.entered():
            yield ns
    finally:
        close_leaked_taps(before)
        ns.delete()
