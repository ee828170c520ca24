#!/usr/bin/env python3
"""Console output throughput: a small guest writes 1 MiB through the 16550 and through
virtconsole, under microvm and under QEMU microvm, side by side.

Usage: .venv/bin/python bench/console.py [--mib N] [-r ROUNDS] [--polled-kib N] [--timeout S] [--tries N]

The guests are assembled from tests/guests (no Linux: a Linux guest's console output is
bound by its printk path and, on an emulating host, by emulated kernel code, so it would
measure the guest, not the console):

* ``virtcon-write.S`` -- a minimal legacy virtio-mmio driver for the device in the first slot
  (0xfeb00e00 in both VMMs): no feature negotiated, so port 0 is the console and its
  transmitq is queue 1; 4 KiB chunks, up to 16 in flight, one QueueNotify each; it waits
  until the device has used every chunk, then triple-faults;
* ``serial-write.S`` -- the same bytes to COM1 with ``rep outsb`` (4 KiB per instruction):
  the fastest a guest can feed a 16550, since both VMMs' THRE always reads 1;
* ``serial-write.S`` with ``POLLED=1`` -- byte by byte, waiting for LSR.THRE before each, as
  Linux's 8250 console does (two exits per byte, so fewer bytes: ``--polled-kib``).

Each VMM writes the console to a file (``-chardev file`` / ``-serial file:``), the same for
both, and the time is spawn to exit (the triple fault with ``--no-reboot``/``-no-reboot``).
That includes the VMM's start-up and the guest's device set-up, so each setup also runs
the same guest built with ``TOTAL=0`` (it sets the device up, writes nothing and exits) as
its baseline; the console's own time is the median total minus the median baseline, and
MB/s and the ratio are given for both the totals and that net time. A run
counts only if the VMM exited with status 0 and the file holds exactly the bytes the guest
wrote (a console that drops output under load fails the run: none should here, a file never
stalls); a failed run is never timed, it is counted and retried up to --tries tries, and
each setup's failures and retries are printed. The setups run alternately, ROUNDS times
each after a warm-up; medians, MB/s and the ratio microvm/QEMU are printed. QEMU is
Debian's qemu-system-x86 (installed when missing) with ``-M microvm,acpi=off,...`` and the
-cpu model probed in _common. Timing is only reported, never asserted.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import REPO, CpuModel, RunFailed, Tally, assemble, attempt, emulation_failed, ensure_qemu, failure, qemu_cpu_model

LINE = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+\n"
LEGACY_OFF = "pit=off,pic=off,rtc=off"


def run_once(cmd: list[str], out: Path, total: int, timeout: float) -> float:
    """Spawn, wait for the exit, check the file; seconds from spawn to exit."""
    if out.exists():
        out.unlink()
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        try:
            while True:
                try:
                    rc = p.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    err.seek(0)
                    if emulation_failed(err.read()):  # QEMU stays paused after one
                        time.sleep(0.2)
                        p.kill()
                        p.wait()
                        err.seek(0)
                        raise failure("emulation failure, the VMM stopped (killed)", None, err.read())
                    if time.perf_counter() - t0 > timeout:
                        p.kill()
                        p.wait()
                        err.seek(0)
                        raise failure(f"did not exit within {timeout:g} s (killed)", None, err.read(), retry=False)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        dt = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()
    if rc != 0:
        raise failure("exit status not 0", rc, stderr)
    data = out.read_bytes() if out.exists() else b""
    if len(data) != total:
        raise failure(f"{len(data)} bytes arrived, {total} written", rc, stderr, data[-200:])
    if data != (LINE * (total // len(LINE) + 1))[:total]:
        raise failure("the bytes that arrived are not the guest's", rc, stderr, data[-200:])
    return dt


def commands(microvm: str, qemu: str | None, cpu: CpuModel | None, elf: Path, device: str, out: Path
             ) -> dict[str, list[str] | None]:
    if device == "virtconsole":
        mv_dev = ["-M", f"microvm,{LEGACY_OFF},isa-serial=off", "--chardev", f"file,id=c0,path={out}",
                  "--device", "virtio-serial-device", "--device", "virtconsole,chardev=c0"]
        q_dev = ["-M", f"microvm,acpi=off,x-option-roms=off,{LEGACY_OFF},isa-serial=off",
                 "-chardev", f"file,id=c0,path={out}", "-device", "virtio-serial-device",
                 "-device", "virtconsole,chardev=c0"]
    else:
        mv_dev = ["-M", f"microvm,{LEGACY_OFF}", "--serial", f"file:{out}"]
        q_dev = ["-M", f"microvm,acpi=off,x-option-roms=off,{LEGACY_OFF}", "-serial", f"file:{out}"]
    cmds: dict[str, list[str] | None] = {
        "microvm": [microvm, "run", "--kernel", str(elf), "--no-reboot", "-m", "128M", *mv_dev],
        "qemu": None,
    }
    if qemu is not None and cpu is not None:
        cmds["qemu"] = [qemu, "-enable-kvm", *cpu.args, "-m", "128m", "-kernel", str(elf), "-nodefaults",
                        "-no-user-config", "-nographic", "-no-reboot", *q_dev]
    return cmds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1, help="MiB each guest writes (default 1)")
    ap.add_argument("--polled-kib", type=int, default=64, help="KiB for the THRE-polled 16550 guest (default 64; 0: skip)")
    ap.add_argument("-r", "--rounds", type=int, default=3, help="timed runs of each setup (default 3)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds allowed per run (default 300)")
    ap.add_argument("--tries", type=int, default=3, help="tries per run when a run fails (default 3)")
    args = ap.parse_args()
    microvm = str(REPO / ".venv/bin/microvm")
    qemu = ensure_qemu()
    cpu = qemu_cpu_model(qemu) if qemu else None
    total = args.mib << 20
    cases = [("virtconsole", "virtcon-write", total, ()), ("16550 rep outsb", "serial-write", total, ())]
    if args.polled_kib:
        cases.append(("16550 THRE-polled", "serial-write", args.polled_kib << 10, ("POLLED=1",)))
    # the baselines: the same guests writing nothing (start-up, device set-up, exit)
    baselines = {"virtconsole": ("virtcon-write (0 bytes)", "virtcon-write", 0, ()),
                 "16550": ("16550 (0 bytes)", "serial-write", 0, ())}
    base_of = {"virtconsole": baselines["virtconsole"][0], "16550 rep outsb": baselines["16550"][0],
               "16550 THRE-polled": baselines["16550"][0]}
    runs = cases + list(baselines.values())
    results: dict[tuple[str, str], list[float]] = {}
    tallies: dict[tuple[str, str], Tally] = {}
    with tempfile.TemporaryDirectory(prefix="microvm-bench-console-") as d:
        tmp = Path(d)
        setups = []
        for label, source, n, syms in runs:
            elf = assemble(tmp, source, f"{source}-{n}-{len(syms)}", (f"TOTAL={n}", *syms))
            device = "virtconsole" if source == "virtcon-write" else "16550"
            for vmm, cmd in commands(microvm, qemu, cpu, elf, device, tmp / "console.out").items():
                key = (label, vmm)
                tallies[key] = Tally(f"{vmm} {label}")
                if cmd is None:
                    continue
                setups.append((key, cmd, n))
        # warm-up (page cache, plugin index) and the check that the setup runs at all
        live = [(k, c, n) for k, c, n in setups
                if attempt(tallies[k], lambda c=c, n=n: run_once(c, tmp / "console.out", n, args.timeout), args.tries)
                is not None]
        for k, _, _ in live:
            results[k] = []
        for _ in range(args.rounds):
            for k, c, n in live:
                dt = attempt(tallies[k], lambda c=c, n=n: run_once(c, tmp / "console.out", n, args.timeout), args.tries,
                             on_failure=lambda e, i, k=k: print(f"  {k[1]} {k[0]}: try {i} failed: {str(e).splitlines()[0]}"))
                if dt is not None:
                    results[k].append(dt)
    print(f"\nConsole output, spawn to exit, median of {args.rounds} runs (after a warm-up); the guest's bytes "
          "must all arrive in the file:")
    if cpu is not None:
        print(cpu.line())
    def median(label: str, vmm: str) -> float | None:
        times = results.get((label, vmm)) or []
        return statistics.median(times) if times else None

    for label, _, n, _ in runs:
        row = []
        med: dict[str, float] = {}
        for vmm in ("microvm", "qemu"):
            m = median(label, vmm)
            if m is not None:
                med[vmm] = m
                row.append(f"{vmm} {m:7.2f} s" + (f" ({n / m / 1e6:6.2f} MB/s)" if n else ""))
            else:
                row.append(f"{vmm}: {tallies[(label, vmm)].why_no_ratio()}")
        ratio = f"microvm/QEMU time {med['microvm'] / med['qemu']:.2f}" if len(med) == 2 else "no ratio"
        print(f"  {label:24} {n >> 10:5d} KiB: {'; '.join(row)}; {ratio}")
    print("\nThe console's own time (total minus the baseline of the same VMM and device):")
    for label, _, n, _ in cases:
        net: dict[str, float] = {}
        row = []
        for vmm in ("microvm", "qemu"):
            total_m, base_m = median(label, vmm), median(base_of[label], vmm)
            if total_m is None or base_m is None:
                row.append(f"{vmm}: no timed run (see above)")
                continue
            net[vmm] = max(total_m - base_m, 1e-3)
            row.append(f"{vmm} {net[vmm]:7.2f} s ({n / net[vmm] / 1e6:6.2f} MB/s)")
        ratio = f"microvm/QEMU time {net['microvm'] / net['qemu']:.2f}" if len(net) == 2 else "no ratio"
        print(f"  {label:24} {n >> 10:5d} KiB: {'; '.join(row)}; {ratio}")
    print("\nRuns:")
    for t in tallies.values():
        print(f"  {t.summary()}")


if __name__ == "__main__":
    main()
