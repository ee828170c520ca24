"""QMP against real microvm processes on /dev/kvm, with tiny guests: the qemu.qmp client runs
every command and receives the events; -S, -no-shutdown and -no-reboot follow QEMU 7.2's run
states (checked against QEMU itself); an internal error leaves the VM to its monitor;
-chardev socket + -mon with socat; hostile clients while the VM keeps a disk busy.
No timing assertions: every wait is a bounded poll."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from kvm_helpers import build_guest, requires_kvm, run_microvm
from qmp_vm import Line, Vm, disconnect_after_quit, wait_until

pytestmark = [pytest.mark.kvm, requires_kvm]


@pytest.fixture(scope="module")
def guest_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("guests-qmp")


def test_qemu_qmp_client_runs_every_command_on_a_running_vm(guest_cache, tmp_path):
    qmp_mod = pytest.importorskip("qemu.qmp", reason="the qemu.qmp package (PyPI) is not installed")
    elf = build_guest("spin", guest_cache)
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    log = tmp_path / "f0.log"
    with Vm(str(tmp_path), "--kernel", str(elf), "--name", "vm0", "--drive", f"id=d0,file={disk}",
            "--device", "virtio-blk-device,drive=d0", "--drive", f"id=d1,file={disk},readonly=on",
            "--chardev", f"file,id=f0,path={log}") as vm:
        wait_until(lambda: b"SPIN" in vm.out, "the guest")

        async def session() -> None:
            qmp = qmp_mod.QMPClient("microvm-test")
            await qmp.connect(vm.sock)  # greeting and qmp_capabilities
            version = qmp.greeting._raw["QMP"]["version"]
            assert version["qemu"] == {"micro": 0, "minor": 2, "major": 7} and version["package"].startswith("microvm ")
            assert await qmp.execute("query-version") == version
            names = {c["name"] for c in await qmp.execute("query-commands")}
            assert {"stop", "cont", "system_reset", "quit", "query-cpus-fast", "query-block"} <= names
            assert await qmp.execute("query-name") == {"name": "vm0"}
            assert await qmp.execute("query-status") == {"status": "running", "singlestep": False, "running": True}
            cpus = await qmp.execute("query-cpus-fast")
            assert [c["cpu-index"] for c in cpus] == [0] and cpus[0]["qom-path"] == "/machine/unattached/device[0]"
            assert os.path.isdir(f"/proc/{vm.proc.pid}/task/{cpus[0]['thread-id']}")  # a thread of microvm
            assert await qmp.execute("query-kvm") == {"enabled": True, "present": True}
            assert (await qmp.execute("query-machines"))[0]["name"] == "microvm"
            chardevs = {c["label"]: c for c in await qmp.execute("query-chardev")}
            assert chardevs["serial0"] == {"label": "serial0", "filename": "stdio", "frontend-open": True}
            assert chardevs["f0"] == {"label": "f0", "filename": "file", "frontend-open": False}  # no device uses it
            assert chardevs["compat_monitor0"]["filename"] == f"unix:{vm.sock},server=on"  # we are connected
            blocks = {b["device"]: b for b in await qmp.execute("query-block")}
            d0, d1 = blocks["d0"], blocks["d1"]
            assert d0["qdev"] == "/machine/peripheral-anon/device[0]" and d0["io-status"] == "ok"
            assert d0["inserted"]["file"] == str(disk) and d0["inserted"]["ro"] is False
            assert d0["inserted"]["image"]["virtual-size"] == 1 << 20 and d0["removable"] is False
            assert d1["inserted"]["ro"] is True and d1["removable"] is True and "qdev" not in d1
            assert await qmp.execute("human-monitor-command", {"command-line": "info status"}) == "VM status: running\r\n"
            with qmp.listener() as listener:
                assert await qmp.execute("stop") == {}
                assert (await listener.get())["event"] == "STOP"
                assert (await qmp.execute("query-status"))["status"] == "paused"
                assert await qmp.execute("human-monitor-command", {"command-line": "info status"}) == "VM status: paused\r\n"
                assert await qmp.execute("stop") == {}  # not running: nothing happens, no event
                assert await qmp.execute("cont") == {}
                assert (await listener.get())["event"] == "RESUME"
                assert await qmp.execute("cont") == {}  # already running: nothing happens
                spins = vm.out.count(b"SPIN")
                assert await qmp.execute("system_reset") == {}
                ev = await listener.get()
                assert ev["event"] == "RESET" and ev["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
                await asyncio.to_thread(wait_until, lambda: vm.out.count(b"SPIN") > spins, "the guest to boot again")
                assert (await qmp.execute("query-status"))["status"] == "running"
                with pytest.raises(qmp_mod.ExecuteError) as err:
                    await qmp.execute("no-such-command")
                assert err.value.error_class == "CommandNotFound"
                with pytest.raises(qmp_mod.ExecuteError) as err:
                    await qmp.execute("human-monitor-command", {})
                assert err.value.error_class == "GenericError" and "command-line" in str(err.value)
                assert await qmp.execute("quit") == {}
                ev = await listener.get()
                assert ev["event"] == "SHUTDOWN" and ev["data"] == {"guest": False, "reason": "host-qmp-quit"}
            await disconnect_after_quit(qmp)

        asyncio.run(asyncio.wait_for(session(), 120))
        assert vm.wait() == 0
        assert not os.path.exists(vm.sock)  # removed on the way out


def test_prelaunch_runs_nothing_until_cont(guest_cache, tmp_path):
    elf = build_guest("spin", guest_cache)
    with Vm(str(tmp_path), "--kernel", str(elf), "-S") as vm:
        q = Line(vm.sock)
        assert q.cmd("query-status")["status"] == "prelaunch"
        assert q.cmd("human-monitor-command", **{"command-line": "info status"}) == "VM status: paused (prelaunch)\r\n"
        assert vm.out == b""  # the guest has not run a single instruction
        q.cmd("cont")
        assert q.event("RESUME")
        wait_until(lambda: b"SPIN" in vm.out, "the guest after cont")
        assert q.cmd("query-status")["status"] == "running"
        q.cmd("quit")
        assert vm.wait() == 0


def test_no_shutdown_alone_lets_a_guest_reset_reboot(guest_cache, tmp_path):
    """QEMU 7.2: -no-shutdown does not change a guest reset (hello-pvh prints HELLO and
    triple-faults): RESET guest-reset, the VM goes on, QMP still served."""
    elf = build_guest("hello-pvh", guest_cache)
    with Vm(str(tmp_path), "--kernel", str(elf), "--no-shutdown") as vm:
        q = Line(vm.sock)
        for _ in range(3):
            assert q.event("RESET")["data"] == {"guest": True, "reason": "guest-reset"}
        assert q.cmd("query-status")["status"] in ("running",)
        q.cmd("quit")
        assert vm.wait() == 0
        assert vm.out.count(b"HELLO") >= 3


def test_no_reboot_no_shutdown_keeps_the_vm_in_shutdown_state(guest_cache, tmp_path):
    """QEMU 7.2 with -no-reboot -no-shutdown: the guest's reset is a shutdown (SHUTDOWN
    guest-reset, STOP) and the VM stays in state shutdown; cont needs a reset first, and with
    -no-reboot system_reset is a shutdown too (SHUTDOWN host-qmp-system-reset)."""
    elf = build_guest("hello-pvh", guest_cache)
    with Vm(str(tmp_path), "--kernel", str(elf), "--no-reboot", "--no-shutdown", "-S") as vm:
        q = Line(vm.sock)
        q.cmd("cont")
        assert q.event("SHUTDOWN")["data"] == {"guest": True, "reason": "guest-reset"}
        assert q.event("STOP")
        assert q.cmd("query-status") == {"status": "shutdown", "singlestep": False, "running": False}
        assert q.cmd("human-monitor-command", **{"command-line": "info status"}) == "VM status: paused (shutdown)\r\n"
        with pytest.raises(RuntimeError) as err:
            q.cmd("cont")
        assert err.value.args == ("GenericError", "Resetting the Virtual Machine is required")
        q.cmd("system_reset")
        assert q.event("SHUTDOWN")["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
        assert q.cmd("query-status")["status"] == "shutdown"
        wait_until(lambda: vm.out == b"HELLO\n", "the one boot's output")  # (read by a thread)
        assert vm.proc.poll() is None
        q.cmd("quit")
        assert vm.wait() == 0


def test_an_internal_error_leaves_the_vm_to_its_monitor(guest_cache, tmp_path):
    """With a QMP monitor, a KVM internal error stops the VM in internal-error (STOP) with the
    register dump in the log; system_reset brings it back in prelaunch, as in QEMU."""
    if not os.path.exists("/sys/module/kvm_pvm"):
        pytest.skip("the test guest's INT3 only fails emulation on an emulating host (kvm_pvm)")
    elf = build_guest("assist", guest_cache)
    with Vm(str(tmp_path), "--kernel", str(elf), "-M", "microvm,x-emulation-assist=off", "-S") as vm:
        q = Line(vm.sock)
        q.cmd("cont")
        assert q.event("STOP")
        assert q.cmd("query-status")["status"] == "internal-error"
        wait_until(lambda: "code at RIP: cc" in vm.stderr(), "the register dump in the log")
        assert "KVM internal error" in vm.stderr() and "RIP=" in vm.stderr()
        with pytest.raises(RuntimeError) as err:
            q.cmd("cont")
        assert err.value.args == ("GenericError", "Resetting the Virtual Machine is required")
        q.cmd("system_reset")
        assert q.event("RESET")["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
        assert q.cmd("query-status")["status"] == "prelaunch"
        q.cmd("cont")
        assert q.event("STOP")  # the same guest fails the same way
        q.cmd("quit")
        assert vm.wait() == 0


def test_mon_on_a_socket_chardev_with_socat(guest_cache, tmp_path):
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat is not installed (Debian package 'socat'; ./bootstrap --test installs it)")
    elf = build_guest("spin", guest_cache)
    path = tmp_path / "mon.sock"
    with Vm(str(tmp_path), "--kernel", str(elf), "--chardev", f"socket,id=qm,path={path},server=on,wait=off",
            "--mon", "chardev=qm,mode=control", qmp=False) as vm:
        wait_until(lambda: path.exists(), "the monitor socket")
        lines = (b'{"execute": "qmp_capabilities"}\n{"execute": "query-status", "id": "a"}\n'
                 b'{"execute": "query-chardev"}\n{"execute": "cont"}\n{"execute": "stop"}\n')
        out = subprocess.run([socat, "-t", "2", "-", f"UNIX-CONNECT:{path}"], input=lines, capture_output=True,
                             timeout=60, check=True).stdout.split(b"\r\n")
        assert out[0].startswith(b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}')
        assert out[1] == b'{"return": {}}'
        assert out[2] == b'{"return": {"status": "running", "singlestep": false, "running": true}, "id": "a"}'
        assert b'"label": "qm"' in out[3] and b'"filename": "unix:' in out[3]
        assert out[4] == b'{"return": {}}'  # cont while running
        assert out[5].endswith(b'"event": "STOP"}') and out[6] == b'{"return": {}}'
        assert vm.proc.poll() is None


@pytest.mark.parametrize("args,message", [
    (["--mon", "chardev=nope,mode=control"], "chardev 'nope' not found"),
    (["--chardev", "socket,id=m,path=/tmp/x.sock,server=on", "--mon", "chardev=m"], "only mode=control"),
    (["--chardev", "null,id=m", "--mon", "chardev=m,mode=control"], "needs a socket chardev"),
    (["--chardev", "socket,id=m,path=/tmp/x.sock", "--mon", "chardev=m,mode=control"], "must listen (server=on)"),
    (["--chardev", "socket,id=m,path=/tmp/x.sock,server=on,telnet=on", "--mon", "chardev=m,mode=control"], "'telnet'"),
    (["--qmp", "unix:/nonexistent-dir/q.sock,server=on,wait=off"], "cannot listen"),
    (["--qmp", "stdio"], "expected unix:PATH or tcp:HOST:PORT"),
])
def test_bad_monitor_options_are_one_line_errors(guest_cache, args, message):
    elf = build_guest("spin", guest_cache)
    r = run_microvm("run", "--kernel", str(elf), *args, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 2 and message in err and err.count("\n") == 1, err


def test_hostile_clients_while_the_vm_keeps_a_disk_busy(guest_cache, tmp_path):
    """Against a running VM (a guest writing to its disk all along): malformed JSON, a
    100 MiB object, 1000 connections opened and dropped, and a client that sends commands
    but never reads. Another client is served throughout, the guest keeps writing its disk,
    and microvm's RSS grows by less than 64 MiB (a server that buffered the object alone
    would need 100 MiB)."""
    elf = build_guest("blk-busy", guest_cache)
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(256 << 10))
    with Vm(str(tmp_path), "--kernel", str(elf), "--drive", f"id=d0,file={disk}",
            "--device", "virtio-blk-device,drive=d0,force-legacy=off") as vm:
        wait_until(lambda: b"BUSY" in vm.out, "the guest's disk loop")
        keep = Line(vm.sock)
        before = vm.rss()
        # malformed JSON: an error reply, the connection still served
        bad = Line(vm.sock)
        bad.sock.sendall(b'{"execute": "query-status"]')
        assert bad.reply()["error"]["desc"] == "JSON parse error, expected separator in dict"
        assert bad.cmd("query-kvm") == {"enabled": True, "present": True}
        # a 100 MiB object: refused at the limit, connection closed
        big = Line(vm.sock, negotiate=False)
        big.sock.sendall(b'{"execute": "qmp_capabilities", "arguments": {"x": "')
        chunk = b"a" * (1 << 20)
        try:
            for _ in range(100):
                big.sock.sendall(chunk)
        except OSError:
            pass  # closed by the server, as it should
        assert big.reply()["error"]["desc"] == "JSON token size limit exceeded"
        # 1000 connections opened and dropped
        for i in range(1000):
            s = socket.socket(socket.AF_UNIX)
            s.connect(vm.sock)
            if i % 3 == 1:
                s.sendall(b'{"execute": "qmp_capab')
            s.close()
        # a client that sends commands and never reads: while its replies pile up, the other
        # client's commands (and the events they cause, which go to the stuck client too) are
        # answered and the guest keeps writing its disk; once 1 MiB waits it is dropped
        keep.send({"execute": "query-commands"})
        reply_len = len(keep.f.readline())
        slow = Line(vm.sock)
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sock.sendall(b'{"execute": "query-commands"}' * 200)  # more than the socket buffers hold
        for _ in range(5):
            assert keep.cmd("stop") == {} and keep.cmd("cont") == {}
        first = disk.read_bytes()
        wait_until(lambda: disk.read_bytes() != first, "the guest's disk writes while a client is stuck")
        req = b'{"execute": "query-commands"}' * 100
        sent = 200
        try:
            for _ in range(500):
                slow.sock.sendall(req)
                sent += 100
        except OSError:
            pass  # the server dropped it (EPIPE / ECONNRESET)
        assert keep.cmd("query-status")["status"] == "running"
        # it was dropped, not served: its socket ends long before all its replies came
        received = 0
        slow.sock.settimeout(30)
        try:
            while chunk := slow.sock.recv(1 << 16):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < sent * reply_len // 4, (received, sent * reply_len)
        # the guest kept writing its disk (request numbers land in the image) all along
        first = disk.read_bytes()
        wait_until(lambda: disk.read_bytes() != first, "the guest's next disk writes")
        grown = vm.rss() - before
        assert grown < 64 << 20, f"RSS grew by {grown >> 20} MiB"
        for c in (keep, bad, big, slow):
            c.close()


def test_sixteen_idle_clients_do_not_lock_out_a_seventeenth(guest_cache, tmp_path):
    """All 16 client slots taken: 15 connections that never negotiate (leaked, stuck) and an
    event watcher that negotiated and then only listens. A new client still gets in (QEMU's
    chardev would keep it waiting while its one client idles): a never-negotiated one silent
    the longest makes room after 5 s; the watcher is never the one dropped."""
    import socket

    elf = build_guest("spin", guest_cache)
    with Vm(str(tmp_path), "--kernel", str(elf)) as vm:
        watcher = Line(vm.sock)
        mute = []
        for _ in range(15):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(vm.sock)
            s.settimeout(60)
            assert s.recv(4096).startswith(b'{"QMP"')  # greeted, never answers it
            mute.append(s)
        late = Line(vm.sock)  # its greeting comes once a slot is freed (Line waits up to 60 s)
        assert late.cmd("query-status")["status"] == "running"
        assert mute[0].recv(4096) == b""  # the first mute one was dropped for it
        assert watcher.cmd("query-kvm") == {"enabled": True, "present": True}  # the watcher stays
        late.cmd("quit")
        assert vm.wait() == 0
        for s in mute:
            s.close()


def test_sigterm_while_paused_ends_the_vm_with_a_host_signal_shutdown(guest_cache, tmp_path):
    """A host signal always ends the process (QEMU's qemu_system_killed), also when paused
    and with -no-shutdown: SHUTDOWN {guest: false, reason: host-signal}, status 0."""
    import signal

    elf = build_guest("spin", guest_cache)
    with Vm(str(tmp_path), "--kernel", str(elf), "--no-shutdown") as vm:
        q = Line(vm.sock)
        wait_until(lambda: b"SPIN" in vm.out, "the guest")
        q.cmd("stop")
        assert q.event("STOP")
        vm.proc.send_signal(signal.SIGTERM)
        assert q.event("SHUTDOWN")["data"] == {"guest": False, "reason": "host-signal"}
        assert vm.wait() == 0
        assert "terminated by signal 15" in vm.stderr() or vm.stderr() == ""


def test_commands_racing_guest_resets_never_reach_a_torn_down_machine(guest_cache, tmp_path):
    """hello-pvh resets about a hundred times a second; stop, cont and the queries keep
    arriving meanwhile, so some land while a machine is being torn down and the next built
    (a kick into an unmapped kvm_run page was a SIGSEGV). The VM survives and quits with 0."""
    import time

    elf = build_guest("hello-pvh", guest_cache)
    with Vm(str(tmp_path), "--kernel", str(elf)) as vm:
        q = Line(vm.sock)
        end = time.monotonic() + 3
        commands = 0
        while time.monotonic() < end or commands < 600:
            for name in ("stop", "cont", "query-cpus-fast", "query-chardev", "query-status"):
                q.cmd(name)
                commands += 1
            q.events.clear()
        q.cmd("cont")
        q.cmd("quit")
        assert vm.wait() == 0, vm.stderr()[-2000:]
        assert vm.out.count(b"HELLO") > 1


def test_query_chardev_in_qemus_order(guest_cache, tmp_path):
    """The same chardevs as this QEMU 7.2 command line, which answered (paths aside):
    qemu-system-x86_64 -M microvm,acpi=off -nodefaults -S -chardev null,id=zz -chardev null,id=aa
      -chardev file,id=mm,path=F -chardev socket,id=mon1,path=M,server=on,wait=off
      -mon chardev=mon1,mode=control -serial chardev:aa -qmp unix:Q,server=on,wait=off"""
    elf = build_guest("spin", guest_cache)
    mon = tmp_path / "m.sock"
    with Vm(str(tmp_path), "--kernel", str(elf), "--chardev", "null,id=zz", "--chardev", "null,id=aa",
            "--chardev", f"file,id=mm,path={tmp_path / 'f.log'}",
            "--chardev", f"socket,id=mon1,path={mon},server=on,wait=off", "--mon", "chardev=mon1,mode=control",
            "--serial", "chardev:aa") as vm:
        q = Line(vm.sock)
        wait_until(lambda: [c["thread-id"] > 0 for c in q.cmd("query-cpus-fast")] == [True], "the machine to start")
        assert q.cmd("query-chardev") == [
            {"frontend-open": False, "filename": "null", "label": "zz"},
            {"frontend-open": True, "filename": f"unix:{vm.sock},server=on", "label": "compat_monitor0"},
            {"frontend-open": True, "filename": f"disconnected:unix:{mon},server=on", "label": "mon1"},
            {"frontend-open": False, "filename": "file", "label": "mm"},
            {"frontend-open": True, "filename": "null", "label": "aa"},
        ]
        q.cmd("quit")
        assert vm.wait() == 0


@pytest.mark.parametrize("how", ["qmp", "chardev"])
def test_ctrl_c_while_waiting_for_a_wait_on_client_is_one_line(guest_cache, tmp_path, how):
    """SIGINT (Ctrl-C) while microvm waits for the first client of a wait=on socket, before
    the guest ran: status 0, QEMU's one line, no traceback, the socket file removed."""
    import signal
    import time

    from kvm_helpers import microvm_cmd

    elf = build_guest("spin", guest_cache)
    sock = tmp_path / "w.sock"
    if how == "qmp":
        extra = ["--qmp", f"unix:{sock},server=on"]
    else:
        extra = ["--chardev", f"socket,id=s0,path={sock},server=on", "--serial", "chardev:s0"]
    proc = subprocess.Popen(microvm_cmd("run", "--kernel", str(elf), *extra), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        first = b""
        while b"waiting for connection" not in first and time.monotonic() < deadline:
            first += proc.stderr.readline()
        assert b"microvm: waiting for connection on: disconnected:unix:" in first, first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err.decode() == "microvm: terminating on signal 2\n", err
    assert out == b"" and not sock.exists()


def test_system_reset_is_done_when_it_returns_and_a_paused_vm_stays_stopped(guest_cache, tmp_path):
    """QEMU's qmp_system_reset, carried out before the reply: the RESET event (one per
    request) comes before the reply, the next command sees the new machine; a VM reset while
    paused comes back in prelaunch (QEMU's main_loop_should_exit) and runs nothing until cont."""
    import time

    elf = build_guest("spin", guest_cache)
    with Vm(str(tmp_path), "--kernel", str(elf)) as vm:
        q = Line(vm.sock)
        wait_until(lambda: vm.out.count(b"SPIN") == 1, "the guest")
        for n in range(2, 5):  # running: reset, and it keeps running
            q.events.clear()
            assert q.cmd("system_reset") == {}
            assert [e["event"] for e in q.events] == ["RESET"]  # before the reply
            assert q.events[0]["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
            assert q.cmd("query-status")["status"] == "running"
            wait_until(lambda: vm.out.count(b"SPIN") == n, "the guest after the reset")
        q.cmd("stop")
        q.events.clear()
        assert q.cmd("system_reset") == {}
        assert [e["event"] for e in q.events] == ["RESET"]
        assert q.cmd("query-status") == {"status": "prelaunch", "singlestep": False, "running": False}
        for _ in range(5):  # (the new machine's vCPU has not run: it would print SPIN at once)
            time.sleep(0.1)
            assert vm.out.count(b"SPIN") == 4
        q.cmd("cont")
        wait_until(lambda: vm.out.count(b"SPIN") == 5, "the guest after cont")
        q.cmd("quit")
        assert vm.wait() == 0


def test_a_guest_halted_with_interrupts_off_stays_running_as_in_qemu(guest_cache, tmp_path):
    """cli; hlt: KVM's in-kernel LAPIC keeps the vCPU halted for ever; QEMU 7.2 answers
    running and sends no event (checked with the same guest), and so does microvm; the
    monitor still drives it (stop, cont, quit with its SHUTDOWN)."""
    import time

    elf = build_guest("halt", guest_cache)
    with Vm(str(tmp_path), "--kernel", str(elf)) as vm:
        q = Line(vm.sock)
        wait_until(lambda: vm.out == b"HALT\n", "the guest to halt")
        time.sleep(0.5)
        assert q.cmd("query-status")["status"] == "running" and q.events == []
        q.cmd("stop")
        q.cmd("cont")
        assert [e["event"] for e in q.events] == ["STOP", "RESUME"]
        q.cmd("quit")
        assert q.event("SHUTDOWN")["data"] == {"guest": False, "reason": "host-qmp-quit"}
        assert vm.wait() == 0 and vm.out == b"HALT\n"


def test_isa_debug_exit_reports_a_guest_shutdown(guest_cache, tmp_path):
    """A guest ending the VM through isa-debug-exit: the client learns it from SHUTDOWN
    {guest: true, reason: guest-shutdown} (QEMU exits without an event) before the socket
    closes; the status is the guest's."""
    elf = build_guest("debug-exit", guest_cache)
    with Vm(str(tmp_path), "--kernel", str(elf), "--device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-S") as vm:
        q = Line(vm.sock)
        q.cmd("cont")
        assert q.event("SHUTDOWN")["data"] == {"guest": True, "reason": "guest-shutdown"}
        assert q.f.readline() == b""  # then the end
        assert vm.wait() % 2 == 1


@pytest.mark.parametrize("prelaunch", [False, True], ids=["running", "prelaunch"])
def test_a_client_connecting_at_once_is_answered_only_once_the_vcpu_threads_exist(guest_cache, tmp_path, prelaunch):
    """QEMU serves its monitors from the main loop, which runs after the machine (and its
    vCPU threads) is created: a client that connects at once (Kata reads vCPU thread ids
    with query-cpus-fast) never sees ``[]``. The machine is held before its vCPU threads
    start by a wait=on serial socket nobody has connected to yet: the QMP client's greeting
    and answers come only once that client connects and the vCPUs exist (also with -S,
    whose vCPU threads exist but are parked)."""
    elf = build_guest("spin", guest_cache)
    ser = tmp_path / "ser.sock"
    with Vm(str(tmp_path), "--kernel", str(elf), "--smp", "2", "--chardev",
            f"socket,id=s0,path={ser},server=on,wait=on", "--serial", "chardev:s0",
            *(["-S"] if prelaunch else [])) as vm:
        q = socket.socket(socket.AF_UNIX)
        wait_until(lambda: q.connect_ex(vm.sock) == 0, "the QMP socket accepting")
        q.sendall(b'{"execute": "qmp_capabilities"}{"execute": "query-cpus-fast"}')
        q.settimeout(1.0)
        with pytest.raises(socket.timeout):  # the machine waits for its serial client: no main loop yet
            q.recv(65536)
        serial = socket.socket(socket.AF_UNIX)
        wait_until(lambda: serial.connect_ex(str(ser)) == 0, "the serial socket")
        q.settimeout(60)
        f = q.makefile("rb")
        assert f.readline().startswith(b'{"QMP": {"version"')
        assert f.readline() == b'{"return": {}}\r\n'
        import json

        cpus = json.loads(f.readline())["return"]
        assert [c["cpu-index"] for c in cpus] == [0, 1], cpus
        for c in cpus:  # real threads of the microvm process, not placeholders
            assert c["thread-id"] and os.path.isdir(f"/proc/{vm.proc.pid}/task/{c['thread-id']}"), cpus
        q.sendall(b'{"execute": "query-status"}')
        assert json.loads(f.readline())["return"]["status"] == ("prelaunch" if prelaunch else "running")
        q.sendall(b'{"execute": "quit"}')
        assert b'"SHUTDOWN"' in f.readline() and f.readline() == b'{"return": {}}\r\n'  # QEMU's order
        assert vm.wait() == 0
        serial.close()
        q.close()
