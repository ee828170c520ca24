"""``-daemonize``, ``-pidfile`` and ``-name ...,process=``, as QEMU 7.2 does them
(``os-posix.c``: ``os_daemonize``, ``os_setup_post``; ``util/oslib-posix.c``:
``qemu_write_pidfile``).

-daemonize: the process forks; the parent waits on a pipe and exits 0 only when the daemon
reports that the machine is built (1 otherwise, after the daemon printed why on the still
shared stderr). The daemon starts a new session, forks once more so it can never reacquire a
terminal, and once ready changes to ``/`` and puts ``/dev/null`` on stdin, stdout and (unless
``-D`` keeps a log) stderr.

-pidfile: the file is opened, locked with ``lockf`` (a second VMM with the same pidfile is
refused: "Cannot lock pid file"), checked to still be the file at that path, truncated and
given ``PID\\n``; it is removed when the VMM exits.
"""
from __future__ import annotations

import os
import signal

from ..errors import ConfigError


class Daemon:
    """Fork now; the calling process continues as the daemon (its grandchild)."""

    def __init__(self) -> None:
        import sys

        for stream in (sys.stdout, sys.stderr):  # nothing buffered may be written twice
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        r, w = os.pipe()
        pid = os.fork()
        if pid > 0:  # the command the user ran: wait for the daemon's word
            os.close(w)
            while True:
                try:
                    status = os.read(r, 1)
                    break
                except InterruptedError:
                    continue
            os._exit(0 if status == b"\0" else 1)
        os.close(r)
        os.set_inheritable(w, False)
        self._pipe = w
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        os.umask(0o027)
        for sig in (signal.SIGTSTP, signal.SIGTTOU, signal.SIGTTIN):
            signal.signal(sig, signal.SIG_IGN)

    def ready(self, keep_stderr: bool = False) -> None:
        """The machine is built: detach from the terminal and let the parent exit 0."""
        os.chdir("/")
        fd = os.open(os.devnull, os.O_RDWR)
        os.dup2(fd, 0)
        os.dup2(fd, 1)
        if not keep_stderr:
            os.dup2(fd, 2)
        os.close(fd)
        try:
            os.write(self._pipe, b"\0")
        finally:
            os.close(self._pipe)
            self._pipe = -1


class PidFile:
    """``-pidfile PATH``: written and locked now, removed by :meth:`remove`."""

    def __init__(self, path: str) -> None:
        import fcntl

        # absolute: -daemonize changes to / before the removal; "" stays "" (abspath would
        # make it the working directory), which fails as QEMU's does: No such file or directory
        self.path = os.path.abspath(path) if path else path
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ConfigError(f"cannot create PID file: Could not create '{path}': {e.strerror}") from None
        except ValueError:  # a NUL in the path (only possible in-process: argv has none)
            raise ConfigError(f"cannot create PID file: Could not create {path!r}: Invalid argument") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st, fst = os.stat(self.path), os.fstat(fd)
            if (st.st_dev, st.st_ino) != (fst.st_dev, fst.st_ino):
                raise ConfigError(f"cannot create PID file: '{path}' was replaced while it was being locked")
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            os.close(fd)
            raise ConfigError(f"cannot create PID file: Cannot lock pid file: {e.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def remove(self) -> None:
        """Unlink the file (if it is still ours) and drop the lock."""
        if self.fd < 0:
            return
        try:
            st, fst = os.stat(self.path), os.fstat(self.fd)
            if (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino):
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1


def exit_on_termination() -> dict[int, object]:
    """Until :meth:`microvm.machine.Machine.run` installs its own handlers, SIGTERM and
    SIGHUP end the VMM with status 0 through the normal path (so ``finally`` blocks remove the
    pidfile), as QEMU, which handles them from its start. Returns the previous handlers."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    return {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}


def restore_signals(saved: dict[int, object]) -> None:
    for sig, handler in saved.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]


def set_process_name(name: str) -> None:
    """``-name ...,process=NAME``: the name ``ps -o comm`` and ``/proc/PID/comm`` show
    (``prctl(PR_SET_NAME)``, at most 15 bytes, as QEMU)."""
    import ctypes

    PR_SET_NAME = 15
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
