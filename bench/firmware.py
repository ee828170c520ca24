#!/usr/bin/env python3
"""Firmware boot: spawn to the kernel's first console line and to ``Run /init``, for direct
boot, qboot and SeaBIOS, under microvm and under QEMU microvm.

The guest is the default guest's ``qemu-compatible`` variant (``microvm guest build
--variant qemu-compatible``: Linux's INT3 self-test patched out), because QEMU 7.2 stops at
that self-test on an emulating host KVM (docs/emulating-hosts.md) and a run that failed is
never timed. Both VMMs get the same machine: QEMU's command line (``-M microvm,acpi=off``,
128 MiB, 1 vCPU, ``-nodefaults -serial stdio``, the same kernel, initramfs and command line,
with the words microvm adds by itself on an emulating host given to both), the program name
changed, and ``-bios`` for the firmware rows:

* ``microvm direct``: microvm loads the bzImage itself (64-bit boot protocol); QEMU has no
  such boot (its microvm always runs a firmware);
* ``microvm qboot`` / ``qemu qboot``: ``-bios qboot.rom`` (QEMU microvm's default without
  ACPI), which reads the kernel from fw_cfg itself;
* ``microvm seabios`` / ``qemu seabios``: ``-bios /usr/share/seabios/bios-microvm.bin``,
  which boots the kernel through the ``linuxboot_dma.bin`` option ROM;
* ``... vmlinux``: the same kernel as an ELF ``vmlinux`` with its PVH entry: microvm direct
  (what ``microvm run`` boots by default), and qboot under both VMMs (qboot starts the PVH
  entry from fw_cfg).

Every configuration runs once per round, in pairs (microvm, then QEMU, for the same
firmware), the order reversed every other round, so the machine's load hits all alike; the
medians are compared as ratios. A run counts only when ``Run /init`` appeared: a run that did
not get there (QEMU can still stop at an emulation failure now and then, the VMM ended, the
time ran out) is reported as failed with its reason and last console line, and never timed;
an emulation failure is tried again (``--tries``). Firmware, the kernel's real-mode setup and
the bzImage's decompressor are emulated instruction by instruction on such hosts: one boot
takes minutes, so keep ``-n`` small. Usage: .venv/bin/python bench/firmware.py [-n 1]
[--only NAME,...] [--tries 2]
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

from _common import REPO, Tally, attempt, emulation_failed, ensure_qemu, failure, first_line, qemu_cpu_model

SEABIOS = "/usr/share/seabios/bios-microvm.bin"
QBOOT = "qboot.rom"
FIRST = b"Linux version"
INIT = b"Run /init"
TIMEOUT = 3600.0
#: the configurations in the order they run (pairs of the same firmware next to each other)
ORDER = ("microvm qboot", "qemu qboot", "microvm seabios", "qemu seabios", "microvm direct",
         "microvm direct vmlinux", "microvm qboot vmlinux", "qemu qboot vmlinux")
#: (a, b): the ratios printed, a / b
PAIRS = (("microvm qboot", "qemu qboot"), ("microvm seabios", "qemu seabios"),
         ("microvm qboot vmlinux", "qemu qboot vmlinux"), ("microvm direct", "qemu qboot"),
         ("microvm direct vmlinux", "qemu qboot"),
         ("microvm qboot", "microvm direct"), ("microvm seabios", "microvm direct"),
         ("microvm qboot vmlinux", "microvm direct vmlinux"), ("microvm direct", "microvm direct vmlinux"),
         ("microvm qboot", "microvm qboot vmlinux"))


def guest() -> tuple[str, str, str, str]:
    """The qemu-compatible variant's bzImage, vmlinux, initramfs and command line (built
    on first use, ~5 minutes)."""
    from microvm.guest import variant_guest

    g = variant_guest("qemu-compatible", progress=lambda s: print(f"guest build: {s}", file=sys.stderr))
    return str(g.kernel), str(g.vmlinux), str(g.initramfs), g.cmdline


def timed_boot(cmd: list[str], timeout: float) -> tuple[float, float]:
    """Spawn ``cmd``; seconds from spawn to the first kernel line and to ``Run /init``; the
    VMM is killed at ``Run /init``. RunFailed (and no time at all) when it never gets there."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        out = bytearray()
        first = None
        why = None
        retry = False
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
                        why = f"the VMM ended ({p.wait()}) before {INIT.decode()}"
                        break
                    out += chunk
                    now = time.perf_counter() - t0
                    if first is None and FIRST in out:
                        first = now
                    if INIT in out:
                        return first if first is not None else now, now
                elif emulation_failed(os.pread(err.fileno(), 1 << 16, 0)):
                    why = "emulation failure, the VMM stopped"
                    retry = True
                    break
        finally:
            p.kill()
            p.wait()
        err.seek(0)
        stderr = err.read()
    last = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()][-1:] or ["(no output)"]
    raise failure(f"{why}; last console line: {last[0].strip()[:100]!r}", None, stderr, bytes(out), retry=retry)


def commands(qemu: str | None, cpu_args: list[str]) -> dict[str, list[str]]:
    """Every configuration's command line: QEMU's line for both VMMs, the program changed."""
    from microvm.machine import EMULATING_HOST_CMDLINE, host_is_emulating

    bzimage, vmlinux, initrd, cmdline = guest()
    # what microvm adds by itself on an emulating host, given to both so the guests match
    cmdline = " ".join([cmdline, *(EMULATING_HOST_CMDLINE if host_is_emulating() else [])])

    def line(kernel: str, bios: str | None) -> list[str]:
        return ["-M", "microvm,acpi=off", "-enable-kvm", *cpu_args, "-m", "128m", "-kernel", kernel,
                "-initrd", initrd, "-append", cmdline, "-nodefaults", "-no-user-config", "-nographic",
                "-serial", "stdio", "-no-reboot", *(["-bios", bios] if bios else [])]

    microvm = str(REPO / ".venv/bin/microvm")
    cmds = {
        "microvm direct": [microvm, *line(bzimage, None)],
        "microvm qboot": [microvm, *line(bzimage, QBOOT)],
        "microvm seabios": [microvm, *line(bzimage, SEABIOS)],
        "microvm direct vmlinux": [microvm, *line(vmlinux, None)],
        "microvm qboot vmlinux": [microvm, *line(vmlinux, QBOOT)],
    }
    if qemu:
        cmds["qemu qboot"] = [qemu, *line(bzimage, QBOOT)]
        cmds["qemu seabios"] = [qemu, *line(bzimage, SEABIOS)]
        cmds["qemu qboot vmlinux"] = [qemu, *line(vmlinux, QBOOT)]
    return {k: cmds[k] for k in ORDER if k in cmds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1, help="rounds (default 1: a boot takes minutes on emulating hosts)")
    ap.add_argument("--only", default="", help="comma-separated configuration names to run")
    ap.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per boot")
    ap.add_argument("--tries", type=int, default=2, help="tries per run when the VMM stops at an emulation failure")
    args = ap.parse_args()
    qemu = ensure_qemu()
    cpu = qemu_cpu_model(qemu) if qemu else None
    cmds = commands(qemu, cpu.args if cpu else [])
    if args.only:
        keep = {n.strip() for n in args.only.split(",")}
        unknown = keep - set(cmds)
        if unknown:
            sys.exit(f"unknown configuration(s) {', '.join(sorted(unknown))}; known: {', '.join(cmds)}")
        cmds = {k: v for k, v in cmds.items() if k in keep}
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    load_before = os.getloadavg()
    tally = {k: Tally(k) for k in cmds}
    firsts: dict[str, list[float]] = {k: [] for k in cmds}
    inits: dict[str, list[float]] = {k: [] for k in cmds}
    for rnd in range(args.n):
        order = list(cmds) if rnd % 2 == 0 else list(reversed(cmds))
        for name in order:
            print(f"round {rnd + 1}: {name} (load {os.getloadavg()[0]:.1f}) ...", file=sys.stderr, flush=True)
            res = attempt(tally[name], lambda cmd=cmds[name]: timed_boot(cmd, args.timeout), args.tries,
                          on_failure=lambda e, n, name=name: print(f"  {name} try {n}: FAILED: {first_line(e)}",
                                                                   file=sys.stderr))
            if res is not None:
                firsts[name].append(res[0])
                inits[name].append(res[1])
                print(f"  {name}: first line {res[0]:.1f} s, Run /init {res[1]:.1f} s", file=sys.stderr)
    load_after = os.getloadavg()

    print(f"\nfirmware boot of the default guest's qemu-compatible kernel, 128 MiB, 1 vCPU; {started}, "
          f"{args.n} round(s)")
    print(f"host load average (1/5/15 min): {'/'.join(f'{x:.1f}' for x in load_before)} at the start, "
          f"{'/'.join(f'{x:.1f}' for x in load_after)} at the end")
    if cpu is not None:
        print(cpu.line())
    else:
        print("qemu-system-x86_64 is not available: QEMU is not measured")
    med = {k: (statistics.median(firsts[k]), statistics.median(inits[k])) for k in cmds if inits[k]}
    print(f"\n{'configuration':<24} {'first line':>11} {'Run /init':>11}   runs")
    for k in cmds:
        if k in med:
            print(f"{k:<24} {med[k][0]:>10.1f}s {med[k][1]:>10.1f}s   {len(inits[k])}")
        else:  # failed runs are not timed: no figure at all
            print(f"{k:<24} {'failed':>11} {'failed':>11}   {tally[k].why_no_ratio()}")
    print("\nratios of the medians (Run /init; first kernel line in parentheses):")
    for a, b in PAIRS:
        if a in med and b in med:
            print(f"  {a} / {b}: {med[a][1] / med[b][1]:.2f} ({med[a][0] / med[b][0]:.2f})")
        elif a in cmds and b in cmds:
            print(f"  {a} / {b}: none: " + "; ".join(tally[k].why_no_ratio() for k in (a, b) if k not in med))
    print()
    for t in tally.values():
        print(t.summary())


if __name__ == "__main__":
    main()
