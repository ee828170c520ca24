"""What the benchmark scripts share: QEMU to compare against, and the test guests."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUESTS = REPO / "tests/guests"


def ensure_qemu() -> str | None:
    """Debian's qemu-system-x86_64, installed when missing; None if that fails."""
    q = shutil.which("qemu-system-x86_64")
    if q:
        return q
    print("installing Debian's qemu-system-x86 ...", file=sys.stderr)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "qemu-system-x86"], check=True, stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"could not install qemu-system-x86: {e}", file=sys.stderr)
        return None
    return shutil.which("qemu-system-x86_64")


def assemble(tmp: Path, source: str, name: str | None = None, defsyms: tuple[str, ...] = ()) -> Path:
    """Build ``tests/guests/SOURCE.S`` into a PVH ELF ``tmp/NAME.elf``."""
    name = name or source
    obj, elf = tmp / f"{name}.o", tmp / f"{name}.elf"
    syms = [a for d in defsyms for a in ("--defsym", d)]
    subprocess.run(["as", "--64", *syms, "-I", str(GUESTS), str(GUESTS / f"{source}.S"), "-o", str(obj)], check=True)
    subprocess.run(["ld", "-Ttext=0x100000", str(obj), "-o", str(elf)], check=True)
    return elf
