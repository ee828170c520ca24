"""QEMU's JSON dialect, as QMP speaks it: a streaming splitter, a parser, and a writer.

Why not just ``json.loads`` per line: QMP clients send objects without newlines, several per
``send`` or one split across many, and QEMU accepts single-quoted strings and reports errors
with its own texts. So this module reproduces QEMU 7.2's pipeline (qobject/json-lexer.c,
json-streamer.c, json-parser.c), facts not code:

* the **lexer** knows strings (``"..."`` and ``'...'``, bytes 0x20-0xFD, any such byte after a
  backslash), numbers (``0`` does not take an exponent: ``0e5`` is three tokens), ``[a-z]+``
  keywords, the six structural characters and whitespace. Any other byte is an error:
  ``JSON parse error, stray '<token so far>'``, after which input is skipped up to a structural
  character, a control character other than tab, or 0xFE/0xFF (the QMP spec's way for a client
  to resynchronise);
* the **streamer** counts ``{``/``[`` depth outside strings and hands a message to the parser
  when the depth returns to zero (a scalar at depth zero is a message by itself) or goes
  negative;
* the **parser** reports the first failure with QEMU's wording (``expecting value``,
  ``missing : in object pair``, ``duplicate key``, ...).

Complete messages that are plain ASCII take ``json.loads`` (C speed) when it cannot disagree
with QEMU; everything else goes through the parser here, which is iterative so a 1024-deep
message cannot hit Python's recursion limit.

The **writer** produces what QEMU's ``qobject_to_json`` produces, byte for byte: ``", "`` and
``": "`` separators, non-ASCII and control characters as upper-case ``\\uXXXX``, and object
members in QDict iteration order (a 512-bucket hash of the key, newest first within a
bucket), so ``query-status`` reads ``{"status": ..., "singlestep": ..., "running": ...}`` as
QEMU's does and transcripts compare equal.

Limits: QEMU allows 64 MiB per message, 2M tokens and 1024 levels of nesting, then resets and
keeps lexing (so the rest of an oversized message becomes a stream of errors). Here the
nesting limit is QEMU's and the size limit is the constructor's ``max_message`` (bytes
buffered for one message, whitespace included); either one is **fatal** for the stream: the
caller reports it and drops the connection, which bounds memory per client.
"""
from __future__ import annotations

import json
import re
from typing import Any

#: QEMU's limits (json-streamer.c)
QEMU_MAX_TOKEN_SIZE = 64 << 20
MAX_NESTING = 1024
#: default bytes buffered for one incoming message (see docs/qmp.md for the choice)
DEFAULT_MAX_MESSAGE = 1 << 20

SIZE_LIMIT_DESC = "JSON token size limit exceeded"
NESTING_LIMIT_DESC = "JSON nesting depth limit exceeded"


class JsonError(Exception):
    """A message that could not be parsed; ``desc`` is QEMU's text for it.

    ``fatal`` errors (a limit) leave the stream unusable: the connection must be dropped.
    """

    def __init__(self, desc: str, fatal: bool = False) -> None:
        super().__init__(desc)
        self.desc = desc
        self.fatal = fatal


def _parse_error(msg: str) -> JsonError:
    return JsonError("JSON parse error, " + msg)


# ---------------------------------------------------------------------------- lexer tables
_WS = frozenset(b" \t\r\n")
_OPEN = frozenset(b"{[")
_CLOSE = frozenset(b"}]")
_PUNCT = frozenset(b",:")
_DIGIT = frozenset(b"0123456789")
_LOWER = frozenset(b"abcdefghijklmnopqrstuvwxyz")
#: valid string bodies up to (not including) the closing quote, an invalid byte, or a
#: backslash whose next byte is missing or invalid
_DQ_BODY = re.compile(rb'(?:[^"\\\x00-\x1f\xfe\xff]|\\[\x20-\xfd])*')
_SQ_BODY = re.compile(rb"(?:[^'\\\x00-\x1f\xfe\xff]|\\[\x20-\xfd])*")
_KEYWORD = re.compile(rb"[a-z]*")
_DIGITS = re.compile(rb"[0-9]*")
#: where error recovery stops (and the byte is lexed again from the start state)
_RECOVERY_STOP = re.compile(rb"[\x00-\x08\x0a-\x1f\xfe\xff\[\]{}:,]")
#: the splitter's C-speed strides (the loop in :meth:`JsonStream.feed` runs once per stride,
#: not once per byte): whitespace; a run of opening brackets (depth only grows in it, so it
#: cannot end a message); and, inside a container, a run of tokens that change no depth and
#: end no message: separators, whitespace, complete valid strings, and numbers and keywords
#: whose end the lexer has already seen (a delimiter follows; the number forms are exactly
#: those json-lexer.c accepts, so a ``0e5`` or ``1.x`` or a token cut by the end of the buffer
#: stops the stride and goes through the byte-exact automaton below)
_WS_RUN = re.compile(rb"[ \t\r\n]+")
_OPEN_RUN = re.compile(rb"[\[{]+")
_CLOSE_RUN = re.compile(rb"\]+|\}+")
_INNER_RUN = re.compile(
    rb"""(?:[ \t\r\n,:]+
    |"(?:[^"\\\x00-\x1f\xfe\xff]|\\[\x20-\xfd])*"
    |'(?:[^'\\\x00-\x1f\xfe\xff]|\\[\x20-\xfd])*'
    |(?:-?(?:0(?:\.[0-9]+(?:[eE][-+]?[0-9]+)?)?|[1-9][0-9]*(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)|[a-z]+)
     (?=[ \t\r\n,:\]}])
    )+""",
    re.X,
)


def _message_pattern(depth: int) -> "re.Pattern[bytes]":
    """A whole message up to ``depth`` levels deep, matched in one C call: properly nested
    ``{}``/``[]`` around the tokens of _INNER_RUN (so the streamer's count would end the
    message exactly at its last byte). Atomic groups and possessive repeats: no
    backtracking, whatever a client sends. Anything else (deeper, mismatched, a token the
    stride does not take) takes the per-stride path, which gives the same result."""
    tok = (rb"""(?>[ \t\r\n,:]++"""
           rb'|"(?:[^"\\\x00-\x1f\xfe\xff]|\\[\x20-\xfd])*+"'
           rb"""|'(?:[^'\\\x00-\x1f\xfe\xff]|\\[\x20-\xfd])*+'"""
           rb"""|(?:-?(?:0(?:\.[0-9]+(?:[eE][-+]?[0-9]+)?)?|[1-9][0-9]*(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)|[a-z]+)"""
           rb"""(?=[ \t\r\n,:\]}]))""")
    inner = tok
    for _ in range(depth):
        level = rb"(?:\{(?:" + inner + rb")*+\}|\[(?:" + inner + rb")*+\])"
        inner = tok + rb"|" + level
    return re.compile(level)


#: a typical QMP request (``arguments`` holding objects of lists of objects) in one match
_MESSAGE = _message_pattern(4)

# token kinds
_T_STRING, _T_NUMBER, _T_KEYWORD = 1, 2, 3
# number lexer states (json-lexer.c's IN_SIGN, IN_ZERO, IN_DIGITS, IN_MANTISSA, ...)
_N_START, _N_SIGN, _N_ZERO, _N_DIGITS, _N_MANT, _N_MANT_DIGITS, _N_EXP_E, _N_EXP_SIGN, _N_EXP_DIGITS = range(9)
# scan results
_MORE, _DONE, _BAD = 0, 1, 2


def _scan_number(buf: bytearray, p: int, n: int, state: int) -> tuple[int, int, int]:
    """Advance the number automaton from ``p``. Returns (result, position, state): _DONE with
    the token's end (the byte there is lookahead), _BAD with the end of the erroneous token
    (the offending byte is part of it, as in QEMU), or _MORE to resume at ``position``."""
    while True:
        if state in (_N_DIGITS, _N_MANT_DIGITS, _N_EXP_DIGITS):
            p = _DIGITS.match(buf, p).end()
        if p >= n:
            return _MORE, p, state
        c = buf[p]
        if state == _N_START:
            state = _N_SIGN if c == 0x2D else _N_ZERO if c == 0x30 else _N_DIGITS
        elif state == _N_SIGN:
            if c == 0x30:
                state = _N_ZERO
            elif c in _DIGIT:
                state = _N_DIGITS
            else:
                return _BAD, p + 1, state
        elif state == _N_ZERO:
            if c in _DIGIT:
                return _BAD, p + 1, state
            if c != 0x2E:
                return _DONE, p, state
            state = _N_MANT
        elif state == _N_DIGITS:
            if c in b"eE":
                state = _N_EXP_E
            elif c == 0x2E:
                state = _N_MANT
            else:
                return _DONE, p, state
        elif state == _N_MANT:
            if c not in _DIGIT:
                return _BAD, p + 1, state
            state = _N_MANT_DIGITS
        elif state == _N_MANT_DIGITS:
            if c not in b"eE":
                return _DONE, p, state
            state = _N_EXP_E
        elif state == _N_EXP_E:
            if c in b"+-":
                state = _N_EXP_SIGN
            elif c in _DIGIT:
                state = _N_EXP_DIGITS
            else:
                return _BAD, p + 1, state
        elif state == _N_EXP_SIGN:
            if c not in _DIGIT:
                return _BAD, p + 1, state
            state = _N_EXP_DIGITS
        else:  # _N_EXP_DIGITS after its digit run
            return _DONE, p, state
        p += 1


class JsonStream:
    """Splits a byte stream into JSON messages the way QEMU's QMP monitor does.

    ``feed(data)`` returns, in order, each complete message's value or a :class:`JsonError`
    (returned, not raised: QEMU answers a bad message and keeps reading). It never raises.
    After a fatal error the stream ignores further input. ``feed(data, limit)`` stops after
    ``limit`` items and keeps the rest of the input unscanned (:attr:`pending`) for the next
    call (``feed(b"", limit)``): how the server serves a flooding client a few requests per
    turn, as QEMU suspends a monitor whose queue holds 8 requests.
    """

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._pos = 0  # next byte to lex
        self._msg_start = -1  # first byte of the message being collected, or -1
        self._tok_start = -1  # first byte of an incomplete token, or -1
        self._tok_kind = 0
        self._tok_state = 0  # number automaton state / resume offset for strings
        self._depth_brace = 0
        self._depth_bracket = 0
        self._recovering = False
        self.dead = False

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete message (what the size limit bounds)."""
        return len(self._buf)

    @property
    def pending(self) -> bool:
        """Input received but not scanned yet (a ``limit`` stopped :meth:`feed`)."""
        return not self.dead and self._pos < len(self._buf)

    def feed(self, data: bytes, limit: int | None = None) -> list[Any]:
        if self.dead:
            return []
        out: list[Any] = []
        buf = self._buf
        buf += data
        n = len(buf)
        p = self._pos
        while p < n:
            if limit is not None and len(out) >= limit:
                break
            if self._recovering:
                m = _RECOVERY_STOP.search(buf, p)
                if m is None:
                    p = n
                    break
                p = m.start()
                self._recovering = False
            if self._tok_start >= 0:  # resume an incomplete token
                start = self._tok_start
                kind = self._tok_kind
            else:
                if self._depth_brace > 0 or self._depth_bracket > 0:  # inside a message
                    m = _INNER_RUN.match(buf, p)
                    if m is not None:
                        p = m.end()
                        if p >= n:
                            break
                start = p
                c = buf[p]
                if c in _WS:
                    p = _WS_RUN.match(buf, p).end()
                    continue
                if c in _OPEN:
                    if self._msg_start < 0:  # a new message: whole, in one match?
                        m = _MESSAGE.match(buf, p)
                        if m is not None:
                            p = m.end()
                            self._msg_start = start
                            self._complete(p, out)
                            continue
                    p = _OPEN_RUN.match(buf, p).end()
                    if self._msg_start < 0:
                        self._msg_start = start
                    braces = buf.count(b"{", start, p)
                    self._depth_brace += braces
                    self._depth_bracket += p - start - braces
                    if self._depth_brace + self._depth_bracket > MAX_NESTING:
                        self._die(out, NESTING_LIMIT_DESC)
                        break
                    continue
                if c in _CLOSE:
                    # a run of one closing kind: where (if in it) the streamer's count ends
                    # the message, found by arithmetic instead of one step per byte
                    e = _CLOSE_RUN.match(buf, p).end()
                    if self._msg_start < 0:
                        self._msg_start = start
                    if c == 0x5D:
                        mine, other = self._depth_bracket, self._depth_brace
                    else:
                        mine, other = self._depth_brace, self._depth_bracket
                    # the message ends when both counts are <= 0 or either is < 0
                    need = max(mine, 1) if other <= 0 else mine + 1
                    if e - p >= need:
                        p += need
                        self._complete(p, out)
                        continue
                    if c == 0x5D:
                        self._depth_bracket -= e - p
                    else:
                        self._depth_brace -= e - p
                    p = e
                    continue
                if c in _PUNCT:
                    p += 1
                    self._structural(c, start, p, out)
                    if self.dead:
                        break
                    continue
                if c == 0x22 or c == 0x27:
                    kind = _T_STRING
                    self._tok_state = p + 1
                elif c == 0x2D or c in _DIGIT:
                    kind = _T_NUMBER
                    self._tok_state = _N_START
                elif c in _LOWER:
                    kind = _T_KEYWORD
                    self._tok_state = p
                else:
                    p += 1
                    self._lex_error(buf[start:p], out)
                    continue
            # string, number or keyword: scan as far as the buffer allows
            if kind == _T_STRING:
                body = _DQ_BODY if buf[start] == 0x22 else _SQ_BODY
                e = body.match(buf, self._tok_state).end()
                if e >= n or (buf[e] == 0x5C and e + 1 >= n):
                    result, end = _MORE, e
                elif buf[e] == buf[start]:
                    result, end = _DONE, e + 1
                else:  # an invalid byte, or a backslash before one: both end the token
                    result, end = _BAD, e + (2 if buf[e] == 0x5C else 1)
            elif kind == _T_NUMBER:
                result, end, self._tok_state = _scan_number(buf, p, n, self._tok_state)
            else:
                end = _KEYWORD.match(buf, self._tok_state).end()
                result = _MORE if end >= n else _DONE
            if result == _MORE:
                self._tok_start = start
                self._tok_kind = kind
                if kind != _T_NUMBER:
                    self._tok_state = end
                p = n
                break
            self._tok_start = -1
            p = end
            if result == _BAD:
                self._lex_error(buf[start:end], out)
                continue
            if self._msg_start < 0:
                self._msg_start = start
            if self._depth_brace == 0 and self._depth_bracket == 0:
                self._complete(end, out)  # a scalar at depth zero is a message
        self._pos = p
        if not self.dead:
            self._compact()
            # (stopped by ``limit``: no message is in progress, what is held is unscanned
            # input, which the caller bounds by not reading while it is pending)
            if p >= n and len(self._buf) > self.max_message:
                self._die(out, SIZE_LIMIT_DESC)
        return out

    # ------------------------------------------------------------------ streamer
    def _structural(self, c: int, start: int, end: int, out: list[Any]) -> None:
        if self._msg_start < 0:
            self._msg_start = start
        if c == 0x7B:
            self._depth_brace += 1
        elif c == 0x7D:
            self._depth_brace -= 1
        elif c == 0x5B:
            self._depth_bracket += 1
        elif c == 0x5D:
            self._depth_bracket -= 1
        if self._depth_brace + self._depth_bracket > MAX_NESTING:
            self._die(out, NESTING_LIMIT_DESC)
            return
        b, k = self._depth_brace, self._depth_bracket
        if (b > 0 or k > 0) and b >= 0 and k >= 0:
            return
        self._complete(end, out)

    def _complete(self, end: int, out: list[Any]) -> None:
        data = bytes(self._buf[self._msg_start:end])
        self._reset_message()
        try:
            out.append(parse_message(data))
        except JsonError as e:
            out.append(e)

    def _lex_error(self, token: bytes | bytearray, out: list[Any]) -> None:
        out.append(_parse_error(f"stray '{c_string_text(bytes(token))}'"))
        self._reset_message()
        self._recovering = True

    def _reset_message(self) -> None:
        self._msg_start = -1
        self._depth_brace = 0
        self._depth_bracket = 0

    def _die(self, out: list[Any], desc: str) -> None:
        out.append(JsonError(desc, fatal=True))
        self.dead = True
        self._buf = bytearray()
        self._pos = 0
        self._msg_start = self._tok_start = -1

    def _compact(self) -> None:
        """Drop bytes no longer needed: everything before the message (or token) in progress."""
        keep = self._msg_start if self._msg_start >= 0 else self._tok_start if self._tok_start >= 0 else self._pos
        if keep <= 0:
            return
        del self._buf[:keep]
        self._pos -= keep
        if self._msg_start >= 0:
            self._msg_start -= keep
        if self._tok_start >= 0:
            if self._tok_kind != _T_NUMBER:
                self._tok_state -= keep
            self._tok_start -= keep


# ---------------------------------------------------------------------------- parser
#: re-tokenizes a message the streamer already checked lexically
_TOKEN_RE = re.compile(
    rb"""[ \t\r\n]+
    |(?P<s>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<n>-?(?:0(?:\.[0-9]+(?:[eE][-+]?[0-9]+)?)?|[1-9][0-9]*(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?))
    |(?P<k>[a-z]+)
    |(?P<p>[{}\[\],:])""",
    re.X | re.S,
)
#: ``0e5`` is three tokens for QEMU and one number for json.loads
_ZERO_EXP = re.compile(rb"(?<![0-9.])0[eE]")
_INT64_MIN, _UINT64_MAX = -(1 << 63), (1 << 64) - 1


def _qnum_int(text: str) -> int | float:
    """QEMU's JSON_INTEGER: int64 if it fits, else uint64 if non-negative, else a double."""
    if len(text) <= 21:
        v = int(text)
        if _INT64_MIN <= v <= _UINT64_MAX:
            return v
    return float(text)


class _DuplicateKey(ValueError):
    pass


def _pairs_no_dup(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _DuplicateKey()
    return d


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs_no_dup, parse_int=_qnum_int)


def parse_message(data: bytes) -> Any:
    """Parse one complete message (lexically valid, as cut by :class:`JsonStream`)."""
    if data.isascii() and b"\\u" not in data and not _ZERO_EXP.search(data):
        try:
            return _DECODER.decode(data.decode("ascii"))
        except (ValueError, RecursionError):
            pass  # single quotes, a syntax error, a duplicate key, deep nesting: the slow way
    return _parse_tokens(data)


_NOKEY = object()


def _parse_tokens(data: bytes) -> Any:
    """QEMU's recursive-descent parser, run with an explicit stack; first error wins."""
    toks = [(m.lastgroup, m.group()) for m in _TOKEN_RE.finditer(data) if m.lastgroup]
    n = len(toks)
    i = 0
    stack: list[list[Any]] = []  # ["a", list] or ["o", dict, pending key]
    while True:
        # ---- parse_value at toks[i]
        if i >= n:
            raise _parse_error("premature EOI")
        kind, text = toks[i]
        value: Any
        if kind == "p":
            if text == b"{" or text == b"[":
                i += 1
                if i >= n:
                    raise _parse_error("premature EOI")
                closer = b"}" if text == b"{" else b"]"
                if toks[i][1] == closer:
                    i += 1
                    value = {} if text == b"{" else []
                else:
                    stack.append(["o", {}, _NOKEY] if text == b"{" else ["a", []])
                    continue
            else:
                raise _parse_error("expecting value")
        elif kind == "s":
            value = _parse_string(text)
            i += 1
        elif kind == "n":
            s = text.decode("ascii")
            value = _qnum_int(s) if not any(c in s for c in ".eE") else float(s)
            i += 1
        else:
            if text == b"true":
                value = True
            elif text == b"false":
                value = False
            elif text == b"null":
                value = None
            else:
                raise _parse_error(f"invalid keyword '{text.decode('ascii')}'")
            i += 1
        # ---- hand the value to the enclosing containers, closing those that end here
        while True:
            if not stack:
                return value
            top = stack[-1]
            if top[0] == "a":
                top[1].append(value)
                if i >= n:
                    raise _parse_error("premature EOI")
                sep = toks[i][1]
                i += 1
                if sep == b"]":
                    value = top[1]
                    stack.pop()
                    continue
                if sep != b",":
                    raise _parse_error("expected separator in list")
                break
            if top[2] is _NOKEY:  # the value was a key
                if type(value) is not str:
                    raise _parse_error("key is not a string in object")
                top[2] = value
                if i >= n:
                    raise _parse_error("premature EOI")
                sep = toks[i][1]
                i += 1
                if sep != b":":
                    raise _parse_error("missing : in object pair")
                break
            key, top[2] = top[2], _NOKEY
            if key in top[1]:
                raise _parse_error("duplicate key")
            top[1][key] = value
            if i >= n:
                raise _parse_error("premature EOI")
            sep = toks[i][1]
            i += 1
            if sep == b"}":
                value = top[1]
                stack.pop()
                continue
            if sep != b",":
                raise _parse_error("expected separator in dict")
            break


_SIMPLE_ESCAPES = {
    ord('"'): '"', ord("'"): "'", ord("\\"): "\\", ord("/"): "/",
    ord("b"): "\b", ord("f"): "\f", ord("n"): "\n", ord("r"): "\r", ord("t"): "\t",
}
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _valid_codepoint(cp: int) -> bool:
    """util/unicode.c: no surrogates, no noncharacters, nothing past U+10FFFF."""
    return (0 <= cp <= 0x10FFFF and not 0xD800 <= cp <= 0xDFFF
            and not 0xFDD0 <= cp <= 0xFDEF and (cp & 0xFFFE) != 0xFFFE)


_MIN_CP = (0x80, 0x800, 0x10000, 0x200000, 0x4000000)


def mod_utf8_codepoint(s: bytes, p: int) -> tuple[int, int]:
    """Decode one code point of QEMU's modified UTF-8 at ``s[p]``: (code point or -1, next).

    Overlong forms are rejected except C0 80 (U+0000), as are surrogates and noncharacters.
    """
    byte = s[p]
    p += 1
    if byte < 0x80:
        return byte, p
    if byte >= 0xFE or not byte & 0x40:
        return -1, p
    length, mask = 0, 0x80
    while byte & mask:
        length += 1
        mask >>= 1
    cp = byte & (mask - 1)
    end = len(s)
    for _ in range(1, length):
        b = s[p] if p < end else 0
        if b & 0xC0 != 0x80:
            return -1, p
        p += 1
        cp = (cp << 6) | (b & 0x3F)
    if not _valid_codepoint(cp) or (cp < _MIN_CP[length - 2] and not (cp == 0 and length == 2)):
        return -1, p
    return cp, p


def c_string_text(raw: bytes) -> str:
    """How a byte string QEMU prints with ``%s`` reads once its JSON writer has quoted it:
    cut at the first NUL, invalid sequences as U+FFFD."""
    raw = raw.split(b"\0", 1)[0]
    if raw.isascii():
        return raw.decode("ascii")
    out = []
    p = 0
    while p < len(raw):
        cp, p = mod_utf8_codepoint(raw, p)
        out.append(chr(cp) if cp >= 0 else "\ufffd")
    return "".join(out)


def _cvt4hex(tok: bytes, p: int) -> int:
    h = tok[p:p + 4]
    if len(h) < 4 or not all(c in _HEX for c in h):
        return -1
    return int(h, 16)


def _parse_string(tok: bytes) -> str:
    """json-parser.c's parse_string on a whole token, quotes included."""
    body = tok[1:-1]
    if body.isascii() and b"\\" not in body:
        return body.decode("ascii")
    quote = tok[0]
    out: list[str] = []
    p = 1
    while tok[p] != quote:
        c = tok[p]
        if c == 0x5C:
            beg = p
            e = tok[p + 1]
            p += 2
            if e in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[e])
                continue
            if e != ord("u"):
                raise _parse_error("invalid escape sequence in string")
            cp = _cvt4hex(tok, p)
            p += 4
            if 0xD800 <= cp <= 0xDBFF and tok[p:p + 2] == b"\\u":
                cp = 0x10000 + ((cp & 0x3FF) << 10)
                trailing = _cvt4hex(tok, p + 2)
                if 0xDC00 <= trailing <= 0xDFFF:
                    cp |= trailing & 0x3FF
                    p += 6
                else:
                    cp = -1
            if not _valid_codepoint(cp):
                raise _parse_error(f"{c_string_text(tok[beg:p])} is not a valid Unicode character")
            out.append(chr(cp))
        else:
            cp, p = mod_utf8_codepoint(tok, p)
            if cp < 0:
                raise _parse_error("invalid UTF-8 sequence in string")
            out.append(chr(cp))
    return "".join(out)


# ---------------------------------------------------------------------------- writer
_QDICT_BUCKETS = 512
_bucket_cache: dict[str, int] = {}


def qdict_bucket(key: str) -> int:
    """qobject/qdict.c's tdb_hash(key) % 512: where QEMU files a member, hence its order."""
    b = _bucket_cache.get(key)
    if b is not None:
        return b
    raw = key.encode("utf-8", "surrogatepass").replace(b"\0", b"\xc0\x80")
    v = (0x238F13AF * len(raw)) & 0xFFFFFFFF
    for i, c in enumerate(raw):
        v = (v + (c << (i * 5 % 24))) & 0xFFFFFFFF
    b = ((1103515243 * v + 12345) & 0xFFFFFFFF) % _QDICT_BUCKETS
    if len(_bucket_cache) < 4096:  # client-chosen keys must not grow it without bound
        _bucket_cache[key] = b
    return b


def qdict_order(d: dict[str, Any]) -> list[str]:
    """The keys of ``d`` in QEMU's iteration order, taking ``d``'s order as insertion order
    (QEMU's visitors insert members in schema order)."""
    keys = list(d)
    if len(keys) < 2:
        return keys
    return [keys[i] for i in sorted(range(len(keys)), key=lambda i: (qdict_bucket(keys[i]), -i))]


_NEEDS_ESCAPE = re.compile('[\\x00-\\x1f"\\\\\\x7f-\\U0010ffff]')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    simple = _ESCAPES.get(c)
    if simple is not None:
        return simple
    cp = ord(c)
    if cp > 0xFFFF:
        cp -= 0x10000
        return "\\u%04X\\u%04X" % (0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF))
    return "\\u%04X" % cp


def quote(s: str) -> str:
    if _NEEDS_ESCAPE.search(s) is None:
        return '"' + s + '"'
    return '"' + _NEEDS_ESCAPE.sub(_escape, s) + '"'


class _Lit(str):
    """Text the writer emits as is (separators, closing brackets, quoted keys)."""

    __slots__ = ()


_SEP = _Lit(", ")
_END_OBJ = _Lit("}")
_END_LIST = _Lit("]")


def to_json(obj: Any) -> str:
    """QEMU's compact JSON for ``obj`` (dict, list/tuple, str, int, float, bool, None).

    Iterative, so an echoed ``id`` nested 1024 deep costs no recursion.
    """
    out: list[str] = []
    work: list[Any] = [obj]
    while work:
        v = work.pop()
        t = type(v)
        if t is _Lit:
            out.append(v)
        elif t is str:
            out.append(quote(v))
        elif v is None:
            out.append("null")
        elif t is bool:
            out.append("true" if v else "false")
        elif t is int:
            out.append(str(v))
        elif t is float:
            out.append("%.17g" % v)
        elif isinstance(v, dict):
            if not v:
                out.append("{}")
                continue
            out.append("{")
            keys = qdict_order(v)
            work.append(_END_OBJ)
            for idx in range(len(keys) - 1, -1, -1):
                k = keys[idx]
                work.append(v[k])
                work.append(_Lit(quote(k) + ": "))
                if idx:
                    work.append(_SEP)
        elif isinstance(v, (list, tuple)):
            if not v:
                out.append("[]")
                continue
            out.append("[")
            work.append(_END_LIST)
            for idx in range(len(v) - 1, -1, -1):
                work.append(v[idx])
                if idx:
                    work.append(_SEP)
        elif isinstance(v, bool):
            out.append("true" if v else "false")
        elif isinstance(v, int):
            out.append(str(int(v)))
        elif isinstance(v, float):
            out.append("%.17g" % v)
        elif isinstance(v, str):
            out.append(quote(str(v)))
        else:
            raise TypeError(f"cannot write {type(v).__name__} as QMP JSON")
    return "".join(out)


def to_line(obj: Any) -> bytes:
    """One QMP wire line: QEMU's monitor turns the ``\\n`` after each message into CR LF."""
    return (to_json(obj) + "\r\n").encode("ascii")
