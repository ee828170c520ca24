"""MAC addresses as QEMU parses and assigns them."""
from __future__ import annotations

import pytest

from microvm.api import ConfigError
from microvm_virtio_net.mac import DEFAULT_MAC, MacAllocator, default_mac, format_mac, parse_mac


def test_parse_and_format():
    assert parse_mac("52:54:00:12:34:56") == bytes.fromhex("525400123456")
    assert parse_mac("52-54-00-AB-cd-1") == bytes.fromhex("525400abcd01")
    assert format_mac(bytes.fromhex("525400abcd01")) == "52:54:00:ab:cd:01"


@pytest.mark.parametrize("text", ["", "52:54:00:12:34", "52:54:00:12:34:56:78", "52:54:00:12:34:zz", "525:4:00:12:34:56", "52:54:00:12:34:"])
def test_parse_rejects_garbage(text):
    with pytest.raises(ConfigError, match="mac="):
        parse_mac(text)


@pytest.mark.parametrize("text", ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"])
def test_parse_rejects_non_unicast(text):
    with pytest.raises(ConfigError, match=text):
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
