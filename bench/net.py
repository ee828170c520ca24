#!/usr/bin/env python3
"""virtio-net on a tap: ICMP round trips and floods into the guest kernel, microvm vs QEMU microvm.

Usage: .venv/bin/python bench/net.py [-n ROUNDS] [--rtt-count N] [--flood-count N]
                                     [--sizes 56,1400,8000] [--tries N] [--only microvm|qemu]

Guest user mode cannot make system calls on an emulating host (docs/emulating-hosts.md), so
the load comes from the host side of the tap and the guest *kernel* answers it: the guest
boots with ``ip=192.0.2.2::192.0.2.1:255.255.255.0::eth0:off`` and an uncompressed initramfs
whose ``/init`` is ``jmp .``; the host (inside a network namespace made for each run, with
192.0.2.1/24 on the tap) pings it:

* round-trip time: ``ping -c RTT_COUNT -i 0.2`` with 56-byte payloads, the median of the
  per-packet ``time=`` values;
* flood: ``ping -f -c FLOOD_COUNT -s SIZE`` for each size (8000 bytes: six fragments each
  way, reassembled by the guest), received echo replies per second over ping's own
  elapsed time, and the loss.

Both VMMs boot the same kernel with the same command line, 128 MiB and one vCPU, taking
turns (the order alternates per round). The kernel is the default guest's ``qemu-compatible``
variant (``microvm guest build --variant qemu-compatible``: Linux's INT3 self-test patched
out, ``core/guest/qemu-compatible-no-int3-selftest.patch``), because QEMU 7.2 stops at that
INT3 on an emulating host KVM; microvm's own command-line additions for such a host
(``noxsave clearcpuid=...``) are given to both (``--no-kvmclock`` adds that word too, to
compare without the paravirtual clock). QEMU is Debian's ``qemu-system-x86``
(installed when missing) as ``-M microvm,acpi=off,x-option-roms=off -enable-kvm -cpu MODEL``
with ``-netdev tap,...,script=no,downscript=no -device virtio-net-device``; MODEL is
``host``, or ``host,-arch-capabilities`` where plain ``host`` aborts (probed in _common).

A run that failed (the VMM ended early, an emulation failure, the guest never answered, a
round-trip ping that got no reply at all, a flood that got no reply after which the guest
no longer answers an ordinary ping) is never timed; a flood without replies from a guest
that still answers afterwards is a result (0 replies/s, 100 % loss). QEMU still dies now and then during the boot
on such a host (an emulation failure at FWAIT and the like): those runs are retried, up to
``--tries`` tries in all, and the report says how many runs of each VMM had to be retried.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import REPO, RunFailed, Tally, attempt, emulation_failed, ensure_qemu, first_line, qemu_cpu_model

sys.path.insert(0, str(REPO / "tests"))

from linux_images import ConsoleSession, NetNamespace, build_spin_init, make_initramfs, missing_tools, tool  # noqa: E402

GUEST_MEM_MIB = 128
GUEST_IP = "192.0.2.2"
HOST_CIDR = "192.0.2.1/24"
GUEST_MAC = "52:54:00:12:34:56"
CMDLINE = f"console=ttyS0 reboot=t panic=1 ip={GUEST_IP}::192.0.2.1:255.255.255.0::eth0:off"
BOOT_TIMEOUT = 900  # spawn to "Run /init", at most (a limit, not a measurement)
TAP = "tap0"


@dataclass
class Flood:
    size: int
    sent: int
    received: int
    seconds: float

    @property
    def pps(self) -> float:
        return self.received / self.seconds if self.seconds else float("nan")

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else float("nan")


@dataclass
class Result:
    boot_s: float
    rtt_ms: float
    floods: dict[int, Flood] = field(default_factory=dict)


# ------------------------------------------------------------------------------ ping parsing
def ping_times(out: str) -> list[float]:
    """The ``time=X ms`` of each echo reply."""
    return [float(t) for t in re.findall(r"time=([0-9.]+) ms", out)]


def ping_summary(out: str) -> tuple[int, int, float]:
    """(transmitted, received, elapsed seconds) from ping's statistics line."""
    m = re.search(r"(\d+) packets transmitted, (\d+) received.*?time (\d+)ms", out)
    if not m:
        raise ValueError("no statistics line")
    return int(m.group(1)), int(m.group(2)), int(m.group(3)) / 1000


# ------------------------------------------------------------------------------ one run
def stop(s: ConsoleSession) -> None:
    """SIGTERM (both VMMs shut down on it), then kill what is left."""
    if s.proc.poll() is None:
        s.proc.send_signal(signal.SIGTERM)
        s.wait(timeout=30)
    s.close()


def wait_ready(s: ConsoleSession, ns: NetNamespace) -> None:
    """Until the guest kernel runs /init with eth0 configured; RunFailed otherwise."""
    if not ns.wait_for_link(TAP, timeout=60, alive=lambda: s.proc.poll() is None):
        raise_failed(s, f"the VMM did not create {TAP}")
    ns.host_side(TAP, HOST_CIDR)
    while not s.wait_for("Run /init", timeout=1.0):
        if emulation_failed(s.errtext):
            time.sleep(0.5)  # the register dump follows the message
            raise_failed(s, "emulation failure during the boot")
        if s.proc.poll() is not None:
            raise_failed(s, "the VMM ended during the boot")
        if time.monotonic() > s.deadline:
            raise RunFailed(f"the guest did not reach /init in {BOOT_TIMEOUT} s", retry=False)
    if "IP-Config: Complete:" not in s.text:
        raise_failed(s, "the guest kernel did not configure eth0")


def raise_failed(s: ConsoleSession, why: str) -> None:
    lines = [ln for ln in s.text.splitlines() if ln.strip()]
    err = [ln for ln in s.errtext.splitlines() if ln.strip()]
    detail = f" (last console line {lines[-1].strip()!r})" if lines else ""
    if err:
        detail += f": {err[0].strip()}"
    raise RunFailed(why + detail)


def ping(ns: NetNamespace, *args: str, timeout: float = 600):
    """``ping -n ARGS GUEST_IP`` in the namespace; one that hangs past ``timeout`` is a
    failed run (ping's own -w should end it long before)."""
    try:
        return ns.run(tool("ping"), "-n", *args, GUEST_IP, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"ping {' '.join(args)} did not end within {timeout:.0f} s") from None


def check_alive(s: ConsoleSession, ns: NetNamespace, when: str) -> None:
    """RunFailed unless the VMM still runs, had no emulation failure, and the guest kernel
    still answers an ordinary ping (generous waits: a limit, not a measurement)."""
    if s.proc.poll() is not None or emulation_failed(s.errtext):
        raise_failed(s, f"the VMM stopped {when}")
    alive = ping(ns, "-c", "3", "-i", "1", "-W", "30", "-w", "120")
    if alive.returncode != 0:
        raise RunFailed(f"the guest no longer answers ping {when}: {ping_outcome(alive)}")


def ping_outcome(r) -> str:
    """ping's statistics line ('3 packets transmitted, 0 received, ...'), else its first
    line of output, else its status."""
    text = r.stdout + r.stderr
    stats = [ln for ln in text.splitlines() if "packets transmitted" in ln]
    return stats[0].strip() if stats else first_line(text) or f"status {r.returncode}"


def run_once(cmd: list[str], rtt_count: int, flood_count: int, sizes: list[int]) -> Result:
    with NetNamespace("microvm-netbench") as ns:
        t0 = time.monotonic()
        s = ConsoleSession(ns.argv(*cmd), timeout=BOOT_TIMEOUT + 1800)
        try:
            s.deadline = t0 + BOOT_TIMEOUT
            wait_ready(s, ns)
            boot = time.monotonic() - t0
            s.deadline = time.monotonic() + 1800
            warm = ping(ns, "-c", "3", "-i", "0.5", "-W", "30", "-w", "120")  # ARP, and the guest answers at all
            if warm.returncode != 0:
                raise RunFailed(f"the guest did not answer ping: {ping_outcome(warm)}")
            r = ping(ns, "-c", str(rtt_count), "-i", "0.2", "-W", "30", "-w", str(60 + rtt_count))
            times = ping_times(r.stdout)
            if not times:
                raise RunFailed(f"no echo reply in the round-trip run: {r.stdout.strip()[-200:]}")
            res = Result(boot, statistics.median(times))
            for size in sizes:
                # -W: how long ping waits when no reply came at all (the guest is slow to answer
                # a burst of fragments); -w bounds the whole flood
                f = ping(ns, "-f", "-c", str(flood_count), "-s", str(size), "-W", "60", "-w", str(180 + flood_count // 5))
                try:
                    sent, received, secs = ping_summary(f.stdout)
                except ValueError:
                    raise RunFailed(f"ping -f -s {size}: {(f.stdout + f.stderr).strip()[-200:]}") from None
                if received == 0:
                    # no reply at all: an overwhelmed guest (a result: 0 replies/s, 100 % loss)
                    # or one that died or hung (a failed run, never timed). Ask it.
                    check_alive(s, ns, f"after a flood of {size}-byte pings that got no reply")
                res.floods[size] = Flood(size, sent, received, secs)
            if s.proc.poll() is not None or emulation_failed(s.errtext):
                raise_failed(s, "the VMM stopped during the measurement")
            return res
        finally:
            stop(s)


# ------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--rounds", type=int, default=3, help="rounds; each boots both VMMs, alternating (default 3)")
    ap.add_argument("--rtt-count", type=int, default=50, help="echo requests for the round-trip time (default 50)")
    ap.add_argument("--flood-count", type=int, default=1000, help="echo requests per flood size (default 1000)")
    ap.add_argument("--sizes", default="56,1400,8000", help="flood payload sizes (default 56,1400,8000)")
    ap.add_argument("--only", choices=("microvm", "qemu"), help="run one VMM only")
    ap.add_argument("--tries", type=int, default=3, help="tries per round and VMM when a run fails by itself (default 3)")
    ap.add_argument("--no-kvmclock", action="store_true", help="boot both guests with no-kvmclock")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    if os.geteuid() != 0:
        sys.exit("needs root (CAP_NET_ADMIN): each run makes a network namespace and a tap")
    missing = missing_tools("ip", "as", "ld")
    if missing:
        sys.exit(f"needs iproute2 and binutils: {', '.join(missing)} not found")
    if missing_tools("ping"):
        print("installing iputils-ping ...", file=sys.stderr)
        os.system("apt-get install -y -qq iputils-ping >/dev/null 2>&1 || "
                  "(apt-get update -qq && apt-get install -y -qq iputils-ping >/dev/null)")
        if missing_tools("ping"):
            sys.exit("ping (iputils-ping) is not available")
    from microvm.guest import variant_guest
    from microvm.machine import EMULATING_HOST_CMDLINE, host_is_emulating

    guest = variant_guest("qemu-compatible", progress=lambda m: print(f"guest build: {m}", file=sys.stderr))
    qemu = (ensure_qemu() or sys.exit("qemu-system-x86_64 is not available")) if args.only != "microvm" else ""
    cpu = qemu_cpu_model(qemu) if qemu else None
    # what microvm adds by itself on an emulating host, given to both so the guests match
    cmdline = " ".join([CMDLINE, *(EMULATING_HOST_CMDLINE if host_is_emulating() else []),
                        *(["no-kvmclock"] if args.no_kvmclock else [])])
    args.cmdline = cmdline
    with tempfile.TemporaryDirectory(prefix="microvm-net-bench-") as tmp:
        initrd = make_initramfs(Path(tmp) / "initramfs.cpio", build_spin_init(Path(tmp) / "build/init"))
        tapdev = f"tap,id=n0,ifname={TAP},script=no,downscript=no"
        nic = f"virtio-net-device,netdev=n0,mac={GUEST_MAC}"
        cmds = {
            "microvm": [str(REPO / ".venv/bin/microvm"), "run", "--kernel", str(guest.vmlinux), "--initrd", str(initrd),
                        "--append", cmdline, "-m", f"{GUEST_MEM_MIB}M", "--netdev", tapdev, "--device", nic,
                        "--no-reboot"],
            "qemu": [qemu, "-M", "microvm,acpi=off,x-option-roms=off", "-enable-kvm", *(cpu.args if cpu else []),
                     "-m", f"{GUEST_MEM_MIB}m", "-kernel", str(guest.vmlinux), "-initrd", str(initrd),
                     "-append", cmdline, "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
                     "-no-reboot", "-netdev", tapdev, "-device", nic],
        }
        if args.only:
            cmds = {args.only: cmds[args.only]}
        results: dict[str, list[Result]] = {k: [] for k in cmds}
        tallies = {k: Tally(k) for k in cmds}
        for rnd in range(args.rounds):
            order = list(cmds) if rnd % 2 == 0 else list(reversed(cmds))
            for name in order:
                tries = iter(range(1, args.tries + 1))

                def one(name: str = name, rnd: int = rnd) -> Result:
                    n = next(tries)
                    t0 = time.monotonic()
                    try:
                        r = run_once(cmds[name], args.rtt_count, args.flood_count, sizes)
                    except RunFailed as e:
                        print(f"round {rnd + 1} {name:8s} try {n} {time.monotonic() - t0:6.1f} s  FAILED: {first_line(e)}",
                              file=sys.stderr)
                        raise
                    floods = "  ".join(f"flood {f.size}B {f.pps:.0f}/s loss {f.loss:.1%}" for f in r.floods.values())
                    print(f"round {rnd + 1} {name:8s} try {n} {time.monotonic() - t0:6.1f} s  ok: boot {r.boot_s:.0f} s  "
                          f"rtt {r.rtt_ms:.2f} ms  {floods}", file=sys.stderr)
                    return r

                r = attempt(tallies[name], one, args.tries)
                if r is not None:
                    results[name].append(r)
    report(results, tallies, sizes, args, cpu.line() if cpu else "")


def report(results: dict[str, list[Result]], tallies: dict[str, Tally], sizes: list[int], args, cpu_line: str) -> None:
    print()
    print(f"virtio-net on a tap: the default guest's qemu-compatible kernel, {GUEST_MEM_MIB} MiB, 1 vCPU, answering")
    print("ICMP from the host side of the tap (in a network namespace per run). Medians over the runs that")
    print(f"completed; {args.rtt_count} echo requests for the RTT, {args.flood_count} per flood size (ping -f).")
    print("The guest kernel is emulated on this host: every figure is bound by guest CPU.")
    print(f"Guest command line (both VMMs): {args.cmdline}")
    if cpu_line:
        print(cpu_line)
    print()
    rows: list[tuple[str, dict[str, float], bool]] = []
    med: dict[str, dict[str, float]] = {}
    for name, rs in results.items():
        if not rs:
            continue
        m = {"RTT ms (lower is better)": statistics.median(r.rtt_ms for r in rs)}
        for size in sizes:
            m[f"flood {size} B replies/s"] = statistics.median(r.floods[size].pps for r in rs)
            m[f"flood {size} B loss %"] = 100 * statistics.median(r.floods[size].loss for r in rs)
        med[name] = m
    keys = ["RTT ms (lower is better)"] + [k for s in sizes for k in (f"flood {s} B replies/s", f"flood {s} B loss %")]
    both = len(results) == 2
    print(f"  {'':28s}" + "".join(f"{n:>12s}" for n in results) + ("    ratio microvm/qemu" if both else ""))
    for k in keys:
        row = f"  {k:28s}" + "".join(f"{med[n][k]:12.2f}" if n in med else f"{'—':>12s}" for n in results)
        if both and "loss" not in k:
            if "microvm" in med and "qemu" in med and med["qemu"][k] and med["microvm"][k]:
                row += f"    {med['microvm'][k] / med['qemu'][k]:.2f}x"
            else:
                row += "    n/a"
        print(row)
    for t in tallies.values():
        print(f"  {t.summary()}")
    if "qemu" in tallies:
        t = tallies["qemu"]
        retried = t.retries
        print(f"  QEMU runs that had to be retried: {retried} (of {t.succeeded + t.given_up} rounds run)")
    if both and len(med) < 2:
        print("  no ratio: " + "; ".join(tallies[k].why_no_ratio() for k in results if k not in med))


if __name__ == "__main__":
    main()
