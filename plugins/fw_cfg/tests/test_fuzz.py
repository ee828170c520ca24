"""Random guest traffic on every fw_cfg port and random DMA structures: no exception ever
leaves a bus access, nothing outside the buffers a transfer names changes, and the device
still answers afterwards."""
from __future__ import annotations

import logging
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from microvm.testing import Bus
from microvm.api import GuestMemory

from microvm_fw_cfg.device import FwCfg

RAM = 64 * 1024
PORTS = st.integers(min_value=0x50E, max_value=0x51D)      # the ranges and their neighbours
SIZES = st.sampled_from([1, 2, 4])
ADDRESSES = st.one_of(
    st.integers(min_value=0, max_value=RAM + 64),
    st.integers(min_value=RAM - 32, max_value=RAM + 32),
    st.integers(min_value=0, max_value=(1 << 64) - 1),
    st.sampled_from([0, RAM - 16, RAM - 4, RAM, 0xFEC00000, (1 << 64) - 16, (1 << 64) - 1]),
)
CONTROLS = st.one_of(
    st.integers(min_value=0, max_value=0xFFFFFFFF),
    st.builds(lambda key, bits: (key << 16) | bits, st.integers(0, 0xFFFF), st.integers(0, 0x1F)),
)
LENGTHS = st.one_of(st.integers(0, 300), st.integers(0, 0xFFFFFFFF), st.sampled_from([RAM, 0xFFFFFFFF]))

port_op = st.tuples(st.just("port"), st.booleans(), PORTS, SIZES, st.integers(0, 0xFFFFFFFF))
dma_op = st.tuples(st.just("dma"), ADDRESSES, CONTROLS, LENGTHS, ADDRESSES)


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _machine() -> tuple[FwCfg, Bus, GuestMemory]:
    mem = GuestMemory(RAM)
    fw = FwCfg(mem)
    fw.add_file("opt/ro", bytes(range(200)))
    fw.add_file("opt/rw", bytes(64), read_only=False)
    fw.add_i32(0x07, 0x100000)
    bus = Bus("pio", unmapped_read=0xFF, limit=0x10000)
    for base, length, dev, name in fw.port_ranges():
        bus.insert(dev, base, length, name)
    return fw, bus, mem


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(port_op, dma_op), max_size=40))
def test_random_traffic_never_raises(ops):
    fw, bus, mem = _machine()
    errors = _Errors()
    logging.getLogger("microvm.fw_cfg").addHandler(errors)
    try:
        for op in ops:
            if op[0] == "port":
                _, is_write, port, size, value = op
                if is_write:
                    bus.write(port, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
                else:
                    buf = bytearray(size)
                    bus.read(port, memoryview(buf))
            else:
                _, access, control, length, address = op
                if mem.contains(access, 16):
                    mem.write(access, struct.pack(">IIQ", control, length, address))
                bus.write(0x514, (access >> 32).to_bytes(4, "big"))
                bus.write(0x518, (access & 0xFFFFFFFF).to_bytes(4, "big"))
        # still a working device
        bus.write(0x510, (0).to_bytes(2, "little"))
        out = bytearray(1)
        got = []
        for _ in range(4):
            bus.read(0x511, memoryview(out))
            got.append(out[0])
        assert bytes(got) == b"QEMU"
        assert fw.file_data("opt/ro") == bytes(range(200))   # read-only stays so
        assert errors.records == []                           # no internal error was swallowed
    finally:
        logging.getLogger("microvm.fw_cfg").removeHandler(errors)
        mem.close()


@settings(max_examples=200, deadline=None)
@given(control=CONTROLS, length=LENGTHS, address=ADDRESSES, prefill=st.integers(0, 255))
def test_dma_touches_only_its_buffer(control, length, address, prefill):
    """A transfer changes RAM only in [address, address + length) and the control word."""
    fw, bus, mem = _machine()
    try:
        access = 0x100
        mem.fill(0, RAM, prefill)
        mem.write(access, struct.pack(">IIQ", control, length, address))
        before = mem.read(0, RAM)
        bus.write(0x518, access.to_bytes(4, "big"))
        after = bytearray(mem.read(0, RAM))
        expected = bytearray(before)
        for lo, hi in ((access, access + 4), (address, min(RAM, address + length))):
            if lo < hi:
                after[lo:hi] = expected[lo:hi] = bytes(hi - lo)   # allowed to change
        assert after == expected
        status = struct.unpack(">I", mem.read(access, 4))[0]
        assert status in (0, 1)
    finally:
        mem.close()
