"""microvm.sizes against QEMU 7.2: every expected value and refusal below was checked with
QEMU 7.2's own programs (``qemu-img create`` reads its size with ``qemu_strtosz``;
``qemu-system-x86_64 -m``), and a differential test runs them side by side where installed."""
from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microvm.errors import ConfigError
from microvm.sizes import SIZE_SUFFIXES, parse_memory_size, parse_size

K, M, G, T, P, E = (1 << (10 * i) for i in range(1, 7))
INVALID = "expects a non-negative number below 2^64"
RANGE = "is out of range"

# text, bytes with default_suffix "B" (qemu_strtosz), bytes with "M" (qemu_strtosz_MiB);
# a string instead of a number is the start of the error message's reason
TABLE = [
    ("0", 0, 0),
    ("1", 1, M),
    ("128", 128, 128 * M),
    ("128M", 128 * M, 128 * M),
    ("128m", 128 * M, 128 * M),
    ("1k", K, K),
    ("1K", K, K),
    ("2G", 2 * G, 2 * G),
    ("1T", T, T),
    ("1P", P, P),
    ("1E", E, E),
    ("15E", 15 * E, 15 * E),
    ("16E", RANGE, RANGE),                         # 2^64: one too many
    ("128B", 128, 128),
    ("128b", 128, 128),
    ("1.5G", 3 * G // 2, 3 * G // 2),
    ("1.5k", 1536, 1536),
    ("0.5k", 512, 512),
    ("1.", 1, M),                                  # "1." is 1 with the default scale
    ("1.k", K, K),                                 # and "1.k" 1 KiB
    ("1.0", 1, M),                                 # a zero fraction needs no scale
    ("1.5", INVALID, 3 * M // 2),                  # a fraction of a byte is refused
    ("1.5B", INVALID, INVALID),
    ("0.0001k", 0, 0),                             # 0.1024 bytes, rounded
    ("0.00048828125k", 1, 1),                      # exactly half a byte: rounded up
    ("0.00048828124k", 0, 0),
    ("1.9999999999999999999999k", K, K),          # strtod rounds the fraction to 1.0, which
                                                   # does not fit the fixed point and is lost
    ("1.e", E, E),                                 # nothing after '.': 'e' is the suffix
    (".5G", INVALID, INVALID),                     # no integer part
    ("1e3", INVALID, INVALID),                     # no exponents
    ("1.5e3k", INVALID, INVALID),
    ("1.5e999kM", M, M),                           # QEMU 7.2: strtod overflow skips a char
    ("0x10", 16, 16 * M),
    ("0X1f", 31, 31 * M),
    ("0x1E", 30, 30 * M),                          # E and B are hex digits after 0x
    ("0x10B", 0x10B, 0x10B * M),
    ("0x1k", K, K),                                # a suffix on hex: QEMU only warns
    ("0x1.8", INVALID, INVALID),                   # no hex fractions
    ("0x", INVALID, INVALID),
    ("00x10", INVALID, INVALID),
    ("+0x10", 16, 16 * M),
    ("0xffffffffffffffff", (1 << 64) - 1, RANGE),
    ("0x10000000000000000", RANGE, RANGE),
    ("18446744073709551615", (1 << 64) - 1, RANGE),
    ("18446744073709551616", RANGE, RANGE),
    ("99999999999999999999T", INVALID, INVALID),   # strtoull's ERANGE, then junk: EINVAL
    ("9" * 400, RANGE, RANGE),                     # 400 digits: an error, no OverflowError
    ("9" * 5000, RANGE, RANGE),                    # past int()'s 4300-digit limit
    ("0" * 400 + "1k", K, K),
    ("1." + "9" * 400 + "k", K, K),
    (" 1k", K, K),                                 # strtoull skips leading white space
    ("\t\n1k", K, K),
    ("+1k", K, K),
    ("1k ", INVALID, INVALID),                     # but nothing may follow the suffix
    ("1 k", INVALID, INVALID),                     # nor come between number and suffix
    ("128MB", INVALID, INVALID),
    ("128 M", INVALID, INVALID),
    ("256MiB", INVALID, INVALID),
    ("1X", INVALID, INVALID),
    ("-1", INVALID, INVALID),
    ("-0", INVALID, INVALID),
    ("- 1", INVALID, INVALID),
    ("-99999999999999999999", RANGE, RANGE),       # strtoull's ERANGE comes first
    ("", INVALID, INVALID),
    (" ", INVALID, INVALID),
    ("M", INVALID, INVALID),
    ("abc", INVALID, INVALID),
    ("1.2.3", INVALID, INVALID),
    ("١٢٣", INVALID, INVALID),                     # Unicode digits are not C digits
    ("1\u212a", INVALID, INVALID),                 # KELVIN SIGN is not K
    ("1\0", INVALID, INVALID),
]


@pytest.mark.parametrize("text, as_bytes, as_mib", TABLE)
def test_qemu_strtosz_and_strtosz_mib(text: str, as_bytes: int | str, as_mib: int | str) -> None:
    for suffix, want in (("B", as_bytes), ("M", as_mib)):
        if isinstance(want, int):
            assert parse_size(text, suffix) == want, (text, suffix)
        else:
            with pytest.raises(ConfigError) as info:
                parse_size(text, suffix)
            assert want in str(info.value), (text, suffix, str(info.value))
            assert "\n" not in str(info.value)


def test_default_suffix_is_mib() -> None:
    assert parse_size("64") == 64 * M


def test_metric_unit() -> None:
    """qemu_strtosz_metric: the same syntax with powers of 1000."""
    assert parse_size("1.5k", "B", unit=1000) == 1500
    assert parse_size("2G", "B", unit=1000) == 2 * 10**9


def test_messages_are_qemus() -> None:
    """QEMU's parse_option_size wording, one line, naming the parameter (and the value)."""
    with pytest.raises(ConfigError) as info:
        parse_size("16E", name="size")
    assert str(info.value) == "Value '16E' is out of range for parameter 'size'"
    with pytest.raises(ConfigError) as info:
        parse_size("128MB", name="size")
    assert str(info.value).startswith("Parameter 'size' expects a non-negative number below 2^64, not '128MB'")


def test_bad_default_suffix_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        parse_size("1", "Q")


# ---- -m ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, size",  # each checked with QEMU 7.2's "info memory_size_summary"
    [
        ("128", 128 * M),
        ("128M", 128 * M),
        ("1G", G),
        ("1.5G", 3 * G // 2),
        ("1.0", M),           # valid in bytes, then read as "1.0M"
        ("0x80", 128 * M),    # "0x80M" (QEMU warns that a suffix on hex is deprecated)
        (" 128", 128 * M),
        ("+128", 128 * M),
        ("128k", 128 * K),
        ("1048576B", M),
        ("1001K", 1008 * K),  # rounded up to 8 KiB, as machine_set_mem does
        ("1.k", 8 * K),
        ("1B", 8 * K),
        ("0", None),          # QEMU: a zero size means the machine's default RAM size
        ("0M", None),
        ("", None),
    ],
)
def test_dash_m(text: str, size: int | None) -> None:
    assert parse_memory_size(text) == size


@pytest.mark.parametrize(
    "text, message",
    [
        ("128MB", "-m 128MB: Parameter 'size' expects a non-negative number below 2^64"),
        ("128 M", "-m 128 M: Parameter 'size' expects a non-negative number below 2^64"),
        ("128 ", "-m 128 : Parameter 'size' expects"),
        ("1.5", "-m 1.5: Parameter 'size' expects"),          # a fraction of a byte first
        ("-1", "-m -1: Parameter 'size' expects"),
        ("1e3", "-m 1e3: Parameter 'size' expects"),
        ("99999999999999999999T", "-m 99999999999999999999T: Parameter 'size' expects"),
        ("16E", "-m 16E: Value '16E' is out of range for parameter 'size'"),
        ("18446744073709551616", "-m 18446744073709551616: Value '18446744073709551616' is out of range"),
        ("99999999999999", "-m 99999999999999: Value '99999999999999M' is out of range for parameter 'memory.size'"),
        ("9" * 400, "is out of range for parameter 'size'"),
        ("18446744073709551615B", "-m 18446744073709551615B: ram size too large"),
    ],
)
def test_dash_m_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_memory_size(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


# ---- properties --------------------------------------------------------------------------------
SIZE_CHARS = st.sampled_from(list("0123456789.xXbBkKmMgGtTpPeE+- \t\0") + ["0x", "1.5", "e999", "١", "ß", "\u212a"])


@settings(max_examples=800, deadline=None)
@given(st.one_of(st.text(max_size=30), st.lists(SIZE_CHARS, max_size=14).map("".join)), st.sampled_from("BM"))
def test_never_raises_anything_but_config_error(text: str, suffix: str) -> None:
    try:
        v = parse_size(text, suffix)
    except ConfigError as e:
        assert "\n" not in str(e)
    else:
        assert 0 <= v < 1 << 64
    try:
        m = parse_memory_size(text)
    except ConfigError:
        pass
    else:
        assert m is None or (0 < m < 1 << 64 and m % 8192 == 0)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, (1 << 64) - 1), st.sampled_from(sorted(SIZE_SUFFIXES)), st.booleans())
def test_integer_with_suffix(n: int, suffix: str, lower: bool) -> None:
    want = n * 1024 ** SIZE_SUFFIXES[suffix]
    text = f"{n}{suffix.lower() if lower else suffix}"
    if want < 1 << 64:
        assert parse_size(text, "B") == want
    else:
        with pytest.raises(ConfigError, match="out of range"):
            parse_size(text, "B")


# ---- side by side with QEMU --------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed (Debian qemu-utils)")
def test_same_as_qemu_img(tmp_path) -> None:
    """``qemu-img create`` reads its size argument with qemu_strtosz and takes 0..2^63-1: the
    table's texts that a command line can carry must give the same bytes or the same kind of
    refusal."""
    img = tmp_path / "x.img"
    for text, as_bytes, _ in TABLE:
        if "\0" in text or len(text) > 100:
            continue
        r = subprocess.run(["qemu-img", "create", "-f", "raw", "--", str(img), text], capture_output=True, text=True)
        out = r.stdout + r.stderr
        if "size=" in out:
            qemu: object = int(out.split("size=")[1].split()[0])
        elif "Must be between" in out:
            qemu = RANGE
        else:
            assert "You may use" in out, out
            qemu = INVALID
        mine: object = as_bytes
        if isinstance(mine, int) and mine >= 1 << 63:
            mine = RANGE  # beyond qemu-img's own limit of 2^63 - 1
        assert qemu == mine, (text, out)
