#!/usr/bin/env python3
"""Spawn-to-exit time and peak RSS: the tiny PVH guest under microvm and under QEMU microvm.

Runs both alternately (so machine noise hits both alike), N times each, and prints the median
wall time from spawn to exit, the peak resident set size, and microvm/QEMU ratios.
Usage: .venv/bin/python bench/boot_hello.py [-n 20]

The guest (tests/guests/hello-pvh.S) writes HELLO to COM1 and triple-faults; both VMMs are
told to exit on that (--no-reboot / -no-reboot). QEMU is Debian's qemu-system-x86, installed
by this script when missing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, assemble, ensure_qemu


def measure(cmd: list[str], expect: bytes) -> tuple[float, int]:
    """Wall seconds from spawn to exit, and peak RSS in KiB (from wait4's rusage)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if expect not in out or p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed (status {p.returncode}, output {out!r})")
    return dt, ru.ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20, help="runs of each VMM (default 20)")
    args = ap.parse_args()
    qemu = ensure_qemu() or sys.exit("qemu-system-x86_64 is not available: nothing to compare with")
    microvm = str(REPO / ".venv/bin/microvm")
    with tempfile.TemporaryDirectory() as d:
        elf = assemble(Path(d), "hello-pvh")
        cmds = {
            "microvm": [microvm, "run", "--kernel", str(elf), "--no-reboot", "-m", "128M",
                        "-M", "microvm,x-option-roms=off"],
            "qemu": [qemu, "-M", "microvm,x-option-roms=off,rtc=off,pit=off,pic=off", "-enable-kvm", "-cpu", "host",
                     "-m", "128m", "-kernel", str(elf), "-nodefaults", "-no-user-config", "-nographic",
                     "-serial", "stdio", "-no-reboot"],
        }
        for c in cmds.values():  # warm caches (plugin index, page cache) before timing
            measure(c, b"HELLO")
        times: dict[str, list[float]] = {k: [] for k in cmds}
        rss: dict[str, list[int]] = {k: [] for k in cmds}
        for _ in range(args.n):
            for name, c in cmds.items():
                dt, kib = measure(c, b"HELLO")
                times[name].append(dt)
                rss[name].append(kib)
    med = {k: statistics.median(v) for k, v in times.items()}
    peak = {k: max(v) for k, v in rss.items()}
    print(f"tiny PVH guest, spawn to exit, {args.n} runs each, alternating")
    for k in cmds:
        print(f"  {k:8s} median {med[k] * 1000:7.1f} ms   peak RSS {peak[k] / 1024:6.1f} MiB")
    print(f"  ratio microvm/qemu: time {med['microvm'] / med['qemu']:.2f}x, peak RSS {peak['microvm'] / peak['qemu']:.2f}x")


if __name__ == "__main__":
    main()
