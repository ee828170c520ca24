"""A hostile guest against every device at once: the VMM must survive."""
from __future__ import annotations

import pytest

from kvm_helpers import build_guest, requires_kvm, run_microvm

pytestmark = [pytest.mark.kvm, requires_kvm]


@pytest.mark.parametrize("irqchip", ["split", "on"])
def test_random_traffic_on_every_port_and_device_window(tmp_path, irqchip):
    """tests/guests/fuzz.S writes pseudo-random bytes and words to all 65536 I/O ports (the
    8259s, 8254, port 0x61, MC146818, 16550 and the empty ones) and dwords to both virtio-mmio
    transports' windows (legacy and modern) and to the IOAPIC, reading each back. Afterwards
    the guest still gets its DONE out of the serial port and the machine ends normally: no
    exception escaped a device, no vCPU thread died."""
    elf = build_guest("fuzz", tmp_path)
    disks = []
    for name in ("a", "b"):
        img = tmp_path / f"{name}.img"
        img.write_bytes(bytes(1 << 20))
        disks.append(img)
    r = run_microvm(
        "run", "--kernel", str(elf), "--no-reboot", "-v", "-M", f"microvm,kernel-irqchip={irqchip},rtc=on",
        "--drive", f"id=a,file={disks[0]},format=raw,if=none", "--device", "virtio-blk-device,drive=a",
        "--drive", f"id=b,file={disks[1]},format=raw,if=none", "--device", "virtio-blk-device,drive=b,force-legacy=off",
        timeout=300,
    )
    err = r.stderr.decode(errors="replace")
    assert r.stdout.endswith(b"\nDONE\n"), (r.stdout[-200:], err[-2000:])
    assert r.returncode == 0, err[-2000:]
    for bad in ("Traceback", "internal error", "unexpected error", "failed"):
        assert bad not in err, err[-3000:]
    assert "triple fault" in err
