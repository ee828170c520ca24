"""The VMM as a process: -pidfile, -daemonize and -name process= checked on real processes
with tiny guests, and closed or broken standard streams (issue 12: the VM runs, output is
dropped, the exit status is what it would be with them)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kvm_helpers import MICROVM, build_guest, requires_kvm


@pytest.fixture(scope="module")
def guests(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("guests")
    return {n: build_guest(n, d) for n in ("hello-pvh", "spin")}


def wait_for(predicate, timeout: float = 30.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds passed (not a timed assertion:
    the deadline only bounds a wait for something that must happen)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def gone(pid: int) -> bool:
    """The process exited (a zombie whose parent does not reap counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@requires_kvm
def test_pidfile_holds_the_pid_while_running_and_is_removed_at_exit(guests, tmp_path) -> None:
    pidfile = tmp_path / "vm.pid"
    cmd = [*MICROVM, "-M", "microvm", "-kernel", str(guests["spin"]), "-display", "none", "-nodefaults",
           "-pidfile", str(pidfile)]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_for(pidfile.exists), p.stderr.read1(4096) if p.poll() is not None else "no pidfile"
        assert pidfile.read_text() == f"{p.pid}\n"
        # a second VMM with the same pidfile is refused while the first runs (QEMU's lockf)
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert (r.returncode, r.stderr) == (1, "microvm: cannot create PID file: Cannot lock pid file: "
                                               "Resource temporarily unavailable\n")
        assert pidfile.read_text() == f"{p.pid}\n"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
        assert not pidfile.exists()
    finally:
        p.kill()
        p.wait()


@requires_kvm
def test_daemonize_returns_once_the_machine_is_built_and_the_daemon_runs_detached(guests, tmp_path) -> None:
    pidfile, serial = tmp_path / "vm.pid", tmp_path / "serial.txt"
    cmd = [*MICROVM, "-M", "microvm", "-kernel", str(guests["spin"]), "-display", "none", "-nodefaults",
           "-serial", f"file:{serial}", "-daemonize", "-pidfile", str(pidfile), "-name", "g1,process=mvm-test-d"]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    pid = int(pidfile.read_text())       # written before the parent returned
    try:
        assert pid != r.args and not gone(pid)
        assert Path(f"/proc/{pid}/comm").read_text() == "mvm-test-d\n"
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert os.getsid(pid) != os.getsid(0)                    # its own session: no terminal
        assert os.readlink(f"/proc/{pid}/fd/0") == os.readlink(f"/proc/{pid}/fd/1") == "/dev/null"
        assert wait_for(lambda: serial.read_bytes() == b"SPIN\n"), serial.read_bytes()
    finally:
        os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: gone(pid))
    assert wait_for(lambda: not pidfile.exists())


@requires_kvm
def test_daemonize_reports_a_failure_before_it_detaches(tmp_path) -> None:
    r = subprocess.run([*MICROVM, "-M", "microvm", "-kernel", str(tmp_path / "missing"), "-display", "none",
                        "-daemonize"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (1, f"microvm: kernel {tmp_path / 'missing'}: no such file\n")


# ---- issue 12, item 5: closed or broken standard streams -----------------------------------------
def shell(cmd: list[str], redirect: str, timeout: float = 60) -> int:
    """Run ``cmd`` through sh with ``redirect`` (e.g. ``>&-``); its exit status."""
    line = " ".join(f"'{a}'" for a in cmd) + " " + redirect
    return subprocess.run(["sh", "-c", line], stdin=subprocess.DEVNULL, timeout=timeout).returncode


@requires_kvm
@pytest.mark.parametrize("redirect", [">&-", "2>&-", ">&- 2>&-", "<&- >&- 2>&-"])
@pytest.mark.parametrize("spelling", ["run", "qemu"])
def test_closed_streams_the_vm_runs_and_the_status_is_kept(guests, tmp_path, redirect: str, spelling: str) -> None:
    """The guest writes HELLO and triple-faults: with --no-reboot that is status 0, whichever
    streams are closed; the metrics file shows the guest really ran (its serial bytes)."""
    metrics = tmp_path / "m.json"
    kernel = str(guests["hello-pvh"])
    cmd = ([*MICROVM, "run", "--kernel", kernel, "--no-reboot", "--metrics", str(metrics)] if spelling == "run" else
           [*MICROVM, "-M", "microvm", "-kernel", kernel, "-no-reboot", "-metrics", str(metrics)])
    assert shell(cmd, redirect) == 0
    import json

    assert json.loads(metrics.read_text())["devices"]["serial0"]["pio_writes"] == len(b"HELLO\n")


@requires_kvm
@pytest.mark.parametrize("which", ["stdout", "stderr"])
def test_broken_pipe_the_vm_runs_and_the_status_is_kept(guests, tmp_path, which: str) -> None:
    """stdout or stderr a pipe whose reader is gone (EPIPE, SIGPIPE ignored by Python)."""
    r, w = os.pipe()
    os.close(r)
    kw = {which: w}
    p = subprocess.run([*MICROVM, "run", "--kernel", str(guests["hello-pvh"]), "--no-reboot", "-v"],
                       stdin=subprocess.DEVNULL, timeout=60, **kw,
                       **({"stderr": subprocess.DEVNULL} if which == "stdout" else {"stdout": subprocess.DEVNULL}))
    os.close(w)
    assert p.returncode == 0


@pytest.mark.parametrize("redirect, status", [("2>&-", 2), (">&- 2>&-", 2)])
def test_a_usage_error_keeps_its_status_with_stderr_closed(redirect: str, status: int) -> None:
    assert shell([*MICROVM, "run", "--bogus-option"], redirect) == status
    assert shell([*MICROVM, "run", "--smp", "3,sockets=2", "--kernel", "/nonexistent"], redirect) == status
    assert shell([*MICROVM, "-bogus"], redirect) == 1


def test_help_into_a_closed_or_broken_stdout() -> None:
    assert shell([*MICROVM, "-device", "help"], ">&-") == 0
    assert shell([*MICROVM, "-h"], "| true") == 0


@requires_kvm
def test_dash_D_sends_the_log_to_a_file_and_errors_stay_on_stderr(guests, tmp_path) -> None:
    log = tmp_path / "log.txt"
    r = subprocess.run([*MICROVM, "-M", "microvm", "-kernel", str(guests["hello-pvh"]), "-no-reboot", "-v", "-D", str(log)],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "HELLO\n", "")
    assert "microvm: stopping: guest reset (triple fault) with --no-reboot: exiting\n" in log.read_text()
    r = subprocess.run([*MICROVM, "-kernel", str(tmp_path / "missing"), "-D", str(log)],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (1, f"microvm: kernel {tmp_path / 'missing'}: no such file\n")
    r = subprocess.run([*MICROVM, "-kernel", str(guests["hello-pvh"]), "-D", str(tmp_path / "no/dir/log")],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (1, f"microvm: -D {tmp_path / 'no/dir/log'}: cannot open the log file: "
                                           "No such file or directory\n")


@requires_kvm
def test_qemus_microvm_line_with_acpi_off_runs_unchanged(guests) -> None:
    """The line QEMU 7.2 users run microvm with (`-M microvm,acpi=off`, also the other
    options for what microvm lacks at their off value), only the program name changed."""
    r = subprocess.run([*MICROVM, "-M", "microvm,acpi=off,pcie=off,ioapic2=off,usb=off,smm=off,x-option-roms=off",
                        "-enable-kvm", "-m", "128m", "-kernel", str(guests["hello-pvh"]), "-nodefaults",
                        "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, b"HELLO\n"), r.stderr
