#!/usr/bin/env python3
"""Firmware boot: spawn to the kernel's first console line and to ``Run /init``, for direct
boot, qboot and SeaBIOS, under microvm and under QEMU microvm.

The default guest's bzImage (the same kernel, initramfs and command line everywhere) boots:

* ``microvm direct``: microvm loads the bzImage itself (64-bit boot protocol);
* ``microvm qboot`` / ``microvm seabios``: ``--bios qboot.rom`` /
  ``--bios /usr/share/seabios/bios-microvm.bin`` (SeaBIOS through linuxboot_dma.bin);
* ``qemu qboot`` / ``qemu seabios``: Debian's QEMU 7.2, ``-M microvm,acpi=off`` (it always
  boots through a firmware: qboot.rom without ACPI), ``-bios`` for SeaBIOS.

Every configuration runs once per round, rounds alternate (so the machine's load hits all
alike), and medians are compared as ratios against ``microvm direct`` and, per firmware,
microvm against QEMU. A run counts only when ``Run /init`` appeared; a run that did not get
there (QEMU stops at Linux's INT3 self-test on emulating hosts, HOST.md) is never timed but
reported with the last console line it printed. Firmware and the kernel's real-mode setup and
decompressor are emulated instruction by instruction on such hosts: one boot takes minutes,
so keep ``-n`` small. Usage: .venv/bin/python bench/firmware.py [-n 1] [--only NAME,...]
"""
from __future__ import annotations

import argparse
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, Tally, attempt, emulation_failed, ensure_qemu, failure, first_line, qemu_cpu_model

SEABIOS = "/usr/share/seabios/bios-microvm.bin"
FIRST = b"Linux version"
INIT = b"Run /init"
TIMEOUT = 3000.0


def guest() -> tuple[str, str, str]:
    from microvm.guest import default_guest

    g = default_guest(build=True, progress=lambda s: print(f"guest build: {s}", file=sys.stderr))
    return str(g.kernel), str(g.initramfs), g.cmdline


def timed_boot(cmd: list[str], timeout: float, firsts: list[float]) -> tuple[float, float]:
    """Spawn ``cmd``; seconds from spawn to the first kernel line and to ``Run /init``; the
    VMM is killed at ``Run /init``. RunFailed when it never gets there; the first-line time
    of such a run still goes to ``firsts`` (QEMU reaches the kernel before it stops)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        out = bytearray()
        first = None
        why = None
        deadline = time.monotonic() + timeout
        try:
            while True:
                if time.monotonic() > deadline:
                    why = f"no {INIT.decode()} after {timeout:.0f} s"
                    break
                r, _, _ = select.select([p.stdout], [], [], 0.5)
                if r:
                    chunk = os.read(p.stdout.fileno(), 65536)
                    if not chunk:
                        why = f"exited before {INIT.decode()}"
                        break
                    out += chunk
                    now = time.perf_counter() - t0
                    if first is None and FIRST in out:
                        first = now
                    if INIT in out:
                        return first if first is not None else now, now
                elif emulation_failed(os.pread(err.fileno(), 1 << 16, 0)):
                    why = "emulation failure, the VMM stopped"
                    break
        finally:
            p.kill()
            p.wait()
        err.seek(0)
        stderr = err.read()
    if first is not None:
        firsts.append(first)
    last = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()][-1:] or ["(no output)"]
    raise failure(f"{why}; last console line: {last[0].strip()[:100]!r}", None, stderr, bytes(out), retry=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1, help="rounds (default 1: a boot takes minutes on emulating hosts)")
    ap.add_argument("--only", default="", help="comma-separated configuration names to run")
    ap.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per boot")
    args = ap.parse_args()
    kernel, initrd, cmdline = guest()
    microvm = str(REPO / ".venv/bin/microvm")
    common = ["--kernel", kernel, "--initrd", initrd, "--append", cmdline, "--no-reboot", "-m", "128M"]
    cmds = {
        "microvm direct": [microvm, "run", *common],
        "microvm qboot": [microvm, "run", *common, "--bios", "qboot.rom"],
        "microvm seabios": [microvm, "run", *common, "--bios", SEABIOS],
    }
    qemu = ensure_qemu()
    if qemu is None:
        print("qemu-system-x86_64 is not available: QEMU is not measured")
    else:
        cpu = qemu_cpu_model(qemu)
        print(cpu.line())
        q = [qemu, "-M", "microvm,acpi=off", "-enable-kvm", *cpu.args, "-m", "128m", "-kernel", kernel,
             "-initrd", initrd, "-append", cmdline, "-nodefaults", "-no-user-config", "-nographic",
             "-serial", "stdio", "-no-reboot"]
        cmds["qemu qboot"] = q
        cmds["qemu seabios"] = [*q, "-bios", SEABIOS]
    if args.only:
        keep = {n.strip() for n in args.only.split(",")}
        cmds = {k: v for k, v in cmds.items() if k in keep}
    tally = {k: Tally(k) for k in cmds}
    firsts: dict[str, list[float]] = {k: [] for k in cmds}
    inits: dict[str, list[float]] = {k: [] for k in cmds}
    #: first-line times of runs that never reached Run /init (not timed to Run /init)
    partial: dict[str, list[float]] = {k: [] for k in cmds}
    for rnd in range(args.n):
        for name, cmd in cmds.items():
            print(f"round {rnd + 1}: {name} ...", file=sys.stderr, flush=True)
            res = attempt(tally[name], lambda cmd=cmd, name=name: timed_boot(cmd, args.timeout, partial[name]), 1,
                          on_failure=lambda e, n, name=name: print(f"  {name}: {first_line(e)}", file=sys.stderr))
            if res is not None:
                firsts[name].append(res[0])
                inits[name].append(res[1])
                print(f"  {name}: first line {res[0]:.1f} s, Run /init {res[1]:.1f} s", file=sys.stderr)

    med = {k: (statistics.median(firsts[k]), statistics.median(inits[k])) for k in cmds if inits[k]}
    print(f"\n{'configuration':<18} {'first line':>11} {'Run /init':>11}   runs")
    for k in cmds:
        if k in med:
            print(f"{k:<18} {med[k][0]:>10.1f}s {med[k][1]:>10.1f}s   {len(inits[k])}")
        elif partial[k]:
            print(f"{k:<18} {statistics.median(partial[k]):>10.1f}s {'-':>11}   "
                  f"first line only: {tally[k].why_no_ratio()}")
        else:
            print(f"{k:<18} {'-':>11} {'-':>11}   {tally[k].why_no_ratio()}")
    first_any = {k: statistics.median(firsts[k] + partial[k]) for k in cmds if firsts[k] + partial[k]}
    print("\nratios (Run /init; first line in parentheses):")
    pairs = [("microvm qboot", "microvm direct"), ("microvm seabios", "microvm direct"),
             ("microvm qboot", "qemu qboot"), ("microvm seabios", "qemu seabios")]
    for a, b in pairs:
        if a in med and b in med:
            print(f"  {a} / {b}: {med[a][1] / med[b][1]:.2f} ({med[a][0] / med[b][0]:.2f})")
        elif a in first_any and b in first_any:
            missing = b if b not in med else a
            print(f"  {a} / {b}: first line only: ({first_any[a] / first_any[b]:.2f}); "
                  f"no Run /init ratio: {tally[missing].why_no_ratio()}")
        elif a in cmds and b in cmds:
            missing = b if b not in med else a
            print(f"  {a} / {b}: none ({tally[missing].why_no_ratio()})")
    print()
    for t in tally.values():
        print(t.summary())


if __name__ == "__main__":
    main()
