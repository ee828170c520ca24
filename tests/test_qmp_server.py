"""The QMP server over real sockets: several clients, events, real QMP clients (qemu.qmp,
socat), hostile clients, binding and clean-up. No timing assertions: waits are bounded
polls whose timeouts only stop a broken test from hanging."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator

import pytest

from microvm.errors import ConfigError
from microvm.qmp.server import QmpServer
from qmp_fakes import FakeMachine

GREETING_PREFIX = b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}'


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Client:
    """A raw line-oriented QMP client (what socat or a shell script would do)."""

    def __init__(self, server: QmpServer | str) -> None:
        if isinstance(server, str):  # a Unix socket path
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(server)
        elif server.address.kind == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(server.path)
        else:
            self.sock = socket.create_connection(("127.0.0.1", server.port))
        self.sock.settimeout(20)
        self.buf = b""
        self.greeting = self.line()

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed the connection")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def msg(self) -> dict[str, Any]:
        return json.loads(self.line())

    def send(self, obj: Any) -> None:
        self.sock.sendall(json.dumps(obj).encode())

    def cmd(self, name: str, **args: Any) -> dict[str, Any]:
        req: dict[str, Any] = {"execute": name}
        if args:
            req["arguments"] = args
        self.send(req)
        while True:
            m = self.msg()
            if "event" not in m:
                return m

    def negotiate(self) -> "Client":
        assert self.cmd("qmp_capabilities") == {"return": {}}
        return self

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def machine() -> FakeMachine:
    return FakeMachine()


@pytest.fixture
def make_server(tmp_path, machine) -> Iterator[Callable[..., QmpServer]]:
    servers: list[QmpServer] = []

    def make(address: str | None = None, **kw: Any) -> QmpServer:
        srv = QmpServer(address or f"unix:{tmp_path}/qmp{len(servers)}.sock", machine, **kw)
        machine.emit = srv.emit_event
        srv.start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.close()


@pytest.fixture
def server(make_server) -> QmpServer:
    return make_server()


# ---------------------------------------------------------------------------- basics
def test_greeting_negotiation_and_commands(server, machine):
    c = Client(server)
    assert c.greeting.startswith(GREETING_PREFIX)
    assert c.cmd("query-status")["error"]["class"] == "CommandNotFound"
    c.negotiate()
    assert c.cmd("query-status") == {"return": {"status": "running", "singlestep": False, "running": True}}
    c.send({"execute": "stop", "id": 1})
    assert c.msg()["event"] == "STOP"
    assert c.msg() == {"return": {}, "id": 1}
    assert machine.state == "paused"
    c.close()


def test_event_precedes_the_reply_of_the_command_that_caused_it(server):
    c = Client(server).negotiate()
    c.sock.sendall(b'{"execute": "stop", "id": 1}{"execute": "cont", "id": 2}{"execute": "stop", "id": 3}')
    seq = [c.msg() for _ in range(6)]
    assert [m.get("event") or m["id"] for m in seq] == ["STOP", 1, "RESUME", 2, "STOP", 3]
    assert all(set(m["timestamp"]) == {"seconds", "microseconds"} for m in seq if "event" in m)


def test_several_clients_have_their_own_negotiation_and_events_reach_negotiated_ones_only(server):
    a, b, c = Client(server).negotiate(), Client(server).negotiate(), Client(server)
    assert c.cmd("query-kvm")["error"]["desc"] == "Expecting capabilities negotiation with 'qmp_capabilities'"
    assert a.cmd("stop") == {"return": {}}
    assert b.msg()["event"] == "STOP"
    server.emit_event("RESET", {"guest": True, "reason": "guest-reset"})
    for cl in (a, b):
        ev = cl.msg()
        while ev.get("event") == "STOP":  # a sees its own STOP first
            ev = cl.msg()
        assert ev["event"] == "RESET" and ev["data"] == {"guest": True, "reason": "guest-reset"}
    # c never negotiated: the only thing waiting for it is its own next reply
    assert c.cmd("qmp_capabilities") == {"return": {}}
    assert c.cmd("query-name") == {"return": {"name": "vm0"}}


def test_events_from_many_threads(server):
    c = Client(server).negotiate()
    n_threads, per_thread = 8, 50

    def emit() -> None:
        for _ in range(per_thread):
            server.emit_event("RESUME")

    threads = [threading.Thread(target=emit) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = [c.msg() for _ in range(n_threads * per_thread)]
    assert all(e["event"] == "RESUME" for e in events)
    with pytest.raises(ValueError):
        server.emit_event("NOT_AN_EVENT")


def test_tcp_address(make_server):
    srv = make_server("tcp:127.0.0.1:0")
    assert srv.port > 0
    c = Client(srv).negotiate()
    assert c.cmd("query-kvm") == {"return": {"enabled": True, "present": True}}


# ---------------------------------------------------------------------------- real clients
def test_qemu_qmp_client_runs_every_command_and_gets_events(server, machine):
    qmp_mod = pytest.importorskip("qemu.qmp", reason="the qemu.qmp package (PyPI) is not installed")

    async def session() -> None:
        qmp = qmp_mod.QMPClient("microvm-test")
        await qmp.connect(server.path)  # reads the greeting and negotiates
        assert qmp.greeting is not None
        assert qmp.greeting._raw["QMP"]["version"]["qemu"] == {"micro": 0, "minor": 2, "major": 7}
        assert await qmp.execute("query-version") == {
            "qemu": {"micro": 0, "minor": 2, "major": 7}, "package": qmp.greeting._raw["QMP"]["version"]["package"]}
        names = {c["name"] for c in await qmp.execute("query-commands")}
        assert "query-cpus-fast" in names
        assert await qmp.execute("query-name") == {"name": "vm0"}
        assert (await qmp.execute("query-status"))["status"] == "running"
        assert (await qmp.execute("query-cpus-fast"))[1]["thread-id"] == 4001
        assert await qmp.execute("query-kvm") == {"enabled": True, "present": True}
        assert (await qmp.execute("query-machines"))[0]["name"] == "microvm"
        assert (await qmp.execute("query-chardev"))[0]["label"] == "serial0"
        assert (await qmp.execute("query-block"))[0]["inserted"]["drv"] == "raw"
        assert await qmp.execute("human-monitor-command", {"command-line": "info status"}) == "VM status: running\r\n"
        with qmp.listener() as listener:
            assert await qmp.execute("stop") == {}
            assert (await listener.get())["event"] == "STOP"
            assert await qmp.execute("cont") == {}
            assert (await listener.get())["event"] == "RESUME"
            assert await qmp.execute("system_reset") == {}
            ev = await listener.get()
            assert ev["event"] == "RESET" and ev["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
            assert await qmp.execute("quit") == {}
            ev = await listener.get()
            assert ev["event"] == "SHUTDOWN" and ev["data"]["reason"] == "host-qmp-quit"
        with pytest.raises(qmp_mod.ExecuteError) as err:
            await qmp.execute("no-such-command")
        assert err.value.error_class == "CommandNotFound"
        with pytest.raises(qmp_mod.ExecuteError) as err:
            await qmp.execute("human-monitor-command", {"command-line": 1})
        assert err.value.error_class == "GenericError"
        await qmp.disconnect()

    asyncio.run(asyncio.wait_for(session(), 60))
    assert machine.calls == ["stop", "cont", "system_reset", "quit"]


def test_socat_sends_raw_lines(server):
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat is not installed (Debian package 'socat')")
    lines = (b'{"execute": "qmp_capabilities"}\n'
             b'{"execute": "query-status", "id": 1}\n'
             b'{"execute": "query-name"}{"execute": "bad json\n'
             b'"}\n')
    # -t: keep reading 2 s after stdin ends, so every reply arrives
    out = subprocess.run([socat, "-t", "2", "-", f"UNIX-CONNECT:{server.path}"], input=lines,
                         capture_output=True, timeout=60, check=True).stdout
    got = out.split(b"\r\n")
    assert got[0].startswith(GREETING_PREFIX)
    assert got[1] == b'{"return": {}}'
    assert got[2] == b'{"return": {"status": "running", "singlestep": false, "running": true}, "id": 1}'
    assert got[3] == b'{"return": {"name": "vm0"}}'
    assert got[4] == b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\"bad json\\n\'"}}'


# ---------------------------------------------------------------------------- hostile clients
def test_malformed_json_gets_an_error_and_the_client_is_still_served(server):
    c = Client(server).negotiate()
    c.sock.sendall(b'{"execute": "query-status"]')
    assert c.msg() == {"error": {"class": "GenericError", "desc": "JSON parse error, expected separator in dict"}}
    # QEMU's recovery stops at control characters, so each is reported; "garbage" is skipped
    c.sock.sendall(b"\x01\x02garbage!!")
    assert [c.msg()["error"]["desc"] for _ in range(2)] == ["JSON parse error, stray '\x01'", "JSON parse error, stray '\x02'"]
    assert c.cmd("query-kvm") == {"return": {"enabled": True, "present": True}}


def test_a_100_mib_object_is_refused_and_memory_stays_bounded(server):
    """The server refuses the message once it passes max_message (1 MiB) and closes that
    connection; the client keeps sending 100 MiB regardless. Bound: 64 MiB of RSS growth,
    far below the 100 MiB a server that buffered the object would need (and a Python one
    parsing it would need several times that), with room for allocator noise."""
    other = Client(server).negotiate()
    before = rss_bytes()
    hostile = Client(server)
    chunk = b"a" * (1 << 20)
    hostile.sock.sendall(b'{"execute": "qmp_capabilities", "arguments": {"x": "')
    sent = 0
    try:
        for _ in range(100):
            hostile.sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # the server closed the connection, as it should
    assert hostile.msg() == {"error": {"class": "GenericError", "desc": "JSON token size limit exceeded"}}
    with pytest.raises((EOFError, ConnectionResetError)):
        hostile.line()
    assert server.stats["dropped_limit"] == 1
    assert other.cmd("query-status")["return"]["running"] is True
    assert rss_bytes() - before < 64 << 20


def test_1000_connections_opened_and_dropped(server):
    keep = Client(server).negotiate()
    before = rss_bytes()
    for i in range(1000):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(server.path)
        if i % 3 == 1:
            s.sendall(b'{"execute": "qmp_capab')  # half a request, then gone
        s.close()
    wait_until(lambda: server.stats["accepted"] >= 1001 and server.client_count == 1, "the dropped connections to be reaped")
    assert keep.cmd("query-name") == {"return": {"name": "vm0"}}
    assert rss_bytes() - before < 64 << 20


def test_more_clients_than_max_clients_wait_in_the_backlog(make_server):
    srv = make_server(max_clients=2, evict_idle=600)
    a, b = Client(srv), Client(srv)
    late = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    late.connect(srv.path)  # queued by the kernel, not yet accepted
    late.settimeout(0.2)
    with pytest.raises(TimeoutError):
        late.recv(100)
    a.close()
    late.settimeout(20)
    assert late.recv(4096).startswith(GREETING_PREFIX)
    assert b.negotiate().cmd("query-kvm")["return"]["present"] is True


def test_idle_clients_make_room_for_a_new_one(make_server):
    """Every slot taken: a client that never negotiated (a leaked or stuck connection) is
    dropped for a newcomer once silent for evict_idle; a negotiated one is never dropped,
    however silent (an event watcher is silent by design): the newcomer then waits in the
    backlog, as QEMU keeps it waiting, until a client leaves."""
    srv = make_server(max_clients=3, evict_idle=0.5)
    talker = Client(srv).negotiate()
    watcher = Client(srv).negotiate()
    mute = Client(srv)  # connected, never negotiates
    late = Client(srv)  # waits until mute has been silent long enough
    assert late.greeting.startswith(GREETING_PREFIX)
    assert late.negotiate().cmd("query-status")["return"]["status"] == "running"
    with pytest.raises((EOFError, ConnectionResetError)):
        mute.line()
    assert srv.stats["evicted"] == 1 and srv.client_count == 3
    # every slot negotiated: the next one waits, the silent watcher stays
    later = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    later.connect(srv.path)
    later.settimeout(3 * 0.5 + 1)
    with pytest.raises(socket.timeout):
        later.recv(1)  # no greeting: not accepted while no slot may be freed
    assert srv.stats["evicted"] == 1
    assert watcher.cmd("query-kvm")["return"]["present"] is True
    talker.sock.close()  # a slot is free: the waiting connection gets its greeting
    later.settimeout(30)
    assert later.recv(4096).startswith(b'{"QMP"')
    later.close()
    assert late.cmd("query-kvm")["return"]["present"] is True


def test_emfile_from_accept_neither_spins_nor_kills_the_server(tmp_path):
    """Out of descriptors: accept() fails with EMFILE while connections wait. The server
    warns once, backs off (a few accept attempts, not a spin on the readable listener), keeps
    serving the clients it has, and accepts again once descriptors are free. The server runs
    in a child process whose RLIMIT_NOFILE is then lowered."""
    code = f"""
import os, resource, sys, time
sys.path.insert(0, {os.path.dirname(__file__)!r})
from qmp_fakes import FakeMachine
from microvm.qmp.server import QmpServer
srv = QmpServer("unix:{tmp_path}/e.sock", FakeMachine())
srv.start()
fd = os.open("/dev/null", os.O_RDONLY); os.close(fd)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
free = [n for n in range(fd, fd + 64) if not os.path.exists(f"/proc/self/fd/{{n}}")]
resource.setrlimit(resource.RLIMIT_NOFILE, (free[2], hard))  # room for two clients
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "stats":
        print(srv.stats["accepted"], srv.stats["accept_errors"], srv.client_count, flush=True)
    elif line.strip() == "raise":
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        print("raised", flush=True)
srv.close()
"""
    proc = subprocess.Popen([sys.executable, "-c", "import logging; logging.basicConfig(); " + code],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()

        def stats() -> tuple[int, int, int]:
            proc.stdin.write("stats\n")
            proc.stdin.flush()
            a, e, c = proc.stdout.readline().split()
            return int(a), int(e), int(c)

        path = f"{tmp_path}/e.sock"
        first = [Client(path).negotiate() for _ in range(2)]
        waiting = []
        for _ in range(5):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)  # queued in the backlog; accept() fails with EMFILE
            waiting.append(s)
        wait_until(lambda: stats()[1] >= 2, "accept to fail")
        time.sleep(1.0)  # a spinning loop would retry thousands of times meanwhile
        accepted, errors, count = stats()
        assert accepted == 2 and count == 2
        assert errors < 40, f"{errors} accept attempts in a second: the server spins"
        assert first[0].cmd("query-status")["return"]["status"] == "running"  # still served
        proc.stdin.write("raise\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "raised"
        waiting[0].settimeout(20)
        assert waiting[0].recv(4096).startswith(GREETING_PREFIX)  # accepted again
        wait_until(lambda: stats()[0] == 7, "the waiting connections to be accepted")
        for c in first:
            c.close()
        for s in waiting:
            s.close()
        proc.stdin.close()
        assert proc.wait(30) == 0
        err = proc.stderr.read()
        assert err.count("cannot accept a client") == 1, err  # one warning for the episode
        assert "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_client_that_never_reads_is_dropped_and_others_keep_their_events(server):
    """Events pile up for a client that never reads until its queue passes max_output
    (1 MiB); it is dropped, while a reading client receives every event. Events come in
    batches the reader keeps up with, as a VM's state changes do (a tight loop of 30000
    emits from another thread would also outrun a reading client sharing our GIL)."""
    slow = Client(server).negotiate()
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader = Client(server).negotiate()
    received: list[dict[str, Any]] = []
    failed: list[BaseException] = []
    batches, per_batch = 300, 100  # ~3.3 MB of events: more than socket buffers plus max_output

    def read_all() -> None:
        try:
            while len(received) < batches * per_batch:
                received.append(reader.msg())
        except BaseException as e:  # reported by the main thread
            failed.append(e)

    t = threading.Thread(target=read_all)
    t.start()
    before = rss_bytes()
    for b in range(batches):
        for _ in range(per_batch):
            server.emit_event("RESET", {"guest": True, "reason": "guest-reset"})
        wait_until(lambda: len(received) >= (b + 1) * per_batch or failed, "the reader to keep up")
    t.join(60)
    assert not failed and not t.is_alive()
    assert len(received) == batches * per_batch and all(e["event"] == "RESET" for e in received)
    wait_until(lambda: server.stats["dropped_slow"] == 1, "the slow client to be dropped")
    assert server.client_count == 1
    assert rss_bytes() - before < 64 << 20


def test_a_client_that_sends_commands_but_never_reads_is_dropped(server):
    other = Client(server).negotiate()
    slow = Client(server).negotiate()
    req = b'{"execute": "query-commands"}' * 100
    try:
        for _ in range(1000):  # each batch asks for ~100 replies of ~0.8 kB
            slow.sock.sendall(req)
            if server.stats["dropped_slow"]:
                break
    except OSError:
        pass
    wait_until(lambda: server.stats["dropped_slow"] == 1, "the non-reading client to be dropped")
    assert other.cmd("query-status")["return"]["status"] == "running"


# ---------------------------------------------------------------------------- binding and closing
def test_socket_file_is_removed_on_close_and_a_stale_one_replaced(tmp_path, machine):
    path = tmp_path / "q.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # left behind by a crashed run
    stale.close()
    srv = QmpServer(f"unix:{path},server=on,wait=off", machine)
    srv.start()
    assert path.exists() and not srv.wait
    Client(srv).negotiate()
    srv.close()
    assert not path.exists()
    srv.close()  # twice is fine


def test_close_delivers_the_reply_to_quit(make_server, machine):
    srv = make_server()
    c = Client(srv).negotiate()

    def quit_and_close() -> None:
        machine.calls.append("quit")
        machine.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        threading.Thread(target=srv.close).start()  # the machine stops, then closes QMP

    machine.quit = quit_and_close  # type: ignore[method-assign]
    c.send({"execute": "quit", "id": "q"})
    assert c.msg()["event"] == "SHUTDOWN"
    assert c.msg() == {"return": {}, "id": "q"}
    with pytest.raises((EOFError, ConnectionResetError)):
        c.line()


def test_close_from_inside_a_command_still_answers(make_server, machine):
    srv = make_server()
    c = Client(srv).negotiate()

    def quit_now() -> None:  # a machine side that tears QMP down synchronously
        machine.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        srv.close()

    machine.quit = quit_now  # type: ignore[method-assign]
    c.send({"execute": "quit"})
    assert c.msg()["event"] == "SHUTDOWN"
    assert c.msg() == {"return": {}}
    with pytest.raises((EOFError, ConnectionResetError)):
        c.line()
    wait_until(lambda: not os.path.exists(srv.path), "the socket file to be removed")


@pytest.mark.parametrize("address, message", [
    ("unix:/nonexistent-dir/q.sock", "No such file or directory"),
    ("tcp:127.0.0.1:99999", "expected tcp:HOST:PORT"),
    ("unix:/tmp/q.sock,server=off", "only server=on"),
    ("unix:/tmp/q.sock,reconnect=1", "unsupported option"),
    ("stdio", "expected unix:PATH or tcp:HOST:PORT"),
    ("unix:/" + "x" * 200, "longer than 107 bytes"),
])
def test_bad_addresses_are_one_line_config_errors(address, message, machine):
    with pytest.raises(ConfigError) as e:
        QmpServer(address, machine).start()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_path_that_is_not_a_socket_is_refused(tmp_path, machine):
    f = tmp_path / "file"
    f.write_text("keep me")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        QmpServer(f"unix:{f}", machine).start()
    assert f.read_text() == "keep me"


def test_a_port_in_use_is_a_config_error(make_server, machine):
    srv = make_server("tcp:127.0.0.1:0")
    with pytest.raises(ConfigError, match="cannot listen"):
        QmpServer(f"tcp:127.0.0.1:{srv.port}", machine).start()


def test_wait_on_lets_the_machine_wait_for_a_client(tmp_path, make_server):
    srv = make_server(f"unix:{tmp_path}/w.sock,server,wait=on")
    assert srv.wait and not srv.wait_for_client(0)
    # QEMU's defaults: server=on alone waits, wait=off does not, and microvm's own
    # unix:PATH (QEMU would connect to it as a client) listens without waiting
    from microvm.qmp.server import Address

    assert Address("unix:/x,server=on").wait and Address("tcp::4444,server").wait
    assert not Address("unix:/x,server=on,wait=off").wait and not Address("unix:/x,wait=off,server=on").wait
    assert not Address("unix:/x").wait
    # QEMU 7.2's short forms, as its -qmp takes them (without a warning there)
    assert not Address("unix:/x,server,nowait").wait and not Address("unix:/x,server=on,nowait").wait
    assert Address("unix:/x,server").wait and Address("unix:/x,server,wait").wait
    Client(srv)
    assert srv.wait_for_client(20)


def test_importing_microvm_does_not_import_qmp():
    """Start-up cost: the default path must not load the QMP package or json/asyncio."""
    code = ("import sys, microvm, microvm.machine, microvm.cli; "
            "bad = [m for m in ('microvm.qmp', 'json', 'asyncio', 'selectors') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_held_server_accepts_but_neither_greets_nor_answers_until_serve(tmp_path, machine):
    """start(serve=False) is the state before the first machine exists: a client connected
    then (wait=on is satisfied by it) gets nothing, its early command included, until
    serve(); then the greeting and the answer come, in order."""
    srv = QmpServer(f"unix:{tmp_path}/h.sock,server=on,wait=on", machine)
    machine.emit = srv.emit_event
    srv.start(serve=False)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(srv.path)
        assert srv.wait_for_client(20)  # accepted: a wait=on machine may go on building
        sock.sendall(b'{"execute": "qmp_capabilities"}{"execute": "query-cpus-fast"}')
        srv.emit_event("RESUME")  # nobody negotiated: nobody gets it
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):  # nothing is sent before serve()
            sock.recv(65536)
        srv.serve()
        srv.serve()  # idempotent
        sock.settimeout(20)
        c = Client.__new__(Client)
        c.sock, c.buf = sock, b""
        assert c.line().startswith(GREETING_PREFIX)
        assert c.msg() == {"return": {}}
        assert len(c.msg()["return"]) == machine.smp
        c.close()
    finally:
        srv.close()


def test_garbage_over_many_connections_is_not_one_warning_each(server, caplog):
    """A client reconnecting to send a message over the limits (here nesting past QEMU's
    1024) is refused and dropped every time, but the log gets the first of them and counted
    repeats (microvm.log.EventLog, as for guest errors), not one warning per connection."""
    caplog.set_level(logging.INFO, logger="microvm.qmp")
    n = 50
    for _ in range(n):
        c = Client(server)
        c.sock.sendall(b"[" * 1100)
        assert b"nesting depth limit" in c.line()
        with pytest.raises(EOFError):
            c.line()
        c.close()
    wait_until(lambda: server.stats["dropped_limit"] == n, "every connection dropped")
    lines = [r for r in caplog.records if r.name == "microvm.qmp" and "over the limits" in r.getMessage()]
    assert len(lines) <= 2, [r.getMessage() for r in lines]  # the first (unless logged earlier) and a summary


def test_a_flooding_client_gets_a_few_requests_per_turn_not_the_whole_server(tmp_path, machine):
    """Both clients' input is waiting when the server starts serving: 2000 query-status from
    one, a query-name from the other. The server takes at most 8 requests of a client per
    turn (QEMU suspends a monitor whose queue holds 8: QMP_REQ_QUEUE_LEN_MAX), so the
    query-name is answered after a few of the flood's, not after all 2000; and the flood is
    still answered in full and in order."""
    calls: list[str] = []
    real_state, real_name = machine.run_state, machine.name
    machine.run_state = lambda: (calls.append("status"), real_state())[1]
    machine.name = lambda: (calls.append("name"), real_name())[1]
    srv = QmpServer(f"unix:{tmp_path}/f.sock", machine)
    machine.emit = srv.emit_event
    srv.start(serve=False)
    try:
        flood, other = (socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2))
        flood.connect(srv.path)
        flood.sendall(b'{"execute": "qmp_capabilities"}' + b'{"execute": "query-status"}' * 2000)
        other.connect(srv.path)
        other.sendall(b'{"execute": "qmp_capabilities"}{"execute": "query-name"}')
        wait_until(lambda: srv.stats["accepted"] == 2, "both clients accepted")
        srv.serve()
        f = flood.makefile("rb")
        o = other.makefile("rb")
        assert o.readline().startswith(GREETING_PREFIX) and o.readline() == b'{"return": {}}\r\n'
        assert json.loads(o.readline()) == {"return": {"name": "vm0"}}
        assert f.readline().startswith(GREETING_PREFIX) and f.readline() == b'{"return": {}}\r\n'
        for _ in range(2000):
            assert json.loads(f.readline())["return"]["status"] == "running"
        assert calls.count("status") == 2000
        assert calls.index("name") <= 16, calls.index("name")  # a turn or two of the flood first, at most
        flood.close()
        other.close()
    finally:
        srv.close()
