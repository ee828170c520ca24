"""MAC addresses as QEMU parses and assigns them."""
from __future__ import annotations

import pytest

from microvm.api import ConfigError
from microvm_virtio_net.mac import DEFAULT_MAC, MacAllocator, default_mac, format_mac, parse_mac


def test_parse_and_format():
    assert parse_mac("52:54:00:12:34:56") == bytes.fromhex("525400123456")
    assert parse_mac("52-54-00-AB-cd-01") == bytes.fromhex("525400abcd01")
    assert parse_mac("52-54:00-12:34:57") == bytes.fromhex("525400123457")  # QEMU takes mixed separators
    assert parse_mac("00:00:00:00:00:00") == bytes(6)  # QEMU: "not given", the glue assigns a default
    assert format_mac(bytes.fromhex("525400abcd01")) == "52:54:00:ab:cd:01"


@pytest.mark.parametrize("text", [
    "", "52:54:00:12:34", "52:54:00:12:34:56:78", "52:54:00:12:34:zz", "525:4:00:12:34:56", "52:54:00:12:34:",
    "52:54:00:12:34:5", "2:54:00:12:34:56", "52-54-00-AB-cd-1", "52:54:00:12:34:+5", "52:54:00:12:34: 5",
    "52:54:00:12:34:567", "52.54.00.12.34.56", "525400123456", "0x52:54:00:12:34", " 52:54:00:12:34:56",
    "52:54:00:12:34:5g", "５2:54:00:12:34:56",
])
def test_parse_rejects_anything_but_six_hex_octets(text):
    """As QEMU's mac property: exactly two hex digits per octet (checked with qemu-system-x86_64
    7.2: '52:54:00:12:34:5' and '52:54:00:12:34:567' are refused there too)."""
    with pytest.raises(ConfigError, match="not a MAC address") as e:
        parse_mac(text)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "33:33:00:00:00:01"])
def test_parse_rejects_multicast(text):
    with pytest.raises(ConfigError, match=f"^mac={text}: a multicast address"):
        parse_mac(text)


def test_default_macs_follow_qemu():
    assert DEFAULT_MAC == default_mac(0) == bytes.fromhex("525400123456")
    assert default_mac(1) == bytes.fromhex("525400123457")
    assert default_mac(0xFE - 0x56) == bytes.fromhex("5254001234fe")
    with pytest.raises(ValueError):
        default_mac(0xFF - 0x56)


def test_allocator_skips_explicit_addresses():
    a = MacAllocator()
    a.use(parse_mac("52:54:00:12:34:57"))  # -device ...,mac=52:54:00:12:34:57
    a.use(parse_mac("52:54:00:aa:bb:56"))  # another prefix: takes nothing
    assert [format_mac(a.allocate()) for _ in range(3)] == ["52:54:00:12:34:56", "52:54:00:12:34:58", "52:54:00:12:34:59"]
    a.release(parse_mac("52:54:00:12:34:56"))
    assert format_mac(a.allocate()) == "52:54:00:12:34:56"


def test_allocator_runs_out_with_a_clear_error():
    a = MacAllocator()
    for _ in range(0xFE - 0x56 + 1):
        a.allocate()
    with pytest.raises(ConfigError, match="mac="):
        a.allocate()
