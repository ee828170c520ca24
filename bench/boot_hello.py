#!/usr/bin/env python3
"""Spawn-to-exit time and peak RSS: the tiny PVH guest under microvm and under QEMU microvm.

Three rows, one machine: ``microvm-q`` (QEMU's row's command line with only the program name
changed, issue 10), ``microvm`` (the same options in ``microvm run``'s spelling, translated
through the one options table: ``-M`` -> ``--machine``, ``-kernel`` -> ``--kernel``,
``-nodefaults`` -> ``--nodefaults``, ...) and QEMU. So the two spellings differ only in how
the line is parsed, not in the machine (no PIT, PIC or RTC, one serial port on stdio). Runs
them alternately (so machine noise hits all alike), N times each, and prints the median wall
time from spawn to exit, the peak resident set size, and the ratios to QEMU and between the
two spellings.
Usage: .venv/bin/python bench/boot_hello.py [-n 20]

The guest (tests/guests/hello-pvh.S) writes HELLO to COM1 and triple-faults; both VMMs are
told to exit on that (--no-reboot / -no-reboot). QEMU is Debian's qemu-system-x86, installed
by this script when missing, run with the -cpu model probed in _common (plain ``host`` aborts
on AMD machines here). A run counts only when it exited 0 and printed HELLO: a failed run is
never timed but counted, retried up to --tries times in all, and reported per VMM.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from _common import REPO, Run, Tally, assemble, attempt, ensure_qemu, qemu_cpu_model, run_checked
from microvm.cli.options import BY_QEMU_NAME

MARKER = b"HELLO"
TIMEOUT = 30.0  # seconds per run; the guest needs well under one


def run_spelling(qemu_line: list[str]) -> list[str]:
    """QEMU's line in ``microvm run``'s spelling, option by option through the options table
    both spellings share (``-kernel`` -> ``--kernel``, ``-m`` stays ``-m``); values as given."""
    out, i = ["run"], 0
    while i < len(qemu_line):
        opt = BY_QEMU_NAME[qemu_line[i][1:]]
        out.append(next((n for n in opt.names if n.startswith("--")), opt.names[0]))
        if opt.kind not in ("flag", "count"):
            out.append(qemu_line[i + 1])
            i += 1
        i += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20, help="runs of each VMM (default 20)")
    ap.add_argument("--tries", type=int, default=3, help="tries per run when a run fails (default 3)")
    args = ap.parse_args()
    qemu = ensure_qemu() or sys.exit("qemu-system-x86_64 is not available: nothing to compare with")
    cpu = qemu_cpu_model(qemu)
    microvm = str(REPO / ".venv/bin/microvm")
    with tempfile.TemporaryDirectory() as d:
        elf = assemble(Path(d), "hello-pvh")
        qemu_line = ["-M", "microvm,x-option-roms=off,rtc=off,pit=off,pic=off", "-enable-kvm", *cpu.args,
                     "-m", "128m", "-kernel", str(elf), "-nodefaults", "-no-user-config", "-nographic",
                     "-serial", "stdio", "-no-reboot"]
        cmds = {
            # the same machine in microvm run's spelling
            "microvm": [microvm, *run_spelling(qemu_line)],
            # QEMU's own command line, only the program name changed (issue 10)
            "microvm-q": [microvm, *qemu_line],
            "qemu": [qemu, *qemu_line],
        }
        tally = {k: Tally(k) for k in cmds}
        runs: dict[str, list[Run]] = {k: [] for k in cmds}
        # Warm caches (plugin index, page cache) before timing; a VMM whose warm-up fails every
        # try cannot run the guest here, and is not run again.
        live = [k for k, c in cmds.items() if attempt(tally[k], lambda c=c: run_checked(c, MARKER, TIMEOUT), args.tries)]
        for _ in range(args.n):
            for name in live:
                r = attempt(tally[name], lambda c=cmds[name]: run_checked(c, MARKER, TIMEOUT), args.tries)
                if r is not None:
                    runs[name].append(r)
    print(f"tiny PVH guest, spawn to exit, {args.n} runs each, alternating")
    print(f"  {cpu.line()}")
    print(f"  microvm   = {' '.join(cmds['microvm'][1:])}")
    print(f"  microvm-q = {' '.join(cmds['microvm-q'][1:])}")
    med = {k: statistics.median(r.seconds for r in v) for k, v in runs.items() if v}
    peak = {k: max(r.maxrss_kib for r in v) for k, v in runs.items() if v}
    for k in cmds:
        if k in med:
            print(f"  {k:9s} median {med[k] * 1000:7.1f} ms   peak RSS {peak[k] / 1024:6.1f} MiB   "
                  f"({len(runs[k])} timed runs)")
    for k in cmds:
        print(f"  {tally[k].summary()}  (the warm-up run included)")
    for mine in ("microvm", "microvm-q"):
        if mine in med and "qemu" in med:
            print(f"  ratio {mine}/qemu: time {med[mine] / med['qemu']:.2f}x, "
                  f"peak RSS {peak[mine] / peak['qemu']:.2f}x")
        else:
            print(f"  ratio {mine}/qemu: none, " + "; ".join(tally[k].why_no_ratio() for k in (mine, "qemu") if k not in med))
    if "microvm" in med and "microvm-q" in med:
        print(f"  QEMU spelling / microvm run: time {med['microvm-q'] / med['microvm']:.2f}x "
              "(microvm-q: the QEMU row's command line with the program name changed)")


if __name__ == "__main__":
    main()
