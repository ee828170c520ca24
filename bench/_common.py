"""What the benchmark scripts share: QEMU to compare against (and the ``-cpu`` model it can run
with on this host), the test guests, and one way to run a VMM, check it and count what failed.

A ratio between two VMMs only means something when every timed run did what it should. So a
run that ends with the wrong exit status or without its output marker is never timed: the
helpers here raise :class:`RunFailed` instead of returning a time, :func:`attempt` counts the
failure (and retries it, a bounded number of times: QEMU stops now and then on an emulating
host KVM, docs/emulating-hosts.md), and :class:`Tally` prints per VMM how many runs failed, why (the first line
of each reason) and how many retries were needed, or that no run of a VMM succeeded at all.
"""
from __future__ import annotations

import functools
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

REPO = Path(__file__).resolve().parent.parent
GUESTS = REPO / "tests/guests"

T = TypeVar("T")


def ensure_qemu() -> str | None:
    """Debian's qemu-system-x86_64, installed when missing; None if that fails."""
    q = shutil.which("qemu-system-x86_64")
    if q:
        return q
    print("installing Debian's qemu-system-x86 ...", file=sys.stderr)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "qemu-system-x86"], check=True, stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"could not install qemu-system-x86: {e}", file=sys.stderr)
        return None
    return shutil.which("qemu-system-x86_64")


def assemble(tmp: Path, source: str, name: str | None = None, defsyms: tuple[str, ...] = ()) -> Path:
    """Build ``tests/guests/SOURCE.S`` into a PVH ELF ``tmp/NAME.elf``."""
    name = name or source
    obj, elf = tmp / f"{name}.o", tmp / f"{name}.elf"
    syms = [a for d in defsyms for a in ("--defsym", d)]
    subprocess.run(["as", "--64", *syms, "-I", str(GUESTS), str(GUESTS / f"{source}.S"), "-o", str(obj)], check=True)
    subprocess.run(["ld", "-Ttext=0x100000", str(obj), "-o", str(elf)], check=True)
    return elf


# ------------------------------------------------------------------------------ failed runs
class RunFailed(RuntimeError):
    """A VMM run that did not do what the benchmark expects: it must not be timed.

    The message's first line is the reason a report prints (see :func:`failure`). ``retry`` is
    False for failures not worth another try, e.g. a run that used up its whole time budget.
    """

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


def status_text(status: int | None) -> str:
    """A Popen return code as a person reads it: a signal by name, with the shell's number
    (QEMU's abort shows up as 'status 134' in a shell but as -6 from Popen)."""
    if status is None:
        return "still running"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"killed by {name} (status {128 - status} in a shell)"
    return f"exit status {status}"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def failure(why: str, status: int | None = None, stderr: bytes | str = b"", output: bytes | str = b"",
            retry: bool = True) -> RunFailed:
    """A :class:`RunFailed` whose first line is what a report shows: ``why``, the exit status
    and the first line the VMM wrote on stderr (where QEMU says what went wrong); the tails of
    its stderr and output follow on further lines for whoever prints the whole message."""
    err = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    out = output.decode(errors="replace") if isinstance(output, bytes) else output
    head = why + (f", {status_text(status)}" if status is not None else "")
    first = _first_line(err)
    if first:
        head += f": {first}"
    tail = [f"stderr: {err.strip()[-600:]}"] if err.strip() else []
    tail += [f"output: {out[-200:]!r}"]
    return RunFailed("\n".join([head, *tail]), retry)


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


#: What QEMU (and microvm) print on stderr when the host KVM could not emulate a guest
#: instruction (docs/emulating-hosts.md: INT3, FWAIT, ...). QEMU then stays paused instead of exiting.
EMULATION_FAILURE = ("KVM internal error", "emulation failure")


def emulation_failed(stderr: bytes | str) -> bool:
    """True when the VMM reported an emulation failure: the run is over, and worth a retry."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    return any(m in text for m in EMULATION_FAILURE)


def first_line(e: BaseException | str) -> str:
    """The reason a report prints for a failed run."""
    return _first_line(str(e)) or type(e).__name__


@dataclass
class Tally:
    """One VMM's runs in one benchmark: how many succeeded, which failed and why, retries.

    A failed run is never timed; it stays visible here instead. ``given_up`` counts the runs
    whose every try failed, i.e. the samples the medians lack.
    """

    name: str
    succeeded: int = 0
    failures: list[str] = field(default_factory=list)
    retries: int = 0
    given_up: int = 0

    @property
    def all_failed(self) -> bool:
        """True when this VMM has failures and not one successful run: no median, no ratio."""
        return self.succeeded == 0 and bool(self.failures)

    def why_no_ratio(self) -> str:
        """What to print instead of a ratio when this VMM has no timed run to take a median of."""
        if self.all_failed:
            return f"all {len(self.failures)} runs of {self.name} failed ({self.reasons()})"
        if self.failures:  # e.g. its warm-up ran, then every timed run failed
            return f"no timed run of {self.name} succeeded ({self.reasons()})"
        return f"{self.name} was not run"

    def reasons(self) -> str:
        """The distinct first lines of the failures, most frequent first, with their counts."""
        counts = Counter(first_line(f) for f in self.failures)
        return "; ".join(f"{n}x {why}" if n > 1 else why for why, n in counts.most_common())

    def summary(self) -> str:
        """One line for the report, also when nothing failed (so 'no failures' is explicit)."""
        if not self.failures:
            return f"{self.name}: {_n(self.succeeded, 'run')}, none failed, no retries"
        return (f"{self.name}: {_n(self.succeeded, 'run')} succeeded; {len(self.failures)} failed and were not timed "
                f"({_n(self.retries, 'retry', 'retries')} needed, {_n(self.given_up, 'run')} given up after "
                f"every try failed); why: {self.reasons()}")


def attempt(tally: Tally, run: Callable[[], T], tries: int,
            on_failure: Callable[[RunFailed, int], None] | None = None) -> T | None:
    """``run()`` up to ``tries`` times until it returns; None when every try failed.

    Each :class:`RunFailed` is counted in ``tally`` and never returned, so a caller only ever
    times what succeeded. A failure with ``retry=False`` is not tried again. ``on_failure``
    (the exception, the try number from 1) lets a script log the failure as it happens.
    """
    for n in range(1, max(1, tries) + 1):
        try:
            value = run()
        except RunFailed as e:
            tally.failures.append(str(e))
            if on_failure is not None:
                on_failure(e, n)
            if n < tries and e.retry:
                tally.retries += 1
                continue
            tally.given_up += 1
            return None
        tally.succeeded += 1
        return value
    return None  # not reached: the loop returns


# --------------------------------------------------------------------- spawn, check, time
@dataclass
class Run:
    """A run that succeeded: exit status as expected and its marker on stdout."""

    seconds: float  # from spawn to exit (reaped)
    maxrss_kib: int  # peak resident set size, from wait4's rusage
    output: bytes
    stderr: bytes


def run_checked(cmd: list[str], marker: bytes, timeout: float, expect_status: int = 0) -> Run:
    """Spawn ``cmd``, read its stdout until it ends, reap it with wait4; the wall time from
    spawn to exit only when it exited with ``expect_status`` and printed ``marker``.

    Raises :class:`RunFailed` otherwise, so that a failed run never yields a time. QEMU pauses
    instead of exiting after an emulation failure: one seen on stderr ends the run at once (a
    failure worth retrying); a run still going after ``timeout`` seconds for another reason is
    killed, a failure not worth retrying.
    """
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        deadline = time.monotonic() + timeout
        out = bytearray()
        timed_out = stopped = False
        fd = p.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                p.kill()
                break
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                out += chunk
            elif emulation_failed(os.pread(err.fileno(), 1 << 16, 0)):
                stopped = True
                time.sleep(0.2)  # the register dump follows the message
                p.kill()
                break
        _, wstatus, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(wstatus)  # reaped here: keep Popen from waiting again
        p.stdout.close()
        err.seek(0)
        stderr = err.read()
    if stopped:
        raise failure("emulation failure, the VMM stopped (killed)", None, stderr, bytes(out))
    if timed_out:
        raise failure(f"did not exit within {timeout:g} s (killed)", None, stderr, bytes(out), retry=False)
    if p.returncode != expect_status:
        raise failure(f"{status_text(p.returncode)} (expected {expect_status})", None, stderr, bytes(out))
    if marker not in out:
        raise failure(f"no {marker.decode(errors='replace')!r} on the console", p.returncode, stderr, bytes(out))
    return Run(dt, ru.ru_maxrss, bytes(out), stderr)


# -------------------------------------------------------------------- QEMU's CPU model here
@dataclass(frozen=True)
class CpuModel:
    """The ``-cpu`` value every QEMU run of a benchmark uses, and why (printed with the results)."""

    model: str
    why: str

    @property
    def args(self) -> list[str]:
        return ["-cpu", self.model]

    def line(self) -> str:
        return f"QEMU runs with -cpu {self.model}: {self.why}"


#: Used when plain ``host`` fails the probe. Debian's QEMU 7.2 with plain ``host`` aborts on the AMD EPYC machines here
#: ("failed to set MSR 0x10a to 0x69", then an assertion in kvm_buf_set_msrs): MSR 0x10a is
#: IA32_ARCH_CAPABILITIES, which the host KVM refuses; without that feature QEMU does not set it.
CPU_FALLBACK = "host,-arch-capabilities"
PROBE_TIMEOUT = 30.0


@functools.lru_cache(maxsize=None)
def qemu_cpu_model(qemu: str) -> CpuModel:
    """Probe once per process which ``-cpu`` QEMU can run the tiny PVH guest with.

    Plain ``host`` is what the benchmarks want (the same CPU microvm gives its guest). When it
    dies (the AMD abort above) or prints no HELLO, ``host,-arch-capabilities`` is checked the
    same way and used. When neither runs, ``host`` stays, the runs fail and are reported.
    """
    with tempfile.TemporaryDirectory(prefix="microvm-bench-cpu-") as d:
        elf = assemble(Path(d), "hello-pvh", "cpu-probe")

        def probe(model: str) -> str | None:
            cmd = [qemu, "-M", "microvm,x-option-roms=off,rtc=off,pit=off,pic=off", "-enable-kvm", "-cpu", model,
                   "-m", "128m", "-kernel", str(elf), "-nodefaults", "-no-user-config", "-nographic",
                   "-serial", "stdio", "-no-reboot"]
            try:
                run_checked(cmd, b"HELLO", PROBE_TIMEOUT)
            except RunFailed as e:
                return first_line(e)
            return None

        plain = probe("host")
        if plain is None:
            return CpuModel("host", "plain -cpu host ran the probe guest (tests/guests/hello-pvh.S)")
        fallback = probe(CPU_FALLBACK)
        if fallback is None:
            return CpuModel(CPU_FALLBACK, f"plain -cpu host failed the probe guest ({plain}); "
                                          f"-cpu {CPU_FALLBACK} ran it")
        return CpuModel("host", f"neither -cpu host ({plain}) nor -cpu {CPU_FALLBACK} ({fallback}) ran the probe "
                                "guest; QEMU's runs will fail and be reported")
