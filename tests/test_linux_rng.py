"""virtio-rng-device under the default Linux guest: the kernel's virtio_rng driver (the
guest's hwrng, CONFIG_HW_RANDOM_VIRTIO) finds the device on the legacy transport, asks it for
entropy and gets it, as the device's counters (``--metrics``) show. Kernel level only: it
works the same on hosts where guest user mode cannot run."""
from __future__ import annotations

import json
import re

import pytest

from kvm_helpers import requires_kvm, run_microvm

pytestmark = [pytest.mark.kvm, pytest.mark.linux, requires_kvm]


def test_guest_kernel_requests_and_receives_entropy(default_guest, tmp_path):
    metrics = tmp_path / "metrics.json"
    r = run_microvm("run", "--no-reboot", "-v", "--device", "virtio-rng-device,id=rng0",
                    "--metrics", str(metrics), timeout=600)
    out = r.stdout.decode(errors="replace")
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err[-2000:]
    assert "virtio_mmio.device=512@0xfeb00e00:12" in out          # the kernel was told where it is
    assert "Run /init as init process" in out, out[-3000:]
    m = re.search(r"rng0: activated with features (0x[0-9a-f]+)", err)
    assert m, err[-2000:]                                          # the driver reached DRIVER_OK
    rng = json.loads(metrics.read_text())["devices"]["rng0"]
    assert rng["requests"] >= 1 and rng["bytes_read"] >= 32, rng  # hwrng_register's early read, khwrngd
    assert rng["notifications"] >= 1 and rng["interrupts"] >= 1, rng
    assert rng["mmio_reads"] > 0 and rng["mmio_writes"] > 0, rng   # the probe went through the bus
    assert rng["needs_reset"] == 0, rng
