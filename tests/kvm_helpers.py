"""Helpers for tests that run real guests on /dev/kvm.

Test guests are assembled from ``tests/guests/*.S`` at test time (``as`` + ``ld``, from
binutils), cached by content hash, never committed as binaries.
"""
from __future__ import annotations

import hashlib
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

GUESTS = Path(__file__).parent / "guests"
REPO = Path(__file__).parent.parent
MICROVM = [sys.executable, "-m", "microvm"] if not (REPO / ".venv/bin/microvm").exists() else [str(REPO / ".venv/bin/microvm")]


def kvm_reason() -> str | None:
    from microvm.kvm import kvm_available

    return kvm_available()


requires_kvm = pytest.mark.skipif(kvm_reason() is not None, reason=f"needs KVM: {kvm_reason()}")


def build_guest(name: str, cache: Path) -> Path:
    """Assemble and link ``tests/guests/NAME.S`` into a PVH ELF (cached by source hash)."""
    if not shutil.which("as") or not shutil.which("ld"):
        pytest.skip("needs binutils (as, ld) to build the test guests")
    src = GUESTS / f"{name}.S"
    h = hashlib.sha256(src.read_bytes() + (GUESTS / "common.inc").read_bytes()).hexdigest()[:12]
    out = cache / f"{name}-{h}.elf"
    if not out.exists():
        obj = cache / f"{name}-{h}.o"
        subprocess.run(["as", "--64", "-I", str(GUESTS), str(src), "-o", str(obj)], check=True)
        subprocess.run(["ld", "-Ttext=0x100000", str(obj), "-o", str(out)], check=True)
    return out


def build_bios(name: str, cache: Path) -> Path:
    """Assemble ``tests/guests/NAME.S`` (16-bit code, ``.org 0xfff0`` for the reset vector)
    into a flat firmware image for ``--bios`` (cached by source hash)."""
    if not shutil.which("as") or not shutil.which("ld"):
        pytest.skip("needs binutils (as, ld) to build the test guests")
    src = GUESTS / f"{name}.S"
    h = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    out = cache / f"{name}-{h}.bin"
    if not out.exists():
        obj = cache / f"{name}-{h}.o"
        subprocess.run(["as", "--32", str(src), "-o", str(obj)], check=True)
        subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0", "-e", "0", "--oformat", "binary", str(obj), "-o", str(out)],
                       check=True)
    return out


def microvm_cmd(*args: str) -> list[str]:
    return [*MICROVM, *args]


def run_microvm(*args: str, input: bytes | None = None, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    stdin = None if input is not None else subprocess.DEVNULL
    return subprocess.run(microvm_cmd(*args), input=input, stdin=stdin, capture_output=True, timeout=timeout, env=e)


def read_until(proc: subprocess.Popen, out: bytearray, done, deadline: float, stream=None) -> bool:
    """Append ``proc``'s stdout (or ``stream``, e.g. ``proc.stderr``) to ``out`` until
    ``done(out)`` holds, EOF, or the deadline: it never blocks in a read, so the deadline is
    looked at at least every half second."""
    stream = proc.stdout if stream is None else stream
    while not done(out) and time.monotonic() < deadline:
        r, _, _ = select.select([stream], [], [], 0.5)
        if r:
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                break
            out += chunk
    return done(out)


def converse(cmd: list[str], script: list[tuple[bytes, bytes]], timeout: float = 30) -> tuple[bytes, int]:
    """Run ``cmd``; for each (wait_for, send) wait until ``wait_for`` was printed, then send
    it; finally wait for the exit. Returns (all output, exit status)."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        for marker, data in script:
            ok = read_until(p, out, lambda o: marker in o, deadline)
            assert ok, f"never saw {marker!r}; output {bytes(out)!r}; stderr {p.stderr.read1(4096)!r}"
            p.stdin.write(data)
            p.stdin.flush()
        rc = p.wait(timeout=max(deadline - time.monotonic(), 1))
        out += p.stdout.read()
    finally:
        p.kill()
        p.wait()
    return bytes(out), rc
