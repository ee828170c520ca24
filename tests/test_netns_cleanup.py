"""The network-namespace helper of the Linux network tests and bench/net.py
(``linux_images.NetNamespace``) cleans up whatever happened to the test: processes still
inside are killed (a VMM that outlived its test would keep the namespace and its taps
alive), the namespace is deleted also when the test raised, and one left by a killed run
is deleted by the next. Root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2; only namespaces
these tests create are touched."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from linux_images import NetNamespace, missing_tools, tool

PREFIX = "microvm-cleanuptest"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to make network namespaces"
    if missing_tools("ip", "sleep"):
        return "needs iproute2 and coreutils"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


def wait_until(cond, what: str, timeout: float = 30) -> None:
    """A hang guard, not a measurement."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"{what} never happened"
        time.sleep(0.01)


def listed(name: str) -> bool:
    out = subprocess.run([tool("ip"), "netns", "list"], capture_output=True, text=True).stdout
    return any(line.split(" ", 1)[0] == name for line in out.splitlines())


def test_a_failing_test_with_a_process_inside_leaves_nothing():
    procs = []
    with pytest.raises(ZeroDivisionError):
        with NetNamespace(PREFIX) as ns:
            name = ns.name
            ns.ip("tuntap", "add", "dev", "mvleft0", "mode", "tap")  # persistent: only the namespace's end removes it
            procs.append(subprocess.Popen(ns.argv(tool("sleep"), "600")))  # a VMM that would outlive the test
            assert ns.exists("mvleft0")
            wait_until(lambda: ns.pids() == [procs[0].pid], "the process entering the namespace")
            1 / 0
    assert procs[0].wait(timeout=30) == -9  # killed by the cleanup, not by the test
    assert not listed(name) and not os.path.exists(f"/run/netns/{name}")


def test_a_vmm_killed_before_the_end_and_the_namespace_goes():
    with NetNamespace(PREFIX) as ns:
        p = subprocess.Popen(ns.argv(tool("sleep"), "600"))
        p.kill()
        p.wait()
        name = ns.name
    assert not listed(name)


def test_a_namespace_left_by_a_killed_run_is_deleted_by_the_next():
    gone = subprocess.Popen(["true"])
    gone.wait()  # its PID names a process that no longer exists
    stale = f"{PREFIX}-{gone.pid}-abcdef"
    busy = f"{PREFIX}-{gone.pid}-fedcba"
    subprocess.run([tool("ip"), "netns", "add", stale], check=True)
    subprocess.run([tool("ip"), "netns", "add", busy], check=True)
    holder = subprocess.Popen([tool("ip"), "netns", "exec", busy, tool("sleep"), "600"])
    try:
        with NetNamespace(PREFIX):
            assert not listed(stale)  # swept
            assert listed(busy)  # still used by a process: left alone
    finally:
        holder.kill()
        holder.wait()
        subprocess.run([tool("ip"), "netns", "del", busy], capture_output=True)
        subprocess.run([tool("ip"), "netns", "del", stale], capture_output=True)
    assert not listed(busy)
