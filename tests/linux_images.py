"""Disk images and a serial-console driver for the Linux guests of the block tests and bench.

Guest user mode cannot make system calls on an emulating host (docs/emulating-hosts.md), so the guest's
``/sbin/init`` is a static binary that never makes one: :func:`build_spin_init` is ``jmp .``,
which keeps the kernel alive. :func:`make_ext4` builds an image with ``mkfs.ext4 -d``.
:class:`ConsoleSession` runs a VMM with the guest's console on its stdio, collects the
output in a thread, lets the caller wait for markers and type input (``C-a b`` + key is a
Magic SysRq on the 16550), and kills the VMM on an overall deadline.

:func:`make_initramfs` puts the same ``/init`` in an uncompressed initramfs.

Used by ``tests/test_linux_blk.py``, ``tests/test_linux_net.py``, ``bench/blk.py`` and
``bench/net.py``; no pytest import here.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

#: ``C-a b`` on the stdio chardev (microvm and QEMU's -nographic mux): a BREAK on the
#: 16550; with ``sysrq_always_enabled`` the next key is a Magic SysRq command.
SYSRQ = b"\x01b"


def missing_tools(*tools: str) -> list[str]:
    """The host tools among ``tools`` that are not on PATH (``/sbin`` included)."""
    path = os.environ.get("PATH", "") + ":/sbin:/usr/sbin"
    return [t for t in tools if shutil.which(t, path=path) is None]


def tool(name: str) -> str:
    path = os.environ.get("PATH", "") + ":/sbin:/usr/sbin"
    found = shutil.which(name, path=path)
    if found is None:
        raise FileNotFoundError(f"{name} not found")
    return found


def assemble(source: str, out: Path, *, defsyms: dict[str, int] | None = None, ld_args: Sequence[str] = ()) -> Path:
    """Assemble ``source`` (x86-64 GNU as) and link it static into the ELF ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_suffix(".S")
    obj = out.with_suffix(".o")
    src.write_text(source)
    syms = [a for k, v in (defsyms or {}).items() for a in ("--defsym", f"{k}={v}")]
    subprocess.run([tool("as"), "--64", *syms, str(src), "-o", str(obj)], check=True, capture_output=True)
    subprocess.run([tool("ld"), "-static", *ld_args, str(obj), "-o", str(out)], check=True, capture_output=True)
    src.unlink()
    obj.unlink()
    return out


SPIN_INIT = ".globl _start\n_start: jmp _start\n"


def build_spin_init(out: Path) -> Path:
    """A static ``/sbin/init`` whose entry is ``jmp .``: no system calls, the kernel stays up."""
    return assemble(SPIN_INIT, out)


def make_rootdir(root: Path, init: Path) -> Path:
    """A minimal root: ``/sbin/init`` (a copy of ``init``) and the usual mount points."""
    for d in ("sbin", "dev", "proc", "sys", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(init, root / "sbin/init")
    os.chmod(root / "sbin/init", 0o755)
    return root


def make_initramfs(out: Path, init: Path) -> Path:
    """An uncompressed newc cpio (what the kernel unpacks fastest; gzip costs ~30 s on an
    emulating host) holding ``/init`` (a copy of ``init``), ``/dev/console`` and the usual
    mount points."""
    from microvm.guest.build import CpioWriter

    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        w = CpioWriter(f)
        for d in ("dev", "proc", "sys", "tmp"):
            w.add_dir(d)
        w.add_chardev("dev/console", 5, 1, 0o600)
        w.add_file("init", init.read_bytes(), 0o755)
        w.close()
    return out


def make_ext4(image: Path, rootdir: Path, size: str, *extra: str) -> Path:
    """``mkfs.ext4 -q -F -d rootdir [extra...] image size`` (the file is created or truncated)."""
    if image.exists():
        image.unlink()
    subprocess.run([tool("mkfs.ext4"), "-q", "-F", *extra, "-d", str(rootdir), str(image), size],
                   check=True, capture_output=True)
    return image


def superblock(image: Path) -> dict[str, str]:
    """``dumpe2fs -h`` as a dict (field name → value)."""
    r = subprocess.run([tool("dumpe2fs"), "-h", str(image)], capture_output=True, text=True, check=True)
    fields: dict[str, str] = {}
    for line in r.stdout.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            fields[k.strip()] = v.strip()
    return fields


class ConsoleSession:
    """A VMM process with the guest console on its stdio.

    A thread reads stdout (and another stderr) as it comes, with the host arrival time of
    each chunk; :meth:`wait_for` blocks until a marker has appeared (or the process ended,
    or the deadline passed), :meth:`send` writes to its stdin. Everything ends by
    :attr:`deadline` (monotonic): :meth:`wait_for` gives up then and :meth:`close` kills.
    """

    def __init__(self, cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None) -> None:
        self.cmd = list(cmd)
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        self.out = bytearray()
        self.err = bytearray()
        self.chunks: list[tuple[float, int]] = []  # (arrival time, stdout length after it)
        self.timed_out = False
        self._out_eof = False
        self._cond = threading.Condition()
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=e, start_new_session=True, cwd=cwd)
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out, True), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err, False), daemon=True),
        ]
        for t in self._threads:
            t.start()

    # -- reading ------------------------------------------------------------------------
    def _pump(self, stream, buf: bytearray, record: bool) -> None:
        fd = stream.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            with self._cond:
                if data:
                    buf += data
                    if record:
                        self.chunks.append((time.monotonic(), len(buf)))
                elif record:
                    self._out_eof = True
                self._cond.notify_all()
            if not data:
                return

    @property
    def text(self) -> str:
        with self._cond:
            return self.out.decode(errors="replace")

    @property
    def errtext(self) -> str:
        with self._cond:
            return self.err.decode(errors="replace")

    def arrival(self, marker: bytes) -> float | None:
        """Host monotonic time at which ``marker`` had fully arrived on stdout, or None."""
        with self._cond:
            i = self.out.find(marker)
            if i < 0:
                return None
            end = i + len(marker)
            for t, n in self.chunks:
                if n >= end:
                    return t
        return None

    def wait_for(self, marker: bytes | str, timeout: float | None = None) -> bool:
        """Block until ``marker`` is in the output; False when the process ended or the
        (overall or given) deadline passed first."""
        if isinstance(marker, str):
            marker = marker.encode()
        end = self.deadline if timeout is None else min(self.deadline, time.monotonic() + timeout)
        with self._cond:
            while marker not in self.out:
                if self._out_eof:  # the VMM closed its stdout: it has ended
                    return False
                left = end - time.monotonic()
                if left <= 0:
                    if time.monotonic() >= self.deadline:
                        self.timed_out = True
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    # -- writing ------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def sysrq(self, key: str, settle: float = 0.5) -> None:
        """``C-a b`` then ``key``: the 16550 BREAK, then the SysRq command key."""
        self.send(SYSRQ)
        time.sleep(settle)  # let the break reach the guest before the key
        self.send(key.encode())

    def wait_quiet(self, period: float, timeout: float = 60) -> bool:
        """Block until stdout has been silent for ``period`` seconds (False on timeout or exit)."""
        end = min(self.deadline, time.monotonic() + timeout)
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            with self._cond:
                last = self.chunks[-1][0] if self.chunks else self.start
            if time.monotonic() - last >= period:
                return True
            time.sleep(0.1)
        return False

    def sysrq_until(self, key: str, marker: bytes | str | None, *, tries: int = 3, wait: float = 30,
                    quiet: float = 2.0) -> bool:
        """Send SysRq ``key`` until ``marker`` appears (``None``: until the VMM exits).

        Linux 6.1 loses a BREAK that arrives while it is writing to the console: its
        console write polls LSR through serial_lsr_in(), which is meant to keep LSR.BI for
        the receive path, but the legacy ISA ports (COM1 without ACPI/PNP) never get an
        lsr_save_mask, so BI is dropped and the break reaches the tty as a plain NUL. So:
        wait for a quiet console before the break, and retry."""
        if isinstance(marker, str):
            marker = marker.encode()
        for _ in range(tries):
            self.wait_quiet(quiet, timeout=wait)
            if self.proc.poll() is not None:
                return marker is None
            self.sysrq(key)
            if marker is None:
                if self.wait(timeout=wait) is not None:
                    return True
            elif self.wait_for(marker, timeout=wait):
                return True
        return False

    # -- ending -------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the process to exit (up to the deadline); its status, or None."""
        left = self.deadline - time.monotonic() if timeout is None else min(timeout, self.deadline - time.monotonic())
        try:
            return self.proc.wait(timeout=max(left, 0))
        except subprocess.TimeoutExpired:
            self.timed_out = self.timed_out or time.monotonic() >= self.deadline
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # our own session: the VMM and its children
            except ProcessLookupError:
                pass
            self.proc.wait()

    def close(self) -> int:
        """Kill the process if it still runs, join the readers; the exit status."""
        self.kill()
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass
        for t in self._threads:
            t.join(timeout=5)
        return self.proc.returncode

    def __enter__(self) -> "ConsoleSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tail(self, n: int = 3000, err_skip: str = "pio bus: ") -> str:
        """The last ``n`` characters of stdout and stderr (without the lines containing
        ``err_skip``: -vv logs the first access to each unmapped port), for assertion messages."""
        status = self.proc.poll()
        err = "\n".join(line for line in self.errtext.splitlines() if not (err_skip and err_skip in line))
        return (f"\n--- status {status}{' (timed out)' if self.timed_out else ''}; "
                f"cmd: {' '.join(self.cmd)}\n--- stdout tail:\n{self.text[-n:]}\n--- stderr tail:\n{err[-n:]}")


# ------------------------------------------------------------------ network namespaces
class NetNamespace:
    """A network namespace made for one test or benchmark run (``ip netns add`` with a unique
    name, ``PREFIX-PID-HEX``), deleted by :meth:`delete` (or leaving the ``with`` block). Only
    192.0.2.0/24 (TEST-NET-1) addresses are used inside it; the host's own network is never
    touched.

    Cleaning up does not depend on the test going well. :meth:`delete` ends the processes
    still inside the namespace (they can only be this run's: the VMM, a ping), since a
    live process keeps the namespace and its taps alive after ``ip netns del``; the kernel
    then destroys the namespace and every interface in it, persistent taps included. A
    namespace of this kind whose creating process no longer exists (a test run that was
    killed) and that no process uses any more is deleted when the next one is made."""

    def __init__(self, prefix: str = "microvm") -> None:
        import secrets

        _sweep_stale(prefix)
        self.name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        subprocess.run([tool("ip"), "netns", "add", self.name], check=True, capture_output=True, text=True)
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([tool("ip"), "-n", self.name, *args], capture_output=True, text=True, check=check)

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace."""
        return [tool("ip"), "netns", "exec", self.name, *argv]

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*argv), capture_output=True, text=True, timeout=timeout)

    def exists(self, ifname: str) -> bool:
        return self.ip("link", "show", "dev", ifname, check=False).returncode == 0

    def wait_for_link(self, ifname: str, timeout: float, alive=lambda: True) -> bool:
        """Poll until interface ``ifname`` exists (False after ``timeout`` s or when
        ``alive()`` turns False: the process that should create it ended)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and alive():
            if self.exists(ifname):
                return True
            time.sleep(0.05)
        return self.exists(ifname)

    def host_side(self, ifname: str, address: str) -> None:
        """Give the host side of the tap ``address`` (CIDR) and bring it up."""
        self.ip("addr", "add", address, "dev", ifname)
        self.ip("link", "set", ifname, "up")

    def neighbour_mac(self, address: str, ifname: str) -> str | None:
        """The link-layer address the host learned for ``address`` (``ip neigh``), or None."""
        out = self.ip("neigh", "show", address, "dev", ifname, check=False).stdout.split()
        return out[out.index("lladdr") + 1] if "lladdr" in out else None

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """This thread in the namespace (taps and sockets belong to the namespace of the
        thread that makes them: an in-process Machine's tap), and back."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)
            os.close(target)

    def pids(self) -> list[int]:
        """The processes inside the namespace (``ip netns pids``)."""
        return netns_pids(self.name)

    def delete(self) -> None:
        """End what still runs inside (SIGKILL), then delete the namespace. Raises
        RuntimeError if it is still there afterwards (a leak must not pass unnoticed)."""
        end_processes(self.pids())
        subprocess.run([tool("ip"), "netns", "del", self.name], capture_output=True)
        if os.path.exists(f"/run/netns/{self.name}"):
            raise RuntimeError(f"network namespace {self.name} could not be deleted")

    def __enter__(self) -> "NetNamespace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()


def _setns(fd: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_pids(name: str) -> list[int]:
    r = subprocess.run([tool("ip"), "netns", "pids", name], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def end_processes(pids: list[int], timeout: float = 30) -> None:
    """SIGKILL each of ``pids`` and wait until they are gone (reaped by their parent or
    zombies of it: either way no longer holding a namespace or a tap open)."""
    pids = [pid for pid in pids if pid != os.getpid()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    end = time.monotonic() + timeout  # a hang guard
    for pid in pids:
        while time.monotonic() < end:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.01)


def _sweep_stale(prefix: str) -> None:
    """Delete the namespaces named ``PREFIX-PID-HEX`` whose creator PID is gone and that no
    process uses: what a killed test run left behind. A namespace still in use is left."""
    import re

    r = subprocess.run([tool("ip"), "netns", "list"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        name = line.split(" ", 1)[0]
        m = re.fullmatch(re.escape(prefix) + r"-(\d+)-[0-9a-f]{6}", name)
        if m is None or os.path.exists(f"/proc/{m.group(1)}") or netns_pids(name):
            continue
        subprocess.run([tool("ip"), "netns", "del", name], capture_output=True)
