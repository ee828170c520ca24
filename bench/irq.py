#!/usr/bin/env python3
"""Interrupt delivery: serial interrupts per second from a device thread to a guest that
acknowledges them, under microvm (kernel-irqchip=split and =on) and under QEMU microvm.

Usage: .venv/bin/python bench/irq.py [-n BYTES] [-r ROUNDS] [--timeout SECONDS] [--tries N]
       (defaults: 20000 bytes, 5 rounds; about a minute on the project's hosts)

The guest is tests/guests/irq64.S: it switches to 64-bit long mode itself (so that interrupt
returns are IRETQ, which an emulating host KVM such as kvm_pvm executes, unlike a 32-bit IRET
that QEMU cannot step over), routes the 16550's IRQ 4 through the IOAPIC to the LAPIC (vector
0x24), prints READY and halts. Its handler counts its entries, reads the RX FIFO while LSR.DR
is set and EOIs; on 'q' it prints "COUNT=<bytes> IRQS=<handler entries>" and triple-faults,
which ends every VMM here (--no-reboot / -no-reboot). Two builds of it are measured:

* level (`--defsym LEVEL=1`): pin 4 level-triggered, at most one byte per handler entry. While
  the FIFO holds data the line stays high and the IOAPIC delivers again after each EOI, so
  every byte is one delivered and acknowledged interrupt whatever the VMM's FIFO refill does:
  bytes/s here *is* the interrupt rate. (IRQS is a little higher: the host KVM enters the
  handler once more after the last EOI of a burst, with the vector in neither IRR nor ISR; QEMU
  shows the same.)
* drain (the default build, as the KVM test runs it): pin 4 edge-triggered, the handler drains
  the FIFO. One interrupt carries as many bytes as the VMM's FIFO holds by then: microvm's
  16550 tops its FIFO up from its input queue during the guest's reads, so a burst is one
  interrupt; QEMU hands the UART a byte per main-loop turn. bytes/s is the input-path rate,
  irqs/s only says how the VMM batches.

Each run waits for READY, then a thread writes BYTES bytes into the VMM's stdin as fast as the
pipe takes them, then 'q'; the time is the wall time from the first byte written to the COUNT
line read. COUNT must equal BYTES (the 16550 path must not lose input) or the run fails. Four
VMM setups run alternately, ROUNDS times each per build, after a warm-up run of each: microvm
split and kernel (`-M microvm,kernel-irqchip=split|on`) and QEMU microvm with
`-accel kvm,kernel-irqchip=split|on` (split is QEMU 7.2 microvm's default). Medians and the
ratios microvm/QEMU (same irqchip mode, and microvm-kernel against QEMU's default) are
printed. A run that fails (no READY, no COUNT line, COUNT short, an exit status other than 0)
is never timed: it is counted and retried, up to --tries tries in all (QEMU stops now and then
on this kind of host, see docs/emulating-hosts.md), and each setup's failures, their reasons and the retries
are printed; a setup with no successful run gets that line instead of a ratio. QEMU is
Debian's qemu-system-x86, installed by this script when missing, run with the -cpu model
probed in _common (plain ``host`` aborts on AMD machines here; the output says which model
and why). Timing is only reported, never asserted.
"""
from __future__ import annotations

import argparse
import os
import re
import select
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from _common import (REPO, CpuModel, RunFailed, Tally, assemble, attempt, emulation_failed, ensure_qemu, failure,
                     qemu_cpu_model)

COUNT_RE = re.compile(rb"COUNT=(\d+) IRQS=(\d+)\n")
# Payload: letters without 'q' (the guest's stop byte) and without control characters (C-a is
# the escape of microvm's stdio chardev, as of QEMU's -nographic mux).
ALPHABET = bytes(c for c in range(ord("a"), ord("z") + 1) if c != ord("q"))


def run_once(cmd: list[str], n: int, timeout: float, tmp: Path) -> tuple[float, int, int]:
    """One VMM run: wait for READY, stream n bytes and 'q' from a thread, read COUNT.
    Returns (seconds from the first byte to the COUNT line, COUNT, IRQS)."""
    payload = (ALPHABET * (n // len(ALPHABET) + 1))[:n] + b"q"
    err_path = tmp / "stderr"
    with open(err_path, "wb") as err:
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    out = b""
    t0: list[float] = []
    write_error: list[BaseException] = []

    def writer() -> None:
        try:
            fd = p.stdin.fileno()
            view = memoryview(payload)
            t0.append(time.perf_counter())
            while view:
                view = view[os.write(fd, view):]
        except BaseException as e:  # the VMM died: reported by the reader side
            write_error.append(e)

    def read_until(pattern: re.Pattern[bytes] | bytes, deadline: float) -> re.Match[bytes] | bool | None:
        nonlocal out
        while True:
            found = pattern.search(out) if isinstance(pattern, re.Pattern) else (pattern in out)
            if found:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([p.stdout], [], [], min(left, 0.5))
            if r:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    return None
                out += chunk
            elif emulation_failed(err_path.read_bytes()):  # QEMU stays paused after one
                time.sleep(0.2)  # the register dump follows the message
                return None

    def fail(why: str) -> RunFailed:
        try:
            p.wait(timeout=0.5)  # the exit status, when the VMM has ended
        except subprocess.TimeoutExpired:
            pass
        err = err_path.read_bytes()
        if emulation_failed(err):
            why += " (emulation failure, the VMM stopped)"
        # A run that used up its time budget without an emulation failure is not retried.
        spent = time.monotonic() >= deadline and p.returncode is None and not emulation_failed(err)
        return failure(why, p.returncode, err, out, retry=not spent)

    thread = threading.Thread(target=writer, daemon=True)
    try:
        deadline = time.monotonic() + timeout
        if not read_until(b"READY\n", deadline):
            raise fail("no READY")
        thread.start()
        m = read_until(COUNT_RE, deadline)
        t1 = time.perf_counter()
        if not m:
            raise fail("no COUNT line" + (f" (input: {write_error[0]!r})" if write_error else ""))
        try:
            rc = p.wait(timeout=max(5.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise fail("did not exit after the triple fault") from None
        if rc != 0:
            raise fail("exit status not 0 after the COUNT line")
        count, irqs = int(m.group(1)), int(m.group(2))
        if count != n:
            raise fail(f"COUNT={count}, expected {n}: input bytes lost")
        return t1 - t0[0], count, irqs
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if thread.is_alive():
            thread.join(timeout=5)
        for f in (p.stdin, p.stdout):
            try:
                f.close()
            except OSError:
                pass


VARIANTS = {  # name: (--defsym arguments, what it is)
    "level": (("LEVEL=1",), "level-triggered, one byte per interrupt: bytes/s = delivered and acknowledged interrupts/s"),
    "drain": ((), "edge-triggered, the handler drains the FIFO: bytes/s = input-path rate, irqs/s = VMM's batching"),
}


def vmm_commands(microvm: str, qemu: str | None, cpu: CpuModel | None, elf: Path) -> dict[str, list[str] | None]:
    def mv(mode: str) -> list[str]:
        return [microvm, "run", "--kernel", str(elf), "--no-reboot", "-m", "128M", "-M", f"microvm,kernel-irqchip={mode}"]

    def qm(mode: str) -> list[str] | None:
        if qemu is None or cpu is None:
            return None
        return [qemu, "-M", "microvm,acpi=off,x-option-roms=off,rtc=off", "-accel", f"kvm,kernel-irqchip={mode}",
                *cpu.args, "-m", "128m", "-kernel", str(elf), "-nodefaults", "-no-user-config", "-nographic",
                "-serial", "stdio", "-no-reboot"]

    # QEMU 7.2's microvm defaults to kernel-irqchip=split (its IOAPIC and PIT in userspace).
    return {"microvm-split": mv("split"), "microvm-kernel": mv("on"), "qemu-split": qm("split"), "qemu-kernel": qm("on")}


PAIRS = (("microvm-split", "qemu-split"), ("microvm-kernel", "qemu-kernel"), ("microvm-kernel", "qemu-split"))
Result = tuple[float, int, int]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000, help="bytes per run (default 20000)")
    ap.add_argument("-r", "--rounds", type=int, default=5, help="runs of each VMM and variant (default 5)")
    ap.add_argument("--timeout", type=float, default=30, help="seconds allowed per run (default 30)")
    ap.add_argument("--tries", type=int, default=3, help="tries per run when a run fails (default 3)")
    args = ap.parse_args()
    microvm = str(REPO / ".venv/bin/microvm")
    qemu = ensure_qemu()
    cpu = qemu_cpu_model(qemu) if qemu else None
    results: dict[str, dict[str, list[Result]]] = {}
    tallies: dict[str, dict[str, Tally]] = {}
    not_installed = "qemu-system-x86_64 is not installed and could not be installed"
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cmds = {v: vmm_commands(microvm, qemu, cpu, assemble(tmp, "irq64", f"irq64-{v}", syms))
                for v, (syms, _) in VARIANTS.items()}
        for v, vc in cmds.items():
            tallies[v] = {k: Tally(k) for k, c in vc.items() if c is not None}
            # Warm-up (page cache, plugin index) and the check that each VMM runs the guest at
            # all: a setup whose warm-up fails every try is not run again.
            results[v] = {k: [] for k, t in tallies[v].items()
                          if attempt(t, lambda c=vc[k]: run_once(c, 200, args.timeout, tmp), args.tries)}
        for _ in range(args.rounds):
            for v, vc in cmds.items():
                for name in results[v]:
                    r = attempt(tallies[v][name], lambda c=vc[name]: run_once(c, args.n, args.timeout, tmp), args.tries)
                    if r is not None:
                        results[v][name].append(r)

    print(f"serial interrupts from the 16550's input thread to a 64-bit guest (tests/guests/irq64.S): "
          f"{args.n} bytes per run, {args.rounds} rounds, VMMs alternating")
    print(cpu.line() if cpu else f"QEMU: {not_installed}")
    for v, (_, what) in VARIANTS.items():
        print(f"{v}: {what}")
        med: dict[str, tuple[float, float, float]] = {}
        for name, rs in results[v].items():
            if not rs:
                continue
            secs = statistics.median(r[0] for r in rs)
            bps = statistics.median(r[1] / r[0] for r in rs)
            ips = statistics.median(r[2] / r[0] for r in rs)
            bpi = statistics.median(r[1] / max(1, r[2]) for r in rs)
            med[name] = (secs, bps, ips)
            print(f"  {name:15s} {secs * 1000:8.1f} ms  {bps:8.0f} bytes/s  {ips:8.0f} irqs/s  "
                  f"{bpi:7.1f} bytes/irq  ({len(rs)} timed runs)")
        for name, t in tallies[v].items():
            print(f"  {t.summary()}  (the warm-up run included)")
        for name, c in cmds[v].items():
            if c is None:
                print(f"  {name:15s} could not run: {not_installed}")
        for mine, theirs in PAIRS:
            if mine in med and theirs in med:
                irqs = f" (irqs/s {med[mine][2] / med[theirs][2]:.2f}x)" if v == "level" else ""
                print(f"  ratio {mine}/{theirs}: bytes/s {med[mine][1] / med[theirs][1]:.2f}x{irqs}")
            else:
                why = [tallies[v][k].why_no_ratio() if k in tallies[v] else f"{k} could not run: {not_installed}"
                       for k in (mine, theirs) if k not in med]
                print(f"  ratio {mine}/{theirs}: none, {'; '.join(why)}")
    print("(QEMU 7.2's microvm defaults to kernel-irqchip=split, so qemu-split is plain QEMU.)")

if __name__ == "__main__":
    main()
