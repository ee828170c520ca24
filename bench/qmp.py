#!/usr/bin/env python3
"""QMP monitor: query-status round trips per second, and the latency of stop, microvm vs QEMU.

Each round starts one VMM with a busy tiny guest (tests/guests/blk-busy.S: its vCPU polls a
virtio-blk disk it keeps writing, so the vCPU is in KVM_RUN and the device worker busy when
``stop`` arrives) and a QMP socket (``-qmp unix:PATH,server=on,wait=off``), negotiates, then
measures over one connection:

* round trips: ``{"execute": "query-status"}`` sent, its reply read, N times in a row;
* stop latency: ``stop`` sent until its reply (``{"return": {}}``; the STOP event comes
  first) is read, then ``cont``; M times, each after the guest ran on for a moment.

Rounds alternate between the VMMs (so machine noise hits both alike). A round counts only
when the guest printed BUSY, every reply was the expected one (``running`` before stop,
``paused`` after it), the guest's disk writes went on after the last ``cont`` and ``quit``
ended the VMM with status 0; a failed round is never timed, but counted, retried up to
--tries times in all, and reported per VMM. QEMU is Debian's qemu-system-x86, with the -cpu
model probed in _common; both VMMs get ``-M microvm,acpi=off,x-option-roms=off,rtc=off`` and
modern virtio-mmio.

Usage: .venv/bin/python bench/qmp.py [--rounds 5] [-n 2000] [-m 50]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, Tally, assemble, attempt, ensure_qemu, failure, qemu_cpu_model

START_TIMEOUT = 30.0
REPLY_TIMEOUT = 30.0
#: the same machine for both VMMs (microvm's defaults would add an RTC and option ROMs
#: QEMU's line turns off, and the comparison would not be of like with like)
MACHINE = "microvm,acpi=off,x-option-roms=off,rtc=off"


class Conn:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(REPLY_TIMEOUT)
        self.sock.connect(path)
        self.buf = b""

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the monitor closed the connection")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def reply(self) -> dict:
        """The next reply, skipping events."""
        while True:
            msg = json.loads(self.line())
            if "event" not in msg:
                return msg

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)


def one_round(name: str, cmd: list[str], sock: str, disk: Path, n: int, m: int) -> tuple[float, list[float]]:
    """(round trips per second, stop latencies in seconds) of one VMM, or RunFailed."""
    if os.path.exists(sock):
        os.unlink(sock)
    disk.write_bytes(bytes(256 << 10))
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

        def fail(why: str) -> Exception:
            p.kill()
            p.wait()
            err.seek(0)
            out.seek(0)
            return failure(f"{name}: {why}", None, err.read(), out.read())

        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not (os.path.exists(sock) and os.pread(out.fileno(), 64, 0).startswith(b"BUSY")):
                if p.poll() is not None or time.monotonic() > deadline:
                    raise fail("did not start (no QMP socket or no BUSY on the console)")
                time.sleep(0.01)
            c = Conn(sock)
            if b'"QMP"' not in c.line():
                raise fail("no QMP greeting")
            c.send(b'{"execute": "qmp_capabilities"}\n')
            if c.reply() != {"return": {}}:
                raise fail("qmp_capabilities refused")
            # round trips
            req = b'{"execute": "query-status"}\n'
            t0 = time.perf_counter()
            for _ in range(n):
                c.send(req)
                r = c.reply()
                if r.get("return", {}).get("status") != "running":
                    raise fail(f"query-status answered {r}")
            rate = n / (time.perf_counter() - t0)
            # stop latency, on the busy guest
            lat = []
            for _ in range(m):
                time.sleep(0.02)  # let the guest run (and its disk work) between stops
                t0 = time.perf_counter()
                c.send(b'{"execute": "stop"}\n')
                r = c.reply()
                dt = time.perf_counter() - t0
                if r != {"return": {}}:
                    raise fail(f"stop answered {r}")
                c.send(b'{"execute": "query-status"}\n')
                if c.reply().get("return", {}).get("status") != "paused":
                    raise fail("not paused after stop")
                c.send(b'{"execute": "cont"}\n')
                if c.reply() != {"return": {}}:
                    raise fail("cont failed")
                lat.append(dt)
            written = disk.read_bytes()
            deadline = time.monotonic() + REPLY_TIMEOUT
            while disk.read_bytes() == written:
                if time.monotonic() > deadline:
                    raise fail("the guest's disk writes did not go on after cont")
                time.sleep(0.01)
            c.send(b'{"execute": "quit"}\n')
            c.reply()
            status = p.wait(REPLY_TIMEOUT)
            if status != 0:
                raise fail(f"quit: exit status {status}")
            return rate, lat
        except (OSError, EOFError, ValueError, subprocess.TimeoutExpired) as e:
            raise fail(f"{type(e).__name__}: {e}") from None
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="rounds per VMM (default 5)")
    ap.add_argument("-n", type=int, default=2000, help="query-status round trips per round (default 2000)")
    ap.add_argument("-m", type=int, default=50, help="stop/cont pairs per round (default 50)")
    ap.add_argument("--tries", type=int, default=3, help="tries per round when a round fails (default 3)")
    args = ap.parse_args()
    qemu = ensure_qemu() or sys.exit("qemu-system-x86_64 is not available: nothing to compare with")
    cpu = qemu_cpu_model(qemu)
    microvm = str(REPO / ".venv/bin/microvm")
    with tempfile.TemporaryDirectory(prefix="microvm-bench-qmp-") as d:
        elf = assemble(Path(d), "blk-busy")
        disk = Path(d) / "disk.img"
        sock = os.path.join(d, "qmp.sock")
        cmds = {
            "microvm": [microvm, "run", "-M", MACHINE, "--kernel", str(elf), "-m", "128M", "--serial", "stdio",
                        "--drive", f"id=d0,file={disk}", "--device", "virtio-blk-device,drive=d0,force-legacy=off",
                        "--qmp", f"unix:{sock},server=on,wait=off"],
            "qemu": [qemu, "-M", MACHINE, "-enable-kvm", *cpu.args,
                     "-m", "128m", "-kernel", str(elf), "-nodefaults", "-no-user-config", "-nographic",
                     "-serial", "stdio", "-drive", f"id=d0,file={disk},format=raw,if=none",
                     "-device", "virtio-blk-device,drive=d0", "-global", "virtio-mmio.force-legacy=false",
                     "-qmp", f"unix:{sock},server=on,wait=off"],
        }
        tally = {k: Tally(k) for k in cmds}
        rates: dict[str, list[float]] = {k: [] for k in cmds}
        lats: dict[str, list[float]] = {k: [] for k in cmds}
        for _ in range(args.rounds):
            for name, cmd in cmds.items():
                r = attempt(tally[name], lambda name=name, cmd=cmd: one_round(name, cmd, sock, disk, args.n, args.m),
                            args.tries)
                if r is not None:
                    rates[name].append(r[0])
                    lats[name].extend(r[1])
    print(f"QMP over a Unix socket, busy tiny guest (blk-busy), {args.rounds} rounds each, alternating")
    print(f"  {cpu.line()}")
    for k in cmds:
        if rates[k]:
            ls = sorted(lats[k])
            p90 = ls[int(0.9 * (len(ls) - 1))]
            print(f"  {k:8s} query-status {statistics.median(rates[k]):8.0f} round trips/s (median of {len(rates[k])} "
                  f"rounds of {args.n})   stop latency median {statistics.median(ls) * 1e3:6.2f} ms, "
                  f"p90 {p90 * 1e3:6.2f} ms ({len(ls)} stops)")
    for k in cmds:
        print(f"  {tally[k].summary()}")
    if rates["microvm"] and rates["qemu"]:
        print(f"  ratio microvm/qemu: round trips/s {statistics.median(rates['microvm']) / statistics.median(rates['qemu']):.2f}x, "
              f"stop latency {statistics.median(lats['microvm']) / statistics.median(lats['qemu']):.2f}x")
    else:
        print("  ratio microvm/qemu: none, " + "; ".join(tally[k].why_no_ratio() for k in cmds if not rates[k]))


if __name__ == "__main__":
    main()
