"""Serial interrupts to a 64-bit guest (IRETQ) in both irqchip modes: no input byte is lost.

tests/guests/irq64.S enters long mode itself, routes the 16550's IRQ 4 edge-triggered through
the IOAPIC and drains the RX FIFO in its handler; on 'q' it prints "COUNT=<bytes> IRQS=<handler
entries>" and triple-faults. bench/irq.py times the same guest; nothing here is timed.
"""
from __future__ import annotations

import os
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from kvm_helpers import build_guest, microvm_cmd, requires_kvm

pytestmark = [pytest.mark.kvm, requires_kvm]

N = 200


@pytest.fixture(scope="session")
def guest_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("guests")


@pytest.mark.parametrize("mode", ["split", "on"])
def test_irq64_counts_every_byte(guest_cache, mode):
    """Host input → 16550 → IRQ 4 → IOAPIC → LAPIC → 64-bit handler (IRETQ, EOI): all N bytes
    arrive, in at least one interrupt, and the triple fault after 'q' ends the VMM with 0."""
    elf = build_guest("irq64", guest_cache)
    p = subprocess.Popen(
        microvm_cmd("run", "--kernel", str(elf), "--no-reboot", "-M", f"microvm,kernel-irqchip={mode}"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out = b""
    try:
        deadline = time.monotonic() + 30
        while b"READY\n" not in out and time.monotonic() < deadline:  # input before READY
            r, _, _ = select.select([p.stdout], [], [], 0.5)         # may meet the FIFO reset
            if r:
                chunk = os.read(p.stdout.fileno(), 4096)
                if not chunk:
                    break
                out += chunk
        assert b"READY\n" in out, out
        rest, err = p.communicate(input=bytes(b"abcdefghijklmnop"[i % 16] for i in range(N)) + b"q", timeout=60)
        out += rest
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    m = re.search(rb"COUNT=(\d+) IRQS=(\d+)\n", out)
    assert m, (out, err)
    assert int(m.group(1)) == N, out
    assert int(m.group(2)) >= 1, out
    assert p.returncode == 0, err
