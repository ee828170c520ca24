"""The command line fuzzed (issue 10, bad input): random argv from the options' alphabet, in
QEMU's spelling and ``microvm run``'s, through the real ``main()`` in-process (``run_spec``,
the default guest, forking and process renaming replaced, so no VM starts and the test
process stays itself). main() must return a status, never raise, and never print a
traceback or an internal error; whatever it refuses is one line. A few lines run as real
processes too."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import microvm.cli.commands as commands
import microvm.cli.daemon as daemon
import microvm.cli.main as climain
import microvm.guest
import microvm.machine
from microvm.cli.options import RUN_OPTIONS
from microvm.cli.qemu import QEMU_ARG, QEMU_NOARG

#: every option name in both spellings, plus words that are no option
QEMU_NAMES = sorted({f"-{n}" for n in QEMU_ARG | QEMU_NOARG} | {f"-{q}" for o in RUN_OPTIONS for q in o.qemu}
                    | {f"--{n}" for n in ("m", "smp", "kernel", "nographic", "device")}
                    | {"-bogus", "---m", "-", "--", "-=", "-m=5"})
RUN_NAMES = sorted({n for o in RUN_OPTIONS for n in o.names} | {"--bogus", "-x", "--smp=2", "--kernel="})
#: values that mean something to some option, malformed ones, and junk
VALUES = [
    "microvm", "microvm,help", "help", "?", "type=microvm,accel=kvm", "microvm,accel=tcg", "pc", "microvm,pit=off,pic=maybe",
    "kvm", "kvm,kernel-irqchip=split", "kvm,kernel-irqchip=bogus", "tcg", "host", "host,-arch-capabilities", "host,+bogus",
    "qemu64", "512m", "12q", "size=1G", "256,slots=2", "0", "-1", "2", "2,sockets=2", "3,sockets=2", "4,threads=2",
    "2,dies=2", "abc", "stdio", "mon:stdio", "null", "none", "file:", "chardev:c0", "chardev:", "stdio,id=c0",
    "null,id=c0", "file,id=f,path=", "socket,id=s", "id=d,file=x.img,format=raw,if=none", "id=d", "file=x.img",
    "id=d,file=x,format=qcow2", "id=d,file=x,if=ide", "virtio-blk-device,drive=d", "virtio-rng-device,max-bytes=x",
    "virtio-rng-device,help", "virtio-net-device,netdev=n", "isa-debug-exit,iobase=0xf4", "foo", "foo,help",
    "tap,id=n", "tap", "user,id=n", "g1", "g1,process=", "guest=g,debug-threads=maybe", "gtk", "vnc=:0", "p.pid",
    "log.txt", "unix:/tmp/q,server=on", "", ",", ",,", "=", "a=b=c", "help,help", "é", "\x00", "-m", "--", "x" * 300,
]


@pytest.fixture
def sandbox(monkeypatch, tmp_path):
    """No VM, no build, no fork, no renaming, no global logging set-up; files land in tmp."""
    calls = {"run": 0}

    def fake_run_spec(spec, host=None, ready=None):
        calls["run"] += 1
        if ready is not None:
            ready()
        return 0

    class FakeDaemon:
        def ready(self, keep_stderr: bool = False) -> None:
            pass

    class Guest:
        vmlinux, kernel, initramfs, cmdline = "/g/vmlinux", "/g/bzImage", "/g/initramfs", "console=ttyS0"

    monkeypatch.setattr(microvm.machine, "run_spec", fake_run_spec)
    monkeypatch.setattr(microvm.guest, "default_guest", lambda build=True, progress=None: Guest())
    monkeypatch.setattr(daemon, "Daemon", FakeDaemon)
    monkeypatch.setattr(daemon, "set_process_name", lambda name: None)
    monkeypatch.setattr(commands, "setup_logging", lambda verbose, logfile=None: None)
    monkeypatch.chdir(tmp_path)
    return calls


STATS = {"lines": 0, "slowest": 0.0, "slowest_line": None}


def check_line(argv: list[str], capsys) -> None:
    t0 = time.perf_counter()
    try:
        rv = climain.main(list(argv))
    except SystemExit as e:  # typer may exit; a status is still a status
        rv = e.code
    dt = time.perf_counter() - t0
    out, err = capsys.readouterr()
    STATS["lines"] += 1
    if dt > STATS["slowest"]:
        STATS["slowest"], STATS["slowest_line"] = dt, argv
    assert isinstance(rv, int) and rv in (0, 1, 2), (argv, rv, err)
    assert "Traceback" not in err and "Traceback" not in out, (argv, err)
    assert "internal error" not in err, (argv, err)
    if rv != 0:
        assert err.startswith("microvm: "), (argv, err)
        if argv and argv[0].startswith("-") and argv[0] != "-":  # the QEMU spelling: QEMU's one line
            assert rv == 1 and len(err.splitlines()) == 1, (argv, err)


def argv_of(names: list[str]) -> st.SearchStrategy[list[str]]:
    word = st.one_of(st.sampled_from(names), st.sampled_from(VALUES), st.text(max_size=12))
    pair = st.tuples(st.sampled_from(names), st.sampled_from(VALUES)).map(list)
    return st.lists(st.one_of(pair, word.map(lambda w: [w])), min_size=1, max_size=10).map(
        lambda parts: [w for p in parts for w in p])


FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(argv=argv_of(QEMU_NAMES))
def test_fuzz_qemu_spelling(argv: list[str], sandbox, capsys) -> None:
    if not argv[0].startswith("-") or argv[0] == "-":
        argv = ["-M", *argv]
    check_line(argv, capsys)


@FUZZ
@given(argv=argv_of(RUN_NAMES))
def test_fuzz_run_spelling(argv: list[str], sandbox, capsys) -> None:
    check_line(["run", *argv], capsys)


def test_fuzz_report() -> None:
    """How much the fuzz tests above ran (shown with -s; run after them in file order)."""
    print(f"\nfuzzed {STATS['lines']} command lines; slowest {STATS['slowest'] * 1000:.1f} ms: {STATS['slowest_line']!r}")


MICROVM = Path(sys.executable).with_name("microvm")


@pytest.mark.parametrize("argv", [
    ["-M", "microvm,pit=maybe", "-kernel", "x"], ["-smp", "2,2"], ["-device", "foo,help"], ["-m", "256,size"],
    ["-chardev", "stdio,id=a", "-chardev", "null,id=a"], ["-serial", "\udcff"], ["-cpu", "host,,+x"], ["-append"],
])
def test_fuzz_like_lines_as_processes(argv: list[str], tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROVM_")}
    env["MICROVM_CACHE"] = str(tmp_path)
    # -kernel first: a line that parses must stop at the missing kernel, never build or boot
    r = subprocess.run([str(MICROVM), "-kernel", str(tmp_path / "missing"), *argv], env=env, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                       cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == b""
    assert r.stderr.startswith(b"microvm: ") and r.stderr.count(b"\n") == 1 and b"Traceback" not in r.stderr, r.stderr
