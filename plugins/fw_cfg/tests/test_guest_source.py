"""The fw_cfg test guest (tests/guests/fwcfg-pvh.S) assembles and links as the KVM tests
build their guests; tests/test_firmware.py runs it (and the real-mode one) on /dev/kvm."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

GUESTS = Path(__file__).resolve().parents[3] / "tests" / "guests"


def test_fwcfg_guest_builds(tmp_path):
    if not shutil.which("as") or not shutil.which("ld"):
        pytest.skip("needs binutils (as, ld) to build the test guests")
    obj, elf = tmp_path / "fwcfg.o", tmp_path / "fwcfg.elf"
    subprocess.run(["as", "--64", "-I", str(GUESTS), str(GUESTS / "fwcfg-pvh.S"), "-o", str(obj)], check=True)
    subprocess.run(["ld", "-Ttext=0x100000", str(obj), "-o", str(elf)], check=True)
    assert elf.read_bytes()[:4] == b"\x7fELF"
    assert b"Xen\0" in elf.read_bytes()          # the PVH entry note is there
