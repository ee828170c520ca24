#!/usr/bin/env python3
"""virtio-blk throughput: the same guest workload under microvm and under QEMU microvm.

Usage: .venv/bin/python bench/blk.py [-n ROUNDS] [--seq-mib N] [--write-mib N] [--random N] [--tries N]

Guest user mode cannot make system calls on an emulating host (docs/emulating-hosts.md), so the load comes
from the guest *kernel*, on one boot of the default guest with ``root=/dev/vda`` on an ext4
image made here (``mkfs.ext4 -d``), rebuilt identical for every run:

* sequential write — the root file system is handed over with a journal that needs
  recovery (written with ``debugfs`` ``jo``/``jw``/``jc``): at mount, jbd2 replays it and
  writes ``--write-mib`` MiB to consecutive home blocks. Measured on the host from the VMM
  process's write counter (``/proc/PID/io`` wchar, minus the console bytes it wrote): the
  time from the poll before its first write to the image to the poll after its last. The
  kernel writes back in ~1 MiB requests while it replays, so this is a replay-bound rate;
* sequential read — ``/sbin/init`` is a static binary without system calls whose read-only
  ELF segment holds ``--seq-mib`` MiB of data; it touches every page in order, so the kernel
  reads the file through page-fault readahead (64-128 KiB requests);
* 4 KiB random read — it then reads the first page of ``--random`` distinct 256 KiB slots of
  a 64 MiB region in a pseudo-random order (a full-period LCG). Linux 6.1 always reads 32
  pages around a page-fault miss (mmap read-around; its MMAP_LOTSAMISS cut-off never
  triggers, because the retried fault maps the pages just read and counts them as hits), so
  a prepare pass first faults at p-16 and p+17 of each slot, caching [p-32, p+32] except p;
  the measured fault at p then reads exactly one 4 KiB page, synchronously (queue depth 1).

init keeps its progress (phase, pages done) in a page of its own memory, tagged with a
random magic; the host finds that page in the VMM's guest RAM through ``/proc/PID/mem``,
polls it every millisecond, and starts init by writing a go flag there. Phase durations are
host wall time between those polls; the bytes the VMM read from the image during each phase
(``/proc/PID/io`` rchar) are shown as a check. The guest kernel runs emulated instruction
by instruction on such a host, so every figure here is bound by guest CPU, not by the disk;
the ratio is what compares the two VMMs. The image stays in the host page cache (warm).

QEMU is Debian's ``qemu-system-x86`` (installed when missing), run as
``-M microvm,acpi=off,x-option-roms=off -enable-kvm -cpu MODEL -m 256m -kernel vmlinux``
with the same drive on ``virtio-blk-device``; MODEL is ``host``, or ``host,-arch-capabilities``
where plain ``host`` aborts (AMD machines here), probed once in _common and printed with the
results. A run that failed (an exit status other than 0, an emulation failure, the journal not
replayed, init's phases not all seen) is never timed: it is counted per VMM and, when it ended
by itself (not a stall or the time limit), retried up to --tries tries in all. On an emulating
host QEMU usually stops with an emulation failure (INT3 in ``int3_selftest()``, FWAIT, see
docs/emulating-hosts.md); when every run of a VMM failed, that is printed instead of a ratio.
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import REPO, RunFailed, Tally, attempt, ensure_qemu, failure, first_line, qemu_cpu_model

sys.path.insert(0, str(REPO / "tests"))

from linux_images import ConsoleSession, assemble, make_ext4, make_rootdir, missing_tools, tool  # noqa: E402

PAGE = 4096
MIB = 1 << 20
GUEST_MEM_MIB = 256
#: Slots of the random region (a power of two, for the full-period LCG), each RND_SPACING
#: pages of data; the random phase reads the first page of a slot.
RND_SLOTS = 256
#: Linux 6.1 cannot be kept from its mmap read-around (ra_pages = 32, centred on the fault:
#: the MMAP_LOTSAMISS cut-off never triggers, as the retried fault's fault-around maps the
#: pages just read and counts them as hits). So the prepare phase faults at p-16 and p+17,
#: whose read-arounds cache [p-32, p-1] and [p+1, p+32]; the random fault at p then finds
#: all its neighbours cached and reads exactly one 4 KiB page. 64 keeps slots apart.
RND_SPACING = 64
CMDLINE = "console=ttyS0 reboot=t panic=1 root=/dev/vda rw"
RUN_TIMEOUT = 420  # one boot with its workload
STALL_TIMEOUT = 150  # no console output and no progress for this long: the run is stuck

# The state page (.bss): magic[16] (written at start), go (set by the host), phase, count.
#   phase: 1 sequential, 2 prepare, 3 random, 4 done; count: faults in the phase.
INIT_SOURCE = r"""
    .globl _start
    .text
_start:
    lea state(%rip), %rdi
    movabs $MAGIC0_INV, %rax
    not %rax
    mov %rax, 0(%rdi)
    movabs $MAGIC1_INV, %rax
    not %rax
    mov %rax, 8(%rdi)
wait_go:                          # until the host has found this page and polls it
    pause
    cmpq $0, 16(%rdi)
    je wait_go

    # phase 1: every page of the sequential region, in order
    movq $1, 24(%rdi)
    lea seq_region(%rip), %rsi
    xor %rcx, %rcx
1:  movb (%rsi), %al
    add $4096, %rsi
    inc %rcx
    mov %rcx, 32(%rdi)
    cmp $SEQ_PAGES, %rcx
    jb 1b

    # phase 2: for each slot the random phase will read, fault p-16 and p+17
    movq $0, 32(%rdi)
    movq $2, 24(%rdi)
    lea rnd_region(%rip), %rsi
    xor %rcx, %rcx
    mov $12345, %rbx
2:  call next_slot
    movb -16 * 4096(%rsi,%rdx), %al
    movb 17 * 4096(%rsi,%rdx), %al
    inc %rcx
    mov %rcx, 32(%rdi)
    cmp $RANDOM_PAGES, %rcx
    jb 2b

    # phase 3: the first page of RANDOM_PAGES distinct slots, in the same pseudo-random order
    movq $0, 32(%rdi)
    movq $3, 24(%rdi)
    xor %rcx, %rcx
    mov $12345, %rbx
3:  call next_slot
    movb (%rsi,%rdx), %al
    inc %rcx
    mov %rcx, 32(%rdi)
    cmp $RANDOM_PAGES, %rcx
    jb 3b

    # done: tell the host, then die (ud2): the kernel panics, panic=1 reboot=t ends the VM
    movq $4, 24(%rdi)
    mov $20000000, %rcx
4:  pause
    dec %rcx
    jnz 4b
    ud2

next_slot:                        # rbx = (a*rbx + c) mod RND_SLOTS (full period); rdx = offset
    imul $1664525, %rbx, %rbx
    add $1013904223, %rbx
    and $(RND_SLOTS - 1), %rbx
    imul $(RND_SPACING * 4096), %rbx, %rdx
    ret

    .section .rodata
    .balign 4096
seq_region:
    .fill SEQ_PAGES * 1024, 4, 0x5eb0da7a
    .fill RND_SPACING * 1024, 4, 0x3c3c3c3c   # room for slot 0's p-16
    .balign 4096
rnd_region:
    .fill RND_SLOTS * RND_SPACING * 1024, 4, 0x7a4d0b1c
    .fill RND_SPACING * 1024, 4, 0x3c3c3c3c
    .balign 4096

    .bss
    .balign 4096
state:
    .skip 4096
"""


# ------------------------------------------------------------------------------------------ setup
@dataclass
class Workload:
    seq_mib: int
    write_mib: int
    random_pages: int
    magic: bytes = field(default_factory=lambda: secrets.token_bytes(16))

    def describe(self) -> list[str]:
        return [
            f"sequential write: jbd2 journal replay at mount writes {self.write_mib} MiB to consecutive blocks; "
            "timed from the VMM's first to its last write to the image (the kernel writes back ~1 MiB requests "
            "while it replays, so the replay work between them counts)",
            f"sequential read : /sbin/init faults in {self.seq_mib} MiB of its ELF file in order (page-fault readahead)",
            f"random read     : /sbin/init faults in the first page of {self.random_pages} of {RND_SLOTS} "
            f"{RND_SPACING * PAGE // 1024} KiB slots of its file ({RND_SLOTS * RND_SPACING * PAGE // MIB} MiB), "
            "in a pseudo-random order, after a prepare pass has cached the pages around each: every fault is one "
            "synchronous 4 KiB disk read (queue depth 1)",
        ]


def build_image(work: Workload, d: Path) -> Path:
    """The pristine image: ext4, /sbin/init (the workload), /home.dat (the replay target),
    and a journal that replays ``write_mib`` MiB onto /home.dat's blocks at mount."""
    inv = [(~int.from_bytes(work.magic[i:i + 8], "little")) & (2**64 - 1) for i in (0, 8)]
    init = assemble(INIT_SOURCE, d / "build/init", defsyms={
        "MAGIC0_INV": inv[0], "MAGIC1_INV": inv[1], "SEQ_PAGES": work.seq_mib * MIB // PAGE,
        "RND_SLOTS": RND_SLOTS, "RND_SPACING": RND_SPACING, "RANDOM_PAGES": work.random_pages,
    })
    root = make_rootdir(d / "root", init)
    home = root / "home.dat"
    with open(home, "wb") as f:
        f.write(b"\x11" * (work.write_mib * MIB))
    init_mib = init.stat().st_size // MIB + 1
    journal_mib = max(4, work.write_mib + work.write_mib // 8 + 2)
    size_mib = init_mib + work.write_mib + journal_mib + 32
    img = make_ext4(d / "pristine.img", root, f"{size_mib}M", "-b", "4096", "-O", "^metadata_csum",
                    "-J", f"size={journal_mib}", "-E", "lazy_itable_init=0,lazy_journal_init=0")
    # the home blocks of /home.dat, then a journal transaction that rewrites them
    stat = subprocess.run([tool("debugfs"), "-R", "stat /home.dat", str(img)], capture_output=True, text=True, check=True)
    extents = re.findall(r"\((\d+)(?:-(\d+))?\):(\d+)(?:-(\d+))?", stat.stdout)
    ranges = [f"{a}-{b or a}" for _, _, a, b in extents]
    payload = d / "payload"
    with open(payload, "wb") as f:
        f.write(b"\x22" * (work.write_mib * MIB))
    script = f"jo\njw -b {','.join(ranges)} {payload}\njc\n"
    r = subprocess.run([tool("debugfs"), "-w", "-f", "-", str(img)], input=script, capture_output=True, text=True)
    sb = subprocess.run([tool("dumpe2fs"), "-h", str(img)], capture_output=True, text=True).stdout
    if r.returncode != 0 or "needs_recovery" not in sb:
        sys.exit(f"could not write the journal transaction with debugfs:\n{r.stdout}{r.stderr}")
    payload.unlink()
    return img


# ------------------------------------------------------------------------------------------ probing
def io_counters(pid: int) -> tuple[int, int] | None:
    try:
        with open(f"/proc/{pid}/io") as f:
            v = dict(line.split(": ") for line in f.read().splitlines())
        return int(v["rchar"]), int(v["wchar"])
    except (OSError, ValueError, KeyError):
        return None


def find_magic(pid: int, magic: bytes, min_size: int) -> int | None:
    """The host virtual address of ``magic`` in the VMM's big anonymous mappings (guest RAM)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
    except OSError:
        return None
    with mem:
        for line in maps:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if hi - lo < min_size or not parts[1].startswith("rw") or (len(parts) > 5 and not parts[5].startswith("[anon")):
                continue
            chunk = 16 * MIB
            for base in range(lo, hi, chunk):
                try:
                    mem.seek(base)
                    data = mem.read(min(chunk, hi - base))
                except OSError:
                    continue
                i = data.find(magic)
                while i >= 0:
                    if i % PAGE == 0:
                        return base + i
                    i = data.find(magic, i + 1)
    return None


@dataclass
class Sample:
    t: float
    rchar: int
    wchar: int
    console: int  # stdout + stderr bytes the VMM had written (as received)
    phase: int
    count: int


class Probe(threading.Thread):
    """Polls the VMM's I/O counters and (once found) init's state page, every ``interval``."""

    def __init__(self, session: ConsoleSession, work: Workload, interval: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.s = session
        self.work = work
        self.interval = interval
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self.state_addr: int | None = None
        self.error = ""

    def run(self) -> None:
        pid = self.s.proc.pid
        mem = None
        searching_since: float | None = None
        while not self.stop.is_set():
            c = io_counters(pid)
            if c is None:
                return
            phase = count = 0
            if self.state_addr is None and b"Run /sbin/init" in self.s.out:
                searching_since = searching_since or time.monotonic()
                self.state_addr = find_magic(pid, self.work.magic, (GUEST_MEM_MIB - 8) * MIB)
                if self.state_addr is not None:
                    mem = open(f"/proc/{pid}/mem", "r+b", buffering=0)
                    mem.seek(self.state_addr + 16)
                    mem.write((1).to_bytes(8, "little"))  # go
                elif time.monotonic() - searching_since > 60:
                    self.error = "init's state page never showed up in guest RAM"
                    return
                else:
                    time.sleep(0.2)
                continue
            if mem is not None:
                try:
                    mem.seek(self.state_addr + 24)
                    raw = mem.read(16)
                    phase, count = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
                except OSError:
                    return
            self.samples.append(Sample(time.monotonic(), c[0], c[1], len(self.s.out) + len(self.s.err), phase, count))
            time.sleep(self.interval)
        if mem is not None:
            mem.close()


# ------------------------------------------------------------------------------------------ one run
@dataclass
class Result:
    ok: bool
    note: str = ""
    retry: bool = True  # for a failed run: worth another try (it ended by itself)
    write_s: float = 0.0
    write_bytes: int = 0
    seq_s: float = 0.0
    seq_read_bytes: int = 0
    prep_s: float = 0.0
    prep_read_bytes: int = 0
    rand_s: float = 0.0
    rand_read_bytes: int = 0
    boot_s: float = 0.0
    samples: list[Sample] = field(default_factory=list, repr=False)

    def figures(self, work: Workload) -> dict[str, float]:
        return {
            "seq write MiB/s": self.write_bytes / MIB / self.write_s if self.write_s else float("nan"),
            "seq read MiB/s": work.seq_mib / self.seq_s if self.seq_s else float("nan"),
            "4K rand read IOPS": work.random_pages / self.rand_s if self.rand_s else float("nan"),
        }


def run_once(name: str, cmd: list[str], work: Workload) -> Result:
    s = ConsoleSession(cmd, timeout=RUN_TIMEOUT)
    probe = Probe(s, work)
    probe.start()
    last_len, last_change = 0, time.monotonic()
    try:
        while s.proc.poll() is None:
            time.sleep(0.5)
            err = s.errtext
            if "emulation failure" in err or "KVM internal error" in err:
                time.sleep(1.0)  # let the register dump arrive
                return Result(False, _emulation_failure(s.errtext, s.text))
            progress = len(s.out) + (probe.samples[-1].count if probe.samples else 0)
            if progress != last_len:
                last_len, last_change = progress, time.monotonic()
            elif time.monotonic() - last_change > STALL_TIMEOUT:
                return Result(False, f"no progress for {STALL_TIMEOUT} s (last console line: {_last_line(s.text)!r})",
                              retry=False)
            if time.monotonic() > s.deadline:
                return Result(False, f"did not finish in {RUN_TIMEOUT} s", retry=False)
    finally:
        probe.stop.set()
        probe.join(timeout=5)
        s.close()
    status = s.proc.returncode
    if status != 0:  # the guest ends with a reset, which --no-reboot / -no-reboot turn into status 0
        res = Result(False, str(failure(f"the VMM ended early (last console line {_last_line(s.text)!r})",
                                        status, s.errtext, s.text)))
    elif probe.error:
        res = Result(False, probe.error)
    else:
        res = analyse(s, probe.samples, work)
    res.samples = probe.samples
    return res


INSTRUCTIONS = {"cc": "INT3", "9b": "FWAIT", "0f 01 ca": "CLAC", "0f 01 cb": "STAC", "0f ae": "XSAVE/XRSTOR family"}


def _emulation_failure(err: str, out: str) -> str:
    """'emulation failure at INT3 (RIP ...), after guest time N s' from QEMU's dump."""
    what = "emulation failure (KVM_EXIT_INTERNAL_ERROR)"
    code = re.search(r"Code=.*<([0-9a-f]{2})> ((?:[0-9a-f]{2} ?){0,2})", err)
    if code:
        first = code.group(1)
        seq = (first + " " + code.group(2)).strip()
        name = next((n for b, n in INSTRUCTIONS.items() if seq.startswith(b)), f"opcode {first}")
        what += f" at {name}"
    rip = re.search(r"RIP=([0-9a-f]+)", err)
    if rip:
        what += f" (RIP {rip.group(1)})"
    stamps = re.findall(r"^\[\s*(\d+\.\d+)\]", out, re.M)
    if stamps:
        what += f", guest kernel time {float(stamps[-1]):.1f} s"
    return what


def _last_line(text: str) -> str:
    lines = [l for l in text.splitlines() if l.strip()]
    return lines[-1].strip() if lines else ""


#: Console bytes the VMM wrote but we had not received yet at a poll, at most: a change of
#: the write counter smaller than this is not disk I/O.
CONSOLE_SLACK = 512


def _active(samples: list[Sample], value) -> tuple[float, float, int]:
    """From the poll before the first change of ``value`` (beyond console slack) to the poll
    that saw the last one: (start, end, total change)."""
    first = last = None
    for i in range(1, len(samples)):
        if value(samples[i]) - value(samples[i - 1]) > CONSOLE_SLACK:
            first = i - 1 if first is None else first
            last = i
    if first is None or last is None:
        return 0.0, 0.0, 0
    return samples[first].t, samples[last].t, value(samples[last]) - value(samples[first])


def analyse(s: ConsoleSession, samples: list[Sample], work: Workload) -> Result:
    out = s.text
    if "recovery complete" not in out:
        return Result(False, f"the kernel did not replay the journal (last line {_last_line(out)!r})")
    phases = {p: [x for x in samples if x.phase == p] for p in (1, 2, 3, 4)}
    if not all(phases.values()):
        return Result(False, f"init did not finish its phases (last line {_last_line(out)!r})")
    res = Result(True)
    # sequential write: the mount window, between the disk's size line and the root mount
    t_disk, t_root = s.arrival(b"[vda]"), s.arrival(b"VFS: Mounted root")
    mount = [x for x in samples if t_disk is not None and t_root is not None and t_disk <= x.t <= t_root]
    if len(mount) >= 2:
        disk_w = lambda x: x.wchar - x.console  # noqa: E731  console output is written too
        a, b, res.write_bytes = _active(mount, disk_w)
        res.write_s = b - a
    # reads: phase boundaries are the first polls that saw each phase
    start = lambda p: phases[p][0]  # noqa: E731
    res.seq_s = start(2).t - start(1).t
    res.seq_read_bytes = start(2).rchar - start(1).rchar
    res.prep_s = start(3).t - start(2).t
    res.prep_read_bytes = start(3).rchar - start(2).rchar
    res.rand_s = start(4).t - start(3).t
    res.rand_read_bytes = start(4).rchar - start(3).rchar
    res.boot_s = start(1).t - s.start
    return res


# ------------------------------------------------------------------------------------------ main
def copy_sparse(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)


def write_trace(path: Path, samples: list[Sample]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("t,rchar,wchar,console,phase,count\n")
        t0 = samples[0].t if samples else 0.0
        for x in samples:
            f.write(f"{x.t - t0:.4f},{x.rchar},{x.wchar},{x.console},{x.phase},{x.count}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--rounds", type=int, default=1, help="rounds; each boots microvm, then QEMU (default 1)")
    ap.add_argument("--seq-mib", type=int, default=16, help="sequential read size (default 16)")
    ap.add_argument("--write-mib", type=int, default=8, help="journal replay size (default 8)")
    ap.add_argument("--random", type=int, default=100, help=f"random 4 KiB reads, at most {RND_SLOTS} (default 100)")
    ap.add_argument("--only", choices=("microvm", "qemu"), help="run one VMM only")
    ap.add_argument("--tries", "--qemu-tries", type=int, default=2, dest="tries",
                    help="tries per round and VMM when a run fails by itself, e.g. QEMU's emulation failures "
                         "(not a stall or the time limit; default 2)")
    ap.add_argument("--trace", metavar="DIR", help="write each run's samples (t, rchar, wchar, console, phase, count) as CSV")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("note: reading the VMM's guest RAM through /proc/PID/mem needs root or CAP_SYS_PTRACE", file=sys.stderr)
    missing = missing_tools("as", "ld", "mkfs.ext4", "debugfs", "dumpe2fs")
    if missing:
        sys.exit(f"needs binutils and e2fsprogs: {', '.join(missing)} not found")
    if not 0 < args.random <= RND_SLOTS:
        sys.exit(f"--random between 1 and {RND_SLOTS}")
    from microvm.guest import default_guest

    guest = default_guest(build=True, progress=lambda m: print(f"guest build: {m}", file=sys.stderr))
    qemu = (ensure_qemu() or sys.exit("qemu-system-x86_64 is not available")) if args.only != "microvm" else ""
    cpu = qemu_cpu_model(qemu) if qemu else None
    microvm = str(REPO / ".venv/bin/microvm")
    from microvm.machine import EMULATING_HOST_CMDLINE, host_is_emulating

    # what microvm adds by itself on an emulating host, given to both so the guests match
    cmdline = " ".join([CMDLINE, *(EMULATING_HOST_CMDLINE if host_is_emulating() else [])])
    work = Workload(args.seq_mib, args.write_mib, args.random)
    with tempfile.TemporaryDirectory(prefix="microvm-blk-bench-") as tmp:
        d = Path(tmp)
        pristine = build_image(work, d)
        img = d / "run.img"
        drive = f"id=d,file={img},format=raw,if=none"
        cmds = {
            "microvm": [microvm, "run", "--kernel", str(guest.vmlinux), "--append", cmdline,
                        "-m", f"{GUEST_MEM_MIB}M", "--drive", drive, "--device", "virtio-blk-device,drive=d",
                        "--no-reboot"],
            "qemu": [qemu, "-M", "microvm,acpi=off,x-option-roms=off", "-enable-kvm", *(cpu.args if cpu else []),
                     "-m", f"{GUEST_MEM_MIB}m", "-kernel", str(guest.vmlinux), "-append", cmdline,
                     "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
                     "-drive", drive, "-device", "virtio-blk-device,drive=d"],
        }
        if args.only:
            cmds = {args.only: cmds[args.only]}
        results: dict[str, list[Result]] = {k: [] for k in cmds}
        tallies = {k: Tally(k) for k in cmds}
        for rnd in range(args.rounds):
            order = list(cmds) if rnd % 2 == 0 else list(reversed(cmds))  # alternate who goes first
            for name in order:
                tries = iter(range(1, args.tries + 1))

                def one_run(name: str = name, rnd: int = rnd) -> Result:
                    """One boot; a failed one raises RunFailed, so attempt() counts it and it is never timed."""
                    try_no = next(tries)
                    copy_sparse(pristine, img)  # the same bytes every run, warm in the page cache
                    t0 = time.monotonic()
                    r = run_once(name, cmds[name], work)
                    status = "ok" if r.ok else f"FAILED: {first_line(r.note)}"
                    print(f"round {rnd + 1} {name:8s} try {try_no} {time.monotonic() - t0:6.1f} s wall  {status}",
                          file=sys.stderr)
                    if args.trace:
                        write_trace(Path(args.trace) / f"{name}-{rnd + 1}-{try_no}.csv", r.samples)
                    if not r.ok:
                        raise RunFailed(r.note, retry=r.retry)
                    f = r.figures(work)
                    print("    " + "   ".join(f"{k} {v:.2f}" for k, v in f.items())
                          + f"   (init started {r.boot_s:.1f} s after spawn)", file=sys.stderr)
                    return r

                r = attempt(tallies[name], one_run, args.tries)
                if r is not None:
                    results[name].append(r)
    report(work, results, tallies, cpu.line() if cpu else "")


def report(work: Workload, results: dict[str, list[Result]], tallies: dict[str, Tally], cpu_line: str) -> None:
    """Medians of the successful runs only (``results`` holds nothing else), then per VMM its
    failures and retries, and instead of a ratio why a VMM has none."""
    print()
    print(f"virtio-blk, default guest kernel, {GUEST_MEM_MIB} MiB, 1 vCPU; raw ext4 image in the host page cache.")
    print("The load is driven by the guest kernel (guest user mode cannot make system calls here):")
    for line in work.describe():
        print("  " + line)
    print("Medians over the runs that completed; 'VMM I/O' is what the VMM process itself read/wrote")
    print("(/proc/PID/io) in that phase. The guest kernel is emulated on this host: guest-CPU bound.")
    if cpu_line:
        print(cpu_line)
    print()
    keys = ["seq write MiB/s", "seq read MiB/s", "4K rand read IOPS"]
    med: dict[str, dict[str, float]] = {}
    for name, rs in results.items():
        if rs:
            med[name] = {k: statistics.median(r.figures(work)[k] for r in rs) for k in keys}
    header = f"  {'':20s}" + "".join(f"{n:>14s}" for n in results) + ("       ratio microvm/qemu" if len(results) == 2 else "")
    print(header)
    for k in keys:
        row = f"  {k:20s}"
        for name in results:
            row += f"{med[name][k]:14.2f}" if name in med else f"{'—':>14s}"
        if len(results) == 2:
            if "microvm" in med and "qemu" in med and med["qemu"][k]:
                row += f"       {med['microvm'][k] / med['qemu'][k]:.2f}x"
            else:
                row += "       n/a"
        print(row)
    for name, rs in results.items():
        if rs:
            r = rs[len(rs) // 2]
            print(f"  {name}: VMM I/O per phase: wrote {r.write_bytes / MIB:.1f} MiB during the mount "
                  f"(journal replay, {r.write_s:.2f} s), read {r.seq_read_bytes / MIB:.1f} MiB in the sequential phase "
                  f"({r.seq_s:.2f} s), {r.prep_read_bytes / MIB:.1f} MiB in the prepare pass ({r.prep_s:.2f} s), "
                  f"{r.rand_read_bytes / MIB:.2f} MiB in the random phase ({r.rand_s:.2f} s, "
                  f"{r.rand_read_bytes / PAGE / max(work.random_pages, 1):.2f} x 4 KiB per read)")
    for t in tallies.values():
        print(f"  {t.summary()}")
    if len(results) == 2 and len(med) < 2:
        print("  no ratio: " + "; ".join(tallies[k].why_no_ratio() for k in results if k not in med))


if __name__ == "__main__":
    main()
