"""Run-state transitions racing each other on a real tiny guest: three QMP monitors (three
server threads) hammer stop, cont and system_reset at once while the guest keeps a
virtio-blk disk busy (its notification worker pauses and resumes with the VM) or resets
itself a hundred times a second; a SIGTERM lands in the middle. Every transition runs under
the Lifecycle's one lock, so: each system_reset is exactly one RESET, STOP and RESUME
alternate as the state does, the VMM answers throughout and ends with status 0, without a
traceback, an invalid transition or a vCPU that would not park. No timing assertions."""
from __future__ import annotations

import json
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from kvm_helpers import build_guest, requires_kvm
from qmp_vm import Line, Vm, wait_until

pytestmark = [pytest.mark.kvm, requires_kvm]

MONITORS = 3


@pytest.fixture(scope="module")
def guest_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("guests-qmp-races")


class Watcher:
    """A client that only reads: every event of the run, in the order it was sent."""

    def __init__(self, path: str) -> None:
        self.q = Line(path)
        self.events: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self.closed = threading.Event()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        try:
            while True:
                line = self.q.f.readline()
                if not line:
                    break
                msg = json.loads(line)
                (self.events if "event" in msg else self.replies).append(msg)
        except OSError:
            pass
        finally:
            self.closed.set()

    def cmd(self, name: str) -> Any:
        """Run a command on the watcher's connection (its reader thread takes the reply).
        Every event sent before the reply has arrived with it: the server delivers what is
        pending before a reply."""
        n = len(self.replies)
        self.q.send({"execute": name})
        wait_until(lambda: len(self.replies) > n or self.closed.is_set(), f"the reply to {name}")
        assert not self.closed.is_set() or len(self.replies) > n, "the connection closed"
        reply = self.replies[n]
        assert "return" in reply, reply
        return reply["return"]

    def sync(self) -> None:
        self.cmd("query-status")

    def names(self, *which: str) -> list[str]:
        return [e["event"] for e in self.events if e["event"] in which]


def _extra_monitors(tmp: Path) -> tuple[list[str], list[str]]:
    paths = [str(tmp / f"m{i}.sock") for i in range(1, MONITORS)]
    return paths, [f"--qmp=unix:{p},server=on,wait=off" for p in paths]


def _hammer(path: str, seed: int, rounds: int, resets: list[int], errors: list[BaseException],
            tolerate_eof: bool = False) -> None:
    rng = random.Random(seed)
    try:
        q = Line(path)
        for _ in range(rounds):
            name = rng.choice(("stop", "cont", "system_reset", "stop", "cont", "query-status", "query-cpus-fast"))
            assert q.cmd(name) is not None
            if name == "system_reset":
                resets.append(1)
            q.events.clear()
        q.close()
    except (EOFError, ConnectionError, OSError) as e:
        if not tolerate_eof:
            errors.append(e)
    except BaseException as e:  # reported by the test's thread
        errors.append(e)


def _alternate(names: list[str]) -> bool:
    """STOP and RESUME strictly alternate, starting with STOP (the VM starts running)."""
    return all(n == ("STOP" if i % 2 == 0 else "RESUME") for i, n in enumerate(names))


def _clean_log(vm: Vm) -> None:
    err = vm.stderr()
    for bad in ("Traceback", "invalid runstate transition", "still busy", "did not stop", "failed"):
        assert bad not in err, err[-3000:]


@pytest.mark.parametrize("guest", ["blk-busy", "hello-pvh"])
def test_stop_cont_and_system_reset_from_three_monitors_at_once(guest_cache, tmp_path, guest):
    elf = build_guest(guest, guest_cache)
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(256 << 10))
    paths, args = _extra_monitors(tmp_path)
    dev = ["--drive", f"id=d0,file={disk}", "--device", "virtio-blk-device,drive=d0,force-legacy=off"]
    marker = b"BUSY" if guest == "blk-busy" else b"HELLO"
    with Vm(str(tmp_path), "--kernel", str(elf), *dev, *args) as vm:
        watcher = Watcher(vm.sock)
        wait_until(lambda: marker in vm.out, "the guest", detail=vm.tail)
        resets: list[int] = []
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_hammer, args=(p, i, 60, resets, errors))
                   for i, p in enumerate([vm.sock, *paths, vm.sock, *paths])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads), vm.tail()
        assert not errors, (errors, vm.tail())
        watcher.sync()
        # one RESET per system_reset, each after the new machine stood
        host_resets = [e for e in watcher.events if e["event"] == "RESET" and not e["data"]["guest"]]
        assert len(host_resets) == len(resets) > 0
        assert all(e["data"]["reason"] == "host-qmp-system-reset" for e in host_resets)
        # STOP and RESUME alternate, and the state agrees with the last of them
        names = watcher.names("STOP", "RESUME")
        assert _alternate(names), names
        status = watcher.cmd("query-status")
        assert status["running"] == (not names or names[-1] == "RESUME"), (status, names[-5:])
        # the VM still works: cont, a reset, the guest boots and runs again
        watcher.cmd("cont")
        assert watcher.cmd("query-status")["status"] == "running"
        before = vm.out.count(marker)
        watcher.cmd("system_reset")
        wait_until(lambda: vm.out.count(marker) > before, "the guest after a last reset", detail=vm.tail)
        watcher.cmd("quit")
        assert vm.wait() == 0
        watcher.closed.wait(30)
        assert watcher.events[-1]["event"] == "SHUTDOWN"
        assert watcher.events[-1]["data"] == {"guest": False, "reason": "host-qmp-quit"}
        _clean_log(vm)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_sigterm_in_the_middle_of_the_hammering_ends_the_vm_cleanly(guest_cache, tmp_path, signum):
    """SIGINT as SIGTERM (it used to be a KeyboardInterrupt landing anywhere in the main
    thread: a wrong SHUTDOWN reason, an internal error, a lost signal, or a segfault from a
    vCPU writing its unmapped kvm_run page)."""
    elf = build_guest("blk-busy", guest_cache)
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(256 << 10))
    paths, args = _extra_monitors(tmp_path)
    with Vm(str(tmp_path), "--kernel", str(elf), "--drive", f"id=d0,file={disk}", "--no-shutdown",
            "--device", "virtio-blk-device,drive=d0,force-legacy=off", *args) as vm:
        watcher = Watcher(vm.sock)
        wait_until(lambda: b"BUSY" in vm.out, "the guest", detail=vm.tail)
        resets: list[int] = []
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_hammer, args=(p, 10 + i, 400, resets, errors, True))
                   for i, p in enumerate([vm.sock, *paths])]
        for t in threads:
            t.start()
        wait_until(lambda: len(resets) >= 5 or errors, "a few resets")
        vm.proc.send_signal(signum)
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors
        assert vm.wait() == 0
        watcher.closed.wait(30)
        shutdowns = [e for e in watcher.events if e["event"] == "SHUTDOWN"]
        assert shutdowns == [shutdowns[0]] and shutdowns[0]["data"] == {"guest": False, "reason": "host-signal"}
        assert _alternate(watcher.names("STOP", "RESUME"))
        _clean_log(vm)
        assert not os.path.exists(vm.sock)


def test_stop_racing_the_guests_power_off_and_quit(guest_cache, tmp_path):
    """hello-pvh with --no-reboot triple-faults at once: a shutdown (SHUTDOWN guest-reset)
    that the main thread handles while stops and a quit arrive. Whatever wins, the process
    ends with status 0, exactly one SHUTDOWN, no traceback and no deadlock."""
    elf = build_guest("hello-pvh", guest_cache)
    for round_ in range(5):
        tmp = tmp_path / f"r{round_}"
        tmp.mkdir()
        paths, args = _extra_monitors(tmp)
        with Vm(str(tmp), "--kernel", str(elf), "--no-reboot", "-S", *args) as vm:
            watcher = Watcher(vm.sock)
            clients = [Line(p) for p in paths]
            errors: list[BaseException] = []

            def stops(q: Line) -> None:
                try:
                    for _ in range(50):
                        q.cmd("stop")
                        q.cmd("cont")
                    q.cmd("quit")
                except (EOFError, OSError):
                    pass  # the VM ended under us: expected
                except BaseException as e:
                    errors.append(e)

            threads = [threading.Thread(target=stops, args=(q,)) for q in clients]
            for t in threads:
                t.start()
            try:
                watcher.q.send({"execute": "cont"})
            except OSError:
                pass  # a stopper's cont ran the guest, or its quit ended the VM, already
            for t in threads:
                t.join(120)
            assert not any(t.is_alive() for t in threads) and not errors, errors
            assert vm.wait(60) == 0
            watcher.closed.wait(30)
            shutdowns = [e["data"] for e in watcher.events if e["event"] == "SHUTDOWN"]
            assert len(shutdowns) == 1 and shutdowns[0] in (
                {"guest": True, "reason": "guest-reset"}, {"guest": False, "reason": "host-qmp-quit"}), shutdowns
            _clean_log(vm)
