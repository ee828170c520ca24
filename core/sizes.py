"""Sizes written as QEMU 7.2 reads them: ``qemu_strtosz`` / ``qemu_strtosz_MiB`` (QEMU's
``util/cutils.c``, ``do_strtosz``) and the ``-m`` option built on them (``softmmu/vl.c``).

Why by hand and to the letter: a user moving a command line from QEMU to microvm must get the
same number of bytes, or the same refusal, for every size QEMU takes or refuses. What QEMU
7.2 does, which :func:`parse_size` reproduces:

* an unsigned decimal integer as C's ``strtoull`` reads it: leading white space (C's
  ``isspace``: space, ``\\t \\n \\v \\f \\r``) and one ``+`` allowed; any ``-`` in the number
  refused, so are numbers of 2^64 and more (``Value ... is out of range``);
* ``0x``/``0X`` then hex digits (no fraction; a scaling suffix is accepted with a deprecation
  warning, and ``B`` and ``E`` are hex digits there, not suffixes);
* a decimal fraction after the integer (``1.5G``; ``1.`` and ``1.k`` too), never an exponent,
  never with a byte scale (``1.5`` with a default suffix of bytes, ``1.5B``), and never without
  the integer part (``.5G``). The fraction goes through ``strtod`` into 64-bit fixed point and
  the product is rounded half up, so ``1.5k`` is 1536 and ``0.0001k`` is 0;
* one suffix letter, either case: ``B`` (bytes), ``K M G T P E`` (powers of 1024), and
  nothing after it: ``128MB``, ``128 M``, ``128M `` are refused, ``256MiB`` too;
* a result of 2^64 or more is out of range.

QEMU 7.2 reads one character past the end of a string such as ``1.5e999`` (a fraction whose
``strtod`` overflows, fixed in QEMU 8.1); those are refused here. Parsed without ``re``
(start-up time, see docs/architecture.md).
"""
from __future__ import annotations

from .errors import ConfigError

__all__ = ["parse_size", "parse_memory_size", "SIZE_SUFFIXES"]

#: Suffix letter -> power of the unit (QEMU's ``suffix_mul``).
SIZE_SUFFIXES = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
_U64 = 1 << 64
_C_SPACE = " \t\n\v\f\r"
_DEC = "0123456789"
_HEX = "0123456789abcdefABCDEF"
#: The smallest normal double: glibc's strtod reports ERANGE below it (underflow).
_DBL_MIN = 2.2250738585072014e-308

#: machine_set_mem() rounds the RAM size up to this.
_RAM_ALIGN = 8192

_EINVAL = "EINVAL"
_ERANGE = "ERANGE"


class _Fail(Exception):
    def __init__(self, why: str) -> None:
        self.why = why


def _strtoull(s: str, pos: int, base: int) -> tuple[int, int, str | None]:
    """C's ``strtoull(s + pos, &end, base)`` for base 10 or 16 in the C locale, as
    ``qemu_strtou64`` returns it: (value, end index, None | EINVAL | ERANGE). No conversion
    is EINVAL with ``end == pos``; overflow is ERANGE with ``end`` after all the digits."""
    i = pos
    n = len(s)
    while i < n and s[i] in _C_SPACE:
        i += 1
    negative = False
    if i < n and s[i] in "+-":
        negative = s[i] == "-"
        i += 1
    digits = _DEC if base == 10 else _HEX
    if base == 16 and i + 1 < n and s[i] == "0" and s[i + 1] in "xX" and i + 2 < n and s[i + 2] in _HEX:
        i += 2                                       # "0x" counts only before a hex digit
    start = i
    while i < n and s[i] in digits:
        i += 1
    if i == start:
        return 0, pos, _EINVAL
    significant = s[start:i].lstrip("0")
    # 2^64 has 20 decimal and 17 hex digits: a longer number overflows (and int() refuses
    # more than 4300 digits, so it must not see one)
    if len(significant) > (20 if base == 10 else 16) or (significant and int(significant, base) >= _U64):
        return _U64 - 1, i, _ERANGE
    value = int(significant, base) if significant else 0
    if negative:
        value = -value % _U64
    return value, i, None


def _strtod_fraction(s: str, pos: int) -> tuple[float, int, str | None]:
    """glibc's ``strtod`` at ``s[pos] == '.'`` as ``qemu_strtod_finite`` returns it. Starting
    at a '.', only ``.digits[e[+-]digits]`` can convert (no hex float, inf or nan)."""
    n = len(s)
    i = pos + 1
    while i < n and s[i] in _DEC:
        i += 1
    if i == pos + 1:
        return 0.0, pos, _EINVAL
    j = i
    if j < n and s[j] in "eE":
        k = j + 1
        if k < n and s[k] in "+-":
            k += 1
        if k < n and s[k] in _DEC:
            while k < n and s[k] in _DEC:
                k += 1
            i = k
    try:
        value = float(s[pos:i])
    except OverflowError:  # pragma: no cover - float() returns inf rather than raising
        value = float("inf")
    if value == float("inf"):
        return value, i, _ERANGE
    digits_nonzero = any(c in "123456789" for c in s[pos:j])
    if (value == 0.0 and digits_nonzero) or 0.0 < value < _DBL_MIN:
        return value, i, _ERANGE                     # underflow
    return value, i, None


def _do_strtosz(s: str, default_suffix: str, unit: int) -> int:
    """QEMU 7.2's ``do_strtosz(nptr, NULL, default_suffix, unit, &result)``: the whole
    string must be consumed. Raises :class:`_Fail` with EINVAL or ERANGE."""
    if "\0" in s:
        raise _Fail(_EINVAL)  # a C string would end there; nothing on a command line has one
    n = len(s)
    val, end, err = _strtoull(s, 0, 10)
    valf = 0
    hex_ = False
    try:
        if err:
            raise _Fail(err)
        if "-" in s[:end]:
            end = 0
            raise _Fail(_EINVAL)
        if val == 0 and end < n and s[end] in "xX":
            val, end, err = _strtoull(s, 0, 16)
            if err:
                raise _Fail(err)
            if end < n and s[end] == ".":
                end = 0
                raise _Fail(_EINVAL)
            hex_ = True
        elif end < n and s[end] == ".":
            f = end
            fraction, end, err = _strtod_fraction(s, f)
            if err:
                # QEMU 7.2 steps one character past strtod's end on any error: past the '.'
                # when nothing converted (so "1.k" is 1K), past the number on ERANGE (reading
                # beyond the string when the number ends it: refused here), fraction unused.
                end += 1
                if end > n:
                    end = 0
                    raise _Fail(_EINVAL)
            elif "e" in s[f:end] or "E" in s[f:end]:
                end = 0
                raise _Fail(_EINVAL)
            else:
                # (uint64_t)(fraction * 0x1p64), as x86-64 code converts: 1.0 (".9999...",
                # rounded up by strtod) does not fit and comes out as 0
                scaled = int(fraction * 18446744073709551616.0)
                valf = scaled if scaled < _U64 else 0
        c = s[end] if end < n else ""
        power = SIZE_SUFFIXES.get(c.upper()) if c.isascii() else None  # qemu_toupper: ASCII only
        if power is not None:
            end += 1                                  # hex with a suffix: QEMU only warns
        else:
            power = SIZE_SUFFIXES[default_suffix.upper()]
        mul = unit**power
        if mul == 1:
            if valf:
                end = 0
                raise _Fail(_EINVAL)                  # a fraction needs a scale above bytes
        else:
            frac = valf * mul                         # 64.64 x 64.0 -> 128.64 fixed point
            val = val * mul + (frac >> 64) + ((frac >> 63) & 1)   # rounded half up
            if val >= _U64:
                raise _Fail(_ERANGE)
    except _Fail as e:
        if end < n:
            raise _Fail(_EINVAL) from None            # junk after the number wins over ERANGE
        raise
    if end < n:
        raise _Fail(_EINVAL)
    return val


def parse_size(text: str, default_suffix: str = "M", *, unit: int = 1024, name: str = "size") -> int:
    """Bytes in ``text``, read as QEMU 7.2's ``qemu_strtosz`` (``default_suffix="B"``),
    ``qemu_strtosz_MiB`` (``"M"``, the default here) or ``qemu_strtosz_metric`` (``"B"``,
    ``unit=1000``) reads it: the suffix used when none is written, and the unit of K, M, G...

    Returns 0 <= bytes < 2^64. Anything QEMU refuses is a :class:`~microvm.errors.ConfigError`
    worded as QEMU's ``parse_option_size`` words it for parameter ``name``; nothing else is
    ever raised."""
    if default_suffix.upper() not in SIZE_SUFFIXES or len(default_suffix) != 1:
        raise ValueError(f"default_suffix must be one of {', '.join(SIZE_SUFFIXES)}, not {default_suffix!r}")
    s = text if isinstance(text, str) else str(text)
    try:
        return _do_strtosz(s, default_suffix, unit)
    except _Fail as e:
        if e.why == _ERANGE:
            raise ConfigError(f"Value '{s}' is out of range for parameter '{name}'") from None
        raise ConfigError(
            f"Parameter '{name}' expects a non-negative number below 2^64, not {s!r} "
            "(optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta- and exabytes)"
        ) from None


def parse_memory_size(text: str) -> int | None:
    """The argument of ``-m`` as QEMU 7.2 takes it (``parse_memory_options`` in vl.c): bytes,
    or None where QEMU falls back to the machine's default RAM size (an empty argument, or a
    size of 0: ``-m 0`` boots with 128 MiB in QEMU).

    Two passes, as in QEMU: the text must first be a valid ``qemu_strtosz`` size in *bytes*
    (so ``-m 1.5`` is refused: a fraction of a byte); then, if it ends in a digit, it is read
    again with ``M`` appended ("legacy suffix-less format"), so ``-m 1.0`` is 1 MiB,
    ``-m 0x80`` 128 MiB and ``-m 99999999999999`` out of range. Errors name ``-m`` and the
    text, as QEMU's do. Last, the size is rounded up to 8 KiB as ``machine_set_mem`` does
    (``-m 1001K`` is 1008 KiB of RAM in QEMU). QEMU's ``-m size=...,slots=...,maxmem=...``
    keys are not taken."""
    s = text if isinstance(text, str) else str(text)
    if s == "":
        return None
    try:
        size = parse_size(s, "B")
    except ConfigError as e:
        raise ConfigError(f"-m {s}: {e}") from None
    if size == 0:
        return None
    if s[-1] in _DEC:
        s += "M"
        try:
            size = parse_size(s, "B", name="memory.size")
        except ConfigError as e:
            raise ConfigError(f"-m {text}: {e}") from None
    size = -(-size // _RAM_ALIGN) * _RAM_ALIGN
    if size >= _U64:  # QEMU's QEMU_ALIGN_UP would wrap to a tiny size here
        raise ConfigError(f"-m {text}: ram size too large")
    return size
