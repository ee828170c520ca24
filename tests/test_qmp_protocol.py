"""The QMP protocol half without sockets: QEMU's JSON dialect, negotiation, every command,
error classes and texts (QEMU 7.2's), events. The server tests cover the transport."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microvm import __version__
from microvm.qmp import control
from microvm.qmp.control import MachineControl
from microvm.qmp.events import check_event, event_message
from microvm.qmp.protocol import QmpSession
from microvm.qmp.qjson import (
    MAX_NESTING, JsonError, JsonStream, _valid_codepoint, qdict_order, to_json, to_line,
)
from qmp_fakes import FakeMachine


# ---------------------------------------------------------------------------- helpers
def values(stream: JsonStream, *chunks: bytes) -> list:
    out = []
    for c in chunks:
        out.extend(stream.feed(c))
    return out


def descs(items: list) -> list:
    return [i.desc if isinstance(i, JsonError) else i for i in items]


def session(state: str = control.RUNNING, negotiated: bool = True, **kw) -> tuple[QmpSession, FakeMachine]:
    m = FakeMachine(state, **kw)
    s = QmpSession(m)
    if negotiated:
        assert exchange(s, {"execute": "qmp_capabilities"}) == [{"return": {}}]
    return s, m


def exchange(s: QmpSession, *reqs, raw: bytes | None = None) -> list:
    data = raw if raw is not None else b"".join(json.dumps(r).encode() for r in reqs)
    lines = list(s.receive(data))
    for line in lines:
        assert line.endswith(b"\r\n") and line.count(b"\n") == 1
    return [json.loads(line) for line in lines]


def wire(s: QmpSession, data: bytes) -> list[bytes]:
    return list(s.receive(data))


# ---------------------------------------------------------------------------- JSON values
_NONCHAR_OK = st.characters(blacklist_categories=("Cs",)).filter(lambda c: _valid_codepoint(ord(c)))
json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(_NONCHAR_OK, max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(_NONCHAR_OK, max_size=8), inner, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(_NONCHAR_OK, max_size=8), json_values, max_size=5)


def same(a, b, loose: bool = False) -> bool:
    """Equality that tells 1 from 1.0 and True from 1 (QEMU keeps them apart too). ``loose``
    lets an integral float equal its int: QEMU's writer prints 2.0 as ``2`` (``%.17g``)."""
    if loose and type(a) in (int, float) and type(b) in (int, float):
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], loose) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y, loose) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def encodings(obj) -> list[bytes]:
    """The same object as QEMU writes it and as other clients would (raw UTF-8, odd spacing)."""
    return [
        to_json(obj).encode(),
        json.dumps(obj, ensure_ascii=False).encode(),
        json.dumps(obj, separators=(",", ":")).encode(),
        json.dumps(obj, indent=1).encode(),
    ]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_objects, min_size=1, max_size=6), st.data())
def test_random_splits_of_a_stream_parse_to_the_same_objects(objs, data):
    style = data.draw(st.integers(0, 3))
    blob = b"".join(encodings(o)[style] + data.draw(st.sampled_from([b"", b" ", b"\r\n", b"\n\t"])) for o in objs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=12)))
    pieces = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)])]
    got = values(JsonStream(), *pieces)
    assert len(got) == len(objs), descs(got)
    for g, o in zip(got, objs):
        assert same(g, o, loose=style == 0), (g, o)


def limited(stream: JsonStream, limit: int, *chunks: bytes) -> list:
    """Feed as the server does: at most ``limit`` items per call, the rest kept for later."""
    out = []
    for c in chunks or (b"",):
        got = stream.feed(c, limit)
        assert len(got) <= limit
        out += got
        while stream.pending:  # (input left unscanned; it may hold no whole item)
            got = stream.feed(b"", limit)
            assert len(got) <= limit
            out += got
    return out


# QMP-shaped and hostile fragments: strings with escaped quotes and braces, numbers the
# lexer must split (0e5) or refuse (1.x), stray bytes, resynchronisation, deep and
# mismatched brackets; random concatenations cut at random points
FRAGMENTS = [b"{", b"}", b"[", b"]", b",", b":", b" ", b"\n", b'"a"', b"'b'", b'"x\\"}{y"', b'"\\u00e9"', b'"\xc3\xa9"',
             b"0", b"12", b"-1", b"1.5", b"0.5e3", b"1e5", b"0e5", b"1.", b"1.x", b"-", b"true", b"nul", b"xyz", b"@",
             b"\xff", b"\x00", b'"open', b"\\", b'"\\q"', b"'", b'{"execute": "query-status", "id": [1, {"a": null}]}',
             b"[[[[1]]]]", b"{[}]", b"]]", b"}"]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40), st.data())
def test_a_per_call_limit_changes_nothing_but_the_pace(parts, data):
    """The server takes a client's requests 8 per turn (QEMU's QMP_REQ_QUEUE_LEN_MAX): the
    items, errors and limits are those of the unlimited stream fed the same reads. (Items
    and errors do not depend on the cuts either; the size limit is checked when a read has
    been scanned, so where it strikes does, as before.)"""
    blob = b"".join(parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=6)))
    pieces = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)])]
    limit = data.draw(st.integers(1, 3))
    whole = descs(values(JsonStream(), blob))
    assert descs(values(JsonStream(), *pieces)) == whole
    assert descs(limited(JsonStream(), limit, *pieces)) == whole
    small = descs(values(JsonStream(64), *pieces))  # with the size limit in play
    assert descs(limited(JsonStream(64), limit, *pieces)) == small


def test_a_flood_in_one_read_is_taken_a_few_requests_at_a_time():
    s = JsonStream()
    flood = b'{"execute": "query-status"}' * 1000 + b" " * 5000 + b"[" * 1025
    got = s.feed(flood, 8)
    assert got == [{"execute": "query-status"}] * 8 and s.pending and not s.dead
    got += limited(s, 8)
    assert got[:1000] == [{"execute": "query-status"}] * 1000
    assert descs(got[1000:]) == ["JSON nesting depth limit exceeded"] and s.dead and not s.pending


@given(st.binary(max_size=2000), st.lists(st.integers(1, 64), max_size=10))
def test_random_bytes_never_raise_and_0xff_resynchronises(garbage, sizes):
    s = JsonStream()
    pos = 0
    got = []
    for n in sizes:
        got += s.feed(garbage[pos:pos + n])
        pos += n
    got += s.feed(garbage[pos:])
    for item in got:  # values or the parser's own error type, never an exception
        assert isinstance(item, (JsonError, dict, list, str, int, float, bool, type(None)))
    # the QMP spec's resynchronisation: 0xFF, then a fresh object, always parses
    tail = s.feed(b'\xff{"execute": "query-status"}')
    if not s.dead:
        assert tail[-1] == {"execute": "query-status"}


@given(json_objects)
def test_writer_output_reads_back_and_is_ascii(obj):
    text = to_json(obj)
    assert text.isascii()
    assert same(json.loads(text), obj, loose=True)
    (back,) = values(JsonStream(), text.encode())
    assert same(back, obj, loose=True)


@pytest.mark.parametrize("data, expected", [
    (b"[1, 2}", "JSON parse error, expected separator in list"),
    (b'{"a" 1}', "JSON parse error, missing : in object pair"),
    (b'{"a": 1 "b": 2}', "JSON parse error, expected separator in dict"),
    (b"{1: 2}", "JSON parse error, key is not a string in object"),
    (b'{"a": }', "JSON parse error, expecting value"),
    (b'{"a": 1,}', "JSON parse error, expecting value"),
    (b"}", "JSON parse error, expecting value"),
    (b'{"a": 1, "a": 2}', "JSON parse error, duplicate key"),
    (b"[tru]", "JSON parse error, invalid keyword 'tru'"),
    (b'["\\x"]', "JSON parse error, invalid escape sequence in string"),
    (b'["\\uD800"]', "JSON parse error, \\uD800 is not a valid Unicode character"),
    (b'["\\uFFFE"]', "JSON parse error, \\uFFFE is not a valid Unicode character"),
    (b'["\\u12"]', 'JSON parse error, \\u12" is not a valid Unicode character'),
    (b'["\xc3"]', "JSON parse error, invalid UTF-8 sequence in string"),
    (b'["\xc1\x81"]', "JSON parse error, invalid UTF-8 sequence in string"),  # overlong
    (b"[0e5]", "JSON parse error, expected separator in list"),  # 0 takes no exponent in QEMU
    (b"@", "JSON parse error, stray '@'"),
    (b"[01]", "JSON parse error, stray '01'"),
    (b"[1.x]", "JSON parse error, stray '1.x'"),
    (b"[-a]", "JSON parse error, stray '-a'"),
    (b'["a\x01"]', "JSON parse error, stray '\"a\x01'"),
    (b"\xff", "JSON parse error, stray '\ufffd'"),
    (b"\x00", "JSON parse error, stray ''"),
])
def test_parse_errors_have_qemus_text(data, expected):
    got = values(JsonStream(), data + b" ")
    assert isinstance(got[0], JsonError) and not got[0].fatal
    assert got[0].desc == expected


def test_qemu_extensions_and_numbers():
    got = values(JsonStream(), b"{'a': 'it''s'}".replace(b"''", b"\\'"), b' ["\\u00e9\\uD83D\\uDE00", "\xc0\x80", -0, 1.5e3, '
                 b"18446744073709551615, 18446744073709551616, -9223372036854775809, 1E2] ")
    assert got[0] == {"a": "it's"}
    lst = got[1]
    assert lst[0] == "\u00e9\U0001F600" and lst[1] == "\x00"  # modified UTF-8's C0 80 is NUL
    assert lst[2:] == [0, 1500.0, (1 << 64) - 1, float(1 << 64), -9223372036854775809.0, 100.0]
    assert type(lst[3]) is float and type(lst[4]) is int and type(lst[5]) is float


def test_scalars_wait_for_a_delimiter_and_errors_resynchronise():
    s = JsonStream()
    assert s.feed(b"42") == []  # like QEMU: a number needs its lookahead byte
    assert s.feed(b" ") == [42]
    # after a stray byte QEMU skips to a structural character: one error, then the object
    assert descs(s.feed(b'#garbage {"execute": "x"}')) == ["JSON parse error, stray '#'", {"execute": "x"}]
    # a stray byte inside an object drops it; the closing brace is then unbalanced
    assert descs(s.feed(b'{"a": @}')) == ["JSON parse error, stray '@'", "JSON parse error, expecting value"]


def test_one_object_byte_by_byte_and_many_in_one_read():
    obj = {"execute": "query-status", "arguments": {"s": "a}]\\\"{[", "n": [1, {"x": None}]}, "id": "é"}
    data = json.dumps(obj).encode()
    s = JsonStream()
    got = []
    for i in range(len(data)):
        got += s.feed(data[i:i + 1])
    assert got == [obj]
    assert JsonStream().feed(data * 50) == [obj] * 50


def test_size_limit_is_fatal_and_bounds_the_buffer():
    s = JsonStream(max_message=4096)
    got = s.feed(b'{"execute": "x", "arguments": {"s": "' + b"a" * 3000)
    assert got == [] and s.buffered < 4096
    got = s.feed(b"a" * 3000)
    assert descs(got) == ["JSON token size limit exceeded"] and got[0].fatal
    assert s.dead and s.buffered == 0 and s.feed(b'{"execute": "x"}') == []
    # input that is skipped (error recovery, whitespace between messages) is not held
    s = JsonStream(max_message=4096)
    s.feed(b"#" + b"x" * 100000)
    s.feed(b" " * 100000)
    assert not s.dead and s.buffered == 0


def test_nesting_limit_is_qemus():
    deep = b"[" * MAX_NESTING + b"]" * MAX_NESTING
    got = JsonStream().feed(deep)
    assert len(got) == 1 and not isinstance(got[0], JsonError)
    v, depth = got[0], 0
    while v:
        v, depth = v[0], depth + 1
    assert depth == MAX_NESTING - 1
    got = JsonStream().feed(b"[" * (MAX_NESTING + 1))
    assert descs(got) == ["JSON nesting depth limit exceeded"] and got[0].fatal


# ---------------------------------------------------------------------------- writer
def test_writer_is_byte_exact_with_qemu():
    assert to_json({"major": 7, "minor": 2, "micro": 0}) == '{"micro": 0, "minor": 2, "major": 7}'
    assert to_json({"running": True, "singlestep": False, "status": "running"}) == \
        '{"status": "running", "singlestep": false, "running": true}'
    assert to_json({"label": "serial0", "filename": "stdio", "frontend-open": True}) == \
        '{"frontend-open": true, "filename": "stdio", "label": "serial0"}'
    assert to_json(["é\x01\x7f\u2028😀", "/\"\\\n", [], {}, 1.5, -3]) == \
        '["\\u00E9\\u0001\\u007F\\u2028\\uD83D\\uDE00", "/\\"\\\\\\n", [], {}, 1.5, -3]'
    assert to_line({"return": {}}) == b'{"return": {}}\r\n'
    deep: list = []
    cur = deep
    for _ in range(5000):  # no recursion: any id a client can send can be echoed
        cur.append([])
        cur = cur[0]
    assert to_json(deep) == "[" * 5001 + "]" * 5001
    assert qdict_order({"error": 1, "id": 2}) == ["id", "error"]
    assert qdict_order({"return": 1, "id": 2}) == ["return", "id"]


# ---------------------------------------------------------------------------- protocol
def test_greeting_is_qemu_72_with_microvm_package():
    s = QmpSession(FakeMachine())
    assert s.greeting_line() == (
        b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, '
        b'"package": "microvm ' + __version__.encode() + b'"}, "capabilities": []}}\r\n')


def test_negotiation():
    s, m = session(negotiated=False)
    nego = {"error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}
    assert exchange(s, {"execute": "query-status", "id": 1}) == [{**nego, "id": 1}]
    assert exchange(s, {"execute": "no-such-command"}) == [nego]
    assert exchange(s, {"execute": "stop"}) == [nego] and m.calls == []
    # request-level errors are not rewritten
    assert exchange(s, {"id": 2}) == [{"id": 2, "error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}}]
    assert exchange(s, {"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}) == [
        {"error": {"class": "GenericError", "desc": "Capability oob not available"}}]
    assert exchange(s, {"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}}) == [
        {"error": {"class": "GenericError", "desc": "Parameter 'null' does not accept value 'bogus'"}}]
    assert exchange(s, {"execute": "qmp_capabilities", "arguments": {"enable": "oob"}}) == [
        {"error": {"class": "GenericError", "desc": "Invalid parameter type for 'enable', expected: array"}}]
    assert exchange(s, {"execute": "qmp_capabilities", "arguments": {"enable": [1]}}) == [
        {"error": {"class": "GenericError", "desc": "Invalid parameter type for 'enable[0]', expected: string"}}]
    assert not s.negotiated
    assert exchange(s, {"execute": "qmp_capabilities", "arguments": {"enable": []}, "id": "n"}) == [{"return": {}, "id": "n"}]
    assert exchange(s, {"execute": "qmp_capabilities"}) == [{"error": {
        "class": "CommandNotFound", "desc": "Capabilities negotiation is already complete, command ignored"}}]
    assert exchange(s, {"execute": "no-such-command"}) == [{"error": {
        "class": "CommandNotFound", "desc": "The command no-such-command has not been found"}}]


@given(json_values)
def test_any_id_is_echoed(ident):
    s, _ = session()
    assert same(exchange(s, {"execute": "query-name", "id": ident})[0]["id"], ident, loose=True)
    assert same(exchange(s, {"execute": "nope", "id": ident})[0]["id"], ident, loose=True)


def test_request_shape_errors():
    s, _ = session()

    def err(desc):
        return {"error": {"class": "GenericError", "desc": desc}}

    assert exchange(s, [1]) == [err("QMP input must be a JSON object")]
    assert exchange(s, raw=b'"query-status" ') == [err("QMP input must be a JSON object")]
    assert exchange(s, {"execute": 1, "id": 7}) == [{**err("QMP input member 'execute' must be a string"), "id": 7}]
    assert exchange(s, {"execute": "stop", "arguments": []}) == [err("QMP input member 'arguments' must be an object")]
    assert exchange(s, {"execute": "stop", "foo": 1}) == [err("QMP input member 'foo' is unexpected")]
    assert exchange(s, {"exec-oob": "stop"}) == [err("QMP input member 'exec-oob' is unexpected")]
    assert exchange(s, raw=b'{"execute": "stop",}') == [err("JSON parse error, expecting value")]
    # an error reply with an id puts "id" first, as QEMU's QDict does
    assert wire(s, b'{"execute": "nope", "id": 1}')[0].startswith(b'{"id": 1, "error": ')


def test_argument_errors_use_the_visitors_wording():
    s, _ = session()
    hmc = "human-monitor-command"

    def desc(args):
        return exchange(s, {"execute": hmc, "arguments": args})[0]["error"]["desc"]

    assert desc({}) == "Parameter 'command-line' is missing"
    assert desc({"command-line": 5}) == "Invalid parameter type for 'command-line', expected: string"
    assert desc({"command-line": "info status", "cpu-index": "0"}) == \
        "Invalid parameter type for 'cpu-index', expected: integer"
    assert desc({"command-line": "info status", "cpu-index": 1.0}) == \
        "Invalid parameter type for 'cpu-index', expected: integer"
    assert desc({"command-line": "info status", "cpu-index": True}) == \
        "Invalid parameter type for 'cpu-index', expected: integer"
    assert desc({"command-line": "info status", "cpu-index": 9}) == "Parameter 'cpu-index' expects a CPU number"
    assert desc({"command-line": "info status", "bogus": 1}) == "Parameter 'bogus' is unexpected"
    assert desc({"bogus": 1}) == "Parameter 'command-line' is missing"  # members before extras
    assert exchange(s, {"execute": "query-status", "arguments": {"x": None}})[0]["error"]["desc"] == \
        "Parameter 'x' is unexpected"


def test_query_commands_lists_every_command():
    s, _ = session()
    names = {c["name"] for c in exchange(s, {"execute": "query-commands"})[0]["return"]}
    assert names == {
        "qmp_capabilities", "query-version", "query-commands", "query-name", "query-status", "stop", "cont",
        "system_reset", "quit", "query-cpus-fast", "query-kvm", "query-machines", "query-chardev",
        "query-block", "human-monitor-command",
    }


def test_query_commands_results_on_the_wire():
    s, _ = session()
    assert wire(s, b'{"execute": "query-version"}') == [
        b'{"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "microvm ' + __version__.encode() + b'"}}\r\n']
    assert wire(s, b'{"execute": "query-status", "id": "s1"}') == [
        b'{"return": {"status": "running", "singlestep": false, "running": true}, "id": "s1"}\r\n']
    assert wire(s, b'{"execute": "query-name"}') == [b'{"return": {"name": "vm0"}}\r\n']
    assert wire(s, b'{"execute": "query-kvm"}') == [b'{"return": {"enabled": true, "present": true}}\r\n']
    assert wire(s, b'{"execute": "query-cpus-fast"}') == [
        b'{"return": [{"thread-id": 4000, "props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, '
        b'"qom-path": "/machine/unattached/device[0]", "cpu-index": 0, "target": "x86_64"}, '
        b'{"thread-id": 4001, "props": {"core-id": 1, "thread-id": 0, "socket-id": 0}, '
        b'"qom-path": "/machine/unattached/device[1]", "cpu-index": 1, "target": "x86_64"}]}\r\n']
    assert wire(s, b'{"execute": "query-chardev"}') == [
        b'{"return": [{"frontend-open": true, "filename": "stdio", "label": "serial0"}, '
        b'{"frontend-open": true, "filename": "unix:/tmp/q.sock,server=on", "label": "compat_monitor0"}]}\r\n']
    machines = exchange(s, {"execute": "query-machines"})[0]["return"]
    assert machines == [{"name": "microvm", "cpu-max": 288, "hotpluggable-cpus": False, "numa-mem-supported": False,
                         "deprecated": False, "default-cpu-type": "qemu64-x86_64-cpu", "default-ram-id": "microvm.ram"}]
    (blk,) = exchange(s, {"execute": "query-block"})[0]["return"]
    assert blk["device"] == "drive0" and blk["locked"] is False and blk["removable"] is False
    assert blk["qdev"] == "/machine/peripheral-anon/device[0]/virtio-backend" and blk["io-status"] == "ok"
    ins = blk["inserted"]
    assert ins["file"] == "/var/lib/disk.img" and ins["ro"] is False and ins["drv"] == "raw"
    assert ins["image"] == {"filename": "/var/lib/disk.img", "format": "raw", "virtual-size": 64 << 20, "actual-size": 1 << 20,
                            "dirty-flag": False}
    assert ins["cache"] == {"writeback": True, "direct": False, "no-flush": False}
    assert ins["node-name"].startswith("#block") and ins["backing_file_depth"] == 0


def test_query_name_without_a_name():
    s, _ = session(name=None)
    assert exchange(s, {"execute": "query-name"}) == [{"return": {}}]


def test_stop_cont_follow_qemu_72_run_state_rules():
    s, m = session()
    assert exchange(s, {"execute": "stop"}) == [{"return": {}}]
    assert m.state == "paused" and m.emitted == [("STOP", None)]
    assert exchange(s, {"execute": "stop"}) == [{"return": {}}]  # already paused: no-op, no event
    assert m.calls == ["stop"] and len(m.emitted) == 1
    assert exchange(s, {"execute": "query-status"})[0]["return"] == {"status": "paused", "singlestep": False, "running": False}
    assert exchange(s, {"execute": "cont"}) == [{"return": {}}] and m.state == "running"
    assert exchange(s, {"execute": "cont"}) == [{"return": {}}]  # running: QEMU 7.2 says {} too
    assert m.calls == ["stop", "cont"] and m.emitted[-1] == ("RESUME", None)
    for state in ("shutdown", "internal-error"):
        m.state = state
        assert exchange(s, {"execute": "cont"}) == [{"error": {"class": "GenericError",
                                                               "desc": "Resetting the Virtual Machine is required"}}]
    for state in ("prelaunch", "guest-panicked"):
        m.state = state
        assert exchange(s, {"execute": "cont"}) == [{"return": {}}] and m.state == "running"


def test_system_reset_and_quit_reach_the_machine():
    s, m = session()
    assert exchange(s, {"execute": "system_reset"}, {"execute": "quit"}) == [{"return": {}}, {"return": {}}]
    assert m.calls == ["system_reset", "quit"]


@pytest.mark.parametrize("line, state, expected", [
    ("info status", "running", "VM status: running\r\n"),
    ("info status", "paused", "VM status: paused\r\n"),
    ("info status", "prelaunch", "VM status: paused (prelaunch)\r\n"),
    ("info status", "guest-panicked", "VM status: paused (guest-panicked)\r\n"),
    ("info name", "running", "vm0\r\n"),
    ("info kvm", "running", "kvm support: enabled\r\n"),
    ("info cpus", "running", "* CPU #0: thread_id=4000\r\n  CPU #1: thread_id=4001\r\n"),
    ("info version", "running", f"7.2.0microvm {__version__}\r\n"),
    ("", "running", ""),
    ("frobnicate", "running", "unknown command: 'frobnicate'\r\n"),
    ("info frob", "running", "unknown command: 'info frob'\r\n"),
    ("cont", "shutdown", "Error: Resetting the Virtual Machine is required\r\n"),
])
def test_human_monitor_command(line, state, expected):
    s, _ = session(state)
    assert exchange(s, {"execute": "human-monitor-command", "arguments": {"command-line": line}}) == [{"return": expected}]


def test_hmp_stop_acts_like_qmp_stop():
    s, m = session()
    assert exchange(s, {"execute": "human-monitor-command", "arguments": {"command-line": "stop"}}) == [{"return": ""}]
    assert m.state == "paused"


def test_a_machine_side_exception_is_an_error_reply_not_a_crash():
    s, m = session()

    def boom():
        raise RuntimeError("vCPU pause failed")

    m.stop = boom  # type: ignore[method-assign]
    (rsp,) = exchange(s, {"execute": "stop", "id": 3})
    assert rsp["id"] == 3 and rsp["error"]["class"] == "GenericError" and "vCPU pause failed" in rsp["error"]["desc"]
    assert exchange(s, {"execute": "query-kvm"}) == [{"return": {"enabled": True, "present": True}}]


def test_fake_implements_the_protocol():
    assert isinstance(FakeMachine(), MachineControl)


# ---------------------------------------------------------------------------- events
def test_event_objects_and_validation():
    msg = event_message("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}, now_ns=1_700_000_000_123_456_789)
    assert to_json(msg) == ('{"timestamp": {"seconds": 1700000000, "microseconds": 123456}, '
                            '"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}')
    assert to_json(event_message("STOP", None, now_ns=5_000_001_000)) == \
        '{"timestamp": {"seconds": 5, "microseconds": 1}, "event": "STOP"}'
    for name, data in [("STOP", None), ("RESUME", None), ("RESET", {"guest": True, "reason": "guest-reset"}),
                       ("GUEST_PANICKED", {"action": "pause"}), ("GUEST_PANICKED", {"action": "run", "info": {}})]:
        check_event(name, data)
    for name, data in [("STOPPED", None), ("RESET", {"guest": True}), ("RESET", {"guest": 1, "reason": "guest-reset"}),
                       ("SHUTDOWN", {"guest": False, "reason": "because"}), ("STOP", {"x": 1}),
                       ("GUEST_PANICKED", {"action": "explode"})]:
        with pytest.raises(ValueError):
            check_event(name, data)


# ---------------------------------------------------------------------------- query-chardev order
@pytest.mark.parametrize("created, qemu_lists", [
    # qemu-system-x86_64 7.2 (Debian 1:7.2+dfsg-7) -M microvm,acpi=off -nodefaults -S
    #   -chardev null,id=zz -chardev null,id=aa -chardev file,id=mm,... -serial chardev:aa
    #   -qmp unix:...  -chardev socket,id=mon1,... -mon chardev=mon1 -serial null
    (["zz", "aa", "mm", "compat_monitor0", "mon1", "serial1"], ["zz", "serial1", "mon1", "compat_monitor0", "mm", "aa"]),
    # -chardev null,id=c1 ... -chardev null,id=c12 -qmp unix:...: the table grows once
    ([f"c{i}" for i in range(1, 13)] + ["compat_monitor0"],
     ["c11", "c4", "compat_monitor0", "c5", "c6", "c10", "c7", "c1", "c8", "c2", "c9", "c3", "c12"]),
    # c1 ... c30 and -qmp: three growths, in-place rehashes with evictions
    ([f"c{i}" for i in range(1, 31)] + ["compat_monitor0"],
     ["c19", "c7", "c29", "c13", "c1", "c23", "c6", "c18", "c28", "c12", "c22", "c17", "c5", "c27", "c11", "c21",
      "c4", "c16", "c3", "c26", "c10", "c9", "c20", "compat_monitor0", "c15", "c30", "c25", "c8", "c14", "c2", "c24"]),
])
def test_query_chardev_lists_in_qemus_order(created, qemu_lists):
    """QEMU lists its chardevs backwards through a GLib hash table filled in creation order;
    these lists are what QEMU 7.2 answered for those command lines."""
    from microvm.qmp.ghash import qom_children_order

    assert qom_children_order(created) == qemu_lists


def test_glib_string_hash():
    from microvm.qmp.ghash import g_str_hash

    assert g_str_hash("") == 5381 and g_str_hash("a") == 5381 * 33 + 97
    # djb2 as a polynomial in 33, reduced to 32 bits (a long label wraps many times)
    label = "compat_monitor0" * 4
    n = len(label)
    expected = (5381 * 33 ** n + sum(c * 33 ** (n - 1 - i) for i, c in enumerate(label.encode()))) % (1 << 32)
    assert g_str_hash(label) == expected
