"""The default guest's bzImage through a firmware, as QEMU's microvm boots it: qboot.rom
(Debian's qemu-system-data) reads the kernel from fw_cfg itself; SeaBIOS's bios-microvm.bin
(Debian's seabios) runs the linuxboot_dma.bin option ROM from fw_cfg ("Booting from
ROM..."). Both firmware files come from the Debian packages, installed here when missing.

Slow: the firmware, the kernel's real-mode setup and its decompressor run in real and
protected mode, which an emulating host KVM executes instruction by instruction (several
minutes per boot there, more on a loaded machine).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from kvm_helpers import microvm_cmd, read_until, requires_kvm, run_microvm

pytestmark = [pytest.mark.kvm, requires_kvm]
QBOOT = "/usr/share/qemu/qboot.rom"
LINUXBOOT_DMA = "/usr/share/qemu/linuxboot_dma.bin"
SEABIOS = "/usr/share/seabios/bios-microvm.bin"
BOOT_TIMEOUT = 3600


@pytest.fixture(scope="session")
def firmware_files() -> None:
    """qemu-system-data (qboot.rom, linuxboot_dma.bin) and seabios (bios-microvm.bin),
    installed with apt-get when missing; the tests skip, saying why, only if that fails."""
    missing = [p for p in (QBOOT, LINUXBOOT_DMA, SEABIOS) if not os.path.exists(p)]
    if not missing:
        return
    why = ""
    if shutil.which("apt-get") is None:
        why = "no apt-get"
    else:
        try:
            subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, timeout=600)
            subprocess.run(["apt-get", "install", "-y", "-qq", "qemu-system-data", "seabios"], check=True,
                           capture_output=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as e:
            why = str(e).splitlines()[0]
    still = [p for p in (QBOOT, LINUXBOOT_DMA, SEABIOS) if not os.path.exists(p)]
    if still:
        pytest.skip(f"firmware files {', '.join(still)} are missing and installing qemu-system-data and "
                    f"seabios failed ({why or 'the packages do not provide them'})")


def boot(default_guest, *args: str) -> tuple[str, str, int]:
    try:
        r = run_microvm(
            "run", "--kernel", str(default_guest.kernel), "--initrd", str(default_guest.initramfs),
            "--append", default_guest.cmdline, "--no-reboot", "-v", *args, timeout=BOOT_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.output or b"").decode(errors="replace")
        pytest.fail(f"no end after {BOOT_TIMEOUT} s; the console's last lines:\n{out[-1500:]}")
    return r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace"), r.returncode


@pytest.mark.linux
def test_bzimage_through_qboot(default_guest, firmware_files):
    out, err, rc = boot(default_guest, "--bios", "qboot.rom")
    assert "firmware boot: /usr/share/qemu/qboot.rom" in err
    assert "Command line: " + default_guest.cmdline in out, out[-3000:]
    assert "MPTABLE: OEM ID: QBOOT" in out                 # the firmware's own MP table
    assert "Run /init as init process" in out, out[-3000:]
    assert rc == 0, err[-2000:]


@pytest.mark.linux
def test_bzimage_through_seabios_and_linuxboot_dma(default_guest, firmware_files):
    out, err, rc = boot(default_guest, "--bios", SEABIOS)
    assert "SeaBIOS (version" in out, out[:3000]
    assert "fw_cfg: the firmware selected genroms/linuxboot_dma.bin" in err, err[-2000:]
    # Not "Booting from ROM..." on the console: it was missing once here, on a loaded host,
    # while the kernel booted (SeaBIOS's serial console draws the screen lazily; the cause was
    # not pinned down), so the host-side log above is the proof that the ROM was taken.
    assert "Run /init as init process" in out, out[-3000:]
    assert rc == 0, err[-2000:]


def test_seabios_without_option_roms_finds_nothing_to_boot(default_guest, firmware_files):
    """x-option-roms=off: no genroms/linuxboot_dma.bin, so SeaBIOS has no way to the kernel
    and says so; it then waits for ever (etc/boot-fail-wait is -1, as in QEMU)."""
    cmd = microvm_cmd("run", "--kernel", str(default_guest.kernel), "--no-reboot", "--bios", SEABIOS,
                      "-M", "microvm,x-option-roms=off")
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = bytearray()
    try:
        read_until(p, out, lambda o: b"No bootable device." in o, time.monotonic() + 600)
    finally:
        p.kill()
        p.wait()
    text = out.decode(errors="replace")
    assert "No bootable device." in text, text[-2000:]
    assert "Booting from ROM" not in text and "Linux version" not in text


def _no_kernel_but_a_disk(argv: list[str], done) -> str:
    """Run ``argv`` (no kernel, a disk) until its stderr satisfies ``done`` (or 60 s pass:
    the reads never block, so the deadline holds), then end it; its stderr."""
    p = subprocess.Popen(microvm_cmd(*argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = bytearray()
    try:
        read_until(p, err, done, time.monotonic() + 60, stream=p.stderr)
    finally:
        p.kill()
        p.wait()
    return err.decode(errors="replace")


def test_no_kernel_but_a_disk_boots_the_firmware_and_says_it_cannot_boot_the_disk(tmp_path, firmware_files):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    drive = f"id=d0,file={disk},format=raw"
    text = _no_kernel_but_a_disk(["run", "--drive", drive, "--device", "virtio-blk-device,drive=d0", "-v"],
                                 lambda e: b"firmware boot:" in e and b"C-a x quits." in e)
    assert "firmware boot: /usr/share/qemu/qboot.rom" in text
    # said once the machine is built (after the firmware was loaded), in microvm run's words
    assert text.index("firmware boot: /usr/share/qemu/qboot.rom") < text.index("no --kernel: booting the firmware qboot.rom")
    assert "It cannot boot from the disk" in text and "--kernel FILE --append 'root=/dev/vda" in text
    # QEMU's spelling: QEMU's option names
    text = _no_kernel_but_a_disk(["-M", "microvm", "-drive", drive + ",if=none", "-device", "virtio-blk-device,drive=d0",
                                  "-display", "none"], lambda e: b"root=/dev/vda" in e)
    assert "microvm: no -kernel: booting the firmware qboot.rom" in text, text
    assert "-kernel FILE -append 'root=/dev/vda ...'" in text and "--" not in text, text


def test_no_kernel_but_a_disk_with_a_bad_option_is_one_line(tmp_path):
    """The notice comes once the machine is built: a line refused before that is its one
    error line only."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    r = run_microvm("-M", "microvm,bogus=1", "-drive", f"id=d0,file={disk},format=raw,if=none",
                    "-device", "virtio-blk-device,drive=d0")
    assert r.returncode == 1
    assert r.stderr.decode().splitlines() == [r.stderr.decode().strip()]
    assert r.stderr.startswith(b"microvm: unknown machine option 'bogus'")

